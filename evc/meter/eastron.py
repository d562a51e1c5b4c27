"""What the Eastron meter types share: config fields, read plans with fallbacks, the poll loop, state.

A type module (sdm630, sdm120, sdm72) gives its register fields and an ordered list of read plans. The
first plan reads as much as the map allows in one request; when the meter answers exception 02 (illegal
address: the span crosses registers it does not serve) the meter falls back to the next plan for good (per
instance) and polls again at once. See shared/reference/modbus-meters.md for the maps and the timing.

With `bus` (a Modbus TCP gateway) the meter shares the one connection to that gateway with every other device
configured with the same host:port (evc.bus.gateway): one request in flight, the bus gap, per-unit counters and
backoff, as on a conn. On a conn and on a gateway alike the meter claims its `bus_addr` while it runs
(evc.conn.IBusAddresses), so a meter configured at the address of another device on that bus is refused with an
error naming config/bus_addr and the holder.
"""
from __future__ import annotations

import dataclasses
import zlib
import math
import struct
from typing import Any, Callable, ClassVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from evc.bus.client import IModbusBus
from evc.bus.errors import ModbusError, ModbusException
from evc.bus.gateway import FRAMINGS, GATEWAYS, Gateway
from evc.bus.tcp import parse_host_port
from evc.conn import IBusAddresses
from evc.errors import ConfigError
from evc.events import Subscribers
from evc.instance import Instance
from evc.meter.base import NO_PHASES, IMeter, Reading

log = Logger(namespace="evc.meter")

ILLEGAL_ADDRESS = 0x02

# Deadbands for state writes: below these a change is noise for every consumer of etcd state.
DEADBANDS = {"V": 0.5, "A": 0.05, "W": 5.0, "energy_Wh": 1.0, "frequency_Hz": 0.05}
# Digits kept in etcd state per quantity.
DIGITS = {"V": 1, "A": 2, "W": 0, "energy_Wh": 0, "frequency_Hz": 2}


@dataclasses.dataclass(frozen=True)
class EastronConfig:
    """The settings every Eastron type has (schema/meter/<type>.json describes them)."""
    bus_addr: int = 1
    bus: str | None = None
    conn: str | None = None
    interval_s: float = 1.0
    stale_s: float | None = None
    timeout_ms: int | None = None
    gap_ms: int = 100
    bus_framing: str = "tcp"
    type: str | None = None      # the seed writes config/type; the type itself is chosen by the supervisor

    def __post_init__(self):
        if (self.bus is None) == (self.conn is None):
            raise ConfigError("config/bus: give exactly one of bus (a Modbus TCP gateway, host:port) "
                              "and conn (an rs485 conn)")
        if not 1 <= self.bus_addr <= 247:
            raise ConfigError(f"config/bus_addr: {self.bus_addr} is outside 1..247")
        if self.bus is not None:
            try:
                parse_host_port(self.bus)
            except ValueError as e:
                raise ConfigError(f"config/bus: {e}") from None
        if self.interval_s <= 0:
            raise ConfigError("config/interval_s: must be more than 0")
        if self.bus_framing not in FRAMINGS:
            raise ConfigError(f"config/bus_framing: {self.bus_framing!r} is not one of {', '.join(FRAMINGS)}")

    @property
    def effective_stale_s(self) -> float:
        return self.stale_s if self.stale_s is not None else 5 * self.interval_s


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """Which FC04 reads make one poll: ((address, count), ...)."""
    name: str
    reads: tuple[tuple[int, int], ...]


# Field names: ("V", 0) is L1 voltage; ("W_total", 0); ("energy_kWh", 0) the import counter.
Field = tuple[str, int]


def three_phase_fields() -> dict[int, Field]:
    f: dict[int, Field] = {}
    for quantity, base in (("V", 0x00), ("A", 0x06), ("W", 0x0C)):
        f.update({base + 2 * i: (quantity, i) for i in range(3)})
    f.update({0x0034: ("W_total", 0), 0x0046: ("frequency_Hz", 0), 0x0048: ("energy_kWh", 0)})
    return f


def _float(hi: int, lo: int) -> float | None:
    value = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    if math.isnan(value) or math.isinf(value):
        return None
    return float(f"{value:.7g}")    # a float32 holds ~7 significant digits; drop the binary noise


