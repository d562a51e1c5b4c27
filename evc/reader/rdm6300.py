"""reader/RDM6300: a 125 kHz EM4100 UART module (RDM6300, RDM630) on a tty or a serial-over-TCP tunnel.

The module only transmits (9600 8N1): while a card is in the field it repeats a 14-byte frame every 50-65 ms,
`02`, ten ASCII hex digits (5 data bytes: a version/customer byte, then the 32-bit tag number), two ASCII hex
digits of checksum (XOR of the 5 data bytes), `03`; nothing marks the card's removal. Reference: rfid-readers.md §2.

The decoder is pure (`decode(buf) -> (used, frame | Dropped | None)`); it resyncs on every `02`, so noise, a frame
cut short by the next one, a wrong end byte and a bad checksum cost only themselves. The card is one presentation
until no good frame came for `absent_s`.

UID: the 5 data bytes. `uid_format` hex gives all ten digits as sent ("6F007B3972"), hex_reversed their byte order
reversed, decimal the tag number as cards and keyboard readers print it: bytes 1-4 as a 10-digit number
("0008075634"). The module has no beeper or lights EVC can drive (its LED pin is its own).
"""
from __future__ import annotations

import dataclasses

from evc.reader.base import SerialReader, SerialReaderConfig
from evc.reader.framing import Dropped
from evc.reader.uid import id_tag
from evc.registry import READERS

STX, ETX = 0x02, 0x03
FRAME_LEN = 14
_HEX = frozenset(b"0123456789ABCDEFabcdef")


def checksum(data: bytes) -> int:
    c = 0
    for b in data:
        c ^= b
    return c


def encode(data: bytes) -> bytes:
    """The frame a module sends for the 5 data bytes `data`."""
    if len(data) != 5:
        raise ValueError("an EM4100 code is 5 bytes")
    return bytes([STX]) + data.hex().upper().encode() + f"{checksum(data):02X}".encode() + bytes([ETX])


@dataclasses.dataclass(frozen=True)
class Rdm6300Frame:
    data: bytes          # the 5 data bytes


def decode(buf: bytes) -> tuple[int, Rdm6300Frame | Dropped | None]:
    """One step over `buf`: (bytes used, a frame, a Dropped, or None when more input is needed)."""
    start = buf.find(STX)
    if start < 0:
        return len(buf), Dropped("noise", len(buf))
    if start > 0:
        return start, Dropped("noise", start)
    # A new STX inside the frame: the one before was cut short (the card left mid-frame, or a byte was lost).
    restart = buf.find(STX, 1, FRAME_LEN)
    if restart > 0:
        return restart, Dropped("half_frame", restart)
    if len(buf) < FRAME_LEN:
        return 0, None
    frame = buf[:FRAME_LEN]
    body = frame[1:13]
    if frame[13] != ETX or not all(b in _HEX for b in body):
        return 1, Dropped("bad_frame", 1)       # resync after this STX
    data = bytes.fromhex(body[:10].decode())
    if checksum(data) != int(body[10:].decode(), 16):
        return FRAME_LEN, Dropped("bad_checksum", FRAME_LEN)
    return FRAME_LEN, Rdm6300Frame(data)


class Rdm6300Driver:
    """The byte stream of one connection: buffers, decodes, hands sightings to the reader."""

    max_buffer = 256

    def __init__(self, reader: "Rdm6300Reader"):
        self.reader = reader
        self.buf = b""

    def connected(self, write) -> None:
        self.buf = b""

    def data(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            used, item = decode(self.buf)
            if item is not None:
                if isinstance(item, Dropped):
                    self.reader.dropped(item)
                else:
                    self.reader.frames += 1
                    self.reader.uid_seen(item.data)
            if used == 0:
                break
            self.buf = self.buf[used:]
        if len(self.buf) > self.max_buffer:
            self.reader.dropped(Dropped("noise", len(self.buf)))
            self.buf = b""

    def disconnected(self) -> None:
        self.buf = b""


@dataclasses.dataclass(frozen=True)
class Rdm6300Config(SerialReaderConfig):
    baud: int = 9600


@READERS.register("RDM6300")
class Rdm6300Reader(SerialReader):
    """See the module docstring."""

    Config = Rdm6300Config
    # Frames repeat every 50-65 ms while the card is held; two or three lost in a row are still the same card.
    absent_s = 0.5

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.frames = 0

    def make_driver(self) -> Rdm6300Driver:
        return Rdm6300Driver(self)

    def tag_of(self, uid: bytes) -> str:
        if self.config.uid_format == "decimal":
            return id_tag(uid[1:], "decimal")       # the 32-bit tag number, as printed on the card
        return id_tag(uid, self.config.uid_format)
