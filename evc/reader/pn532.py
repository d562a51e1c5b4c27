"""reader/PN532: an NXP PN532 13.56 MHz NFC module over HSU (its UART mode), polled by EVC.

Frames (reference rfid-readers.md §4): `00 00 FF LEN LCS TFI PD0..PDn DCS 00`, LEN counting TFI and data,
LEN + LCS = 0 and TFI + data + DCS = 0 (mod 256), TFI D4 host -> PN532 and D5 back, the reply's code = command + 1;
ACK `00 00 FF 00 FF 00`, NACK `00 00 FF FF 00 00` (asks for the last reply again), the error frame
`00 00 FF 01 FF 7F 81 00`; extended frames (LEN = LCS = FF, then a 16-bit length) are decoded too. The pure
decoder syncs on `00 FF`, so preamble zeros, noise and frames with a bad LCS or DCS cost only themselves.

What EVC does on each connection: the wake-up `55 55 00 00 00`, SAMConfiguration (normal mode), RFConfiguration
item 5 (few passive activation retries, so a poll without a card answers NbTg = 0 instead of waiting for one),
GetFirmwareVersion (state/firmware); then every `poll_s` InListPassiveTarget (one target, 106 kbps type A) and,
after a card was found, the RF field off (RFConfiguration item 1) so the card is selected anew by the next poll.
A command gets `ack_timeout_s` for its ACK and `reply_timeout_s` for its reply; a poll whose reply does not come
(a module left at infinite retries) is aborted with an ACK and counts as no card. A reply with a bad DCS is asked
for again once with a NACK. Commands that fail three times in a row restart the sequence from the wake-up and set
state/error until the module answers again.

UID: the NFCID as the card gives it, byte 0 first (a 4-, 7- or 10-byte UID). The PN532 has GPIOs but common
breakouts wire no beeper or LED to them, so EVC drives none.
"""
from __future__ import annotations

import dataclasses

from twisted.internet import defer, task
from twisted.logger import Logger

from evc.reader.base import SerialReader, SerialReaderConfig
from evc.reader.framing import Dropped
from evc.registry import READERS

log = Logger(namespace="evc.reader.pn532")

TFI_HOST, TFI_PN532 = 0xD4, 0xD5
ACK = bytes.fromhex("0000ff00ff00")
NACK = bytes.fromhex("0000ffff0000")
ERROR_FRAME = bytes.fromhex("0000ff01ff7f8100")
WAKEUP = bytes.fromhex("5555000000")

GET_FIRMWARE_VERSION = 0x02
SAM_CONFIGURATION = 0x14
RF_CONFIGURATION = 0x32
IN_LIST_PASSIVE_TARGET = 0x4A

SAM_NORMAL = b"\x01\x14\x01"               # normal mode, timeout 20 x 50 ms, use IRQ
RF_RETRIES = b"\x05\xff\x01\x02"           # item 5: MxRtyATR FF, MxRtyPSL 01, MxRtyPassiveActivation 2
RF_FIELD_OFF = b"\x01\x00"                 # item 1: RF field off
POLL_106A = b"\x01\x00"                    # MaxTg 1, BrTy 106 kbps type A


@dataclasses.dataclass(frozen=True)
class Ack:
    pass


@dataclasses.dataclass(frozen=True)
class Nack:
    pass


@dataclasses.dataclass(frozen=True)
class ErrorFrame:
    """The PN532's application-level error (syntax error in the host's frame)."""


@dataclasses.dataclass(frozen=True)
class Frame:
    tfi: int
    data: bytes          # PD0 (the command or reply code) onward


def encode(tfi: int, data: bytes) -> bytes:
    """A normal (or, above 254 bytes, extended) information frame."""
    body = bytes([tfi]) + data
    dcs = (-sum(body)) & 0xFF
    if len(body) <= 254:
        head = bytes([len(body), (-len(body)) & 0xFF])
    else:
        hi, lo = len(body) >> 8, len(body) & 0xFF
        head = bytes([0xFF, 0xFF, hi, lo, (-(hi + lo)) & 0xFF])
    return b"\x00\x00\xff" + head + body + bytes([dcs, 0x00])


def command(code: int, params: bytes = b"") -> bytes:
    """A host -> PN532 command frame."""
    return encode(TFI_HOST, bytes([code]) + params)


def reply(code: int, params: bytes = b"") -> bytes:
    """A PN532 -> host reply frame to command `code`."""
    return encode(TFI_PN532, bytes([code + 1]) + params)


