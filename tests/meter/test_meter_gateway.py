"""Eight meters behind one Modbus TCP gateway that takes ONE connection: they share it, as a real site needs.

Real loopback TCP to evc.sim.modbus.SimGateway (one serial line with its wire timing behind one TCP port), on
the running reactor; waits are conditions with deadlines.
"""
import pytest
import pytest_twisted
from twisted.internet import task

from evc.bus.gateway import GATEWAYS
from evc.meter.sdm630 import Sdm630
from evc.sim.modbus import SimGateway
from evc.sim.sdm import SimSdm630

from meter_helpers import make_ctx

UNITS = range(1, 9)
GAP_MS = 30


async def until(reactor, condition, timeout_s=5.0, what="condition"):
    deadline = reactor.seconds() + timeout_s
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def reactor():
    from twisted.internet import reactor
    return reactor


class Site:
    """A SimGateway with an SDM630 at each unit 1..8 and one meter instance per unit, all on its host:port."""

    def __init__(self, reactor, **gateway_options):
        self.reactor = reactor
        self.sims = {u: SimSdm630(u) for u in UNITS}
        for u, sim in self.sims.items():
            sim.set(A=(u, u + 0.5, u + 0.25))
        options = dict(baud=115200, target_timeout_s=0.05)
        options.update(gateway_options)
        self.gateway = SimGateway(reactor, self.sims.values(), **options)
        self.port = self.gateway.listen(reactor)
        self.address = f"127.0.0.1:{self.port.getHost().port}"
        self.meters, self.ctxs, self.readings = {}, {}, {u: [] for u in UNITS}

    def start(self, unit, **config):
        cfg = dict(bus=self.address, bus_addr=unit, interval_s=0.5, timeout_ms=150, gap_ms=GAP_MS)
        cfg.update(config)
        ctx = make_ctx(clock=self.reactor, reactor=self.reactor, name=f"m{unit}")
        meter = Sdm630(ctx, Sdm630.Config(**cfg))
        meter.subscribe(lambda r, u=unit: self.readings[u].append(r) if not r.stale else None)
        meter.startService()
        self.meters[unit], self.ctxs[unit] = meter, ctx
        return meter

    def start_all(self):
        for u in UNITS:
            self.start(u)

    def good(self, unit):
        return len(self.readings[unit])

    async def close(self):
        for meter in self.meters.values():
            if meter.running:
                await meter.stopService()
        await self.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_eight_meters_share_one_connection_to_a_one_connection_gateway(reactor):
    """All eight read; one TCP connection ever; never two requests on the line; the bus gap is kept."""
    site = Site(reactor)
    try:
        site.start_all()
        await until(reactor, lambda: all(site.good(u) >= 3 for u in UNITS), what="three readings from each meter")
        for u in UNITS:
            assert site.meters[u].reading.A == pytest.approx((u, u + 0.5, u + 0.25))
            assert site.ctxs[u].state.values["stale"] is False
        stats = site.gateway.stats
        assert stats["connections"] == 1 and stats["max_open"] == 1 and stats["refused"] == 0
        assert stats["overlaps"] == 0
        assert site.gateway.min_gap_s >= GAP_MS / 1000 - 0.002
        gateway = GATEWAYS.get(reactor, site.address)
        assert gateway is not None and sorted(gateway.users) == [f"meter/m{u}" for u in UNITS]
        assert sorted(gateway.claims) == list(UNITS)
    finally:
        await site.close()
    assert GATEWAYS.get(reactor, site.address) is None
    await until(reactor, lambda: not site.gateway.connections, what="the connection to close with the last meter")


