"""control/builtin: the loop around allocate() with fake chargers and a fake grid meter on task.Clock."""
from __future__ import annotations

import dataclasses
import json

import pytest
from twisted.internet import defer, task
from zope.interface import implementer

from evc.charger.base import ChargerStatus, ICharger
from evc.control.allocation import PHASES
from evc.control.builtin import BuiltinConfig, BuiltinControl
from evc.errors import ConfigError
from evc.events import EventBus
from evc.instance import Context, Instance
from evc.meter.base import IMeter, Reading
from evc.schema import Catalog
from evc.store.memory import MemoryStore

ROOT = "/evc/t"


class State:
    """The state sink: keeps the newest value per path (deadbands are the state writer's business)."""

    def __init__(self):
        self.values: dict = {}

    def set(self, path, value, deadband=None):
        self.values[path] = value

    def update(self, values, deadband=None):
        self.values.update(values)

    def delete(self, path):
        self.values.pop(path, None)


@implementer(IMeter)
class FakeMeter:
    def __init__(self, clock):
        self.clock = clock
        self.reading = Reading()
        self._subs = []

    def subscribe(self, callback):
        self._subs.append(callback)
        return lambda: self._subs.remove(callback)

    def read(self, A):
        self.reading = Reading(A=tuple(A), updated=self.clock.seconds(), stale=False)
        for cb in list(self._subs):
            cb(self.reading)

    def go_stale(self):
        self.reading = dataclasses.replace(self.reading, stale=True)
        for cb in list(self._subs):
            cb(self.reading)


@dataclasses.dataclass(frozen=True)
class ChargerConfig:
    A_max: float = 16
    phases: int = 3
    phase_map: tuple = PHASES
    priority: int = 0
    meter: str | None = None


@implementer(ICharger)
class FakeCharger:
    """A charger whose car draws its setpoint (at most car_A). sync=False: apply() waits for finish().

    `draw_A` is what the car really draws, which the grid meter sees; the status shows it only while online.
    """

    def __init__(self, clock, *, wants=True, setpoint_A=0, sync=True, car_A=None, **config):
        self.clock = clock
        self.config = ChargerConfig(**config)
        self.car_A = car_A
        self.wants = wants
        self.sync = sync
        self.writes: list[int] = []
        self.pending: list[tuple[int, defer.Deferred]] = []
        self._subs = []
        self.draw_A = self._car_draw(setpoint_A)
        self._status = ChargerStatus(vehicle="charging" if wants else "none", online=True, setpoint_A=setpoint_A,
                                    actual_A=(self.draw_A,) * self.config.phases, updated=clock.seconds())

    @property
    def status(self):
        """Polled all the time while online: `updated` is now; offline, it stays at the last good poll."""
        if self._status.online:
            return dataclasses.replace(self._status, updated=self.clock.seconds())
        return self._status

    def _car_draw(self, setpoint_A):
        return float(setpoint_A if self.car_A is None else min(setpoint_A, self.car_A))

    def wants_current(self):
        return self.wants

    def subscribe(self, callback):
        self._subs.append(callback)
        return lambda: self._subs.remove(callback)

    def apply(self, current_A):
        self.writes.append(current_A)
        if self.sync:
            self._accept(current_A)
            return defer.succeed(None)
        d = defer.Deferred()
        self.pending.append((current_A, d))
        return d

    def finish(self, fail=False):
        current_A, d = self.pending.pop(0)
        if fail:
            d.errback(RuntimeError("no answer"))
        else:
            self._accept(current_A)
            d.callback(None)

    def _accept(self, current_A):
        self.draw_A = self._car_draw(current_A)
        self.set(setpoint_A=current_A, actual_A=(self.draw_A,) * self.config.phases)

    def set(self, **changes):
        self._status = dataclasses.replace(self._status, updated=self.clock.seconds(), **changes)
        for cb in list(self._subs):
            cb(self.status)


