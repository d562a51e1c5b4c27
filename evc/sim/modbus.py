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
        out = self._reply(request)
        if out is not None:
            self.transport.write(out)

    def _reply(self, request: codec.ModbusPDU) -> bytes | None:
        """The framed bytes the addressed device answers with, or None when it stays silent."""
        unit = request.dev_id
        devices = self.factory.devices
        if unit == 0:
            for device in list(devices.values()):
                device.handle(request)
            return None
        device = devices.get(unit)
        if device is None:
            return None        # as on RS485: nobody answers an address that is not on the bus
        reply = device.handle(request)
        if reply is None:
            return None
        if isinstance(reply, Garbage):
            return bytes(reply)
        if isinstance(reply, (bytes, bytearray)):
            return self.framing.encode_raw(reply, unit, request.transaction_id)
        reply.dev_id, reply.transaction_id = unit, request.transaction_id
        return self.framing.encode(reply)


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


GATEWAY_TARGET_FAILED = 0x0B

# What a TCP framing adds to a PDU (MBAP header with the unit byte) and what RTU adds (unit byte + CRC).
_MBAP_BYTES = 7
_RTU_EXTRA_BYTES = 3


class _GatewayProtocol(ModbusServerProtocol):
    """The one master's connection to a SimGateway: requests go onto the gateway's serial line."""

    factory: "SimGateway"

    def connectionMade(self) -> None:
        gw = self.factory
        gw.connections.add(self)
        gw.stats["connections"] += 1
        gw.stats["max_open"] = max(gw.stats["max_open"], len(gw.connections))

    def _answer(self, request: codec.ModbusPDU) -> None:
        self.factory._transaction(self, request)


class SimGateway(ModbusServerFactory):
    """A TCP -> RS485 gateway as sold for meters: ONE TCP connection, one serial line behind it, N units on it.

        gw = SimGateway(reactor, [SimSdm630(u) for u in range(1, 9)], baud=38400)
        port = gw.listen(reactor)          # port.getHost().port

    Like the cheap gateways found on sites: a second TCP connection while one is open is closed at once
    (`stats["refused"]`). Each request is sent on the line at `baud` (8 data bits, `parity`, `stopbits`); the
    unit answers after `turnaround_s`; its reply takes its own wire time; only then does the reply go back
    over TCP. A silent unit keeps the line for `target_timeout_s`, then the gateway gives up: quietly, or with
    exception 0B (gateway target failed to respond) when `answer_timeouts` (Modbus TCP framing only).

    The line carries one transaction at a time: a request that arrives while one is still on the line
    collides with it (`stats["overlaps"]`) and neither gets an answer, as on a real RS485 pair. The idle time
    of the line before each request is recorded in `gaps` (seconds), so a test can check the master's bus gap.
    `framing_cls=RtuFraming` makes it a transparent (RTU over TCP) gateway.
    """

    def __init__(self, clock, devices: Iterable[SimDevice] = (), framing_cls=codec.TcpFraming, *,
                 baud: int = 9600, parity: str = "N", stopbits: int = 1, turnaround_s: float = 0.002,
                 target_timeout_s: float = 0.2, answer_timeouts: bool = False, max_connections: int = 1):
        super().__init__(devices, framing_cls)
        self.clock = clock
        self.char_s = (1 + 8 + (0 if parity == "N" else 1) + stopbits) / baud
        self.turnaround_s = turnaround_s
        self.target_timeout_s = target_timeout_s
        self.answer_timeouts = answer_timeouts
        self.max_connections = max_connections
        self.stats.update({"connections": 0, "refused": 0, "max_open": 0, "overlaps": 0, "answered": 0,
                           "silent": 0})
        self.gaps: list[float] = []
        self._busy = None                   # the DelayedCall that ends the transaction on the line
        self._collided = False
        self._line_free_at: float | None = None

    def buildProtocol(self, addr):
        if len(self.connections) >= self.max_connections:
            self.stats["refused"] += 1
            return None                     # Twisted closes a connection that gets no protocol
        return _GatewayProtocol(self)

    def listen(self, reactor, port: int = 0, interface: str = "127.0.0.1"):
        """Listen for the master on `port` (0: a free one); returns the IListeningPort."""
        listening = reactor.listenTCP(port, self, interface=interface)
        listening.factory = self
        return listening

    @property
    def min_gap_s(self) -> float | None:
        return min(self.gaps) if self.gaps else None

    def _rtu_len(self, framed: bytes) -> int:
        if self.framing_cls is codec.TcpFraming:
            return len(framed) - _MBAP_BYTES + _RTU_EXTRA_BYTES
        return len(framed)

    def _transaction(self, proto: _GatewayProtocol, request: codec.ModbusPDU) -> None:
        now = self.clock.seconds()
        self.stats["requests"] += 1
        if self._busy is not None:
            self.stats["overlaps"] += 1
            self._collided = True
            log.warn("gateway: a request for unit {unit} arrived while the line was busy: collision",
                     unit=request.dev_id)
            return
        if self._line_free_at is not None:
            self.gaps.append(now - self._line_free_at)
        request_s = (len(request.encode()) + 1 + _RTU_EXTRA_BYTES) * self.char_s
        out = proto._reply(request)
        if out is not None:
            self.stats["answered"] += 1
            duration_s = request_s + self.turnaround_s + self._rtu_len(out) * self.char_s
        elif request.dev_id == 0:
            duration_s = request_s + self.turnaround_s
        else:
            self.stats["silent"] += 1
            duration_s = request_s + self.target_timeout_s
            if self.answer_timeouts and self.framing_cls is codec.TcpFraming:
                reply = codec.exception_reply(request, GATEWAY_TARGET_FAILED)
                out = proto.framing.encode(reply)
        self._busy = self.clock.callLater(duration_s, self._done, proto, out)

    def _done(self, proto: _GatewayProtocol, out: bytes | None) -> None:
        self._busy = None
        # the moment the reply leaves: the master cannot start its gap any earlier
        self._line_free_at = self.clock.seconds()
        collided, self._collided = self._collided, False
        if out is not None and not collided and proto in self.connections:
            proto.transport.write(out)