@pytest.mark.parametrize("answer_timeouts", [False, True], ids=["gateway-silent", "gateway-answers-0B"])
@pytest_twisted.ensureDeferred
async def test_a_dead_unit_backs_off_without_stalling_the_others(reactor, answer_timeouts):
    """Unit 5 never answers (the gateway stays quiet, or answers exception 0B): it is counted and backs off,
    and the seven others keep their pace."""
    site = Site(reactor, answer_timeouts=answer_timeouts)
    site.sims[5].set_fault("silent")
    try:
        site.start_all()
        bus = site.meters[1].bus
        await until(reactor, lambda: bus.counters(5)["failed_fast"] >= 1, timeout_s=8,
                    what="unit 5 to be refused fast while it backs off")
        start = {u: site.good(u) for u in UNITS}
        await until(reactor, lambda: all(site.good(u) >= start[u] + 4 for u in UNITS if u != 5), timeout_s=5,
                    what="four more readings from each live meter")
        for u in UNITS:
            if u != 5:
                # interval 0.5 s; the dead unit's two 150 ms timeouts per try may delay a round, never stop it
                times = [r.updated for r in site.readings[u]]
                assert max(b - a for a, b in zip(times, times[1:])) < 1.5, f"meter m{u} stalled"
        dead = bus.counters(5)
        assert dead["backoff_s"] >= 1.0 and dead["ok"] == 0
        errors = site.ctxs[5].state.values
        counted = errors["errors/exceptions"] if answer_timeouts else errors["errors/timeouts"]
        assert counted >= 2
        assert site.meters[5].reading.stale
        assert site.gateway.stats["overlaps"] == 0 and site.gateway.stats["max_open"] == 1
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_meters_follow_the_shared_connection_when_the_gateway_drops_it(reactor):
    """The gateway closes the connection: one reconnection serves all eight again."""
    site = Site(reactor)
    try:
        site.start_all()
        await until(reactor, lambda: all(site.good(u) >= 1 for u in UNITS), what="a reading from each meter")
        site.gateway.drop_connections()
        await until(reactor, lambda: site.gateway.stats["connections"] == 2, timeout_s=5, what="a reconnection")
        start = {u: site.good(u) for u in UNITS}
        await until(reactor, lambda: all(site.good(u) >= start[u] + 2 for u in UNITS), what="readings again")
        assert site.gateway.stats["max_open"] == 1 and site.gateway.stats["refused"] == 0
        assert site.gateway.stats["overlaps"] == 0
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_restarted_meter_rejoins_the_open_connection_and_counts_from_zero(reactor):
    """A config change restarts one meter: the others keep the connection; its errors/* start again at 0."""
    site = Site(reactor)
    site.sims[3].set_fault("exception", 4)
    try:
        site.start_all()
        await until(reactor, lambda: site.ctxs[3].state.values.get("errors/exceptions", 0) >= 2,
                    what="exceptions from unit 3")
        site.sims[3].set_fault(None)
        await site.meters[3].stopService()
        meter = site.start(3, interval_s=0.4)
        await until(reactor, lambda: not meter.reading.stale, what="the restarted meter's reading")
        await until(reactor, lambda: "errors/exceptions" in site.ctxs[3].state.values, what="its counters")
        assert site.ctxs[3].state.values["errors/exceptions"] == 0
        assert site.gateway.stats["connections"] == 1 and site.gateway.stats["refused"] == 0
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_the_last_meter_to_leave_closes_and_a_new_one_reopens(reactor):
    """Stop every meter, start one again at once: the old socket is closed before the new one opens."""
    site = Site(reactor)
    try:
        site.start(1)
        site.start(2)
        await until(reactor, lambda: site.good(1) and site.good(2), what="readings")
        stopping = [site.meters[u].stopService() for u in (1, 2)]
        site.start(4)
        for d in stopping:
            await d
        await until(reactor, lambda: site.good(4) >= 1, what="the new meter's reading")
        assert site.gateway.stats["refused"] == 0 and site.gateway.stats["max_open"] == 1
        assert site.gateway.stats["connections"] == 2
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_meters_on_a_transparent_rtu_over_tcp_gateway_share_it_too(reactor):
    """bus_framing: rtu (a gateway in transparent mode): the same one connection, RTU frames with CRC."""
    from evc.bus import codec
    site = Site(reactor, framing_cls=codec.RtuFraming)
    try:
        for u in (1, 2, 3):
            site.start(u, bus_framing="rtu")
        await until(reactor, lambda: all(site.good(u) >= 2 for u in (1, 2, 3)), what="readings over RTU")
        assert site.meters[2].reading.A == pytest.approx((2, 2.5, 2.25))
        assert site.gateway.stats["connections"] == 1 and site.gateway.stats["overlaps"] == 0
    finally:
        await site.close()


def test_a_second_meter_at_the_same_address_or_framing_of_a_gateway_is_refused_clearly():
    """Same bus_addr on one gateway, or the other framing on it: a ConfigError naming the leaf and the holder."""
    from twisted.internet.testing import MemoryReactor
    from evc.errors import ConfigError

    reactor = MemoryReactor()
    ctxs = [make_ctx(clock=task.Clock(), reactor=reactor, name=f"m{i}") for i in range(3)]
    first = Sdm630(ctxs[0], Sdm630.Config(bus="10.1.2.3:502", bus_addr=1))
    first.startService()
    same_addr = Sdm630(ctxs[1], Sdm630.Config(bus="10.1.2.3:502", bus_addr=1))
    with pytest.raises(ConfigError, match=r"config/bus_addr: address 1 on gateway 10\.1\.2\.3:502 is already used "
                                          r"by meter/m0"):
        same_addr.startService()
    other_framing = Sdm630(ctxs[2], Sdm630.Config(bus="10.1.2.3:502", bus_addr=2, bus_framing="rtu"))
    with pytest.raises(ConfigError, match=r"config/bus_framing: gateway 10\.1\.2\.3:502 is already used with tcp "
                                          r"framing by meter/m0"):
        other_framing.startService()
    gateway = GATEWAYS.get(reactor, "10.1.2.3:502")
    assert gateway.users == ("meter/m0",) and len(reactor.tcpClients) == 1
    first.stopService()
    assert GATEWAYS.get(reactor, "10.1.2.3:502") is None