class Site:
    def __init__(self, fakes=None, **config):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.meter = FakeMeter(self.clock)
        self.chargers: dict[str, FakeCharger] = {}
        self.bus = EventBus()
        self.store = MemoryStore()
        self.state = State()
        for name, kw in (fakes or {}).items():
            self.chargers[name] = FakeCharger(self.clock, **kw)
        config.setdefault("meter", "m1")
        config.setdefault("A_max", 32)
        self.config = BuiltinConfig(**config)

    def resolve(self, kind, name):
        if kind == "meter" and name == "m1":
            return self.meter
        if kind == "charger" and name in self.chargers:
            return self.chargers[name]
        raise ConfigError(f"{kind} {name!r} is not running")

    def start(self) -> BuiltinControl:
        ctx = Context(kind="control", name="master", clock=self.clock, state=self.state, resolve=self.resolve,
                      store=self.store, root=ROOT, events=self.bus, find=lambda kind: dict(self.chargers))
        self.control = BuiltinControl(ctx, self.config)
        self.control.startService()
        return self.control

    def read(self, base=(0, 0, 0)):
        """A meter reading: `base` (the non-car load per phase) plus what every car draws on its grid phases."""
        A = dict(zip(PHASES, map(float, base)))
        for c in self.chargers.values():
            for phase in c.config.phase_map[:c.config.phases]:
                A[phase] += c.draw_A
        self.meter.read([A[p] for p in PHASES])

    def run(self, seconds, base=(0, 0, 0)):
        """Let `seconds` pass with the meter polled every second, as a real grid meter is."""
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.read(base)

    def setpoints(self):
        return {n: c.status.setpoint_A for n, c in self.chargers.items()}


def test_overload_is_corrected_on_the_meter_reading_that_shows_it():
    site = Site({"a": dict(setpoint_A=16), "b": dict(setpoint_A=16)}, A_max=40, interval_s=60)
    control = site.start()
    site.read(base=(5, 5, 5))
    n = control.recomputes
    site.read(base=(20, 5, 5))                      # 52 A on L1: a heat pump started
    assert control.recomputes == n + 1              # no clock advance: the reading itself triggered it
    assert site.setpoints() == {"a": 10, "b": 10}   # (40 - 20) / 2
    assert control.last.mode == "normal"


def test_a_reading_within_the_limits_waits_for_the_interval():
    site = Site({"a": dict(setpoint_A=16)}, A_max=32, interval_s=5)
    control = site.start()
    site.read(base=(1, 1, 1))
    n = control.recomputes
    site.read(base=(2, 2, 2))
    assert control.recomputes == n
    site.clock.advance(5)
    assert control.recomputes == n + 1


def test_a_car_plugged_in_is_given_current_at_once():
    site = Site({"a": dict(wants=False)}, A_max=32, interval_s=60)
    site.start()
    site.read()
    c = site.chargers["a"]
    c.wants = True
    c.set(vehicle="plugged")
    assert c.writes == [16]


@pytest.mark.parametrize("topic", ["session", "authorization"])
def test_a_session_or_authorization_event_recomputes_at_once(topic):
    """An authorization changes wants_current() without a status change: the event carries it."""
    site = Site({"a": dict(wants=False)}, A_max=32, interval_s=60)
    site.start()
    site.chargers["a"].set(vehicle="plugged")
    site.read()
    site.chargers["a"].wants = True
    assert site.chargers["a"].writes == []
    site.bus.publish((topic, "a"), object())
    assert site.chargers["a"].writes == [16]


def test_the_base_load_pairs_the_meter_reading_with_the_draws_of_that_moment():
    """A car that slowed down after the last reading is not counted as other load at the next recompute."""
    site = Site({"a": dict(setpoint_A=16)}, A_max=32, interval_s=5, stale_s=30)
    control = site.start()
    site.read(base=(10, 10, 10))                    # 26 A: 10 A other load + 16 A car
    site.chargers["a"].set(actual_A=(8.0, 8.0, 8.0))
    site.clock.advance(5)                           # the interval, with no newer reading
    assert control.last.base_A.L1 == 10 and site.state.values["base/L1"] == 10


def test_a_new_measured_current_alone_does_not_recompute():
    site = Site({"a": dict(setpoint_A=10)}, A_max=32, interval_s=60)
    control = site.start()
    site.read()
    n = control.recomputes
    site.chargers["a"].set(actual_A=(9.5, 9.6, 9.4))
    assert control.recomputes == n


