"""The supervisor: dependency order, live changes, errors that name the leaf, last good config kept."""
import dataclasses
import json

import pytest
from twisted.internet import defer, task

from evc.instance import Instance
from evc.registry import Registry
from evc.schema import Catalog
from evc.state import StateWriter
from evc.store.memory import MemoryStore
from evc.supervisor import Supervisor

ROOT = "/evc/t"
EVENTS: list = []


@dataclasses.dataclass(frozen=True)
class ConnConfig:
    port: int = 1


@dataclasses.dataclass(frozen=True)
class MeterConfig:
    conn: str
    bus_addr: int = 1


@dataclasses.dataclass(frozen=True)
class ChargerConfig:
    meter: str
    A_max: float = 16


class Recorder(Instance):
    def startService(self):
        super().startService()
        EVENTS.append(("start", self.ctx.key, self.config))
        self.ctx.state.set("started", True)

    def stopService(self):
        super().stopService()
        EVENTS.append(("stop", self.ctx.key))


class FakeConn(Recorder):
    Config = ConnConfig


class FakeMeter(Recorder):
    Config = MeterConfig

    def startService(self):
        self.conn = self.ctx.resolve("conn", self.config.conn)
        super().startService()


class FakeCharger(Recorder):
    Config = ChargerConfig

    def startService(self):
        if self.config.A_max == 13:
            raise RuntimeError("the hardware refuses 13 A")
        self.meter = self.ctx.resolve("meter", self.config.meter)
        super().startService()


def _schema(desc, props, required):
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "description": desc, "type": "object",
            "additionalProperties": False, "required": required, "properties": props}


@pytest.fixture
def catalog(tmp_path):
    regs = {k: Registry(k) for k in ("conn", "meter", "charger")}
    regs["conn"].register("fakeconn")(FakeConn)
    regs["meter"].register("fakemeter")(FakeMeter)
    regs["charger"].register("fakecharger")(FakeCharger)
    files = {
        "conn/fakeconn.json": _schema("c", {"port": {"type": "integer", "default": 1, "description": "p"}}, []),
        "meter/fakemeter.json": _schema("m", {
            "type": {"type": "string", "description": "seed form"},
            "conn": {"type": "string", "x-ref": "conn", "description": "c"},
            "bus_addr": {"type": "integer", "minimum": 1, "maximum": 247, "default": 1, "description": "a"}},
            ["conn"]),
        "charger/fakecharger.json": _schema("ch", {
            "meter": {"type": "string", "x-ref": "meter", "description": "m"},
            "A_max": {"type": "number", "minimum": 6, "maximum": 80, "default": 16, "description": "a"}}, ["meter"]),
    }
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(body))
    return Catalog(registries=regs, directory=tmp_path)


class Site:
    def __init__(self, catalog):
        EVENTS.clear()
        self.clock = task.Clock()
        self.store = MemoryStore(clock=self.clock)
        self.state = StateWriter(self.store, ROOT, self.clock, tick_s=0.5)
        self.sup = Supervisor(self.store, ROOT, self.state, self.clock, catalog=catalog)

    def put(self, key, value):
        self.store.put(f"{ROOT}/{key}", value.encode())

    def delete(self, key):
        self.store.delete(f"{ROOT}/{key}", prefix=key.endswith("/"))

    def settle(self):
        for _ in range(5):
            self.clock.advance(0)
        self.clock.advance(1)   # a state flush

    def state_of(self, key):
        res = self.store.range(f"{ROOT}/{key}")
        kvs = []
        res.addCallback(lambda r: kvs.extend(r.kvs))
        return kvs[0].value.decode() if kvs else None

    def error(self, key):
        return self.state_of(f"{key}/state/error")

    def start(self):
        self.state.startService()
        self.sup.startService()
        self.settle()


@pytest.fixture
def site(catalog):
    s = Site(catalog)
    s.put("charger/a/type", "fakecharger")
    s.put("charger/a/config/meter", "m")
    s.put("meter/m/config/type", "fakemeter")     # the seed's form
    s.put("meter/m/config/conn", "z")
    s.put("conn/z/type", "fakeconn")
    return s


def starts():
    return [e[1] for e in EVENTS if e[0] == "start"]


def test_initial_tree_starts_in_dependency_order(site):
    site.start()
    assert starts() == ["conn/z", "meter/m", "charger/a"]
    assert site.state_of("meter/m/state/status") == "running"
    assert site.sup.instances[("meter", "m")].service.conn is site.sup.instances[("conn", "z")].service