@implementer(IMeter)
class EastronMeter(Instance):
    """An Eastron meter polled over Modbus (TCP gateway or an rs485 conn). Subclasses set FIELDS and PLANS."""

    FIELDS: ClassVar[dict[int, Field]]
    PLANS: ClassVar[tuple[ReadPlan, ...]]
    PHASES: ClassVar[int] = 3

    def __init__(self, ctx, config: EastronConfig):
        super().__init__(ctx, config)
        self.reading = Reading()
        self.bus: Any = None
        self._gateway: Gateway | None = None
        self._counter_base: dict[str, int] = {}
        self._subscribers = Subscribers(ctx.key)
        self._release: Callable[[], None] | None = None
        self._plan_index = 0
        self._next_poll: IDelayedCall | None = None
        self._stale_timer: IDelayedCall | None = None
        self._polling: defer.Deferred | None = None
        self._last_request_end = -math.inf
        self._failing: str | None = None       # the kind of error being reported, to log transitions only
        self._timeout_s = config.timeout_ms / 1000.0 if config.timeout_ms is not None else None
        self._gap_s = config.gap_ms / 1000.0
        self._stale_s = config.effective_stale_s

    # --- IMeter ---

    def subscribe(self, callback: Callable[[Reading], None]) -> Callable[[], None]:
        return self._subscribers.add(callback)

    @property
    def plan(self) -> ReadPlan:
        """The read plan in use (it changes only when the meter refuses the larger one)."""
        return self.PLANS[self._plan_index]

    # --- service ---

    def startService(self) -> None:
        cfg = self.config
        if cfg.conn is not None:
            bus = self.ctx.resolve("conn", cfg.conn)
            if not IModbusBus.providedBy(bus):
                raise ConfigError(f"config/conn: conn {cfg.conn!r} is not a Modbus bus")
            if IBusAddresses.providedBy(bus):
                # Two devices at one address would answer each other's requests: refuse the second one clearly.
                self._release = bus.claim(cfg.bus_addr, self.ctx.key, leaf="config/bus_addr")
            self.bus = bus
        else:
            if self.ctx.reactor is None:
                raise ConfigError("config/bus: a meter on a Modbus TCP gateway needs a reactor to connect")
            gateway = GATEWAYS.acquire(self.ctx.reactor, self.ctx.clock, cfg.bus, self.ctx.key, gap_s=self._gap_s,
                                       framing=cfg.bus_framing, leaf="config/bus", framing_leaf="config/bus_framing")
            try:
                self._release = gateway.claim(cfg.bus_addr, self.ctx.key, leaf="config/bus_addr")
            except ConfigError:
                gateway.leave(self.ctx.key)
                raise
            self._gateway = self.bus = gateway
        # The bus outlives this instance (other devices share it): count from here, so that the state's
        # errors/* are this instance's, as the docs promise.
        self._counter_base = self.bus.counters(cfg.bus_addr)
        super().startService()
        self.ctx.state.set("stale", True)
        self._spread_s = (zlib.crc32(self.ctx.key.encode()) % 1000) / 1000 * self.config.interval_s
        self._next_poll = self.ctx.clock.callLater(0, self._poll)

    def stopService(self):
        super().stopService()
        for call in (self._next_poll, self._stale_timer):
            if call is not None and call.active():
                call.cancel()
        self._next_poll = self._stale_timer = None
        if self._polling is not None:
            self._polling.cancel()
        if self._release is not None:
            release, self._release = self._release, None
            release()
        if self._gateway is not None:
            gateway, self._gateway = self._gateway, None
            return gateway.leave(self.ctx.key)
        return None

    # --- polling ---

    def _poll(self) -> None:
        self._next_poll = None
        started = self.ctx.clock.seconds()
        self._polling = defer.Deferred.fromCoroutine(self._poll_once())
        self._polling.addErrback(self._unexpected)
        self._polling.addBoth(self._polled, started)

    def _polled(self, _, started: float) -> None:
        self._polling = None
        self._write_counters()
        if not self.running:
            return
        delay_s = max(0.0, started + self.config.interval_s - self.ctx.clock.seconds())
        if self._spread_s:
            # Meters started together would otherwise poll in the same instant forever: after the first (immediate)
            # poll, shift each one once by a stable fraction of its interval, derived from its name.
            delay_s, self._spread_s = delay_s + self._spread_s, 0.0
        self._next_poll = self.ctx.clock.callLater(delay_s, self._poll)

    def _unexpected(self, failure) -> None:
        if failure.check(defer.CancelledError):
            return None
        log.failure("{meter}: poll failed", failure, meter=self.ctx.key)
        return None

    async def _poll_once(self) -> None:
        try:
            values = await self._read_plan()
        except ModbusError as e:
            self._report_failure(e)
            return
        self._good(values)

    async def _read_plan(self) -> dict[Field, float | None]:
        while True:
            values: dict[Field, float | None] = {}
            try:
                for address, count in self.plan.reads:
                    regs = await self._read(address, count)
                    for offset in range(0, count, 2):
                        field = self.FIELDS.get(address + offset)
                        if field is not None:
                            values[field] = _float(regs[offset], regs[offset + 1])
                return values
            except ModbusException as e:
                if e.code != ILLEGAL_ADDRESS or self._plan_index + 1 >= len(self.PLANS):
                    raise
                old = self.plan.name
                self._plan_index += 1
                log.info("{meter}: the meter refused the {old} read ({error}); using {new} reads from now on",
                         meter=self.ctx.key, old=old, error=str(e), new=self.plan.name)

    async def _read(self, address: int, count: int) -> list[int]:
        # Eastron meters have been seen to reboot when polled back to back: keep a pause between requests.
        clock = self.ctx.clock
        wait_s = self._last_request_end + self._gap_s - clock.seconds()
        if wait_s > 0:
            await task.deferLater(clock, wait_s, lambda: None)
        try:
            return await self.bus.read_input_registers(self.config.bus_addr, address, count,
                                                       timeout_s=self._timeout_s)
        finally:
            self._last_request_end = clock.seconds()

    # --- results ---

    def _good(self, values: dict[Field, float | None]) -> None:
        now = self.ctx.clock.seconds()

        def phases(q: str) -> tuple:
            if (q, 0) not in self.FIELDS.values():
                return NO_PHASES
            return tuple(values.get((q, i)) for i in range(self.PHASES)) + (None,) * (3 - self.PHASES)

        W = phases("W")
        W_total = values.get(("W_total", 0))
        if W_total is None and self.PHASES == 1:
            W_total = W[0]       # a single-phase meter's total is its one phase
        kWh = values.get(("energy_kWh", 0))
        was_stale = self.reading.stale
        self.reading = Reading(V=phases("V"), A=phases("A"), W=W, W_total=W_total,
                               energy_Wh=None if kWh is None else round(kWh * 1000.0, 3),
                               frequency_Hz=values.get(("frequency_Hz", 0)), updated=now, stale=False)
        if self._failing is not None:
            log.info("{meter}: readings are back", meter=self.ctx.key)
            self._failing = None
        if self._stale_timer is not None and self._stale_timer.active():
            self._stale_timer.reset(self._stale_s)
        else:
            self._stale_timer = self.ctx.clock.callLater(self._stale_s, self._go_stale)
        self._write_reading(was_stale)
        self._notify()

    def _go_stale(self) -> None:
        self._stale_timer = None
        self.reading = dataclasses.replace(self.reading, stale=True)
        log.warn("{meter}: no good reading for {stale_s} s: stale", meter=self.ctx.key, stale_s=self._stale_s)
        self.ctx.state.set("stale", True)
        self._notify()

    def _report_failure(self, e: ModbusError) -> None:
        kind = type(e).__name__
        if kind != self._failing:
            log.warn("{meter}: {error}", meter=self.ctx.key, error=str(e))
            self._failing = kind
        else:
            log.debug("{meter}: {error}", meter=self.ctx.key, error=str(e))

    def _notify(self) -> None:
        self._subscribers.notify(self.reading)

    def _write_reading(self, was_stale: bool) -> None:
        r, state = self.reading, self.ctx.state
        for q, values in (("V", r.V), ("A", r.A), ("W", r.W)):
            for i, v in enumerate(values):
                if v is not None:
                    state.set(f"{q}/L{i + 1}", _rounded(q, v), deadband=DEADBANDS[q])
        if r.W_total is not None:
            state.set("W_total", _rounded("W", r.W_total), deadband=DEADBANDS["W"])
        if r.energy_Wh is not None:
            state.set("energy_Wh", _rounded("energy_Wh", r.energy_Wh), deadband=DEADBANDS["energy_Wh"])
        if r.frequency_Hz is not None:
            state.set("frequency_Hz", _rounded("frequency_Hz", r.frequency_Hz),
                      deadband=DEADBANDS["frequency_Hz"])
        # `updated` tells people and tools that the meter is alive; writing it every poll would cost a
        # state write per second per meter for nothing.
        state.set("updated", round(r.updated, 1), deadband=self._stale_s / 2)
        if was_stale:
            state.set("stale", False)

    def _write_counters(self) -> None:
        if self.bus is None:
            return
        c, base = self.bus.counters(self.config.bus_addr), self._counter_base
        state = self.ctx.state
        for name in ("timeouts", "exceptions", "bad_frames"):
            state.set(f"errors/{name}", c[name] - base.get(name, 0))


def _rounded(quantity: str, value: float) -> float | int:
    digits = DIGITS[quantity]
    return int(round(value)) if digits == 0 else round(value, digits)