def test_decreases_are_written_before_increases_and_increases_wait_for_them():
    site = Site({"a": dict(setpoint_A=32, A_max=32, sync=False), "b": dict(wants=False, A_max=32, sync=False)},
                A_max=32, interval_s=60, deadband_A=0)
    site.start()
    site.read()
    a, b = site.chargers["a"], site.chargers["b"]
    b.wants = True
    b.set(vehicle="plugged")
    assert a.writes == [16] and b.writes == []      # the decrease is on its way; the increase waits
    site.run(30)
    assert b.writes == []
    a.finish()
    site.read()
    assert b.writes == [16]                         # once a accepted 16 A and the meter shows it


def test_increases_follow_the_first_meter_reading_that_shows_the_decrease():
    """Right after a decrease the car may still draw its old current for ramp_s: the first reading of its meter
    taken ramp_s after the decrease is the moment to raise (not the interval, not the reading right after)."""
    site = Site({"a": dict(setpoint_A=32, A_max=32), "b": dict(wants=False, A_max=32)},
                A_max=32, interval_s=60, deadband_A=0)
    control = site.start()
    site.read()
    a, b = site.chargers["a"], site.chargers["b"]
    b.wants = True
    b.set(vehicle="plugged")
    assert a.writes == [16]
    site.read()
    assert b.writes == []                          # a's car may still draw 32 A
    site.run(4)
    assert b.writes == []
    site.run(1)                                    # a's meter read ramp_s (5 s) after the decrease
    assert b.writes == [16]
    site.run(6)                                    # b's raise shows in its meter
    n = control.recomputes
    site.run(3)
    assert control.recomputes == n                 # settled, nothing written since: readings within limits wait


def test_the_largest_decrease_is_written_first():
    site = Site({"a": dict(setpoint_A=8), "b": dict(setpoint_A=16)}, A_max=24, interval_s=60, deadband_A=0)
    order = []
    for name, c in site.chargers.items():
        c.apply = (lambda n, f: lambda A: (order.append(n), f(A))[1])(name, c.apply)
    site.start()
    site.read(base=(20, 0, 0))                      # 44 A on L1: 4 A left, so both go to 0
    assert order == ["b", "a"]


def test_no_increase_after_a_failed_decrease_until_the_next_interval():
    site = Site({"a": dict(setpoint_A=32, A_max=32, sync=False), "b": dict(wants=False, A_max=32)},
                A_max=32, interval_s=5, deadband_A=0)
    site.start()
    site.read()
    a, b = site.chargers["a"], site.chargers["b"]
    b.wants = True
    b.set(vehicle="plugged")
    a.finish(fail=True)
    site.read()
    assert b.writes == []
    site.run(5)
    assert b.writes == [16]


def test_a_stale_meter_puts_every_charger_at_failsafe_within_stale_s():
    site = Site({"a": dict(setpoint_A=16), "b": dict(setpoint_A=0, wants=True)}, A_max=63, interval_s=60,
                stale_s=10, failsafe_A=6)
    control = site.start()
    site.read()
    assert site.setpoints() == {"a": 16, "b": 16}
    site.clock.advance(9.9)
    assert site.setpoints() == {"a": 16, "b": 16}
    site.clock.advance(0.1)                         # the interval is 60 s away: the stale timer did it
    assert site.setpoints() == {"a": 6, "b": 6}
    assert control.last.mode == "failsafe" and site.state.values["mode"] == "failsafe"
    assert site.state.values["allocations/a/reason"] == "failsafe: meter m1 stale, 6 A"


def test_failsafe_never_raises_a_paused_charger():
    site = Site({"a": dict(setpoint_A=0)}, A_max=63, failsafe_A=6)
    site.start()
    site.meter.go_stale()
    site.clock.advance(60)
    assert site.chargers["a"].writes == []


def test_the_meter_flagging_itself_stale_acts_at_once():
    site = Site({"a": dict(setpoint_A=16)}, A_max=63, interval_s=60, stale_s=30, failsafe_A=0)
    site.start()
    site.read()
    site.meter.go_stale()
    assert site.setpoints() == {"a": 0}


def test_a_fresh_start_leaves_chargers_alone_until_the_first_meter_reading():
    """An EVC restart must not pause every car (and hold it off for min_off_s) for want of a first poll."""
    site = Site({"a": dict(setpoint_A=10)}, A_max=63, stale_s=10)
    control = site.start()
    site.clock.advance(2)
    assert control.last is None and site.chargers["a"].writes == []
    site.read()
    assert control.last.mode == "normal" and site.setpoints() == {"a": 16}


