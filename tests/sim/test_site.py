"""The simulated site: base load plus car draw on the right grid phases, energy, config, CLI commands."""
import json
import os
import socket
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol

from evc.bus import codec
from evc.sim.rs485 import rtu_frame
from evc.sim.site import SimSite, parse_phase_map, run_command


class Values:
    """Records what the site hands to its meter."""

    def __init__(self):
        self.values = {}

    def set(self, **values):
        self.values.update(values)


def site_with(clock=None, **kw):
    clock = clock or task.Clock()
    meter = Values()
    site = SimSite(clock, meter=meter, **kw)
    site.add_bus("b")
    return clock, site, meter


def test_base_load_alone_reaches_the_meter_and_can_change_while_running():
    _, site, meter = site_with(base_load_A=(3, 2, 1))
    assert meter.values["A"] == (3, 2, 1)
    assert meter.values["W"] == (690, 460, 230)
    site.set_base_load(10, 0, 0)
    assert meter.values["A"] == (10, 0, 0)


def test_one_phase_car_on_l2_loads_grid_l2():
    _, site, meter = site_with(base_load_A=(1, 1, 1))
    site.add_evse("s1", bus="b", unit=1, phase_map="L2L3L1", default_current_A=10)
    site.add_car("c1", evse="s1", phases=1, soc=0.3)
    assert meter.values["A"] == (1, 11, 1)


def test_three_phase_car_follows_a_rotated_phase_map_and_adds_to_other_chargers():
    _, site, meter = site_with()
    site.add_evse("s1", bus="b", unit=1, phase_map=[2, 3, 1], default_current_A=16)
    site.add_evse("s2", bus="b", unit=2, phase_map=[1, 2, 3], default_current_A=16)
    site.add_car("c1", evse="s1", phases=1, soc=0.3)
    site.add_car("c2", evse="s2", phases=3, max_current_A=10, soc=0.3)
    assert meter.values["A"] == (10, 26, 10)
    site.unplug("c1")
    assert meter.values["A"] == (10, 10, 10)


def test_modbus_write_to_an_evse_shows_in_the_meter_after_a_tick():
    clock, site, meter = site_with(base_load_A=(2, 2, 2), tick_s=1)
    evse = site.add_evse("s1", bus="b", unit=4, default_current_A=0)
    site.add_car("c1", evse="s1", phases=3, soc=0.3)
    assert meter.values["A"] == (2, 2, 2)
    out = []
    site.buses["b"].attach(out.append).feed(rtu_frame(4, bytes([6, 0x03, 0xE8, 0, 13])))
    assert evse.set_current_A == 13 and out
    site.tick()
    clock.advance(1)
    site.tick()
    assert meter.values["A"] == (15, 15, 15)


def test_energy_counts_what_flowed_and_cars_charge_at_the_site_speed():
    clock, site, meter = site_with(base_load_A=(0, 0, 0), speed=60)
    site.add_evse("s1", bus="b", unit=1, default_current_A=16)
    car = site.add_car("c1", evse="s1", phases=1, capacity_Wh=100_000, soc=0.1)
    site.tick()
    clock.advance(60)
    site.tick()
    # 60 s real at speed 60 = one simulated hour at 16 A * 230 V.
    assert meter.values["energy_Wh"] == pytest.approx(3680)
    assert car.session_Wh == pytest.approx(3680)


@pytest.mark.parametrize("text,expected", [
    (None, (1, 2, 3)), ("231", (2, 3, 1)), ("L3", (3, 1, 2)), ([2], (2, 1, 3)), (["L3", "L1", "L2"], (3, 1, 2)),
])
def test_phase_map_forms(text, expected):
    assert parse_phase_map(text) == expected


@pytest.mark.parametrize("text", ["114", [0, 1, 2], "L4", [1, 2, 3, 1], "x"])
def test_bad_phase_map_is_refused(text):
    with pytest.raises(ValueError, match="phase_map"):
        parse_phase_map(text)


