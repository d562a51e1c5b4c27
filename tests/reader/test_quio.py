"""reader/QUIO on an in-memory RTU bus to the simulated QDE-950-4, on a task.Clock."""
from evc.reader.quio import QuioReader, parse_registers, uid_registers
from evc.sim.rfid import SimQuio
from evc.sim.rs485 import SimRs485Bus, rtu_frame

from reader_helpers import Site
from rs485_helpers import memory_rtu_bus


class Spy:
    def __init__(self, device):
        self.device, self.unit, self.requests = device, device.unit, []

    def handle(self, request):
        self.requests.append((request.function_code, request.address, request.count))
        return self.device.handle(request)


def make(site, unit=3, register_base=0, **config):
    quio = SimQuio(unit=unit, register_base=register_base)
    spy = Spy(quio)
    sim = SimRs485Bus(site.clock, [spy])
    bus = memory_rtu_bus(site.clock, sim, gap_s=0.005, timeout_s=0.05)
    site.refs[("conn", "c1")] = bus
    config.setdefault("charger", "s1")
    reader = QuioReader(site.ctx(), QuioReader.Config(conn="c1", bus_addr=unit, register_base=register_base,
                                                      **config))
    reader.startService()
    return reader, quio, spy, sim


def run(site, seconds):
    site.clock.pump([0.005] * int(seconds / 0.005))


def test_register_layout_round_trips():
    uid = bytes.fromhex("04C43BC21C2680")
    regs = uid_registers(uid)
    assert regs[:4] == [0x04C4, 0x3BC2, 0x1C26, 0x8000] and regs[16] == 7
    assert parse_registers(regs) == uid and parse_registers(uid_registers(b"")) is None


def test_it_reads_offsets_1_to_17_with_fc04_and_a_card_authorizes_the_waiting_charger():
    site = Site()
    reader, quio, spy, sim = make(site)
    run(site, 0.5)
    assert spy.requests and set(spy.requests) == {(4, 0, 17)}
    assert rtu_frame(3, bytes.fromhex("0400000011"))[-2:]      # the request as it goes on the wire (CRC framed)
    site.chargers["s1"].plug()
    quio.present("1C78F2BF")
    run(site, 2.0)
    quio.remove()
    run(site, 3.0)
    assert reader.cards == 1 and site.chargers["s1"].authorized_with == ["1C78F2BF"]
    assert reader.last_card["answer"] == "Accepted"


def test_register_base_moves_the_read():
    site = Site()
    reader, quio, spy, sim = make(site, register_base=1)
    site.chargers["s1"].plug()
    quio.present("1C78F2BF")
    run(site, 0.5)
    assert set(spy.requests) == {(4, 1, 17)} and site.chargers["s1"].authorized_with == ["1C78F2BF"]


def test_a_reader_that_does_not_answer_sets_state_error_until_it_does():
    site = Site()
    reader, quio, spy, sim = make(site)
    run(site, 0.5)
    sim.mute(3)
    run(site, 5.0)
    assert "does not answer" in reader.ctx.state.values["error"]
    sim.mute(3, False)
    run(site, 40.0)         # the bus's per-address backoff (up to 30 s) ends
    assert "error" not in reader.ctx.state.values


def test_a_wrong_base_that_the_reader_refuses_is_reported():
    site = Site()
    reader, quio, spy, sim = make(site, register_base=0)
    quio.register_base = 40                  # the reader's map starts elsewhere: exception 02 on every read
    run(site, 3.0)
    assert reader.ctx.state.values["error"].startswith("config/register_base: the QUIO reader at address 3")
