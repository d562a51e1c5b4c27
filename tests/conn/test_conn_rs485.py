"""conn/rs485 on a real pty and a real TCP tunnel to the simulated bus: paths, faults, counters, claims, config."""
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from evc.bus.errors import BusDisconnected, ModbusException, ModbusTimeout, UnitBackoff
from evc.conn import IBusAddresses
from evc.conn.rs485 import Rs485Config, Rs485Conn, line_timing
from evc.errors import ConfigError
from evc.sim.evse import SimEvse
from evc.sim.rs485 import SimRs485Bus
from evc.testing import wait_for

from rs485_helpers import make_ctx, start_conn

STATUS_IDLE = [0, 0, 1, 32, 0, 18, 1, 0]      # 1000..1007 of an idle EVSE set to 0 A


async def until(condition, what, timeout_s=5.0):
    return await wait_for(condition, timeout_s, what, poll_s=0.005)


@pytest.fixture
def sim():
    bus = SimRs485Bus(reactor, [SimEvse("a", unit=1, default_current_A=0),
                                SimEvse("b", unit=2, default_current_A=0)], name="bus-t")
    yield bus
    pytest_twisted.blockon(bus.close())


@pytest.fixture
def conns():
    """Conns started by a test; stopped (ports closed) after it."""
    started = []
    yield lambda **config: started.append(start_conn(reactor, **config)) or started[-1]
    for conn in started:
        if conn.running:
            pytest_twisted.blockon(defer.maybeDeferred(conn.stopService))


async def failure_of(d):
    try:
        result = await d
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


# -- the two paths -----------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_reads_and_writes_evses_over_the_local_tty(sim, conns):
    path = sim.open_pty()
    conn = conns(local=path, remote="127.0.0.1:9", gap_ms=0)
    assert conn.link_state == "up" and conn.via == f"local {path}", "an existing local tty wins over remote"
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE
    await conn.write_registers(2, 1000, [16])
    assert sim.devices[2].set_current_A == 16 and sim.devices[1].set_current_A == 0
    assert conn.ctx.state.values["link"] == "up" and conn.ctx.state.values["via"] == f"local {path}"


@pytest_twisted.ensureDeferred
async def test_uses_the_tunnel_when_the_local_tty_is_not_on_this_host(sim, conns, tmp_path):
    port = sim.listen(0)
    conn = conns(local=str(tmp_path / "ttyNOPE"), remote=f"127.0.0.1:{port}", gap_ms=0)
    assert conn.link_state == "connecting"
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE, "requests wait for the connection"
    assert conn.link_state == "up" and conn.via == f"remote 127.0.0.1:{port}"
    await conn.write_register(1, 1000, 10)
    assert sim.devices[1].set_current_A == 10


@pytest_twisted.ensureDeferred
async def test_waits_for_a_local_tty_that_is_not_there_yet(sim, conns, tmp_path):
    path = str(tmp_path / "rs485-1")
    conn = conns(local=path, gap_ms=0)
    assert conn.link_state == "down"
    assert "does not exist on this host" in conn.ctx.state.values["link_error"]
    assert isinstance(await failure_of(conn.read_holding_registers(1, 1000, 8)), BusDisconnected)
    sim.open_pty(path)
    await until(lambda: conn.link_state == "up", "the tty to be opened once it appears")
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE
    assert "link_error" not in conn.ctx.state.values


# -- faults on the line --------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_crc_errors_and_garbage_are_counted_and_survived(sim, conns):
    conn = conns(local=sim.open_pty(), gap_ms=0, timeout_ms=50)
    sim.corrupt_replies(1)
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE, "the retry gets a good reply"
    c1 = conn.counters(1)
    assert c1["bad_frames"] == 1 and c1["timeouts"] == 1 and c1["ok"] == 1
    sim.devices[2].set_fault("garbage")
    assert isinstance(await failure_of(conn.read_holding_registers(2, 1000, 8)), ModbusTimeout)
    assert conn.counters(2)["bad_frames"] >= 2
    sim.inject_garbage(b"\x01\x03\xff\x00")     # noise on an idle line
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE
    await until(lambda: conn.ctx.state.values.get("units/2/bad_frames", 0) >= 2, "bad frames in state")
    assert conn.ctx.state.values["units/1/bad_frames"] == 1
    assert conn.ctx.state.values["bad_frames"] >= 3


