"""`twistd evc`: command-line options and the one place where EVC's service tree is wired together."""
from __future__ import annotations

import os
import sys

from twisted.python import usage


def install_asyncio_reactor() -> None:
    """Install Twisted's asyncio reactor unless a reactor is already installed (never twice: DESIGN §8)."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor
    asyncioreactor.install()


# twistd imports this module while parsing its sub-command, before it needs the reactor: install ours now.
install_asyncio_reactor()


class Options(usage.Options):
    synopsis = "--etcd URL --root /evc/<site> [options]"
    longdesc = ("Runs one charging site: reads its configuration from etcd under --root, starts every configured "
                "instance (meters, chargers, control, fronts) and writes their live state back.")
    optParameters = [
        ["etcd", None, os.environ.get("EVC_ETCD_URL", "http://127.0.0.1:2379"),
         "etcd client URL (http:// or https://); env EVC_ETCD_URL"],
        ["root", None, os.environ.get("EVC_ROOT"), "the site's root key, e.g. /evc/site1; env EVC_ROOT"],
        ["etcd-user", None, os.environ.get("EVC_ETCD_USER"), "etcd user name (with --etcd-password); env EVC_ETCD_USER"],
        ["etcd-password", None, None, "etcd password; prefer env EVC_ETCD_PASSWORD (not visible in ps)"],
        ["etcd-ca", None, os.environ.get("EVC_ETCD_CA"), "CA file for https:// etcd URLs"],
        ["etcd-cert", None, None, "client certificate file for etcd (mutual TLS)"],
        ["etcd-key", None, None, "client key file for etcd (mutual TLS)"],
        ["tick", None, 0.5, "seconds between state flushes to etcd", float],
        ["lease-ttl", None, 10, "seconds EVC's state outlives EVC in etcd", int],
        ["log-format", None, "text", "text or json (one JSON object per line on stdout)"],
    ]

    def postOptions(self) -> None:
        if not self["root"]:
            raise usage.UsageError("--root is required (the site's key prefix in etcd, e.g. /evc/site1)")
        if not self["root"].startswith("/") or self["root"].endswith("/") and self["root"] != "/":
            raise usage.UsageError(f"--root {self['root']!r}: must start with '/' and not end with one")
        if not self["etcd"].startswith(("http://", "https://")):
            raise usage.UsageError(f"--etcd {self['etcd']!r}: must be an http:// or https:// URL")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["etcd-password"] is None:
            self["etcd-password"] = os.environ.get("EVC_ETCD_PASSWORD")


def sequential_multiservice():
    """A MultiService whose children stop one after the other in reverse order, each finished before the next:
    Twisted's stops them all at once, which would close the store while instances are still writing their last
    state."""
    from twisted.application import service
    from twisted.internet import defer

    class Sequential(service.MultiService):
        @defer.inlineCallbacks
        def stopService(self):
            service.Service.stopService(self)
            for child in reversed(list(self)):
                yield defer.maybeDeferred(child.stopService)

    return Sequential()


def makeService(options: Options, reactor=None):

    from evc.events import EventBus
    from evc.state import StateWriter
    from evc.store.etcd import EtcdStore
    from evc.store.service import StoreService
    from evc.supervisor import Supervisor

    if reactor is None:
        from twisted.internet import reactor
    if options["log-format"] == "json":
        from evc.logs import start_json_logging
        start_json_logging(sys.stdout)

    top = sequential_multiservice()
    top.setName("evc")
    store = EtcdStore(options["etcd"], reactor, user=options["etcd-user"], password=options["etcd-password"],
                      ca_file=options["etcd-ca"], cert_file=options["etcd-cert"], key_file=options["etcd-key"])
    StoreService(store).setServiceParent(top)
    events = EventBus()
    state = StateWriter(store, options["root"], reactor, tick_s=options["tick"], ttl_s=options["lease-ttl"],
                        events=events)
    state.setServiceParent(top)
    supervisor = Supervisor(store, options["root"], state, reactor, reactor, events=events)
    supervisor.setName("supervisor")
    supervisor.setServiceParent(top)
    return top
