"""Meters against the simulator over real loopback TCP (Modbus TCP gateway), on the running reactor."""
import pytest
import pytest_twisted
from twisted.internet import defer, task

from evc.meter.sdm630 import Sdm630
from evc.sim.modbus import listen_tcp
from evc.sim.sdm import SimSdm630

from meter_helpers import make_ctx


async def until(reactor, condition, timeout_s=5.0, what="condition"):
    """Poll `condition` until it holds, failing after `timeout_s` (never a fixed sleep)."""
    deadline = reactor.seconds() + timeout_s
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def reactor():
    from twisted.internet import reactor
    return reactor


async def serve(reactor, *sims):
    return listen_tcp(reactor, sims)


def tcp_meter(reactor, port, **config):
    ctx = make_ctx(clock=reactor, reactor=reactor)
    cfg = dict(bus=f"127.0.0.1:{port.getHost().port}", bus_addr=1, interval_s=0.1, timeout_ms=100, gap_ms=0)
    cfg.update(config)
    meter = Sdm630(ctx, Sdm630.Config(**cfg))
    meter.startService()
    return meter, ctx


@pytest_twisted.ensureDeferred
async def test_values_arrive_over_tcp(reactor):
    sim = SimSdm630(1)
    sim.set(V=(230, 231, 232), A=(6, 7, 8), energy_Wh=1_000_000)
    port = await serve(reactor, sim)
    meter, ctx = tcp_meter(reactor, port)
    try:
        await until(reactor, lambda: not meter.reading.stale, what="a reading")
        assert meter.reading.A == pytest.approx((6, 7, 8))
        assert ctx.state.values["energy_Wh"] == 1_000_000
        sim.set(A=(10, 10, 10))
        await until(reactor, lambda: ctx.state.values["A/L1"] == 10, what="the new current in state")
    finally:
        await meter.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_silent_meter_goes_stale_and_recovers_over_tcp(reactor):
    sim = SimSdm630(1)
    port = await serve(reactor, sim)
    meter, ctx = tcp_meter(reactor, port, stale_s=0.4)
    try:
        await until(reactor, lambda: not meter.reading.stale, what="a reading")
        sim.set_fault("silent")
        await until(reactor, lambda: meter.reading.stale, what="stale")
        assert ctx.state.values["stale"] is True and ctx.state.values["errors/timeouts"] >= 2
        sim.set_fault(None)
        await until(reactor, lambda: not meter.reading.stale, timeout_s=10, what="recovery after backoff")
        assert ctx.state.values["stale"] is False
    finally:
        await meter.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_garbage_and_exceptions_are_counted_over_tcp(reactor):
    sim = SimSdm630(1)
    port = await serve(reactor, sim)
    meter, ctx = tcp_meter(reactor, port)
    try:
        await until(reactor, lambda: not meter.reading.stale, what="a reading")
        sim.set_fault("exception", 4)
        await until(reactor, lambda: ctx.state.values.get("errors/exceptions", 0) >= 2, what="exceptions")
        sim.set_fault("garbage")
        await until(reactor, lambda: ctx.state.values.get("errors/bad_frames", 0) >= 2, what="bad frames")
        sim.set_fault(None)
        n = meter.bus.counters(1)["ok"]
        await until(reactor, lambda: meter.bus.counters(1)["ok"] > n, timeout_s=10, what="good reads again")
    finally:
        await meter.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_meter_reconnects_when_the_gateway_drops_the_connection(reactor):
    sim = SimSdm630(1)
    port = await serve(reactor, sim)
    meter, ctx = tcp_meter(reactor, port)
    try:
        await until(reactor, lambda: not meter.reading.stale, what="a reading")
        port.factory.drop_connections()
        await until(reactor, lambda: not port.factory.connections, what="the drop")
        await until(reactor, lambda: port.factory.connections, what="a reconnection")
        n = meter.bus.counters(1)["ok"]
        await until(reactor, lambda: meter.bus.counters(1)["ok"] > n, what="reads after reconnecting")
    finally:
        await meter.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_meter_waits_for_a_gateway_that_is_not_there_yet(reactor):
    port = await serve(reactor)
    number = port.getHost().port
    await port.stopListening()
    ctx = make_ctx(clock=reactor, reactor=reactor)
    meter = Sdm630(ctx, Sdm630.Config(bus=f"127.0.0.1:{number}", interval_s=0.1, timeout_ms=100))
    meter.startService()
    port = None
    try:
        await until(reactor, lambda: "cannot connect" in meter.bus.down_reason, what="a refused connection")
        assert meter.running and meter.reading.stale
        port = listen_tcp(reactor, [SimSdm630(1)], port=number)
        await until(reactor, lambda: not meter.reading.stale, timeout_s=10, what="a reading once it listens")
    finally:
        await meter.stopService()
        if port is not None:
            await port.stopListening()
