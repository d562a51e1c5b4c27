"""Eastron meter types on an in-memory Modbus link to the simulators, with a task.Clock."""
import pytest
from twisted.internet import task
from zope.interface import implementer

from evc.bus.client import IModbusBus
from evc.conn import IBusAddresses
from evc.errors import ConfigError
from evc.meter.base import IMeter, Reading
from evc.meter.sdm120 import Sdm120
from evc.meter.sdm630 import Sdm630
from evc.meter.sdm72 import Sdm72
from evc.sim.sdm import SimSdm120, SimSdm630, SimSdm72

from meter_helpers import RecordingDevice, make_ctx, memory_bus


def start_meter(cls, sim, spread=False, name="m1", **config):
    clock = task.Clock()
    dev = RecordingDevice(sim, clock)
    bus = memory_bus(clock, [dev], timeout_s=0.5)
    ctx = make_ctx(clock, resolve=lambda kind, ref: bus, name=name)
    config.setdefault("conn", "c1")
    config.setdefault("bus_addr", sim.unit)
    meter = cls(ctx, cls.Config(**config))
    meter.startService()
    if not spread:
        meter._spread_s = 0.0   # these tests pin the cadence; test_meters_started_together_do_not_poll_together covers it
    return meter, ctx, clock, dev, bus


def test_sdm630_values_arrive_in_one_block_read():
    sim = SimSdm630(1)
    sim.set(V=(230.1, 231, 229.5), A=(16, 15.5, 0), frequency_Hz=50.02, energy_Wh=12_345_670)
    meter, ctx, clock, dev, _ = start_meter(Sdm630, sim)
    clock.advance(0)
    r = meter.reading
    assert IMeter.providedBy(meter)
    assert r.V == pytest.approx((230.1, 231, 229.5)) and r.A == pytest.approx((16, 15.5, 0))
    assert r.W == pytest.approx((230.1 * 16, 231 * 15.5, 0), abs=0.01)
    assert r.W_total == pytest.approx(230.1 * 16 + 231 * 15.5, abs=0.1)
    assert r.energy_Wh == pytest.approx(12_345_670, abs=1)
    assert r.frequency_Hz == pytest.approx(50.02)
    assert r.updated == 0 and not r.stale
    assert dev.requests == [(0, 76)]
    s = ctx.state.values
    assert (s["V/L1"], s["A/L2"], s["W/L1"], s["W_total"]) == (230.1, 15.5, 3682, 7262)
    assert s["energy_Wh"] == 12_345_670 and s["frequency_Hz"] == 50.02 and s["stale"] is False
    assert (s["errors/timeouts"], s["errors/exceptions"], s["errors/bad_frames"]) == (0, 0, 0)


def test_meters_started_together_do_not_poll_together():
    """After the first, immediate poll each meter shifts its cadence once by a stable share of its interval."""
    times = []
    for unit in (1, 2, 3, 4):
        meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(unit), spread=True, name=f"m{unit}", interval_s=2.0)
        clock.pump([0] + [0.01] * 1000)
        assert dev.times[0] == 0
        gaps = [round(b - a, 6) for a, b in zip(dev.times[1:], dev.times[2:])]
        assert gaps and all(abs(g - 2.0) <= 0.011 for g in gaps)   # the cadence itself is kept (clock steps 0.01 s)
        assert 2.0 <= dev.times[1] < 4.0
        times.append(round(dev.times[1] % 2.0, 3))
    assert len(set(times)) == 4                              # four meters, four different moments


def test_polls_every_interval():
    meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(1), interval_s=2.0)
    clock.pump([0] + [0.5] * 20)
    assert dev.times == [0, 2, 4, 6, 8, 10]


def test_block_refused_falls_back_to_split_reads_and_remembers():
    meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(1, strict=True), gap_ms=100)
    clock.pump([0] + [0.05] * 40)
    assert meter.plan.name == "split"
    split = [(0, 18), (0x34, 2), (0x46, 4)]
    assert dev.requests[0] == (0, 76)
    rest = dev.requests[1:]
    assert len(rest) >= 6 and rest == (split * len(rest))[:len(rest)]
    assert not meter.reading.stale and meter.reading.V[0] == 230
    # the refused block counts as one exception; nothing else failed
    assert ctx.state.values["errors/exceptions"] == 1


def test_requests_to_one_meter_keep_the_minimum_gap():
    meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(1, strict=True), gap_ms=150, interval_s=0.1)
    clock.pump([0] + [0.01] * 300)
    gaps = [b - a for a, b in zip(dev.times, dev.times[1:])]
    assert len(gaps) > 10 and min(gaps) >= 0.15 - 1e-9


