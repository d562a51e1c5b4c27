"""reader/line: a reader that sends one card per ASCII line (USB-serial readers, Wiegand-to-serial converters).

Each line ends with CR, LF or CR LF; empty lines (a stray Enter) are ignored; a line longer than `max_line`
characters, or with characters that cannot be in it, is dropped and counted, never taken in part. `line_format` says
what the line holds: `hex` (the UID's bytes in hex, separators `-`, `:` and spaces ignored: "1C-78-F2-BF") or
`decimal` (a number: "0008075634"). The UID's bytes are then written as `uid_format` says, so a keyboard reader that
types the little-endian decimal of a 13.56 MHz card ("3220338716") gives the OCPP form with `line_format: decimal`,
`uid_format: hex_reversed` ("1C78F2BF"). Reference: rfid-readers.md §3, §6. Such readers have no outputs EVC drives.

Readers that repeat the line while the card is held are one presentation until no line came for `absent_s`.
"""
from __future__ import annotations

import dataclasses

from evc.errors import ConfigError
from evc.reader.base import SerialReader, SerialReaderConfig
from evc.reader.framing import Dropped
from evc.registry import READERS

LINE_FORMATS = ("hex", "decimal")
_SEPARATORS = b"-: "


def decode(buf: bytes, max_line: int = 32) -> tuple[int, bytes | Dropped | None]:
    """One step over `buf`: (bytes used, the line's text without its end, a Dropped, or None for more input).
    An empty line is consumed with no item."""
    ends = [i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0]
    if not ends:
        if len(buf) > max_line:
            # Overlong: drop what came so far; the rest up to the next line end is dropped as it arrives.
            return len(buf), Dropped("overlong", len(buf))
        return 0, None
    end = min(ends)
    line = buf[:end]
    if len(line) > max_line:
        return end + 1, Dropped("overlong", end + 1)
    return end + 1, (line if line else None)


def parse(line: bytes, line_format: str) -> bytes | None:
    """The UID bytes a line carries, or None when it cannot be one."""
    text = bytes(b for b in line if b not in _SEPARATORS)
    if not text or any(b < 0x21 or b > 0x7E for b in text):
        return None
    try:
        if line_format == "hex":
            if len(text) % 2:
                text = b"0" + text
            return bytes.fromhex(text.decode("ascii"))
        if not text.isdigit():
            return None
        value = int(text)
        return value.to_bytes(max(4, (value.bit_length() + 7) // 8), "big")
    except ValueError:
        return None


class LineDriver:
    def __init__(self, reader: "LineReader"):
        self.reader = reader
        self.buf = b""
        self.skipping = False      # inside an overlong line: drop up to its end

    def connected(self, write) -> None:
        self.buf, self.skipping = b"", False

    def data(self, data: bytes) -> None:
        self.buf += data
        cfg = self.reader.config
        while self.buf:
            if self.skipping:
                ends = [i for i in (self.buf.find(b"\r"), self.buf.find(b"\n")) if i >= 0]
                if not ends:
                    self.reader.dropped(Dropped("overlong", len(self.buf)))
                    self.buf = b""
                    return
                self.reader.dropped(Dropped("overlong", min(ends)))
                self.buf = self.buf[min(ends):]
                self.skipping = False
                continue
            used, item = decode(self.buf, cfg.max_line)
            if used == 0:
                return
            chunk, self.buf = self.buf[:used], self.buf[used:]
            if isinstance(item, Dropped):
                self.reader.dropped(item)
                if chunk[-1:] not in (b"\r", b"\n"):
                    self.skipping = True        # the overlong line goes on: drop the rest of it as it comes
            elif item is not None:
                uid = parse(item, cfg.line_format)
                if uid is None:
                    self.reader.dropped(Dropped("bad_frame", len(item)))
                else:
                    self.reader.lines += 1
                    self.reader.uid_seen(uid)

    def disconnected(self) -> None:
        self.buf, self.skipping = b"", False


@dataclasses.dataclass(frozen=True)
class LineConfig(SerialReaderConfig):
    baud: int = 9600
    line_format: str = "hex"
    max_line: int = 32

    def __post_init__(self):
        super().__post_init__()
        if self.line_format not in LINE_FORMATS:
            raise ConfigError(f"config/line_format: {self.line_format!r} is not one of {', '.join(LINE_FORMATS)}")
        if self.max_line < 1:
            raise ConfigError(f"config/max_line: {self.max_line} is less than 1")


@READERS.register("line")
class LineReader(SerialReader):
    """See the module docstring."""

    Config = LineConfig
    absent_s = 1.0

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.lines = 0

    def make_driver(self) -> LineDriver:
        return LineDriver(self)