def test_from_config_builds_buses_evses_cars_and_refuses_unknown_keys():
    config = {
        "meter": {"base_load_A": [1, 2, 3]},
        "buses": {"b1": {"baud": 9600}},
        "evses": {"s1": {"bus": "b1", "unit": 1, "phase_map": "L3", "default_current_A": 6}},
        "cars": {"c1": {"evse": "s1", "phases": 1, "soc": 0.5}},
    }
    site, meter_port = SimSite.from_config(task.Clock(), config)
    assert meter_port is None
    assert site.buses["b1"].timing.baud == 9600
    assert site.grid_current_A == (1, 2, 9)
    with pytest.raises(ValueError, match="unknown keys colour"):
        SimSite.from_config(task.Clock(), {"colour": "red"})


def test_control_commands_change_the_site():
    _, site, meter = site_with()
    site.add_evse("s1", bus="b", unit=1, default_current_A=16)
    site.add_car("c1", phases=1, soc=0.3)
    assert run_command(site, "plug c1 s1") == {"ok": True}
    assert run_command(site, "base 1 2 3") == {"ok": True}
    assert meter.values["A"] == (17, 2, 3)
    assert run_command(site, "hold c1") == {"ok": True}
    assert run_command(site, "status")["grid_A"] == [1, 2, 3]
    assert run_command(site, "fault s1 rcd")["ok"] and site.evses["s1"].vehicle_state == 5
    assert not run_command(site, "plug nobody s1")["ok"]
    assert not run_command(site, "jump")["ok"]


def test_an_external_load_adds_to_the_grid_meter_and_its_energy_until_it_changes():
    """A car simulated elsewhere (an OCPP charge point) reaches the grid meter through `external L1 L2 L3`."""
    _, site, meter = site_with(base_load_A=(4, 2, 3))
    site.add_evse("s1", bus="b", unit=1, default_current_A=10)
    site.add_car("c1", evse="s1", phases=3, soc=0.3)
    assert run_command(site, "external 8 8.5 0") == {"ok": True}
    assert meter.values["A"] == (22, 20.5, 13)
    status = run_command(site, "status")
    assert status["external_load_A"] == [8, 8.5, 0] and status["grid_A"] == [22, 20.5, 13]
    before = site.energy_Wh
    site.advance(3600)
    # One hour of base + car + external at 230 V (the car's battery is far from full).
    assert site.energy_Wh - before == pytest.approx(230 * (22 + 20.5 + 13), rel=1e-6)
    assert run_command(site, "external 0 0 0") == {"ok": True}
    assert meter.values["A"] == (14, 12, 13)
    assert not run_command(site, "external 1 2")["ok"]
    assert site.external_load_A == (0, 0, 0)


# -- over real transports ----------------------------------------------------------------------------------

async def wait_for(condition, timeout_s=3.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.002, lambda: None)


class Collect(Protocol):
    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


async def read_meter_currents_A(port, unit=1):
    """L1..L3 current from the SDM630 simulator, over Modbus TCP."""
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
    framing = codec.TcpFraming()
    client.transport.write(framing.encode(codec.read_input(unit, 0x0006, 6)))
    await wait_for(lambda: framing.decode(client.data)[1] is not None, what="the meter's reply")
    reply = framing.decode(client.data)[1]
    client.transport.loseConnection()
    return tuple(round(codec.registers_to_float32(reply.registers, i), 3) for i in (0, 2, 4))


@pytest_twisted.ensureDeferred
async def test_started_site_takes_a_setpoint_over_the_tunnel_and_the_meter_follows():
    site = SimSite(reactor, base_load_A=(4, 0, 0), tick_s=0.01)
    site.add_bus("b", tcp_port=0, tty_link=True)
    site.add_evse("s1", bus="b", unit=1, phase_map="L2", default_current_A=0)
    site.add_car("c1", evse="s1", phases=1, soc=0.3)
    endpoints = site.start(meter_port=0)
    try:
        assert os.path.islink(endpoints["buses"]["b"]["tty"])
        assert await read_meter_currents_A(endpoints["meter"]["port"]) == (4, 0, 0)
        port = int(endpoints["buses"]["b"]["tcp"].rsplit(":", 1)[1])
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
        client.transport.write(rtu_frame(1, bytes([0x10, 0x03, 0xE8, 0, 1, 2, 0, 10])))
        await wait_for(lambda: site.meter.A == [4, 10, 0], what="the car's draw on L2")
        assert client.data == rtu_frame(1, bytes([0x10, 0x03, 0xE8, 0, 1]))
        client.transport.loseConnection()
        assert await read_meter_currents_A(endpoints["meter"]["port"]) == (4, 10, 0)
    finally:
        await site.stop()
    assert not os.path.lexists(endpoints["buses"]["b"]["tty"])