def test_a_fresh_start_without_any_meter_reading_is_failsafe_after_stale_s():
    site = Site({"a": dict(setpoint_A=10)}, A_max=63, stale_s=10, interval_s=60)
    control = site.start()
    site.clock.advance(9.9)
    assert site.chargers["a"].writes == []
    site.clock.advance(0.1)
    assert control.last.mode == "failsafe" and site.setpoints() == {"a": 0}


def test_an_offline_charger_counts_at_its_worst_case_and_is_not_written():
    """Its car draws nothing now, but the charger still offers 16 A: that is what is kept free for it."""
    site = Site({"gone": dict(setpoint_A=16, A_max=32, car_A=0), "b": dict(setpoint_A=16, A_max=32)}, A_max=32,
                interval_s=5, deadband_A=0)
    control = site.start()
    site.read()
    gone = site.chargers["gone"]
    gone.set(online=False, vehicle="unknown", actual_A=(None, None, None))
    site.run(20)
    assert gone.writes == [] and site.setpoints()["b"] == 16           # counted as 0 A, b would get 32 A
    assert control.last["gone"].reason == "lost: not answering, 16 A held"


def test_an_offline_charger_reserves_the_larger_of_accepted_and_asked():
    site = Site({"gone": dict(setpoint_A=10, A_max=32, sync=False, car_A=0), "b": dict(setpoint_A=0, A_max=32)},
                A_max=32, interval_s=5, deadband_A=0)
    site.start()
    site.read()
    gone = site.chargers["gone"]
    assert gone.writes == [16] and gone.status.setpoint_A == 10     # asked for 16 A, no answer yet
    gone.set(online=False, vehicle="unknown", actual_A=(None, None, None))
    site.run(20)
    assert site.chargers["b"].status.setpoint_A == 16               # 32 - 16, not 32 - 10


def test_a_write_stuck_at_an_offline_charger_does_not_hold_back_increases_elsewhere():
    site = Site({"gone": dict(setpoint_A=16, A_max=32, sync=False, car_A=0), "b": dict(wants=False, A_max=32)},
                A_max=48, interval_s=5, deadband_A=0)
    site.start()
    site.read()
    gone, b = site.chargers["gone"], site.chargers["b"]
    assert gone.writes == [32]                      # never answered
    gone.set(online=False, vehicle="unknown", actual_A=(None, None, None))
    b.wants = True
    b.set(vehicle="plugged")
    assert b.writes == [16]                         # 48 - the 32 A gone may have accepted


def test_no_increases_while_etcd_is_lost_but_decreases_still_happen():
    site = Site({"a": dict(setpoint_A=8)}, A_max=32, interval_s=5)
    site.store.available = False
    control = site.start()                          # the first probe fails: hold
    site.run(10)
    assert control.store_lost and control.last.mode == "hold"
    assert site.chargers["a"].writes == []          # 8 A would have been raised to 16 A
    assert site.state.values["allocations/a/reason"] == "held at 8 A: store lost, no increases"
    site.read(base=(28, 0, 0))                      # overload: decreases still go out
    assert site.chargers["a"].writes == [0]
    site.store.available = True
    site.run(5)
    assert control.last.mode == "normal" and not control.store_lost


def test_a_store_probe_that_never_answers_counts_as_lost():
    site = Site({"a": dict(setpoint_A=8)}, A_max=32, interval_s=5)
    site.store.range = lambda key, prefix=False: defer.Deferred()
    control = site.start()
    site.read()
    site.clock.advance(4.9)
    assert not control.store_lost                   # the first probe is still within its deadline (interval_s)
    site.clock.advance(0.1)
    assert control.store_lost and control.last.mode == "hold"


def test_a_store_event_on_the_bus_switches_hold_on_and_off():
    site = Site({"a": dict(setpoint_A=8)}, A_max=32, interval_s=60)
    control = site.start()
    site.read()
    site.bus.publish(("store", "state"), "lost")
    assert control.last.mode == "hold"
    site.bus.publish(("store", "state"), "ok")
    assert control.last.mode == "normal" and site.chargers["a"].writes == [16]