def test_sdm72_v1_reads_only_power_and_energy():
    sim = SimSdm72(1, version=1)
    sim.set(W=(1000, 2000, 500), energy_Wh=42_000)
    meter, ctx, clock, dev, _ = start_meter(Sdm72, sim)
    clock.pump([0] + [0.1] * 20)
    assert meter.plan.name.startswith("v1")
    r = meter.reading
    assert r.V == (None, None, None) and r.A == (None, None, None) and r.W == (None, None, None)
    assert r.W_total == 3500 and r.energy_Wh == 42_000 and r.frequency_Hz is None
    assert "V/L1" not in ctx.state.values and ctx.state.values["W_total"] == 3500
    assert dev.requests[-2:] == [(0x34, 2), (0x48, 2)]


def test_sdm72_v2_reads_like_the_sdm630():
    sim = SimSdm72(1, version=2)
    sim.set(V=230, A=(1, 2, 3))
    meter, ctx, clock, dev, _ = start_meter(Sdm72, sim)
    clock.advance(0)
    assert meter.reading.A == pytest.approx((1, 2, 3)) and dev.requests == [(0, 76)]


def test_sdm120_is_single_phase_and_its_total_is_l1():
    sim = SimSdm120(4)
    sim.set(V=229, A=10, energy_Wh=1000)
    meter, ctx, clock, dev, _ = start_meter(Sdm120, sim)
    clock.advance(0)
    r = meter.reading
    assert r.V == (229, None, None) and r.A == (10, None, None) and r.W == (2290, None, None)
    assert r.W_total == 2290 and r.energy_Wh == 1000
    assert dev.requests == [(0, 74)]
    assert "V/L2" not in ctx.state.values


def test_deadbands_keep_noise_out_of_the_state():
    sim = SimSdm630(1)
    sim.set(V=230, A=10)
    meter, ctx, clock, dev, _ = start_meter(Sdm630, sim)
    clock.advance(0)
    for v in (230.2, 229.8, 230.4, 230.1):
        sim.set(V=v)
        clock.advance(1)
    assert ctx.state.count("V/L1") == 1
    sim.set(V=231)
    clock.advance(1)
    assert ctx.state.count("V/L1") == 2 and ctx.state.values["V/L1"] == 231
    # updated is refreshed, but not on every poll
    assert 1 <= ctx.state.count("updated") < 5


def test_subscribers_get_every_good_poll_and_can_unsubscribe():
    meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(1))
    got = []
    unsubscribe = meter.subscribe(got.append)
    clock.pump([0, 1, 1])
    assert len(got) == 3 and all(isinstance(r, Reading) for r in got)
    unsubscribe()
    clock.advance(1)
    assert len(got) == 3


def test_a_failing_subscriber_does_not_stop_polling():
    meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(1))
    meter.subscribe(lambda r: 1 / 0)
    clock.pump([0, 1, 1])
    assert len(dev.requests) == 3


@pytest.mark.parametrize("fault,counter", [("silent", "timeouts"), ("exception", "exceptions"),
                                           ("garbage", "bad_frames")])
def test_faults_are_counted_and_the_meter_recovers(fault, counter):
    sim = SimSdm630(1)
    meter, ctx, clock, dev, bus = start_meter(Sdm630, sim, interval_s=1.0, stale_s=5.0)
    seen = []
    meter.subscribe(seen.append)
    clock.advance(0)
    assert not meter.reading.stale
    sim.set_fault(fault)
    polls_before = len(dev.requests)
    clock.pump([0.1] * 200)                        # 20 s of faults
    assert ctx.state.values[f"errors/{counter}"] > 0
    assert meter.reading.stale and ctx.state.values["stale"] is True
    assert [r.stale for r in seen] == [False, True]
    if fault != "exception":
        # the dead unit is in backoff: far fewer requests than 20 polls × 2 attempts
        assert len(dev.requests) - polls_before < 20
    sim.set_fault(None)
    clock.pump([0.1] * 400)
    assert not meter.reading.stale and ctx.state.values["stale"] is False
    assert seen[-1].stale is False
    assert bus.counters(1)["backoff_s"] == 0


def test_stale_after_stale_s_exactly():
    sim = SimSdm630(1)
    meter, ctx, clock, dev, _ = start_meter(Sdm630, sim, interval_s=1.0, stale_s=3.0)
    clock.advance(0)
    sim.set_fault("silent")
    clock.pump([0.1] * 29)
    assert not meter.reading.stale
    clock.pump([0.1] * 2)
    assert meter.reading.stale


