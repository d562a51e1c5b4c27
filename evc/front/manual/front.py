"""front/manual: the site's own web page and JSON API on twisted.web (docs/front-manual.md explains it for operators).

It mirrors the site's root from etcd (a watch of its own: what `evc status` shows is what the page shows), serves
the API and the page, and streams changes to the page. Commands go through the chargers' own session commands
(authorize / deauthorize, as front/ocpp's remote start and stop do) and config writes to etcd (mode, tokens), never
to a driver.

State: `listening` (host:port in use), `tls`, `users` (how many may log in), `clients` (open live streams).
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Optional

from twisted.internet import defer, error as net_error
from twisted.logger import Logger
from twisted.web import server

from evc.errors import ConfigError
from evc.front.manual.api import Api, Root, valid_id_tag
from evc.front.manual.auth import Authenticator, parse_users
from evc.front.manual.events import EventHub
from evc.front.manual.site import SiteView
from evc.instance import Instance
from evc.registry import FRONTS
from evc.schema import Catalog
from evc.server.ocpp import host_port

log = Logger(namespace="evc.front.manual")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class ManualFrontConfig:
    """schema/front/manual.json describes every field."""
    listen: str = "127.0.0.1:8080"
    chargers: Any = "*"
    users: Any = dataclasses.field(default_factory=dict, repr=False)
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    session_ttl_s: int = 43200
    start_id_tag: str = "EVC"
    present_cards: bool = False
    type: Optional[str] = None

    def __post_init__(self):
        host, _ = host_port(self.listen)
        if self.chargers != "*":
            if isinstance(self.chargers, str) or not all(isinstance(c, str) for c in self.chargers):
                raise ConfigError('config/chargers: "*" or a list of charger names')
            object.__setattr__(self, "chargers", tuple(self.chargers))
        try:
            users = parse_users(self.users)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        object.__setattr__(self, "users", users)
        if not users and not is_loopback(host):
            raise ConfigError(f"config/users: none configured, so the page may only listen on a loopback address "
                              f"(127.0.0.1), not {self.listen}: add users (docs/front-manual.md) or listen on "
                              "127.0.0.1")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ConfigError(f"config/{missing}: give tls_cert and tls_key together")
        if not valid_id_tag(self.start_id_tag):
            raise ConfigError("config/start_id_tag: 1 to 20 printable characters without spaces or '/'")


@FRONTS.register("manual")
class ManualFront(Instance):
    """See the module docstring."""
    Config = ManualFrontConfig

    def __init__(self, ctx, config: ManualFrontConfig):
        super().__init__(ctx, config)
        self.catalog = Catalog()
        self.view = SiteView(ctx.root, config.chargers, ctx.clock, self.catalog)
        self.auth = Authenticator(config.users, ctx.clock, ctx.reactor, config.session_ttl_s)
        self.hub = EventHub(ctx.clock, self._event)
        self.hub.on_count = lambda n: self.ctx.state.set("clients", n)
        self.api = Api(self)
        self.port = None
        self._watch = None
        self._stopped = False

    @property
    def tls(self) -> bool:
        return self.config.tls_cert is not None

    def startService(self):
        if self.ctx.store is None or self.ctx.reactor is None:
            raise ConfigError("type: front/manual needs the store and a reactor")
        host, port = host_port(self.config.listen)
        site = server.Site(Root(self))
        site.displayTracebacks = False
        site.noisy = False
        try:
            if self.tls:
                self.port = self.ctx.reactor.listenSSL(port, site, self._tls_options(), interface=host)
            else:
                self.port = self.ctx.reactor.listenTCP(port, site, interface=host)
        except net_error.CannotListenError as e:
            raise ConfigError(f"config/listen: cannot listen on {self.config.listen} ({e.socketError})") from None
        super().startService()
        where = self.port.getHost()
        shown = f"[{where.host}]:{where.port}" if ":" in where.host else f"{where.host}:{where.port}"
        self.listening = shown
        self.ctx.state.update({"listening": shown, "tls": self.tls, "users": len(self.config.users), "clients": 0})
        log.info("{front}: the page and the API at {scheme}://{where}/", front=self.ctx.key,
                 scheme="https" if self.tls else "http", where=shown)
        self.hub.start()
        d = self.ctx.store.watch_prefix(self.ctx.root.rstrip("/") + "/", self._on_events)
        d.addCallbacks(self._watching, lambda f: log.failure("{front}: watching the site failed", f,
                                                             front=self.ctx.key))

    def _watching(self, watch) -> None:
        if self._stopped:
            watch.stop()
        else:
            self._watch = watch

    def _tls_options(self):
        from twisted.internet import ssl
        try:
            with open(self.config.tls_cert, "rb") as f:
                cert = f.read()
        except OSError as e:
            raise ConfigError(f"config/tls_cert: cannot read {self.config.tls_cert} ({e.strerror})") from None
        try:
            with open(self.config.tls_key, "rb") as f:
                key = f.read()
        except OSError as e:
            raise ConfigError(f"config/tls_key: cannot read {self.config.tls_key} ({e.strerror})") from None
        try:
            return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()
        except Exception as e:
            raise ConfigError(f"config/tls_cert: the certificate or key cannot be used ({e})") from None

    def stopService(self):
        self._stopped = True
        super().stopService()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self.hub.stop()
        port, self.port = self.port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        return d

    def site(self) -> dict:
        """GET /api/v1/site (and the live stream's first event): the view's site and what this front allows."""
        return {**self.view.site(), "present_cards": self.config.present_cards}

    def _on_events(self, events) -> None:
        self.hub.changed(self.view.apply(events))

    def _event(self, kind: str, ident: Any):
        view = self.view
        if kind == "charger":
            if not (view.visible(ident) and view.exists("charger", ident)):
                return "charger", {"name": ident, "removed": True}
            return "charger", view.charger(ident)
        if kind == "meter":
            if not view.exists("meter", ident):
                return "meter", {"name": ident, "removed": True}
            return "meter", view.meter(ident)
        if kind == "reader":
            if ident not in view.readers():
                return "reader", {"name": ident, "removed": True}
            return "reader", view.reader(ident)
        if kind == "control":
            return "control", view.control()
        if kind == "session":
            s = view.session(*ident)
            return ("session", s) if s is not None else None
        if kind == "error":
            return "error", view.error(ident)
        return None


__all__ = ["ManualFront", "ManualFrontConfig"]
