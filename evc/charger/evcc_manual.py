"""charger/EVCC_manual: an EVSE-DIN / SimpleEVSE-WB board on an RS485 conn (Modbus RTU), as an ICharger.

Register map and its disputed points: shared/reference/evse-modbus.md. What this driver does with it:
- At start (and again until it succeeds) it reads 1005 (firmware) and 2000x18 (configuration) once: 2005 bit7
  set means 1000/1001 count 0.01 A ("precise"); 2005 bits 13/14 (disable after charge / disabled) are cleared
  with one write, once, because either leaves the board refusing to charge whatever EVC asks; 2002 is the
  board's minimum current.
- Every `interval_s` it reads 1000x8: 1000 the setpoint the board holds (read back: `status.setpoint_A`),
  1001 what the pilot offers, 1002 the vehicle state (1 none, 2 plugged, 3/4 charging, 5 fault), 1003 the
  cable's limit, 1007 status bits (bit1 diode check, bit2 ventilation refused, bit4/bit5 RCD: faults).
- `apply(current_A)` writes 1000 (0 = pause; else 6 .. min(A_max, cable limit)) as a priority write.

Safety rules (the charger must never stay above the newest value control asked for):
- The newest value wins: a write that fails is retried with growing delays, always with the newest value.
- `status.setpoint_A` is the value read back from 1000, except that a write which may have landed (in flight,
  timed out, or acknowledged but not read back yet) counts when it is higher: control never under-counts a
  charger, and a lowering is never reported before the board confirms it.
- When the board's 1000 differs from what EVC last got it to accept (a power cycle puts 2000 back into it, a
  button press changes it), the newest value is written again.
- A value the board refuses (exception reply) is replaced by 0 (pause) and reported in `write_error`.
- Mode OFF, or `auth: token` without a presented token, pauses the charger whatever control asks.

Sessions (evc.session): the charger owns a SessionTracker fed on every poll with the status and its meter's energy
counter; with `auth: none` a car is authorized as it is plugged, with `auth: token` by authorize(); deauthorize()
ends the session (DeAuthorized). wants_current() asks only while an authorized session is open, and a session open
when EVC stopped continues if the car is still plugged when the new instance first polls. The session's readings
are its meter's, fresh in the poll that opened it (or the first fresh one after, if the meter was stale then) and
in the last poll before it ended; the tracker writes the newest session to state/session/ as for every charger type.

Events: every change of `status` (the `updated` stamp aside) goes to `subscribe()` callbacks and to
`ctx.events` topic ("charger", <name>) as the ChargerStatus itself; authorize()/deauthorize() publish
{"authorized": bool, "id_tag": str | None} on topic ("authorization", <name>).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from evc.bus.client import IModbusBus
from evc.bus.errors import ModbusError, ModbusException
from evc.charger.base import PHASE_INDEX, ChargerStatus, ICharger, check_common_config, write_status
from evc.conn import IBusAddresses
from evc.errors import ConfigError
from evc.events import Subscribers
from evc.instance import Instance
from evc.meter.base import IMeter, Reading
from evc.registry import CHARGERS
from evc.session import SessionTracker

log = Logger(namespace="evc.charger.evcc_manual")

# Registers (PDU addresses, no 40001 offset).
REG_SET_CURRENT = 1000
REG_FIRMWARE = 1005
REG_CONFIG = 2000
CONFIG_COUNT = 18
STATUS_COUNT = 8
REG_CONFIG_BITS = REG_CONFIG + 5

CFG_PRECISE = 1 << 7
CFG_DISABLE_AFTER_CHARGE = 1 << 13
CFG_DISABLED = 1 << 14

STATUS_DIODE_FAIL = 1 << 1
STATUS_VENT_FAIL = 1 << 2
STATUS_RCD = (1 << 4) | (1 << 5)

VEHICLE = {1: "none", 2: "plugged", 3: "charging", 4: "charging", 5: "fault"}
IEC_MIN_A = 6


@dataclasses.dataclass(frozen=True)
class EvccManualConfig:
    """schema/charger/EVCC_manual.json describes every field."""
    conn: str
    A_max: float
    conn_port: int = 1
    meter: str | None = None
    mode: str = "OFF"
    auth: str = "none"
    phases: int = 3
    phase_map: tuple[str, ...] | None = None
    priority: int = 0
    interval_s: float = 1.0
    type: str | None = None      # the seed's config/type form; the type itself is chosen by the supervisor

    def __post_init__(self):
        if not 1 <= self.conn_port <= 247:
            raise ConfigError(f"config/conn_port: {self.conn_port} is outside 1..247")
        check_common_config(self)
        if self.auth not in ("none", "token"):
            raise ConfigError(f"config/auth: {self.auth!r} is not none or token")
        if self.interval_s <= 0:
            raise ConfigError("config/interval_s: must be more than 0")


@dataclasses.dataclass(eq=False)
class _Write:
    """A setpoint write that may have reached the board (in centiamps), until a read that began after it ended."""
    cA: int
    finished: int | None = None     # the write's number among finished writes; None while in flight


@CHARGERS.register("EVCC_manual")
@implementer(ICharger)
class EvccManual(Instance):
    """One EVSE-DIN board. See the module docstring."""

    Config = EvccManualConfig

    offline_after = 3            # consecutive failed polls before status.online turns False
    write_retry_min_s = 0.5
    write_retry_max_s = 5.0

    def __init__(self, ctx, config: EvccManualConfig):
        super().__init__(ctx, config)
        self.status = ChargerStatus(vehicle="unknown", online=False, actual_A=(None,) * config.phases)
        self.bus: Any = None
        self.meter: Any = None
        self.firmware: int | None = None
        self.precise = False
        self.device_min_A = IEC_MIN_A
        self._ready = False              # configuration read: the units of 1000 are known
        self._bits_cleared = False
        self._release: Callable[[], None] | None = None
        self._meter_unsubscribe: Callable[[], None] | None = None
        self._subscribers = Subscribers(ctx.key, "status subscriber")
        self._authorized: str | None = None
        # setpoint bookkeeping, in centiamps
        self._asked_A: float | None = None
        self._readback_cA: int | None = None
        self._acked_cA: int | None = None
        self._refused_cA: int | None = None
        self._failed_cA: int | None = None
        self._uncertain: list[_Write] = []
        self._writes_finished = 0
        self._writing = False
        self._write_retry: IDelayedCall | None = None
        self._retry_s = self.write_retry_min_s
        self._trouble_logged: tuple | None = None
        self._waiters: list[defer.Deferred] = []
        # polling
        self._failures = 0
        self._next_poll: IDelayedCall | None = None
        self._polling: defer.Deferred | None = None
        self._poll_again = False
        self._cable_A: float | None = None
        # Free charging (auth none) authorizes every car as it is plugged; with tokens, authorize() does.
        self.sessions = SessionTracker(ctx, authorize_on_plug=(config.auth == "none"))

    # --- ICharger ---

    def wants_current(self) -> bool:
        s = self.status
        # may_charge: an authorized session is open; one that ended (deauthorized, stopped) asks for nothing more
        # until the car is unplugged or a new token arrives.
        return (self._allowed() and self.sessions.may_charge and s.online and not s.fault
                and s.vehicle in ("plugged", "charging"))

    def apply(self, current_A) -> defer.Deferred:
        """Set 1000. Fires with the amps the board accepted once the newest value landed (or needed no write);
        fails with the ModbusError of a failed attempt (retries go on, see `write_error`)."""
        if current_A < 0:
            raise ValueError(f"{self.ctx.key}: current {current_A} A is negative")
        if not self.running:
            return defer.fail(defer.CancelledError(f"{self.ctx.key} is not running"))
        if float(current_A) != self._asked_A:
            self._refused_cA = None        # a new value deserves a try, even after the board refused another
        self._asked_A = float(current_A)
        d = defer.Deferred()
        self._waiters.append(d)
        self._target_changed()
        return d

    def subscribe(self, callback: Callable[[ChargerStatus], None]) -> Callable[[], None]:
        return self._subscribers.add(callback)

    # --- authorization (readers and fronts) ---

    @property
    def authorized(self) -> bool:
        return self._authorized is not None

    def authorize(self, id_tag: str) -> None:
        """A token was presented: with `auth: token`, mode ON may charge from now until the car is unplugged."""
        self._authorized = id_tag
        log.info("{charger}: authorized", charger=self.ctx.key)    # never log the token itself
        self.sessions.authorized(id_tag)
        self._authorization_changed()

    def deauthorize(self) -> None:
        """Withdraw the authorization: with `auth: token` the charger pauses at once."""
        if self._authorized is None:
            return
        self._authorized = None
        log.info("{charger}: authorization withdrawn", charger=self.ctx.key)
        self.sessions.end("DeAuthorized")
        self._authorization_changed()

    def _authorization_changed(self) -> None:
        if self.config.auth == "token":
            self.ctx.state.set("authorized", self.authorized)
        if self.ctx.events is not None:
            self.ctx.events.publish(("authorization", self.ctx.name),
                                    {"authorized": self.authorized, "id_tag": self._authorized})
        self._target_changed()

    def _allowed(self) -> bool:
        return self.config.mode == "ON" and (self.config.auth == "none" or self._authorized is not None)

    # --- service ---

    def startService(self) -> None:
        cfg = self.config
        bus = self.ctx.resolve("conn", cfg.conn)
        if not IModbusBus.providedBy(bus):
            raise ConfigError(f"config/conn: conn {cfg.conn!r} is not a Modbus bus")
        meter = None
        if cfg.meter is not None:
            meter = self.ctx.resolve("meter", cfg.meter)
            if not IMeter.providedBy(meter):
                raise ConfigError(f"config/meter: meter {cfg.meter!r} gives no readings")
        # Last of the checks that can refuse the start, so that a refused start holds no address.
        if IBusAddresses.providedBy(bus):
            self._release = bus.claim(cfg.conn_port, self.ctx.key, leaf="config/conn_port")
        if meter is not None:
            self.meter = meter
            self._meter_unsubscribe = meter.subscribe(self._meter_reading)
        self.bus = bus
        super().startService()
        self.sessions.start()
        self.ctx.state.update({"online": False, "mode": cfg.mode})
        if cfg.auth == "token":
            self.ctx.state.set("authorized", False)
        if not self._allowed():
            # OFF (or no token yet) pauses at once: 0 needs no knowledge of the board's units.
            self._asked_A = 0.0
            self._target_changed()
        self._next_poll = self.ctx.clock.callLater(0, self._poll)

    def stopService(self):
        super().stopService()
        for call in (self._next_poll, self._write_retry):
            if call is not None and call.active():
                call.cancel()
        self._next_poll = self._write_retry = None
        if self._polling is not None:
            self._polling.cancel()
        if self._meter_unsubscribe is not None:
            self._meter_unsubscribe()
            self._meter_unsubscribe = None
        if self._release is not None:
            self._release()
            self._release = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(defer.CancelledError(f"{self.ctx.key} stopped"))
        # The open session stays open in data/sessions: the next instance (a restart) continues it.
        return self.sessions.stop()

    # --- setpoints ---

    def _to_cA(self, register: int) -> int:
        return register if self.precise else register * 100

    def _to_register(self, cA: int) -> int:
        return cA if self.precise else cA // 100

    def _target_cA(self) -> int | None:
        """The value 1000 must hold now (centiamps), or None: nothing asked yet, leave the board as it is."""
        if not self._allowed():
            return 0
        if self._asked_A is None:
            # Control has not spoken yet: leave the board alone, unless it holds more than the circuit may carry
            # (2000 puts 32 A into 1000 at power-up on many boards).
            if self._ready and self._readback_cA is not None and self._readback_cA > self.config.A_max * 100:
                return self._ceiling_cA(float(self.config.A_max))
            return None
        return self._ceiling_cA(self._asked_A)

    def _ceiling_cA(self, asked_A: float) -> int:
        amps = min(asked_A, float(self.config.A_max))
        if self._cable_A:
            amps = min(amps, self._cable_A)
        if amps < max(IEC_MIN_A, self.device_min_A):
            return 0        # never between 0 and the minimum, and never above what was asked
        # Round down: a fraction of an amp above the allocation is still above it.
        cA = math.floor(amps * 100 + 1e-6) if self.precise else math.floor(amps + 1e-6) * 100
        return 0 if cA == self._refused_cA else cA

    def _target_changed(self) -> None:
        target = self._target_cA()
        if self._write_retry is not None and self._write_retry.active() and target != self._failed_cA:
            # A retry is waiting for an older value: the newest one goes now.
            self._write_retry.cancel()
            self._write_retry = None
        self._sync()

    def _sync(self) -> None:
        """Write the target when the board does not (or may not) hold it; resolve apply() waiters when it does."""
        if not self.running or self.bus is None or self._writing:
            return
        if self._write_retry is not None and self._write_retry.active():
            return
        target = self._target_cA()
        if target is None or (target > 0 and not self._ready):
            return
        if self._acked_cA == target or (not self._uncertain and self._readback_cA == target):
            self._resolve_waiters(target)
            return
        self._write(target)

    def _write(self, cA: int) -> None:
        self._writing = True
        entry = _Write(cA)
        self._uncertain.append(entry)
        self.ctx.state.set("wanted_A", cA / 100)
        self._refresh_status()
        d = self.bus.write_registers(self.config.conn_port, REG_SET_CURRENT, [self._to_register(cA)],
                                     priority=True)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(entry,), errbackArgs=(entry,))

    def _written(self, _, entry: _Write) -> None:
        self._writing = False
        self._writes_finished += 1
        entry.finished = self._writes_finished
        self._acked_cA = entry.cA
        self._retry_s = self.write_retry_min_s
        if not self.running:
            return
        self._trouble_logged = None
        if self._failed_cA is not None and self._refused_cA is None:
            log.info("{charger}: {current_A} A written after failures", charger=self.ctx.key,
                     current_A=entry.cA / 100)
            self._failed_cA = None
            self.ctx.state.delete("write_error")
        if entry.cA == self._target_cA():
            self._resolve_waiters(entry.cA)
        self._sync()
        self._poll_soon()     # read it back, so that setpoint_A is confirmed at once

    def _write_failed(self, failure, entry: _Write) -> None:
        self._writing = False
        self._writes_finished += 1
        entry.finished = self._writes_finished
        amps = entry.cA / 100
        self._failed_cA = entry.cA
        if not self.running:
            return
        if failure.check(ModbusException):
            # The board refused the value: it did not take it.
            self._uncertain.remove(entry)
            if entry.cA > 0:
                self._refused_cA = entry.cA
                message = f"the EVSE refused {amps:g} A ({failure.value}); pausing instead"
                delay_s = 0.0
            else:
                message = f"the EVSE refused to pause ({failure.value}); retrying"
                delay_s = self._next_retry_s()
        else:
            if not failure.check(ModbusError):
                log.failure("{charger}: writing {current_A} A failed", failure, charger=self.ctx.key,
                            current_A=amps)
            delay_s = self._next_retry_s()
            message = f"writing {amps:g} A failed ({failure.getErrorMessage()}); retrying in {delay_s:g} s"
        # Once per kind of trouble: a long outage retries every few seconds and would fill the log.
        trouble = (entry.cA, type(failure.value).__name__)
        if trouble != self._trouble_logged:
            log.warn("{charger}: {message}", charger=self.ctx.key, message=message)
            self._trouble_logged = trouble
        self.ctx.state.set("write_error", message)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)
        self._refresh_status()
        self._write_retry = self.ctx.clock.callLater(delay_s, self._retry_write)

    def _next_retry_s(self) -> float:
        delay_s = self._retry_s
        self._retry_s = min(self._retry_s * 2, self.write_retry_max_s)
        return delay_s

    def _retry_write(self) -> None:
        self._write_retry = None
        self._sync()

    def _resolve_waiters(self, cA: int) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(cA / 100)

    def _setpoint_A(self) -> float:
        values = [w.cA for w in self._uncertain]
        if self._readback_cA is not None:
            values.append(self._readback_cA)
        return max(values) / 100 if values else self.status.setpoint_A

    # --- polling ---

    def _poll(self) -> None:
        self._next_poll = None
        started = self.ctx.clock.seconds()
        self._polling = defer.Deferred.fromCoroutine(self._poll_once())
        self._polling.addErrback(self._unexpected)
        self._polling.addBoth(self._polled, started)

    def _polled(self, _, started: float) -> None:
        self._polling = None
        if not self.running:
            return
        if self._poll_again:
            self._poll_again = False
            delay_s = 0.0
        else:
            delay_s = max(0.0, started + self.config.interval_s - self.ctx.clock.seconds())
        self._next_poll = self.ctx.clock.callLater(delay_s, self._poll)

    def _poll_soon(self) -> None:
        if not self.running:
            return
        if self._polling is not None:
            self._poll_again = True
        elif self._next_poll is not None and self._next_poll.active():
            self._next_poll.reset(0)

    def _unexpected(self, failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("{charger}: poll failed", failure, charger=self.ctx.key)

    async def _poll_once(self) -> None:
        try:
            if not self._ready:
                await self._read_configuration()
            seen_writes = self._writes_finished
            registers = await self.bus.read_holding_registers(self.config.conn_port, REG_SET_CURRENT, STATUS_COUNT)
        except ModbusError as e:
            self._poll_failed(e)
            return
        self._poll_ok(registers, seen_writes)

    async def _read_configuration(self) -> None:
        unit = self.config.conn_port
        firmware = (await self.bus.read_holding_registers(unit, REG_FIRMWARE, 1))[0]
        block = await self.bus.read_holding_registers(unit, REG_CONFIG, CONFIG_COUNT)
        bits = block[5]
        stuck = bits & (CFG_DISABLE_AFTER_CHARGE | CFG_DISABLED)
        if stuck and not self._bits_cleared:
            # A config write the board probably keeps across power cycles: once per start, never per poll.
            try:
                await self.bus.write_registers(unit, REG_CONFIG_BITS, [bits & ~stuck])
                log.info("{charger}: cleared 2005 bits {bits} (disable after charge / disabled)",
                         charger=self.ctx.key, bits=f"0x{stuck:04X}")
                bits &= ~stuck
            except ModbusException as e:
                log.warn("{charger}: the EVSE refused to clear 2005 bits 13/14 ({error}); it may not charge",
                         charger=self.ctx.key, error=str(e))
            self._bits_cleared = True
        self.firmware = firmware
        self.precise = bool(bits & CFG_PRECISE)
        self.device_min_A = max(IEC_MIN_A, block[2])
        self._ready = True
        log.info("{charger}: EVSE firmware {firmware}, {units}, minimum {min_A} A, {power_on_A} A after power-up",
                 charger=self.ctx.key, firmware=firmware, units="0.01 A units" if self.precise else "whole amps",
                 min_A=self.device_min_A, power_on_A=block[0])
        if block[0] > self.config.A_max:
            log.warn("{charger}: after a power cut the EVSE charges at {power_on_A} A (register 2000), more than "
                     "A_max {A_max}, until EVC writes to it", charger=self.ctx.key, power_on_A=block[0],
                     A_max=self.config.A_max)
        self.ctx.state.update({"firmware": firmware, "precise": self.precise})

    def _poll_failed(self, e: ModbusError) -> None:
        self._failures += 1
        if self._failures >= self.offline_after and self.status.online:
            log.warn("{charger}: the EVSE does not answer ({error}): offline", charger=self.ctx.key, error=str(e))
            self._set_status(dataclasses.replace(self.status, online=False, setpoint_A=self._setpoint_A()))
        else:
            log.debug("{charger}: poll failed: {error}", charger=self.ctx.key, error=str(e))
        self.sessions.update(self.status, self._meter_Wh())

    def _poll_ok(self, registers: list[int], seen_writes: int) -> None:
        if self._failures >= self.offline_after or not self.status.online:
            log.info("{charger}: the EVSE answers: online", charger=self.ctx.key)
        self._failures = 0
        set_cA = self._to_cA(registers[0])
        offered_cA = self._to_cA(registers[1])
        state_code, cable_A, status_bits = registers[2], registers[3], registers[7]
        self.firmware = registers[5]
        self._readback_cA = set_cA
        # Writes that ended before this read began are now known: the read shows whether they landed.
        self._uncertain = [w for w in self._uncertain if w.finished is None or w.finished > seen_writes]
        if not self._uncertain and not self._writing and self._acked_cA is not None and set_cA != self._acked_cA:
            log.warn("{charger}: the EVSE holds {held_A} A, not the {acked_A} A it accepted (power cycle or "
                     "button?); writing again", charger=self.ctx.key, held_A=set_cA / 100,
                     acked_A=self._acked_cA / 100)
            self._acked_cA = None
        self._cable_A = float(cable_A) if cable_A > 0 else None   # 0: the board reports no PP limit
        vehicle = VEHICLE.get(state_code, "unknown")
        if vehicle == "unknown":
            log.warn("{charger}: invalid vehicle state {code} in 1002", charger=self.ctx.key, code=state_code)
        was_plugged = self.status.vehicle not in ("none", "unknown")
        if vehicle == "none" and was_plugged and self._authorized is not None:
            log.info("{charger}: car unplugged: authorization ends", charger=self.ctx.key)
            self._authorized = None
            self._authorization_changed()
        status = ChargerStatus(
            vehicle=vehicle, online=True, setpoint_A=self._setpoint_A(), offered_A=offered_cA / 100,
            actual_A=self._actual_A(), limit_A=self._cable_A, fault=self._fault(state_code, status_bits),
            updated=self.ctx.clock.seconds(), actual_s=self._actual_s())
        # The session first, so that status subscribers (control) already see the new wants_current().
        self.sessions.update(status, self._meter_Wh())
        self._set_status(status)
        self._sync()

    @staticmethod
    def _fault(state_code: int, bits: int) -> str:
        faults = []
        if bits & STATUS_RCD:
            faults.append("RCD fault (1007 bit4/bit5)")
        if bits & STATUS_DIODE_FAIL:
            faults.append("diode check failed (1007 bit1)")
        if bits & STATUS_VENT_FAIL:
            faults.append("the car needs ventilation, which is not allowed (1007 bit2)")
        if state_code == 5 and not faults:
            faults.append("the EVSE reports a failure (vehicle state 5)")
        return "; ".join(faults)

    # --- the charger's meter ---

    def _actual_A(self) -> tuple[float | None, ...]:
        reading = self.meter.reading if self.meter is not None else None
        if reading is None or reading.stale:
            return (None,) * self.config.phases
        return tuple(reading.A[PHASE_INDEX[p]] for p in self.config.phase_map)

    def _actual_s(self) -> float | None:
        """When its meter measured actual_A (control pairs it with the grid meter's reading of that moment)."""
        reading = self.meter.reading if self.meter is not None else None
        return None if reading is None or reading.stale else reading.updated

    def _meter_Wh(self) -> float | None:
        reading = self.meter.reading if self.meter is not None else None
        if reading is None or reading.stale:
            return None
        return reading.energy_Wh

    def _meter_reading(self, reading: Reading) -> None:
        self._set_status(dataclasses.replace(self.status, actual_A=self._actual_A(), actual_s=self._actual_s()))

    # --- status ---

    def _refresh_status(self) -> None:
        self._set_status(dataclasses.replace(self.status, setpoint_A=self._setpoint_A()))

    def _set_status(self, new: ChargerStatus) -> None:
        old, self.status = self.status, new
        self._write_state(new)
        if dataclasses.replace(old, updated=None) == dataclasses.replace(new, updated=None):
            return
        self._subscribers.notify(new)
        if self.ctx.events is not None:
            self.ctx.events.publish(("charger", self.ctx.name), new)

    def _write_state(self, s: ChargerStatus) -> None:
        state = self.ctx.state
        write_status(state, s, self.config.phase_map)
        state.set("cable_A", s.limit_A if s.limit_A is not None else 0)
        if self.firmware is not None:
            state.set("firmware", self.firmware)