def test_config_change_restarts_only_that_instance(site):
    site.start()
    EVENTS.clear()
    site.put("charger/a/config/A_max", "20")
    site.settle()
    assert EVENTS == [("stop", "charger/a"), ("start", "charger/a", ChargerConfig(meter="m", A_max=20))]


def test_change_to_a_dependency_restarts_its_dependents(site):
    site.start()
    EVENTS.clear()
    site.put("conn/z/config/port", "2")
    site.settle()
    assert EVENTS[:3] == [("stop", "charger/a"), ("stop", "meter/m"), ("stop", "conn/z")]
    assert starts() == ["conn/z", "meter/m", "charger/a"]


def test_schema_violation_keeps_last_good_config_and_names_the_leaf(site):
    site.start()
    EVENTS.clear()
    site.put("meter/m/config/bus_addr", "300")
    site.settle()
    assert EVENTS == []
    assert site.error("meter/m") == ("config/bus_addr: 300 is greater than the maximum of 247 "
                                      "(still running with the last good config)")
    site.put("meter/m/config/bus_addr", "7")
    site.settle()
    assert site.error("meter/m") is None
    assert ("start", "meter/m", MeterConfig(conn="z", bus_addr=7)) in EVENTS


def test_unknown_type_leaves_the_rest_running(site):
    site.put("conn/y/type", "nosuch")
    site.start()
    assert "unknown conn type 'nosuch'" in site.error("conn/y")
    assert starts() == ["conn/z", "meter/m", "charger/a"]


def test_dangling_reference_is_reported_and_started_once_the_target_appears(site):
    site.put("charger/b/type", "fakecharger")
    site.put("charger/b/config/meter", "m9")
    site.start()
    assert site.error("charger/b") == "config/meter: meter 'm9' is not configured"
    assert site.state_of("charger/b/state/status") == "error"
    site.put("meter/m9/type", "fakemeter")
    site.put("meter/m9/config/conn", "z")
    site.settle()
    assert site.error("charger/b") is None
    assert starts()[-2:] == ["meter/m9", "charger/b"]


def test_reference_to_an_invalid_instance_says_why(site):
    site.put("meter/m/config/bus_addr", "0")
    site.start()
    assert site.error("charger/a") == ("config/meter: meter 'm' is not usable "
                                        "(config/bus_addr: 0 is less than the minimum of 1)")
    assert starts() == ["conn/z"]


def test_rewire_moves_a_meter_to_another_conn_without_a_restart_of_the_process(site):
    site.put("conn/y/type", "fakeconn")
    site.start()
    site.put("meter/m/config/conn", "y")
    site.settle()
    assert site.sup.instances[("meter", "m")].service.conn is site.sup.instances[("conn", "y")].service
    assert ("stop", "conn/z") not in EVENTS


def test_removed_instance_is_stopped_and_its_state_cleared(site):
    site.start()
    assert site.state_of("charger/a/state/started") == "true"
    site.delete("charger/a/")
    site.settle()
    assert ("stop", "charger/a") in EVENTS
    assert ("charger", "a") not in site.sup.instances
    assert site.state_of("charger/a/state/started") is None
    assert site.state_of("charger/a/state/status") is None


def test_removing_a_dependency_stops_its_dependents_and_reports_it(site):
    site.start()
    site.delete("conn/z/")
    site.settle()
    assert site.error("meter/m") == "config/conn: conn 'z' is not configured"
    assert ("meter", "m") not in site.sup.instances and ("charger", "a") not in site.sup.instances


def test_instance_that_fails_to_start_reports_it_and_others_run(site):
    site.put("charger/a/config/A_max", "13")
    site.start()
    assert site.error("charger/a") == "type: fakecharger failed to start: the hardware refuses 13 A"
    assert ("meter", "m") in site.sup.instances


def test_stop_stops_dependents_first(site):
    site.start()
    EVENTS.clear()
    d = site.sup.stopService()
    site.clock.advance(0)
    assert d.called
    assert EVENTS == [("stop", "charger/a"), ("stop", "meter/m"), ("stop", "conn/z")]


def test_missing_type_is_reported(site):
    site.put("conn/q/config/port", "3")
    site.start()
    assert site.error("conn/q").startswith("type: missing")


def test_a_dangling_new_reference_keeps_the_last_good_config_running(site):
    """A typo in a reference (charger moved to a meter that does not exist) must not stop a running instance:
    for control that would switch load management off."""
    site.start()
    EVENTS.clear()
    site.put("charger/a/config/meter", "m9")
    site.settle()
    assert EVENTS == []
    assert site.error("charger/a") == ("config/meter: meter 'm9' is not configured "
                                        "(still running with the last good config)")
    assert site.sup.instances[("charger", "a")].service.meter is site.sup.instances[("meter", "m")].service