def test_star_follows_a_charger_started_later_and_forgets_a_stopped_one():
    site = Site({"a": dict(setpoint_A=16)}, A_max=32, interval_s=60, deadband_A=0)
    control = site.start()
    site.read()
    late = FakeCharger(site.clock, A_max=32)
    site.chargers["late"] = late
    site.bus.publish(("instance", "charger", "late"), ("started", late))
    assert late.writes == [16] and "allocations/late/A" in site.state.values
    site.bus.publish(("instance", "charger", "late"), ("stopped", late))
    assert "late" not in control.chargers and "allocations/late/A" not in site.state.values


def test_a_listed_set_of_chargers_ignores_others():
    site = Site({"a": dict(setpoint_A=16), "b": dict(setpoint_A=16)}, A_max=32, chargers=["a"])
    control = site.start()
    site.bus.publish(("instance", "charger", "c"), ("started", FakeCharger(site.clock)))
    assert set(control.chargers) == {"a"}


def test_allocations_headroom_and_mode_are_in_state_with_reasons_a_person_can_read():
    site = Site({"a": dict(setpoint_A=0, priority=1), "b": dict(setpoint_A=0, priority=0),
                 "idle": dict(wants=False)}, A_max=16, interval_s=60)
    site.start()
    site.read(base=(2, 2, 2))
    v = site.state.values
    # 14 A left: b keeps its 6 A minimum, a (higher priority) the rest but the 1 A deadband.
    assert (v["allocations/a/A"], v["allocations/b/A"], v["allocations/idle/A"]) == (7, 6, 0)
    assert v["allocations/a/reason"] == "limited by phase L1 headroom, keeping 1 A spare"
    assert v["allocations/idle/reason"] == "no car"
    assert v["mode"] == "normal" and v["headroom/L1"] == 1 and v["base/L1"] == 2


def test_a_new_car_after_an_unplug_is_not_held_by_the_minimum_off_time():
    site = Site({"a": dict(setpoint_A=16)}, A_max=32, interval_s=5, min_off_s=300)
    site.start()
    site.read(base=(30, 0, 0))                      # no room: paused, min_off_s starts
    a = site.chargers["a"]
    assert a.status.setpoint_A == 0
    site.clock.advance(5)
    site.read()
    assert a.status.setpoint_A == 0                 # within min_off_s
    a.set(vehicle="none")
    a.set(vehicle="plugged")                        # another car
    assert a.status.setpoint_A == 16


def test_a_phase_the_meter_does_not_measure_counts_as_full():
    site = Site({"three": dict(), "one": dict(phases=1, phase_map=("L1",))}, A_max=32, interval_s=60)
    site.start()
    site.meter.read([2.0, None, None])
    assert site.setpoints() == {"three": 0, "one": 16}


def test_a_charger_with_settings_control_cannot_use_is_paused():
    site = Site({"bad": dict(setpoint_A=16, phases=3, phase_map=("L1",))}, A_max=32)
    control = site.start()
    site.read()
    assert site.setpoints() == {"bad": 0} and control.last["bad"].reason.startswith("paused: bad: phase_map")


def test_stopping_the_control_leaves_setpoints_and_stops_listening():
    site = Site({"a": dict(setpoint_A=10)}, A_max=32, interval_s=5)
    control = site.start()
    site.read()
    control.stopService()
    n = control.recomputes
    site.read(base=(40, 40, 40))
    site.clock.advance(60)
    assert control.recomputes == n and site.setpoints() == {"a": 16}


def test_a_meter_that_offers_no_readings_is_refused_naming_the_leaf():
    site = Site()
    site.meter = object()
    with pytest.raises(ConfigError, match=r"^config/meter: "):
        site.start()


@pytest.mark.parametrize("settings, leaf", [
    (dict(A_max=[32, 32]), "A_max"), (dict(A_max={"L1": 32}), "A_max"), (dict(A_max=-1), "A_max"),
    (dict(A_max=32, failsafe_A=3), "failsafe_A"), (dict(A_max=32, chargers="s1"), "chargers"),
])
def test_config_errors_name_the_leaf(settings, leaf):
    with pytest.raises(ConfigError, match=rf"^config/{leaf}: "):
        BuiltinConfig(meter="m1", **settings)


