"""Pure Modbus codecs: request/response PDUs (pymodbus's) to bytes and back, for TCP (MBAP) and RTU (CRC).

A framing object turns a PDU into one frame and a byte buffer into frames:

    framing.encode(pdu) -> bytes                 # pdu.dev_id is the unit; pdu.transaction_id the MBAP tid
    framing.decode(buf) -> (used, pdu | None)

`decode` never keeps state. Its answer means:
    (0, None)     not enough bytes for a frame yet: call again when more arrive
    (n, pdu)      the first n bytes were one good frame
    (n, None)     the first n bytes are garbage (bad CRC, impossible header, undecodable PDU): drop
                  them and count one bad frame

`server=False` decodes responses (a client), `server=True` requests (a simulator). pymodbus is used only for
its PDU classes, its PDU decoder table and its framers' encoders; its framers' decode is not used because it
hides garbage (it waits for more data forever) and consumes whole buffers.
"""
from __future__ import annotations

import struct
from typing import Protocol, Sequence

from pymodbus.exceptions import NotImplementedException
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

__all__ = [
    "Framing", "TcpFraming", "RtuFraming", "ModbusPDU", "ExceptionResponse",
    "read_holding", "read_input", "write_single", "write_multiple", "exception_reply",
    "read_response", "write_response", "registers_to_float32", "float32_to_registers",
    "FC_READ_HOLDING", "FC_READ_INPUT", "FC_WRITE_SINGLE", "FC_WRITE_MULTIPLE",
]

FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_SINGLE = 0x06
FC_WRITE_MULTIPLE = 0x10

MAX_READ_COUNT = 125      # Modbus application protocol limit for FC03/FC04
MAX_WRITE_COUNT = 123     # ... and for FC16


# --- PDU constructors (what EVC sends and what simulators answer) ---

def read_holding(unit: int, address: int, count: int) -> ModbusPDU:
    _check_read(address, count)
    return ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit)


def read_input(unit: int, address: int, count: int) -> ModbusPDU:
    _check_read(address, count)
    return ReadInputRegistersRequest(address=address, count=count, dev_id=unit)


def write_single(unit: int, address: int, value: int) -> ModbusPDU:
    _check_address(address)
    _check_value(value)
    return WriteSingleRegisterRequest(address=address, registers=[value], dev_id=unit)


def write_multiple(unit: int, address: int, values: Sequence[int]) -> ModbusPDU:
    _check_address(address)
    if not 1 <= len(values) <= MAX_WRITE_COUNT:
        raise ValueError(f"write of {len(values)} registers: must be 1..{MAX_WRITE_COUNT}")
    for v in values:
        _check_value(v)
    return WriteMultipleRegistersRequest(address=address, registers=list(values), dev_id=unit)


def read_response(request: ModbusPDU, registers: Sequence[int]) -> ModbusPDU:
    """The good answer to an FC03/FC04 request."""
    cls = ReadInputRegistersResponse if request.function_code == FC_READ_INPUT else ReadHoldingRegistersResponse
    return cls(registers=list(registers), dev_id=request.dev_id, transaction_id=request.transaction_id)


def write_response(request: ModbusPDU) -> ModbusPDU:
    """The good answer to an FC06/FC16 request (an echo of address and value/count)."""
    if request.function_code == FC_WRITE_SINGLE:
        return WriteSingleRegisterResponse(address=request.address, registers=list(request.registers),
                                           dev_id=request.dev_id, transaction_id=request.transaction_id)
    return WriteMultipleRegistersResponse(address=request.address, count=request.count,
                                          dev_id=request.dev_id, transaction_id=request.transaction_id)


def exception_reply(request: ModbusPDU, code: int) -> ModbusPDU:
    return ExceptionResponse(request.function_code, code, device_id=request.dev_id,
                             transaction=request.transaction_id)


def _check_address(address: int) -> None:
    if not 0 <= address <= 0xFFFF:
        raise ValueError(f"register address {address} outside 0..65535")


def _check_read(address: int, count: int) -> None:
    _check_address(address)
    if not 1 <= count <= MAX_READ_COUNT:
        raise ValueError(f"read of {count} registers: must be 1..{MAX_READ_COUNT}")
    if address + count > 0x10000:
        raise ValueError(f"read of {count} registers at {address} runs past 65535")


def _check_value(value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"register value {value} outside 0..65535")


# --- float32 helpers (Eastron and most meters: IEEE-754, high word first) ---

def registers_to_float32(registers: Sequence[int], offset: int = 0) -> float:
    return struct.unpack(">f", struct.pack(">HH", registers[offset], registers[offset + 1]))[0]


def float32_to_registers(value: float) -> tuple[int, int]:
    return struct.unpack(">HH", struct.pack(">f", value))  # type: ignore[return-value]


# --- framings ---

