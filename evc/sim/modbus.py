"""Simulated Modbus devices (SimDevice) and a Twisted server that puts them on Modbus TCP (or RTU framing).

The device API, shared with the simulated RS485 bus (`evc.sim.rs485.SimRs485Bus`, which takes any object
with `unit` and `handle`):

    device.unit                      1..247, the address it answers to
    device.handle(request_pdu)       -> pymodbus ModbusPDU (the reply)
                                     |  None (stay silent: the master sees a timeout)
                                     |  Garbage(bytes) (send these bytes, unframed, instead of a reply)
                                     |  bytes (raw reply PDU: function code + data, framed by the server)

    `request_pdu` is a decoded pymodbus request (FC03, FC04, FC06, FC16, ...); `dev_id` is the unit it was
    addressed to (0 = broadcast: act, the server sends nothing), `transaction_id` the MBAP tid (or 0).

`SimDevice` implements `handle` over two register banks (`input_registers`, `holding_registers`: dicts
address -> 16-bit value). Subclasses override `read_input` / `read_holding` / `write_holding` (raise
`SimModbusError(code)` to answer an exception) to compute registers on the fly. Faults for tests, settable
while running: `device.fault = "silent" | "exception" | "garbage" | None` (`fault_code` is the exception
code sent by "exception", default 04 device failure).

Serving: `listen_tcp(reactor, [device, ...], port=0)` -> IListeningPort; or build
`ModbusServerFactory(devices, framing_cls=RtuFraming)` to serve RTU framing over any stream.
"""
from __future__ import annotations

from typing import Iterable

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from evc.bus import codec

log = Logger(namespace="evc.sim.modbus")

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04

FAULTS = (None, "silent", "exception", "garbage")
# Starts with function code 0, which no device sends: any master sees a frame it cannot decode.
GARBAGE = b"\x00\xff\x55\xaa\x13\x37\xde\xad\xbe\xef\x00\x01"


class SimModbusError(Exception):
    """Raised by a bank access to answer a Modbus exception with `code`."""

    def __init__(self, code: int):
        super().__init__(f"exception {code:02d}")
        self.code = code


class Garbage(bytes):
    """A handle() result: bytes to put on the wire as they are, in place of a reply."""


class SimDevice:
    """A Modbus slave with input and holding register banks. See the module docstring for the contract."""

    max_read_count = codec.MAX_READ_COUNT

    def __init__(self, unit: int = 1, input_registers: dict[int, int] | None = None,
                 holding_registers: dict[int, int] | None = None):
        if not 0 < unit < 248:
            raise ValueError(f"unit {unit} outside 1..247")
        self.unit = unit
        self.input_registers: dict[int, int] = dict(input_registers or {})
        self.holding_registers: dict[int, int] = dict(holding_registers or {})
        self.fault: str | None = None
        self.fault_code = DEVICE_FAILURE
        self.requests = 0

    def set_fault(self, fault: str | None, code: int = DEVICE_FAILURE) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {fault!r}")
        self.fault, self.fault_code = fault, code

    # --- banks (override to compute registers) ---

    def check_read(self, address: int, count: int) -> None:
        if not 1 <= count <= self.max_read_count:
            raise SimModbusError(ILLEGAL_VALUE)

    def read_input(self, address: int, count: int) -> list[int]:
        self.check_read(address, count)
        return self._read(self.input_registers, address, count)

    def read_holding(self, address: int, count: int) -> list[int]:
        self.check_read(address, count)
        return self._read(self.holding_registers, address, count)

    def write_holding(self, address: int, values: list[int]) -> None:
        if any(a not in self.holding_registers for a in range(address, address + len(values))):
            raise SimModbusError(ILLEGAL_ADDRESS)
        for i, v in enumerate(values):
            self.holding_registers[address + i] = v

    @staticmethod
    def _read(bank: dict[int, int], address: int, count: int) -> list[int]:
        try:
            return [bank[a] for a in range(address, address + count)]
        except KeyError:
            raise SimModbusError(ILLEGAL_ADDRESS) from None

    # --- the device contract ---

    def handle(self, request: codec.ModbusPDU):
        self.requests += 1
        if self.fault == "silent":
            return None
        if self.fault == "exception":
            return codec.exception_reply(request, self.fault_code)
        if self.fault == "garbage":
            return Garbage(GARBAGE)
        fc = request.function_code
        try:
            if fc == codec.FC_READ_INPUT:
                return codec.read_response(request, self.read_input(request.address, request.count))
            if fc == codec.FC_READ_HOLDING:
                return codec.read_response(request, self.read_holding(request.address, request.count))
            if fc == codec.FC_WRITE_SINGLE:
                self.write_holding(request.address, list(request.registers))
                return codec.write_response(request)
            if fc == codec.FC_WRITE_MULTIPLE:
                if not 1 <= request.count <= codec.MAX_WRITE_COUNT or len(request.registers) != request.count:
                    raise SimModbusError(ILLEGAL_VALUE)
                self.write_holding(request.address, list(request.registers))
                return codec.write_response(request)
            raise SimModbusError(ILLEGAL_FUNCTION)
        except SimModbusError as e:
            return codec.exception_reply(request, e.code)