def decode(buf: bytes) -> tuple[int, object | None]:
    """One step over `buf`: (bytes used, Ack | Nack | ErrorFrame | Frame | Dropped | None). (0, None): more input."""
    i = buf.find(b"\x00\xff")
    if i < 0:
        keep = 1 if buf.endswith(b"\x00") else 0     # it may be the start of 00 FF
        n = len(buf) - keep
        noise = sum(1 for b in buf[:n] if b)
        return n, (Dropped("noise", noise) if noise else None)
    if i > 0:
        noise = sum(1 for b in buf[:i] if b)          # preamble zeros are not noise
        return i, (Dropped("noise", noise) if noise else None)
    if len(buf) < 4:
        return 0, None
    ln, lcs = buf[2], buf[3]
    if ln == 0x00 and lcs == 0xFF:
        return 4, Ack()
    if ln == 0xFF and lcs == 0x00:
        return 4, Nack()
    if ln == 0xFF and lcs == 0xFF:
        if len(buf) < 7:
            return 0, None
        hi, lo, lcs2 = buf[4], buf[5], buf[6]
        if (hi + lo + lcs2) & 0xFF:
            return 2, Dropped("bad_frame", 2)
        length, start = (hi << 8) | lo, 7
    else:
        if (ln + lcs) & 0xFF or ln == 0:
            return 2, Dropped("bad_frame", 2)
        length, start = ln, 4
    end = start + length + 1
    if len(buf) < end:
        return 0, None
    body, dcs = buf[start:start + length], buf[start + length]
    if (sum(body) + dcs) & 0xFF:
        return end, Dropped("bad_checksum", end)
    if body == b"\x7f":
        return end, ErrorFrame()
    return end, Frame(body[0], body[1:])


def parse_target(data: bytes) -> bytes | None:
    """The UID in an InListPassiveTarget reply's data (after D5 4B); None without a target.
    ValueError when the reply is malformed."""
    if not data:
        raise ValueError("empty InListPassiveTarget reply")
    if data[0] == 0:
        return None
    if len(data) < 6:
        raise ValueError(f"InListPassiveTarget reply too short ({len(data)} bytes)")
    n = data[5]
    uid = data[6:6 + n]
    if n not in (4, 7, 10) or len(uid) != n:
        raise ValueError(f"InListPassiveTarget reply with an NFCID of {n} bytes ({len(data) - 6} present)")
    return uid


class Pn532Trouble(Exception):
    """A command went unanswered or was answered wrongly."""