def test_an_evse_meter_sees_only_its_own_car_on_the_evse_grid_phases_and_counts_its_energy():
    clock, site, grid = site_with(base_load_A=(5, 5, 5))
    site.add_evse("s1", bus="b", unit=1, phase_map="L2", default_current_A=16)
    site.add_evse("s2", bus="b", unit=2, default_current_A=10)
    m1 = site.add_evse_meter("s1", port=0)
    site.add_car("c1", evse="s1", phases=1, soc=0.3)
    site.add_car("c2", evse="s2", phases=3, soc=0.3)
    assert grid.values["A"] == (15, 31, 15)
    assert m1.A == [0, 16, 0] and m1.W == [0, 230 * 16, 0] and m1.V == [230, 230, 230]
    site.advance(3600)
    assert m1.import_Wh == pytest.approx(230 * 16) and grid.values["energy_Wh"] > m1.import_Wh
    site.unplug("c1")
    assert m1.A == [0, 0, 0] and m1.import_Wh == pytest.approx(230 * 16)   # the counter keeps what it counted
    assert run_command(site, "status")["evses"]["s1"]["meter_Wh"] == pytest.approx(3680)
    assert "meter_A" not in run_command(site, "status")["evses"]["s2"]


def test_an_evse_meter_needs_one_place_and_an_existing_evse():
    _, site, _ = site_with()
    site.add_evse("s1", bus="b", unit=1)
    with pytest.raises(ValueError, match="exactly one of port"):
        site.add_evse_meter("s1", port=15020, bus="b")
    with pytest.raises(ValueError, match="no EVSE 's9'"):
        site.add_evse_meter("s9", port=0)
    with pytest.raises(ValueError, match="no bus 'b9'"):
        site.add_evse_meter("s1", bus="b9", unit=2)


def test_an_evse_meter_on_the_evse_bus_answers_at_its_unit():
    site, _ = SimSite.from_config(task.Clock(), {
        "buses": {"b1": {}},
        "evses": {"s1": {"bus": "b1", "unit": 1, "default_current_A": 13, "meter": {"bus": "b1", "unit": 11}}},
        "cars": {"c1": {"evse": "s1", "phases": 3, "soc": 0.3}}})
    out = []
    site.buses["b1"].attach(out.append).feed(rtu_frame(11, bytes([4, 0, 6, 0, 6])))
    reply = codec.RtuFraming().decode(out[0])[1]
    assert [codec.registers_to_float32(reply.registers, i) for i in (0, 2, 4)] == [13, 13, 13]
    assert site.endpoints()["evse_meters"] == {"s1": {"host": None, "port": None, "bus": "b1", "unit": 11}}