def test_schema_and_config_agree_and_validated_defaults_build_a_config():
    catalog = Catalog()
    schema = catalog.type_schema("control", "builtin")
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(BuiltinConfig)}
    doc = catalog.validate("control", "builtin", {"meter": "m1", "A_max": {"L1": 32, "L2": 32, "L3": 25}})
    config = BuiltinControl.build_config(doc)
    assert config.chargers == "*" and config.interval_s == 5 and config.stale_s == 10 and config.failsafe_A == 0
    assert config.limits.A_max["L3"] == 25
    assert catalog.references("control", "builtin") == {"meter": "meter", "chargers": "charger"}


def test_schema_refuses_a_failsafe_current_below_the_iec_minimum():
    with pytest.raises(ConfigError, match=r"^config/failsafe_A"):
        Catalog().validate("control", "builtin", {"meter": "m1", "A_max": 32, "failsafe_A": 3})


def test_a_leaf_per_phase_decodes_as_numbers():
    from evc.tree import InstanceLeaves
    leaves = InstanceLeaves("control", "master", "builtin", {("meter",): "m1", ("A_max", "L1"): "32",
                                                             ("A_max", "L2"): "32", ("A_max", "L3"): "25",
                                                             ("chargers",): "*"})
    schema = Catalog().type_schema("control", "builtin")
    doc = leaves.document(schema)
    assert doc == {"meter": "m1", "A_max": {"L1": 32, "L2": 32, "L3": 25}, "chargers": "*"}
    assert json.dumps(Catalog().validate("control", "builtin", doc))


# --- under the real supervisor: x-ref wiring, "*" following the site's chargers, state in the store -------------

@implementer(IMeter)
class SupervisedMeter(Instance):
    Config = dataclasses.make_dataclass("MeterConfig", [("bus_addr", int, 1)], frozen=True)

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.reading = Reading()
        self._subs = []

    def subscribe(self, callback):
        self._subs.append(callback)
        return lambda: self._subs.remove(callback)

    def read(self, A):
        self.reading = Reading(A=tuple(A), updated=self.ctx.clock.seconds(), stale=False)
        for cb in list(self._subs):
            cb(self.reading)


@implementer(ICharger)
class SupervisedCharger(Instance):
    Config = dataclasses.make_dataclass("ChargerConfig", [("A_max", float, 16), ("priority", int, 0)], frozen=True)

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.status = ChargerStatus(vehicle="plugged", online=True, actual_A=(0.0, 0.0, 0.0))
        self.writes = []

    def wants_current(self):
        return True

    def subscribe(self, callback):
        return lambda: None

    def apply(self, current_A):
        self.writes.append(current_A)
        self.status = dataclasses.replace(self.status, setpoint_A=current_A, updated=self.ctx.clock.seconds())
        return defer.succeed(current_A)


@pytest.fixture
def supervised(tmp_path):
    from evc.registry import Registry
    from evc.schema import schema_dir
    from evc.state import StateWriter
    from evc.supervisor import Supervisor

    regs = {k: Registry(k) for k in ("meter", "charger", "control")}
    regs["meter"].register("fakemeter")(SupervisedMeter)
    regs["charger"].register("fakecharger")(SupervisedCharger)
    regs["control"]._types["builtin"] = BuiltinControl     # the real one, without re-registering it
    described = {"type": "object", "additionalProperties": False, "description": "a test type"}
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd" / "root.json").write_text("{}")
    for kind, type_name, props in (("meter", "fakemeter", {"bus_addr": {"type": "integer", "description": "a"}}),
                                   ("charger", "fakecharger", {"A_max": {"type": "number", "description": "a"}})):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / f"{type_name}.json").write_text(json.dumps({**described, "properties": props}))
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "builtin.json").write_text((schema_dir() / "control" / "builtin.json").read_text())

    clock = task.Clock()
    clock.advance(1000)
    store = MemoryStore(clock=clock)
    state = StateWriter(store, ROOT, clock, tick_s=0.5)
    sup = Supervisor(store, ROOT, state, clock, catalog=Catalog(registries=regs, directory=tmp_path))
    put = lambda key, value: store.put(f"{ROOT}/{key}", value.encode())    # noqa: E731
    put("meter/grid/type", "fakemeter")
    put("charger/a/type", "fakecharger")
    put("control/master/type", "builtin")
    put("control/master/config/meter", "grid")
    put("control/master/config/A_max", "32")
    put("control/master/config/deadband_A", "0")
    state.startService()
    sup.startService()
    clock.advance(0)
    yield sup, store, clock, put
    sup.stopService()
    state.stopService()


