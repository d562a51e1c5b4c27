"""reader/QUIO: a QUIO/DUALi QDE-950-4 13.56 MHz reader on an RS485 bus (Modbus RTU), polled through a conn/rs485
of its own or shared with meters and chargers, as Phoenix Contact's EV-CC controllers poll it.

Register map (reference rfid-readers.md §7, from the QDE-950-4 manual; marked there as far as it is verified):
input registers at word offsets 1-16 hold the UID, two bytes per register, high byte first; offset 17's low byte is
the UID's length in bytes (0: no card); 18-49 the same UID as ASCII hex and 50 that text's length (not used here).
Whether offset 1 is PDU address 0 or 1 is not verified: `register_base` is the PDU address of offset 1 (default 0).
Every `interval_s` EVC reads offsets 1-17 in one FC04 request (`bus_addr`, 17 registers). Untested on a real
device: the base address, whether the registers clear when the card leaves (EVC needs a read with length 0 to
re-arm; a reader that latches the last UID makes every card after the first one presentation per change of card),
and the reader's "card data hold time". The QDE-950-4's LED and BEEP are wires for a controller's outputs, not
Modbus registers, so EVC drives neither. The reader's line default is 115200 8N1: the conn's baud must match it and
every other device on that bus.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from evc.bus.client import IModbusBus
from evc.bus.errors import ModbusError, ModbusException
from evc.conn import IBusAddresses
from evc.errors import ConfigError
from evc.reader.base import ReaderBase, check_reader_config
from evc.reader.framing import Dropped
from evc.registry import READERS

log = Logger(namespace="evc.reader.quio")

UID_REGISTERS = 16
READ_COUNT = UID_REGISTERS + 1      # offsets 1..17: the UID and its length
MAX_UID_BYTES = 2 * UID_REGISTERS
OFFLINE_AFTER = 3                   # failed polls in a row before state/error says so


def parse_registers(registers: list[int]) -> bytes | None:
    """The UID in a read of offsets 1-17, or None without a card. ValueError: a length that cannot be."""
    if len(registers) < READ_COUNT:
        raise ValueError(f"{len(registers)} registers, {READ_COUNT} expected")
    n = registers[UID_REGISTERS] & 0xFF
    if n == 0:
        return None
    if n > MAX_UID_BYTES:
        raise ValueError(f"UID length {n} is more than {MAX_UID_BYTES}")
    raw = b"".join(r.to_bytes(2, "big") for r in registers[:UID_REGISTERS])
    return raw[:n]


def uid_registers(uid: bytes) -> list[int]:
    """Offsets 1-17 as a reader with `uid` in its field holds them (for the simulator and tests)."""
    raw = uid.ljust(MAX_UID_BYTES, b"\x00")
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, MAX_UID_BYTES, 2)] + [len(uid)]


@dataclasses.dataclass(frozen=True)
class QuioConfig:
    """schema/reader/QUIO.json describes every field."""
    conn: str
    bus_addr: int = 1
    register_base: int = 0
    interval_s: float = 0.3
    uid_format: str = "hex"
    charger: str | None = None
    chargers: Any = None
    hold_s: float = 60.0
    type: str | None = None

    def __post_init__(self):
        if not 1 <= self.bus_addr <= 247:
            raise ConfigError(f"config/bus_addr: {self.bus_addr} is outside 1..247")
        if not 0 <= self.register_base <= 0xFFFF - READ_COUNT:
            raise ConfigError(f"config/register_base: {self.register_base} is outside 0..{0xFFFF - READ_COUNT}")
        if self.interval_s <= 0:
            raise ConfigError("config/interval_s: must be more than 0")
        check_reader_config(self)


@READERS.register("QUIO")
class QuioReader(ReaderBase):
    """See the module docstring."""

    Config = QuioConfig

    def __init__(self, ctx, config: QuioConfig):
        super().__init__(ctx, config)
        self.presence.absent_s = max(0.5, 2.5 * config.interval_s)
        self.bus: Any = None
        self.polls = 0
        self._release: Callable[[], None] | None = None
        self._next: IDelayedCall | None = None
        self._polling: defer.Deferred | None = None
        self._failures = 0
        self._trouble: str | None = None

    def startService(self) -> None:
        cfg = self.config
        bus = self.ctx.resolve("conn", cfg.conn)
        if not IModbusBus.providedBy(bus):
            raise ConfigError(f"config/conn: conn {cfg.conn!r} is not a Modbus bus")
        if IBusAddresses.providedBy(bus):
            self._release = bus.claim(cfg.bus_addr, self.ctx.key, leaf="config/bus_addr")
        self.bus = bus
        super().startService()
        self._next = self.ctx.clock.callLater(0, self._poll)

    def stopService(self):
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._release is not None:
            self._release()
            self._release = None
        if self._polling is not None:
            self._polling.cancel()
        return None

    def _poll(self) -> None:
        self._next = None
        cfg = self.config
        self._polling = d = self.bus.read_input_registers(cfg.bus_addr, cfg.register_base, READ_COUNT)
        d.addCallbacks(self._polled, self._failed)
        d.addErrback(lambda f: None if f.check(defer.CancelledError) else
                     log.failure("{reader}: poll failed", f, reader=self.ctx.key))
        d.addBoth(self._again)

    def _again(self, _) -> None:
        self._polling = None
        if self.running:
            self._next = self.ctx.clock.callLater(self.config.interval_s, self._poll)

    def _polled(self, registers: list[int]) -> None:
        self.polls += 1
        self._failures = 0
        if self._trouble is not None:
            log.info("{reader}: the reader answers again", reader=self.ctx.key)
            self._trouble = None
            self.ctx.state.delete("error")
        self.ctx.state.set("device", "ok")
        try:
            uid = parse_registers(registers)
        except ValueError as e:
            self.dropped(Dropped("bad_frame", 1))
            log.debug("{reader}: {error}", reader=self.ctx.key, error=str(e))
            return
        if uid is None:
            self.uid_gone()
        else:
            self.uid_seen(uid)

    def _failed(self, f) -> None:
        if f.check(defer.CancelledError):
            return
        if not f.check(ModbusError):
            return f
        self._failures += 1
        cfg = self.config
        if f.check(ModbusException):
            message = (f"config/register_base: the QUIO reader at address {cfg.bus_addr} on conn {cfg.conn} refuses "
                       f"to read {READ_COUNT} input registers at {cfg.register_base} ({f.getErrorMessage()})")
        else:
            message = (f"the QUIO reader at address {cfg.bus_addr} on conn {cfg.conn} does not answer "
                       f"({f.getErrorMessage()})")
        if self._failures >= OFFLINE_AFTER or f.check(ModbusException):
            if message != self._trouble:
                log.warn("{reader}: {message}", reader=self.ctx.key, message=message)
                self._trouble = message
            self.ctx.state.update({"device": "no answer", "error": message})
            self.presence.gone()
        return None