def test_not_stale_while_good_readings_keep_coming():
    meter, ctx, clock, dev, _ = start_meter(Sdm630, SimSdm630(1), interval_s=1.0, stale_s=1.5)
    clock.pump([0] + [0.25] * 40)
    assert not meter.reading.stale and ctx.state.count("stale") == 2   # True at start, False once


def test_stale_until_the_first_good_reading():
    sim = SimSdm630(1)
    sim.set_fault("silent")
    meter, ctx, clock, dev, _ = start_meter(Sdm630, sim)
    clock.advance(0)
    assert meter.reading.stale and meter.reading.V == (None, None, None)
    assert ctx.state.values["stale"] is True


def test_stop_ends_polling_and_cancels_the_request_in_flight():
    sim = SimSdm630(1)
    sim.set_fault("silent")
    meter, ctx, clock, dev, bus = start_meter(Sdm630, sim)
    clock.advance(0)
    assert len(dev.requests) == 1
    meter.stopService()
    sim.set_fault(None)
    clock.pump([1] * 30)
    assert len(dev.requests) == 1          # a cancelled request is not retried
    assert not clock.getDelayedCalls()


def test_conn_that_is_not_a_modbus_bus_is_a_config_error():
    ctx = make_ctx(resolve=lambda kind, name: object())
    meter = Sdm630(ctx, Sdm630.Config(conn="s123", bus_addr=1))
    with pytest.raises(ConfigError, match="config/conn"):
        meter.startService()


def test_conn_resolves_to_a_bus():
    clock = task.Clock()
    bus = memory_bus(clock, [SimSdm630(2)])
    asked = []
    ctx = make_ctx(clock, resolve=lambda kind, name: asked.append((kind, name)) or bus)
    meter = Sdm630(ctx, Sdm630.Config(conn="s123", bus_addr=2))
    meter.startService()
    clock.advance(0)
    assert asked == [("conn", "s123")] and IModbusBus.providedBy(meter.bus)
    assert not meter.reading.stale


@implementer(IModbusBus, IBusAddresses)
class ClaimingBus:
    """A Modbus bus that keeps address claims the way conn/rs485 does."""

    def __init__(self, bus, name="s123"):
        self._bus, self.name, self.claims = bus, name, {}

    def __getattr__(self, attr):
        return getattr(self._bus, attr)

    def claim(self, unit, user_key, leaf="config/conn_port"):
        holder = self.claims.get(unit)
        if holder not in (None, user_key):
            raise ConfigError(f"{leaf}: address {unit} on conn {self.name} is already used by {holder}")
        self.claims[unit] = user_key
        return lambda: self.release(unit, user_key)

    def release(self, unit, user_key):
        if self.claims.get(unit) == user_key:
            del self.claims[unit]


def test_a_meter_on_a_conn_claims_its_address_and_gives_it_back_when_it_stops():
    clock = task.Clock()
    bus = ClaimingBus(memory_bus(clock, [SimSdm630(2)]))
    meter = Sdm630(make_ctx(clock, resolve=lambda kind, name: bus), Sdm630.Config(conn="s123", bus_addr=2))
    meter.startService()
    clock.advance(0)
    assert bus.claims == {2: "meter/m1"} and not meter.reading.stale
    meter.stopService()
    assert bus.claims == {}


def test_a_meter_at_an_address_another_device_holds_is_refused_naming_bus_addr():
    clock = task.Clock()
    bus = ClaimingBus(memory_bus(clock, [SimSdm630(1)]))
    bus.claims[1] = "charger/s1"
    meter = Sdm630(make_ctx(clock, resolve=lambda kind, name: bus), Sdm630.Config(conn="s123", bus_addr=1))
    with pytest.raises(ConfigError, match="^config/bus_addr: address 1 on conn s123 is already used by charger/s1$"):
        meter.startService()
    assert not meter.running and bus.claims == {1: "charger/s1"} and not clock.getDelayedCalls()


@pytest.mark.parametrize("config,leaf", [
    ({"bus_addr": 1}, "config/bus"),
    ({"bus": "h:502", "conn": "c", "bus_addr": 1}, "config/bus"),
    ({"bus": "h:502", "bus_addr": 0}, "config/bus_addr"),
    ({"bus": "h:x", "bus_addr": 1}, "config/bus"),
])
def test_config_errors_name_the_leaf(config, leaf):
    with pytest.raises(ConfigError, match=leaf):
        Sdm630.Config(**config)


def test_stale_s_defaults_to_five_intervals():
    assert Sdm630.Config(bus="h", interval_s=2.0).effective_stale_s == 10.0
    assert Sdm630.Config(bus="h", interval_s=2.0, stale_s=3).effective_stale_s == 3
