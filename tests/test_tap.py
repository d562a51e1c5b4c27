"""`twistd evc` options and wiring."""
import io
import json

import pytest
from twisted.python import usage

from evc import tap
from evc.logs import start_json_logging


def parse(*args):
    o = tap.Options()
    o.parseOptions(list(args))
    return o


def test_root_is_required():
    with pytest.raises(usage.UsageError, match="--root is required"):
        parse("--etcd", "http://127.0.0.1:2379")


@pytest.mark.parametrize("args, message", [
    (("--root", "evc/s1"), "must start with '/'"),
    (("--root", "/evc/s1/"), "must start with '/' and not end with one"),
    (("--root", "/evc/s1", "--etcd", "127.0.0.1:2379"), "must be an http:// or https:// URL"),
    (("--root", "/evc/s1", "--log-format", "xml"), "--log-format must be text or json"),
])
def test_bad_options_are_named(args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_password_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("EVC_ETCD_PASSWORD", "s3cret")
    assert parse("--root", "/evc/s1")["etcd-password"] == "s3cret"


def test_make_service_wires_store_state_and_supervisor_in_order():
    top = tap.makeService(parse("--root", "/evc/s1", "--etcd", "http://127.0.0.1:1"))
    assert [s.name for s in top] == ["store", None, "supervisor"]
    sup = top.getServiceNamed("supervisor")
    assert sup.root == "/evc/s1" and sup.state.root == "/evc/s1"
    assert sup.state.events is sup.events     # control hears the state writer's ("store",) lost/ok


def test_json_log_format_writes_one_object_per_line():
    from twisted.logger import Logger, globalLogPublisher
    out = io.StringIO()
    observer = start_json_logging(out)
    try:
        Logger(namespace="evc.test").info("{charger} set to {current_A} A", charger="s1", current_A=16)
    finally:
        globalLogPublisher.removeObserver(observer)
    line = [json.loads(x) for x in out.getvalue().splitlines() if "evc.test" in x][0]
    assert line["charger"] == "s1" and line["current_A"] == 16 and line["log_namespace"] == "evc.test"


def test_the_asyncio_reactor_is_installed():
    from twisted.internet import reactor
    assert type(reactor).__name__ == "AsyncioSelectorReactor"


def test_children_stop_one_after_the_other_in_reverse_order():
    """The store must close only after the supervisor's instances and the state writer have finished stopping."""
    from twisted.application import service
    from twisted.internet import defer

    order, gates = [], {}

    class Child(service.Service):
        def __init__(self, name):
            self.setName(name)

        def stopService(self):
            super().stopService()
            order.append(("stopping", self.name))
            gates[self.name] = d = defer.Deferred()
            d.addCallback(lambda _: order.append(("stopped", self.name)))
            return d

    top = tap.sequential_multiservice()
    for name in ("store", "state", "supervisor"):
        Child(name).setServiceParent(top)
    top.startService()
    done = top.stopService()
    assert order == [("stopping", "supervisor")]
    gates["supervisor"].callback(None)
    assert order[-1] == ("stopping", "state")
    gates["state"].callback(None)
    assert order[-1] == ("stopping", "store")
    gates["store"].callback(None)
    assert done.called