@pytest_twisted.ensureDeferred
async def test_a_modbus_exception_is_counted_and_not_retried(sim, conns):
    conn = conns(local=sim.open_pty(), gap_ms=0)
    before = sim.stats["requests"]
    e = await failure_of(conn.read_holding_registers(1, 1010, 2))
    assert isinstance(e, ModbusException) and e.code == 2
    assert sim.stats["requests"] == before + 1
    assert conn.counters(1)["exceptions"] == 1 and conn.counters(1)["timeouts"] == 0
    await until(lambda: conn.ctx.state.values.get("units/1/exceptions") == 1, "the exception in state")
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE


@pytest_twisted.ensureDeferred
async def test_a_dead_device_does_not_starve_the_others(sim, conns):
    conn = conns(local=sim.open_pty(), gap_ms=0, timeout_ms=50)
    sim.mute(2)
    unit2_outcomes = []
    for _ in range(20):
        one, two = conn.read_holding_registers(1, 1000, 8), conn.read_holding_registers(2, 1000, 8)
        assert await one == STATUS_IDLE
        unit2_outcomes.append(type(await failure_of(two)))
    assert unit2_outcomes[0] is ModbusTimeout
    assert UnitBackoff in unit2_outcomes, "a dead unit must fail fast while it backs off"
    c2 = conn.counters(2)
    assert c2["failed_fast"] == unit2_outcomes.count(UnitBackoff) and c2["backoff_s"] >= 1.0
    # Each failed transaction to unit 2 cost two timeouts (request + retry); the backoff kept the rest off the wire.
    assert c2["timeouts"] == 2 * unit2_outcomes.count(ModbusTimeout)
    assert conn.counters(1)["ok"] == 20
    await until(lambda: conn.ctx.state.values.get("units/2/timeouts") == c2["timeouts"], "timeouts in state")
    assert conn.ctx.state.values["units/2/backoff_s"] >= 1.0
    sim.mute(2, False)

    async def unit2_answers():
        try:
            return await conn.read_holding_registers(2, 1000, 8) == STATUS_IDLE
        except UnitBackoff:
            return False
    await until(unit2_answers, "unit 2 to answer again once its backoff ends", timeout_s=10)
    assert conn.counters(2)["backoff_s"] == 0


# -- the link going away --------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_tty_vanishes_and_comes_back(sim, conns):
    path = sim.open_pty()
    conn = conns(local=path, gap_ms=0, timeout_ms=2000)
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE
    sim.mute(1)
    pending = conn.read_holding_registers(1, 1000, 8)
    sim.vanish()                                   # the USB adapter is pulled out
    assert isinstance(await failure_of(pending), BusDisconnected), "a pending request fails at once"
    await until(lambda: conn.link_state == "down", "link down")
    assert conn.ctx.state.values["link"] == "down" and "unplugged" in conn.ctx.state.values["link_error"]
    assert isinstance(await failure_of(conn.read_holding_registers(1, 1000, 8)), BusDisconnected)
    sim.mute(1, False)
    sim.reappear()
    await until(lambda: conn.link_state == "up", "the link back up")
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE
    assert conn.ctx.state.values["link"] == "up" and "link_error" not in conn.ctx.state.values


@pytest_twisted.ensureDeferred
async def test_the_tunnel_drops_and_reconnects(sim, conns):
    port = sim.listen(0)
    conn = conns(remote=f"127.0.0.1:{port}", gap_ms=0, timeout_ms=2000)
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE
    sim.mute(1)
    pending = conn.read_holding_registers(1, 1000, 8)
    sim.drop_tunnel()                              # ser2net restarted, or the network went away
    assert isinstance(await failure_of(pending), BusDisconnected)
    sim.mute(1, False)
    await until(lambda: conn.link_state == "up" and len(sim._tunnels) == 1, "the tunnel to reconnect")
    assert await conn.read_holding_registers(1, 1000, 8) == STATUS_IDLE


@pytest_twisted.ensureDeferred
async def test_a_tunnel_that_is_not_there_yet_is_retried(sim, conns):
    probe = sim.listen(0)
    await sim.stop_listening()               # a free port nobody listens on (yet)
    conn = conns(remote=f"127.0.0.1:{probe}", gap_ms=0)
    await until(lambda: conn.link_state == "down", "the first connection attempt to fail")
    assert "cannot connect" in conn.ctx.state.values["link_error"]
    sim.listen(probe)
    await until(lambda: conn.link_state == "up", "the tunnel to connect once it listens", timeout_s=5)
    assert await conn.read_holding_registers(2, 1000, 8) == STATUS_IDLE