def test_under_the_supervisor_star_follows_a_charger_added_to_the_site_later(supervised):
    sup, store, clock, put = supervised
    control = sup.instances[("control", "master")].service
    sup.instances[("meter", "grid")].service.read([0.0, 0.0, 0.0])
    assert sup.instances[("charger", "a")].service.writes == [16]
    put("charger/b/type", "fakecharger")
    put("charger/b/config/A_max", "32")
    clock.advance(0)
    assert sup.instances[("control", "master")].service is control      # followed live, not restarted
    assert sup.instances[("charger", "b")].service.writes == []          # a's car is still ramping up
    for _ in range(16):     # this fake charger's current has no time of its own: ramp_s + stale_s
        clock.advance(1)
        sup.instances[("meter", "grid")].service.read([0.0, 0.0, 0.0])
    assert sup.instances[("charger", "b")].service.writes == [16]
    clock.advance(1)                                                     # a state flush
    kv = store.range(f"{ROOT}/control/master/state/allocations/b/A").result.kvs
    assert kv and kv[0].value == b"16"


def test_under_the_supervisor_a_meter_that_is_not_configured_keeps_a_new_control_from_starting(supervised):
    sup, store, clock, put = supervised
    put("control/other/type", "builtin")
    put("control/other/config/A_max", "32")
    put("control/other/config/meter", "nosuch")
    clock.advance(0)
    clock.advance(1)
    assert ("control", "other") not in sup.instances and ("control", "master") in sup.instances
    err = store.range(f"{ROOT}/control/other/state/error").result.kvs
    assert err and err[0].value.decode() == "config/meter: meter 'nosuch' is not configured"


def test_a_charger_metered_by_the_grid_meter_has_no_draw_of_its_own():
    """Its meter's current is every load on the phases: none of it may be taken for the car, or the other loads
    would vanish from the base load and control would over-allocate."""
    site = Site({"a": dict(setpoint_A=16, meter="m1")}, A_max=32, interval_s=60)
    control = site.start()
    site.read(base=(10, 10, 10))                    # the grid meter: 10 A other load + 16 A car
    assert control.last.base_A.L1 == 26             # all of it counts as other load
    assert max(site.chargers["a"].writes, default=16) <= 16


def test_a_draw_read_before_a_decrease_landed_does_not_shrink_the_base_load():
    """The charger's own meter lags the grid meter: after a lowering to 11 A it may still say 20 A. A car cannot
    draw more than its charger offers, so the base load is taken as at least grid - 11."""
    site = Site({"a": dict(setpoint_A=20, A_max=32)}, A_max=25, interval_s=60, min_on_s=0, min_off_s=0)
    control = site.start()
    site.read(base=(4, 4, 4))
    c = site.chargers["a"]
    site.read(base=(14, 12, 13))                    # a heat pump starts: control lowers a
    assert c.status.setpoint_A == 11
    c.set(actual_A=(20.0, 20.0, 20.0))              # ... but its own meter has not caught up yet
    site.read(base=(14, 12, 13))                    # the grid sees 14 + 11 on L1
    assert control.last.base_A.L1 >= 14
    assert c.writes[-1] <= 11                       # no raise on the strength of the stale 20 A


def test_a_recompute_between_readings_caps_draws_at_the_setpoints_of_the_readings_moment():
    """After a decrease, a recompute before the next grid reading must not cap the old draws at the new, lower
    setpoints: the reading still holds the old draws, and the other loads would look too large (both cars paused)."""
    site = Site({"a": dict(setpoint_A=14), "b": dict(setpoint_A=14)}, A_max=32, interval_s=60,
                min_on_s=0, min_off_s=0)
    control = site.start()
    site.read(base=(4, 4, 4))
    site.read(base=(14, 12, 13))                    # 42 A on L1: both lowered to 9 A
    assert site.setpoints() == {"a": 9, "b": 9}
    before = control.recomputes
    site.bus.publish(("session", "a"), "charging")   # an event: a recompute with no new grid reading
    assert control.recomputes > before
    assert control.last.base_A.L1 <= 14 + 1e-9      # the reading's draws were 14 + 14: base is 14, not more
    assert site.setpoints() == {"a": 9, "b": 9}     # nobody paused