class Framing(Protocol):
    has_tid: bool          # frames carry a transaction id (MBAP); replies are matched by it
    flush_between: bool    # no resync marker in the stream: drop leftover bytes before each request

    def encode(self, pdu: ModbusPDU) -> bytes: ...

    def encode_raw(self, pdu_bytes: bytes, unit: int, tid: int = 0) -> bytes: ...

    def decode(self, buf: bytes) -> tuple[int, ModbusPDU | None]: ...


_READ_RESPONSES = {FC_READ_HOLDING: ReadHoldingRegistersResponse, FC_READ_INPUT: ReadInputRegistersResponse}


class _Base:
    def __init__(self, server: bool = False):
        self.server = server
        self._decoder = DecodePDU(is_server=server)

    def encode_raw(self, pdu_bytes: bytes, unit: int, tid: int = 0) -> bytes:
        """Frame PDU bytes (function code + data) as they are: simulators use it to send odd replies."""
        return self._framer.encode(bytes(pdu_bytes), unit, tid)

    def _pdu_size(self, pdu_bytes: bytes) -> int | None:
        """Expected PDU length (function code included) from its first bytes; 0 = need more; None = impossible."""
        if not pdu_bytes:
            return 0
        fc = pdu_bytes[0]
        if fc & 0x80:
            return 2
        cls = self._decoder.pdu_table.get(fc, (None, None))[0 if self.server else 1]
        if cls is None:
            return None
        try:
            # pymodbus sizes an RTU frame: unit byte + PDU + 2 CRC bytes
            size = cls.calculateRtuFrameSize(b"\x00" + pdu_bytes)
        except NotImplementedException:
            return None
        return size - 3 if size else 0

    def _decode_pdu(self, pdu_bytes: bytes, unit: int, tid: int) -> ModbusPDU | None:
        if self._pdu_size(pdu_bytes) != len(pdu_bytes):
            return None
        fc = pdu_bytes[0]
        if not self.server and fc in _READ_RESPONSES:
            if pdu_bytes[1] % 2:
                return None
            # The hot path of every poll. pymodbus's decode unpacks register by register and formats the
            # whole PDU for a debug log line even when nothing logs; one unpack does the same job.
            pdu = _READ_RESPONSES[fc]()
            pdu.registers = list(struct.unpack_from(f">{pdu_bytes[1] // 2}H", pdu_bytes, 2))
        else:
            pdu = self._decoder.decode(pdu_bytes)
            if pdu is None:
                return None
        pdu.dev_id = unit
        pdu.transaction_id = tid
        return pdu


class TcpFraming(_Base):
    """Modbus TCP: MBAP header (tid, protocol 0, length, unit) + PDU. The stream has no resync marker, so
    garbage drops everything buffered."""

    has_tid = True
    flush_between = False

    def __init__(self, server: bool = False):
        super().__init__(server)
        self._framer = FramerSocket(self._decoder)

    def encode(self, pdu: ModbusPDU) -> bytes:
        return self._framer.buildFrame(pdu)

    def decode(self, buf: bytes) -> tuple[int, ModbusPDU | None]:
        if len(buf) < 8:
            return 0, None
        tid, proto, length, unit = struct.unpack_from(">HHHB", buf)
        if proto != 0 or not 2 <= length <= 254:
            return len(buf), None
        size = 6 + length
        if len(buf) < size:
            return 0, None
        return size, self._decode_pdu(bytes(buf[7:size]), unit, tid)


class RtuFraming(_Base):
    """Modbus RTU: unit + PDU + CRC16. A frame is found by its function code's length rule and its CRC;
    after garbage the decoder skips to the next offset where a whole frame with a good CRC starts."""

    has_tid = False
    flush_between = True

    def __init__(self, server: bool = False):
        super().__init__(server)
        self._framer = FramerRTU(self._decoder)

    def encode(self, pdu: ModbusPDU) -> bytes:
        return self._framer.buildFrame(pdu)

    def _frame_at(self, buf: bytes, start: int) -> int | None:
        """Size of the good frame at `start`: None = no (valid) frame there, 0 = cannot tell yet."""
        size = self._pdu_size(buf[start + 1:start + 8])
        if size is None:
            return None
        if size == 0 or len(buf) - start < size + 3:
            return 0
        end = start + size + 3
        crc = (buf[end - 2] << 8) | buf[end - 1]
        return size + 3 if FramerRTU.check_CRC(bytes(buf[start:end - 2]), crc) else None

    def decode(self, buf: bytes) -> tuple[int, ModbusPDU | None]:
        if len(buf) < 4:
            return 0, None
        size = self._frame_at(buf, 0)
        if size:
            return size, self._decode_pdu(bytes(buf[1:size - 2]), buf[0], 0)
        if size == 0:
            return 0, None
        for start in range(1, len(buf) - 3):
            if self._frame_at(buf, start):
                return start, None
        return len(buf), None