class ModbusServerProtocol(Protocol):
    """Decodes requests from one master, asks the addressed device, frames its reply."""

    def __init__(self, factory: "ModbusServerFactory"):
        self.factory = factory
        self.framing = factory.framing_cls(server=True)
        self._buf = bytearray()

    def connectionMade(self) -> None:
        self.factory.connections.add(self)

    def connectionLost(self, reason=None) -> None:
        self.factory.connections.discard(self)

    def dataReceived(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while buf:
            used, request = self.framing.decode(buf)
            if not used:
                return
            del buf[:used]
            if request is None:
                self.factory.stats["bad_frames"] += 1
                continue
            self._answer(request)

    def _answer(self, request: codec.ModbusPDU) -> None:
        self.factory.stats["requests"] += 1
        unit = request.dev_id
        devices = self.factory.devices
        if unit == 0:
            for device in list(devices.values()):
                device.handle(request)
            return
        device = devices.get(unit)
        if device is None:
            return             # as on RS485: nobody answers an address that is not on the bus
        reply = device.handle(request)
        if reply is None:
            return
        if isinstance(reply, Garbage):
            out = bytes(reply)
        elif isinstance(reply, (bytes, bytearray)):
            out = self.framing.encode_raw(reply, unit, request.transaction_id)
        else:
            reply.dev_id, reply.transaction_id = unit, request.transaction_id
            out = self.framing.encode(reply)
        self.transport.write(out)


class ModbusServerFactory(Factory):
    """Serves `devices` (keyed by unit) to any number of masters; `framing_cls` TcpFraming or RtuFraming."""

    def __init__(self, devices: Iterable[SimDevice] = (), framing_cls=codec.TcpFraming):
        self.devices: dict[int, SimDevice] = {d.unit: d for d in devices}
        self.framing_cls = framing_cls
        self.connections: set[ModbusServerProtocol] = set()
        self.stats = {"requests": 0, "bad_frames": 0}

    def add(self, device: SimDevice) -> None:
        self.devices[device.unit] = device

    def buildProtocol(self, addr):
        return ModbusServerProtocol(self)

    def drop_connections(self) -> None:
        """Close every master's connection (to test reconnecting)."""
        for proto in list(self.connections):
            proto.transport.loseConnection()


def listen_tcp(reactor, devices: Iterable[SimDevice], port: int = 0, interface: str = "127.0.0.1",
               framing_cls=codec.TcpFraming):
    """Serve `devices` on Modbus TCP; returns the IListeningPort (`.getHost().port`, `.factory`)."""
    factory = ModbusServerFactory(devices, framing_cls)
    listening = reactor.listenTCP(port, factory, interface=interface)
    listening.factory = factory
    return listening
