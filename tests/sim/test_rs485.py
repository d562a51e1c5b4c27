"""The simulated RS485 bus: RTU framing, silence on bad frames, wire timing, pty and TCP tunnel, faults."""
import os
import time

import pytest
import pytest_twisted
import serial
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, WriteSingleRegisterResponse
from twisted.internet import protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from evc.sim.modbus import GARBAGE, SimDevice
from evc.sim.rs485 import SimRs485Bus, WireTiming, crc_ok, rtu_frame


class Registers:
    """A minimal device: holding registers 0..9 holding 100+n, FC03 and FC06; anything else is exception 01."""

    def __init__(self, unit):
        self.unit = unit
        self.values = [100 + n for n in range(10)]
        self.seen = []

    def handle(self, request):
        self.seen.append(request)
        if request.function_code == 3:
            if request.address + request.count > len(self.values):
                return ExceptionResponse(3, 2)
            return ReadHoldingRegistersResponse(
                registers=self.values[request.address:request.address + request.count])
        if request.function_code == 6:
            self.values[request.address] = request.registers[0]
            return WriteSingleRegisterResponse(address=request.address, registers=request.registers)
        return ExceptionResponse(request.function_code, 1)


def read_request(unit, address=0, count=2):
    return rtu_frame(unit, bytes([3]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


def read_reply(unit, values):
    data = b"".join(v.to_bytes(2, "big") for v in values)
    return rtu_frame(unit, bytes([3, len(data)]) + data)


def memory_bus(**kw):
    clock = task.Clock()
    bus = SimRs485Bus(clock, [Registers(1), Registers(7)], **kw)
    out = []
    port = bus.attach(out.append)
    return clock, bus, port, out


# -- framing, with an in-memory master and a task.Clock ---------------------------------------------------

def test_read_is_answered_by_the_addressed_unit_with_a_valid_crc():
    _, _, port, out = memory_bus()
    port.feed(read_request(7, address=2, count=3))
    assert out == [read_reply(7, [102, 103, 104])]
    assert crc_ok(out[0])


def test_request_split_across_chunks_is_reassembled():
    _, _, port, out = memory_bus()
    frame = read_request(1)
    port.feed(frame[:3])
    assert out == []
    port.feed(frame[3:])
    assert out == [read_reply(1, [100, 101])]


def test_bad_crc_gets_no_reply_and_the_next_good_frame_does():
    clock, bus, port, out = memory_bus()
    bad = bytearray(read_request(1))
    bad[-1] ^= 0x01
    port.feed(bytes(bad))
    clock.advance(1)
    assert out == [] and bus.stats["crc_errors"] == 1
    port.feed(read_request(1))
    assert out == [read_reply(1, [100, 101])]


def test_unit_not_on_the_bus_gets_no_reply():
    clock, bus, port, out = memory_bus()
    port.feed(read_request(3))
    clock.advance(1)
    assert out == [] and bus.stats["unanswered"] == 1


def test_garbage_merged_with_a_frame_drops_both_then_the_line_recovers_after_silence():
    clock, bus, port, out = memory_bus()
    port.feed(b"\x55\x41" + read_request(1))
    clock.advance(bus.frame_timeout_s)
    assert out == []
    assert bus.stats["garbage_bytes"] == 10
    port.feed(read_request(1))
    assert out == [read_reply(1, [100, 101])]


def test_sound_frame_with_unknown_function_is_answered_with_exception_01_after_silence():
    clock, bus, port, out = memory_bus()
    port.feed(rtu_frame(1, b"\x41\x00"))
    assert out == []
    clock.advance(bus.frame_timeout_s)
    assert out == [rtu_frame(1, b"\xc1\x01")]


def test_broadcast_reaches_every_device_and_nobody_answers():
    clock, bus, port, out = memory_bus()
    port.feed(rtu_frame(0, bytes([6, 0, 4, 0, 42])))
    clock.advance(1)
    assert out == []
    assert [d.values[4] for d in bus.devices.values()] == [42, 42]


def test_muted_device_is_silent_and_unmuted_answers_again():
    _, bus, port, out = memory_bus()
    bus.mute(1)
    port.feed(read_request(1))
    assert out == []
    bus.mute(1, False)
    port.feed(read_request(1))
    assert len(out) == 1


def test_corrupt_replies_break_the_crc_of_exactly_that_many_replies():
    _, bus, port, out = memory_bus()
    bus.corrupt_replies(1)
    port.feed(read_request(1))
    port.feed(read_request(1))
    assert [crc_ok(f) for f in out] == [False, True]


def test_device_garbage_goes_out_unframed_and_device_exceptions_framed():
    clock = task.Clock()
    device = SimDevice(5, holding_registers={0: 1})
    bus = SimRs485Bus(clock, [device])
    out = []
    port = bus.attach(out.append)
    port.feed(read_request(5, count=3))
    assert out == [rtu_frame(5, b"\x83\x02")]
    device.set_fault("garbage")
    port.feed(read_request(5, count=1))
    assert out[1] == GARBAGE


def test_injected_garbage_reaches_the_master():
    _, bus, _, out = memory_bus()
    bus.inject_garbage(b"\xde\xad")
    assert out == [b"\xde\xad"]


def test_duplicate_unit_is_refused():
    with pytest.raises(ValueError, match="already on bus"):
        SimRs485Bus(task.Clock(), [Registers(1), Registers(1)])


# -- wire timing ----------------------------------------------------------------------------------------

def test_wire_timing_matches_the_reference_table():
    t = WireTiming(9600)
    assert t.char_s == pytest.approx(10 / 9600)
    assert t.t35_s == pytest.approx(3.646e-3, rel=1e-3)
    # EVSE 1000x8 read: 8-byte request, 21-byte reply -> 37.5 ms with both gaps (modbus-meters.md §5).
    assert t.transaction_s(8, 21) == pytest.approx(0.0375, abs=1e-4)
    assert WireTiming(9600, parity="E").t35_s == pytest.approx(4.01e-3, rel=1e-2)
    assert WireTiming(38400).t35_s == pytest.approx(1.75e-3)


def test_reply_arrives_only_when_its_last_byte_is_off_the_wire():
    clock, bus, port, out = memory_bus(baud=9600)
    port.feed(read_request(1))
    t = bus.timing
    due_s = t.bytes_s(8) + t.t35_s + t.bytes_s(9)
    clock.advance(due_s - 1e-4)
    assert out == []
    clock.advance(2e-4)
    assert out == [read_reply(1, [100, 101])]


def test_back_to_back_requests_queue_behind_the_line():
    """A second request sent at once waits for the first reply and its t3.5 before it goes on the wire."""
    clock, bus, port, out = memory_bus(baud=9600)
    port.feed(read_request(1))
    port.feed(read_request(7))
    t = bus.timing
    first_s = t.bytes_s(8) + t.t35_s + t.bytes_s(9)
    second_s = first_s + t.t35_s + first_s
    clock.advance(first_s + 1e-5)
    assert len(out) == 1
    clock.advance(second_s - first_s - 2e-5)
    assert len(out) == 1
    clock.advance(2e-5)
    assert out[1] == read_reply(7, [100, 101])


def test_turnaround_delays_an_untimed_reply():
    clock, _, port, out = memory_bus(turnaround_s=0.01)
    port.feed(read_request(1))
    assert out == []
    clock.advance(0.01)
    assert len(out) == 1


# -- over a real pty and a real TCP tunnel -----------------------------------------------------------------

async def wait_for(condition, timeout_s=3.0, what="condition"):
    """Poll `condition` on the running reactor until it holds or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.002, lambda: None)


class SerialReader:
    """Non-blocking pyserial reads, polled from the reactor."""

    def __init__(self, path):
        self.ser = serial.Serial(path, 9600, timeout=0)
        self.data = b""

    def poll(self):
        self.data += self.ser.read(4096)
        return self.data

    async def read(self, n, timeout_s=3.0):
        await wait_for(lambda: len(self.poll()) >= n, timeout_s, f"{n} bytes from the tty")
        out, self.data = self.data[:n], self.data[n:]
        return out


@pytest.fixture
def real_bus():
    bus = SimRs485Bus(reactor, [Registers(1), Registers(7)], name="bus-t")
    yield bus
    pytest_twisted.blockon(bus.close())


@pytest_twisted.ensureDeferred
async def test_pty_answers_a_read_and_ignores_a_bad_crc(real_bus):
    path = real_bus.open_pty()
    assert os.path.islink(path) and os.path.realpath(path).startswith("/dev/pts/")
    tty = SerialReader(path)
    try:
        bad = bytearray(read_request(7))
        bad[-2] ^= 0xFF
        tty.ser.write(bytes(bad))
        await wait_for(lambda: real_bus.stats["crc_errors"] == 1, what="the bad frame to be seen")
        tty.ser.write(read_request(7, address=1, count=1))
        assert await tty.read(7) == read_reply(7, [101])
        assert tty.poll() == b"", "the bad frame must not have been answered"
    finally:
        tty.ser.close()


@pytest_twisted.ensureDeferred
async def test_pty_vanishes_and_reappears_at_the_same_path(real_bus):
    path = real_bus.open_pty()
    tty = SerialReader(path)
    real_bus.vanish()
    assert not os.path.lexists(path)
    with pytest.raises(serial.SerialException):
        for _ in range(100):
            tty.poll()
    tty.ser.close()
    assert real_bus.reappear() == path
    tty = SerialReader(path)
    try:
        tty.ser.write(read_request(1))
        assert await tty.read(9) == read_reply(1, [100, 101])
    finally:
        tty.ser.close()


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.lost = False
        self.received_at = []

    def dataReceived(self, data):
        self.data += data
        self.received_at.append(reactor.seconds())

    def connectionLost(self, reason):
        self.lost = True


async def tunnel_client(port):
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())


@pytest_twisted.ensureDeferred
async def test_tcp_tunnel_carries_raw_rtu_and_survives_a_drop(real_bus):
    port = real_bus.listen(0)
    client = await tunnel_client(port)
    client.transport.write(read_request(1))
    await wait_for(lambda: len(client.data) >= 9, what="a reply over the tunnel")
    assert client.data == read_reply(1, [100, 101])
    real_bus.drop_tunnel()
    await wait_for(lambda: client.lost, what="the tunnel drop")
    again = await tunnel_client(port)
    again.transport.write(read_request(7))
    await wait_for(lambda: len(again.data) >= 9, what="a reply after reconnecting")
    assert again.data == read_reply(7, [100, 101])
    again.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_timed_reply_over_tcp_takes_at_least_its_wire_time():
    bus = SimRs485Bus(reactor, [Registers(1)], baud=9600)
    try:
        client = await tunnel_client(bus.listen(0))
        # Ten registers: 8-byte request, 25-byte reply, about 35 ms on the wire before the trailing gap.
        minimum_s = bus.timing.bytes_s(8) + bus.timing.t35_s + bus.timing.bytes_s(25)
        sent_at = reactor.seconds()
        client.transport.write(read_request(1, count=10))
        await wait_for(lambda: len(client.data) >= 25, what="the timed reply")
        elapsed_s = client.received_at[-1] - sent_at
        assert minimum_s - 0.001 <= elapsed_s < minimum_s + 0.5
        client.transport.loseConnection()
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_evc_modbus_client_drives_an_evse_through_twisted_serialport_on_the_pty():
    """The real path: EVC's RTU client on Twisted's SerialPort, the pty, the bus, the EVSE simulator."""
    from twisted.internet.serialport import SerialPort

    from evc.bus.client import ModbusBus, ModbusClientProtocol
    from evc.bus.codec import RtuFraming
    from evc.bus.errors import ModbusException
    from evc.sim.evse import SimEvse

    evse = SimEvse("s1", unit=2, default_current_A=0)
    sim = SimRs485Bus(reactor, [evse], baud=19200)
    path = sim.open_pty()
    client = ModbusBus(reactor, RtuFraming(), timeout_s=0.5, name="rs485-test")
    serial_port = SerialPort(ModbusClientProtocol(client, name=path), path, reactor, baudrate=19200)
    try:
        assert await client.read_holding_registers(2, 1000, 8) == [0, 0, 1, 32, 0, 18, 1, 0]
        await client.write_registers(2, 1000, [13])
        assert evse.set_current_A == 13
        with pytest.raises(ModbusException):
            await client.write_register(2, 1000, 3)
    finally:
        serial_port.loseConnection()
        client.close()
        await sim.close()