class Pn532Driver:
    """The host side of one connection (see the module docstring)."""

    def __init__(self, reader: "Pn532Reader"):
        self.reader = reader
        self.clock = reader.ctx.clock
        self.cfg = reader.config
        self.buf = b""
        self.write = None
        self.alive = False
        self._ack: defer.Deferred | None = None
        self._reply: defer.Deferred | None = None
        self._code: int | None = None
        self._nacked = False
        self._sleep: defer.Deferred | None = None
        self._run: defer.Deferred | None = None

    # -- bytes --

    def connected(self, write) -> None:
        self.write, self.alive, self.buf = write, True, b""
        self._run = defer.ensureDeferred(self._loop())
        self._run.addErrback(self._crashed)

    def disconnected(self) -> None:
        self.alive = False
        for d in (self._ack, self._reply, self._sleep):
            if d is not None and not d.called:
                d.cancel()

    def _crashed(self, f):
        if not f.check(defer.CancelledError):
            log.failure("{reader}: the PN532 loop failed", f, reader=self.reader.ctx.key)

    def data(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            used, item = decode(self.buf)
            if item is not None:
                self._item(item)
            if used == 0:
                break
            self.buf = self.buf[used:]
        if len(self.buf) > 600:
            self.reader.dropped(Dropped("noise", len(self.buf)))
            self.buf = b""

    def _item(self, item) -> None:
        if isinstance(item, Dropped):
            self.reader.dropped(item)
            if item.reason == "bad_checksum" and self._reply is not None and not self._nacked and self.alive:
                self._nacked = True
                self.write(NACK)        # the PN532 sends its last reply again
            return
        if isinstance(item, Ack):
            if self._ack is not None and not self._ack.called:
                self._ack.callback(None)
            return
        if isinstance(item, ErrorFrame):
            if self._reply is not None and not self._reply.called:
                self._reply.errback(Pn532Trouble("the PN532 answered a syntax error"))
            return
        if isinstance(item, Frame):
            if (item.tfi == TFI_PN532 and self._reply is not None and not self._reply.called and item.data
                    and item.data[0] == (self._code or 0) + 1):
                self._reply.callback(item.data[1:])
            else:
                self.reader.dropped(Dropped("unexpected", 1))
            return
        self.reader.dropped(Dropped("unexpected", 1))     # a NACK: the module never sends one

    # -- commands --

    async def command(self, code: int, params: bytes = b"", reply_timeout_s: float | None = None) -> bytes:
        names = {GET_FIRMWARE_VERSION: "GetFirmwareVersion", SAM_CONFIGURATION: "SAMConfiguration",
                 RF_CONFIGURATION: "RFConfiguration", IN_LIST_PASSIVE_TARGET: "InListPassiveTarget"}
        name = names.get(code, f"command {code:02X}")
        self._ack, self._reply, self._code, self._nacked = defer.Deferred(), defer.Deferred(), code, False
        ack, rep = self._ack, self._reply
        self.write(command(code, params))
        try:
            try:
                await ack.addTimeout(self.cfg.ack_timeout_s, self.clock)
            except defer.TimeoutError:
                raise Pn532Trouble(f"no ACK to {name}") from None
            try:
                return await rep.addTimeout(reply_timeout_s or self.cfg.reply_timeout_s, self.clock)
            except defer.TimeoutError:
                if self.alive:
                    self.write(ACK)         # abort the command, so the next one is heard
                raise Pn532Trouble(f"no reply to {name}") from None
        finally:
            self._ack = self._reply = None

    async def _pause(self, seconds: float) -> None:
        self._sleep = task.deferLater(self.clock, seconds, lambda: None)
        try:
            await self._sleep
        finally:
            self._sleep = None

    async def _start(self) -> None:
        self.write(WAKEUP)
        await self.command(SAM_CONFIGURATION, SAM_NORMAL)
        await self.command(RF_CONFIGURATION, RF_RETRIES)
        fw = await self.command(GET_FIRMWARE_VERSION)
        if len(fw) >= 3:
            self.reader.firmware(f"PN5{fw[0]:02X} {fw[1]}.{fw[2]}")

    async def _loop(self) -> None:
        failures, started = 0, False
        while self.alive:
            try:
                if not started:
                    await self._start()
                    started = True
                    failures = 0
                    self.reader.device_ok()
                try:
                    data = await self.command(IN_LIST_PASSIVE_TARGET, POLL_106A, self.cfg.poll_timeout_s)
                except Pn532Trouble as e:
                    if not str(e).startswith("no reply"):
                        raise
                    data = b"\x00"      # infinite retries on the module: no card this time
                failures = 0
                self.reader.device_ok()
                try:
                    uid = parse_target(data)
                except ValueError as e:
                    self.reader.dropped(Dropped("bad_frame", 1))
                    log.debug("{reader}: {error}", reader=self.reader.ctx.key, error=str(e))
                    uid = None
                if uid is not None:
                    self.reader.polls_with_card += 1
                    self.reader.uid_seen(uid)
                    await self.command(RF_CONFIGURATION, RF_FIELD_OFF)
                await self._pause(self.cfg.poll_s)
            except Pn532Trouble as e:
                if not self.alive:
                    return
                failures += 1
                if failures >= 3:
                    started = False
                    self.reader.device_trouble(str(e))
                await self._pause(min(self.cfg.poll_s * failures, 2.0))
            except defer.CancelledError:
                return


@dataclasses.dataclass(frozen=True)
class Pn532Config(SerialReaderConfig):
    baud: int = 115200
    poll_s: float = 0.2
    ack_timeout_s: float = 0.1
    reply_timeout_s: float = 0.5
    poll_timeout_s: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        from evc.errors import ConfigError
        for name in ("poll_s", "ack_timeout_s", "reply_timeout_s", "poll_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config/{name}: must be more than 0")


@READERS.register("PN532")
class Pn532Reader(SerialReader):
    """See the module docstring."""

    Config = Pn532Config

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        # A card answers every poll while held; three empty polls in a row (or a failed one) and it is gone.
        self.presence.absent_s = max(0.5, 3 * config.poll_s + config.poll_timeout_s)
        self.polls_with_card = 0
        self._trouble: str | None = None

    def make_driver(self) -> Pn532Driver:
        return Pn532Driver(self)

    def firmware(self, text: str) -> None:
        self.ctx.state.set("firmware", text)

    def device_ok(self) -> None:
        if self._trouble is not None:
            log.info("{reader}: the PN532 answers again", reader=self.ctx.key)
            self._trouble = None
            self.ctx.state.delete("error")
        self.ctx.state.set("device", "ok")

    def device_trouble(self, why: str) -> None:
        message = (f"the PN532 on {self.link.via if self.link else 'its line'} does not answer ({why}): check its "
                   "power, its wiring (TX to RX) and that it is set to HSU")
        if message != self._trouble:
            log.warn("{reader}: {message}", reader=self.ctx.key, message=message)
            self._trouble = message
        self.ctx.state.update({"device": "no answer", "error": message})