@pytest_twisted.ensureDeferred
async def test_stopping_closes_the_tty_and_fails_what_is_pending(sim, conns):
    conn = conns(local=sim.open_pty(), gap_ms=0, timeout_ms=2000)
    sim.mute(1)
    pending = conn.read_holding_registers(1, 1000, 8)
    await conn.stopService()
    assert isinstance(await failure_of(pending), BusDisconnected)
    assert isinstance(await failure_of(conn.read_holding_registers(2, 1000, 8)), BusDisconnected)


# -- addresses --------------------------------------------------------------------------------------------

def test_two_users_of_one_address_are_refused_naming_the_holder():
    conn = Rs485Conn(make_ctx(kind="conn", name="s123"), Rs485Config(remote="127.0.0.1:50485"))
    assert IBusAddresses.providedBy(conn)
    release = conn.claim(1, "charger/s2")
    conn.claim(1, "charger/s2")                    # the same user again (a restart): fine
    conn.claim(2, "meter/m1", leaf="config/bus_addr")
    with pytest.raises(ConfigError, match=r"^config/conn_port: address 1 on conn s123 is already used by "
                                          r"charger/s2$"):
        conn.claim(1, "charger/s1")
    with pytest.raises(ConfigError, match=r"^config/bus_addr: address 2 on conn s123 is already used by "
                                          r"meter/m1$"):
        conn.claim(2, "meter/m2", leaf="config/bus_addr")
    with pytest.raises(ConfigError, match=r"^config/conn_port: address 0 is outside 1..247$"):
        conn.claim(0, "charger/s3")
    assert conn.ctx.state.values["units/1/user"] == "charger/s2"
    conn.release(1, "charger/s1")                  # not the holder: nothing happens
    assert conn.claims == {1: "charger/s2", 2: "meter/m1"}
    release()
    conn.claim(1, "charger/s1")
    assert conn.claims[1] == "charger/s1"


# -- timing and config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("baud, parity, stopbits, char_ms, t35_ms", [
    (9600, "N", 1, 1.042, 3.65), (19200, "N", 1, 0.521, 1.82), (38400, "N", 1, 0.260, 1.75),
    (9600, "E", 1, 1.146, 4.01), (19200, "N", 2, 0.573, 2.01),
])
def test_line_timing_matches_the_reference_table(baud, parity, stopbits, char_ms, t35_ms):
    char_s, t35_s = line_timing(baud, parity, stopbits)
    assert char_s * 1000 == pytest.approx(char_ms, abs=0.001)
    assert t35_s * 1000 == pytest.approx(t35_ms, abs=0.01)


def test_gap_never_undercuts_t35_and_timeouts_add_the_wire_time():
    conn = Rs485Conn(make_ctx(kind="conn", name="c"), Rs485Config(local="/dev/x", gap_ms=0, timeout_ms=300))
    assert conn.bus.gap_s == pytest.approx(0.00365, abs=1e-5)
    assert Rs485Conn(make_ctx(kind="conn", name="c"), Rs485Config(local="/dev/x")).bus.gap_s == 0.1
    # 1000x8: 8-byte request + 21-byte reply at 9600 baud, one t3.5 for the request's end.
    assert conn._timeout(None, 21) == pytest.approx(0.3 + 29 * 10 / 9600 + 0.00365, abs=1e-5)
    slow = Rs485Conn(make_ctx(kind="conn", name="c"), Rs485Config(local="/dev/x", baud=2400))
    assert slow._timeout(None, 5 + 2 * 80) > 0.3 + 0.7, "an 80-register read at 2400 baud takes 0.7 s on the wire"


def test_config_needs_local_or_remote_and_a_sound_line():
    with pytest.raises(ConfigError, match="^config/local: give local"):
        Rs485Config()
    with pytest.raises(ConfigError, match="^config/remote: "):
        Rs485Config(remote="host:99999")
    with pytest.raises(ConfigError, match="^config/parity: 'X'"):
        Rs485Config(local="/dev/x", parity="X")
    assert Rs485Config(local="/dev/x").baud == 9600