@pytest_twisted.ensureDeferred
async def test_started_evse_meters_serve_on_their_ports_and_share_a_port_like_a_gateway():
    site = SimSite(reactor, base_load_A=(1, 1, 1), tick_s=0.01)
    site.add_bus("b")
    for n, phase_map in ((1, "L1"), (2, "L3")):
        site.add_evse(f"s{n}", bus="b", unit=n, phase_map=phase_map, default_current_A=8 * n)
        site.add_car(f"c{n}", evse=f"s{n}", phases=1, soc=0.3)
    site.add_evse_meter("s1", port=0, unit=1)
    endpoints = site.start(meter_port=0)
    try:
        port = endpoints["evse_meters"]["s1"]["port"]
        assert port not in (None, endpoints["meter"]["port"])
        assert await read_meter_currents_A(port) == (8, 0, 0)
        assert await read_meter_currents_A(endpoints["meter"]["port"]) == (9, 1, 17)
    finally:
        await site.stop()
    # Two EVSE meters and the grid meter on one fixed port: one listener, three units.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    site = SimSite(reactor, base_load_A=(1, 1, 1), tick_s=0.01)
    site.add_bus("b")
    for n, phase_map in ((1, "L1"), (2, "L3")):
        site.add_evse(f"s{n}", bus="b", unit=n, phase_map=phase_map, default_current_A=8 * n)
        site.add_car(f"c{n}", evse=f"s{n}", phases=1, soc=0.3)
        site.add_evse_meter(f"s{n}", port=free, unit=10 + n)
    endpoints = site.start(meter_port=free)
    try:
        assert {m["port"] for m in endpoints["evse_meters"].values()} == {free}
        assert await read_meter_currents_A(free, unit=11) == (8, 0, 0)
        assert await read_meter_currents_A(free, unit=12) == (0, 0, 16)
        assert await read_meter_currents_A(free, unit=1) == (9, 1, 17)
    finally:
        await site.stop()


def test_meter_can_sit_on_an_rs485_bus_too():
    site, _ = SimSite.from_config(task.Clock(), {
        "meter": {"bus": "b1", "unit": 9, "base_load_A": [2, 0, 0]}, "buses": {"b1": {}}})
    out = []
    site.buses["b1"].attach(out.append).feed(rtu_frame(9, bytes([4, 0, 6, 0, 2])))
    reply = codec.RtuFraming().decode(out[0])[1]
    assert codec.registers_to_float32(reply.registers) == 2.0


@pytest_twisted.ensureDeferred
async def test_cli_prints_its_endpoints_and_obeys_commands(tmp_path):
    link = str(tmp_path / "rs485")

    class Cli(ProcessProtocol):
        def __init__(self):
            self.out = b""
            self.err = b""
            self.ended = False

        def outReceived(self, data):
            self.out += data

        def errReceived(self, data):
            self.err += data

        def processEnded(self, reason):
            self.ended = True

    cli = Cli()
    proc = reactor.spawnProcess(cli, sys.executable, [
        sys.executable, "-m", "evc.sim.site", "--evses", "2", "--cars", "1", "--tty-link", link,
        "--tcp-port", "0", "--meter-port", "0", "--base-load", "1,2,3", "--control-port", "0",
        "--evse-meter-port", "0"],
        env=dict(os.environ))
    try:
        await wait_for(lambda: b"\n" in cli.out or cli.ended, timeout_s=15, what="the endpoints line")
        assert b"\n" in cli.out, cli.err.decode()
        endpoints = json.loads(cli.out.split(b"\n")[0])
        assert isinstance(endpoints["meter"]["port"], int)
        assert endpoints["buses"]["bus1"]["tty"] == link and os.path.islink(link)
        assert set(endpoints["evses"]) == {"s1", "s2"}
        meters = endpoints["evse_meters"]
        assert set(meters) == {"s1", "s2"} and all(isinstance(m["port"], int) for m in meters.values())
        assert len({m["port"] for m in meters.values()} | {endpoints["meter"]["port"]}) == 3
        # A script that pipes its commands and closes stdin still gets every answer.
        proc.write(b"base 5 5 5\nstatus\n")
        proc.closeStdin()
        await wait_for(lambda: cli.out.count(b"\n") >= 3, timeout_s=5, what="two answers")
        status = json.loads(cli.out.split(b"\n")[2])
        assert status["grid_A"] == [5, 5, 5]
        control_port = int(endpoints["control"].rsplit(":", 1)[1])
        control = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", control_port), Collect())
        control.transport.write(b"unplug car1\n")
        await wait_for(lambda: b"\n" in control.data, what="the control port's answer")
        assert json.loads(control.data) == {"ok": True}
        control.transport.loseConnection()
    finally:
        proc.signalProcess("TERM")
        await wait_for(lambda: cli.ended, timeout_s=10, what="the CLI to exit")
    assert not os.path.lexists(link)
