"""control/builtin: the loop around allocate(): gathers the grid meter and the chargers, decides, writes setpoints.

When it recomputes (DESIGN §4):
- on every grid meter reading that shows a phase over its limit, at once (so an overload is answered within one
  meter poll), and whenever the meter's stale flag flips;
- when the meter has been silent for `stale_s` (a timer, not the next interval: failsafe within stale_s);
- on events: a charger's status changes what control cares about (car, online, device limit, wants current), a
  session starts, is authorized or ends (("session", name), ("authorization", name)), a charger instance starts or stops
  (("instance", "charger", name): with `chargers: "*"` the set follows the site live), the store is lost or back;
- every `interval_s` otherwise (which also paces increases).
A config change restarts the instance (the supervisor does that); a changed charger or meter that this control
names restarts it too (x-ref).

How it writes: decreases first, all at once (the largest first, so a shared bus carries the biggest relief
first); increases only once no write is in flight and every decrease of the round was accepted, and then from a
fresh recomputation, so a phase is never over its limit because an increase overtook a decrease on another bus.
A charger that is not online is never written; allocate() holds it and reserves its worst case: the larger of the
setpoint it last accepted, the one it was last asked for, and its measured draw.

Fail-safe: a stale grid meter puts every charger at failsafe_A at most (allocate's failsafe mode). A lost etcd
(store) puts control in "hold": the config is in memory, so the last good limits stay enforced, decreases still
happen, nothing is raised (an operator may have lowered a limit that EVC cannot read). Loss is detected by a
small read of this instance's `type` key every interval_s (failing, or not answering within interval_s), and by
any ("store",) event on the bus carrying "lost" or "ok" (a hook for the state writer); `set_store_lost()` is the
same hook for code that holds the instance.

Upstream caps: a front that limits chargers (front/ocpp turns the backend's charging profiles into amps) publishes
("cap", charger) -> (source, current_A or None) on the bus and offers ICapSource.caps() for a control that starts
after it. Control keeps the newest value per source and gives allocate() the lowest as ChargerInput.cap_A, so a cap
only ever lowers what the site limit allows; a cap change recomputes at once. None removes that source's cap.

State: mode (normal|failsafe|hold), headroom/L1..L3 and base/L1..L3 (A), allocations/<charger>/A and
allocations/<charger>/reason (allocate's sentence), caps/<charger> (the lowest upstream cap, A) while one is set.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import Interface, implementer

from evc.charger.base import ChargerStatus, ICharger
from evc.control.allocation import (
    PHASES, ChargerInput, Inputs, MeterReading, Result, SiteLimits, allocate,
)
from evc.errors import ConfigError
from evc.instance import Instance, follow_instances, named, select_instances
from evc.meter.base import IMeter, Reading
from evc.registry import CONTROLS

log = Logger(namespace="evc.control")

# The status fields that can change an allocation between two intervals; a change of the measured current alone
# waits for the interval (chargers may report it on every poll).
_STATUS_KEY = ("vehicle", "online", "limit_A", "fault")


class ICapSource(Interface):
    """A front that caps chargers (front/ocpp: the backend's charging profiles, ChangeAvailability)."""

    def caps() -> dict:
        """{charger name: current_A} for every charger it caps now (the same values as its ("cap", ...) events)."""


class IAllocations(Interface):
    """What a control decided, for fronts that report it upstream (GetCompositeSchedule)."""

    def allocation_A(charger: str):
        """The setpoint of the newest allocation for `charger` (A), or None when it does not drive it."""


@dataclasses.dataclass(frozen=True)
class BuiltinConfig:
    """The settings of control/builtin (schema/control/builtin.json describes them)."""
    meter: str
    A_max: Any                              # number, {"L1": .., "L2": .., "L3": ..} or [.., .., ..]; see limits
    chargers: Any = "*"                     # "*" or a tuple of charger names
    interval_s: float = 5.0
    stale_s: float = 10.0
    failsafe_A: int = 0
    min_on_s: float = 120.0
    min_off_s: float = 120.0
    deadband_A: float = 1.0
    ramp_s: float = 5.0
    type: str | None = None

    def __post_init__(self):
        a = self.A_max
        if isinstance(a, (list, tuple)):
            if len(a) != 3:
                raise ConfigError(f"config/A_max: give one number per phase (3), got {len(a)}")
            a = dict(zip(PHASES, a))
        if isinstance(a, dict):
            a = dict(a)
        object.__setattr__(self, "A_max", a)
        if self.chargers != "*":
            if isinstance(self.chargers, str) or not all(isinstance(c, str) for c in self.chargers):
                raise ConfigError('config/chargers: "*" or a list of charger names')
            object.__setattr__(self, "chargers", tuple(self.chargers))
        if self.interval_s <= 0:
            raise ConfigError("config/interval_s: must be more than 0")
        try:
            self.limits
        except (ValueError, TypeError) as e:
            # SiteLimits names the setting in its message; the supervisor wants the leaf first.
            leaf = next((f for f in ("failsafe_A", "stale_s", "min_on_s", "min_off_s", "deadband_A", "ramp_s")
                         if f in str(e)),
                        "A_max")
            raise ConfigError(f"config/{leaf}: {e}") from None

    @property
    def limits(self) -> SiteLimits:
        return SiteLimits(A_max=self.A_max, failsafe_A=self.failsafe_A, stale_s=self.stale_s,
                          min_on_s=self.min_on_s, min_off_s=self.min_off_s, deadband_A=self.deadband_A,
                          ramp_s=self.ramp_s)

    def follows(self, name: str) -> bool:
        return named(self.chargers, name)


@dataclasses.dataclass
class _Driven:
    """A charger this control drives."""
    instance: Any
    unsubscribe: Any
    seen: tuple = ()                       # _STATUS_KEY values and wants_current() at the last look


@CONTROLS.register("builtin")
@implementer(IAllocations)
class BuiltinControl(Instance):
    """Distributes the site's current among its chargers (see the module docstring for when and how)."""
    Config = BuiltinConfig

    def __init__(self, ctx, config: BuiltinConfig):
        super().__init__(ctx, config)
        self.limits = config.limits
        self.meter = None
        self.chargers: dict[str, _Driven] = {}
        self.store_lost = False
        self.last: Result | None = None     # the newest allocation
        self.recomputes = 0                 # how many allocations ran (tests and benchmarks)
        self._asked: dict[str, int] = {}    # the newest setpoint asked of each charger
        self._switched: dict[str, float | None] = {}
        self._inflight: dict[str, int] = {}
        self._reading_wanted = False        # setpoints changed: the next meter reading shows their effect
        # Each charger's measured current, the most it could then draw (its setpoint) and when its current was
        # measured, as of the grid meter's last reading: (actual_A, setpoint_A, measured_s).
        self._draws: dict[str, tuple[tuple, float, float | None]] = {}
        # Each charger's recent setpoint changes, oldest first: [(when_s, setpoint before)] (allocate's `changes`).
        self._changes: dict[str, list[tuple[float, float]]] = {}
        self._down_failed = False           # a decrease failed: no increases until the next interval
        self._busy = False
        self._again: str | None = None
        self._unsubs: list = []
        self._loop: task.LoopingCall | None = None
        self._stale_call = None
        self._meter_stale = True
        self._probing = False
        self._written_allocs: set[str] = set()
        self._mode = ""
        self._started_s: float | None = None
        self._caps: dict[str, dict[str, float]] = {}    # charger -> {source: current_A}

    # -- service --

    def startService(self) -> None:
        meter = self.ctx.resolve("meter", self.config.meter)
        if not IMeter.providedBy(meter):
            raise ConfigError(f"config/meter: meter {self.config.meter!r} does not offer readings to control")
        super().startService()
        self.meter = meter
        self._unsubs.append(meter.subscribe(self._on_reading))
        for name, inst in sorted(select_instances(self.ctx, "charger", self.config.chargers, log).items()):
            self._add(name, inst)
        self._unsubs.append(follow_instances(self.ctx, "charger", self.config.chargers,
                                             self._charger_started, self._charger_stopped))
        events = self.ctx.events
        if events is not None:
            self._unsubs.append(events.subscribe(("session",), self._on_session))
            self._unsubs.append(events.subscribe(("authorization",), self._on_session))
            self._unsubs.append(events.subscribe(("store",), self._on_store))
            self._unsubs.append(events.subscribe(("cap",), self._on_cap))
        for source, front in sorted(self.ctx.find("front").items()):
            if ICapSource.providedBy(front):
                for name, current_A in front.caps().items():
                    self._set_cap(name, f"front/{source}", current_A)
        self._started_s = self.ctx.clock.seconds()
        self._arm_stale_timer(meter.reading)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.ctx.clock
        self._loop.start(self.config.interval_s, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        for name in list(self.chargers):
            self.chargers.pop(name).unsubscribe()
        # Setpoints stay as they are: the next control instance (a config change) takes over from them.

    # -- inputs that trigger a recomputation --

    def _on_reading(self, reading: Reading) -> None:
        # The base load is the meter minus the cars' draw: both must be of the same moment. A recompute between two
        # readings with the newest draws would count every car that slowed down since as other load (and lower
        # everyone again for nothing); the draws known when the meter was read are the ones it measured.
        self._draws = {name: (st.actual_A, st.setpoint_A, st.actual_s if st.actual_s is not None else st.updated)
                       for name, st in ((n, d.instance.status) for n, d in self.chargers.items())}
        self._arm_stale_timer(reading)
        if reading.stale != self._meter_stale:
            self._meter_stale = reading.stale
            self.recompute(f"meter {self.config.meter} {'stale' if reading.stale else 'back'}")
            return
        if reading.stale:
            return
        for phase, a in zip(PHASES, reading.A):
            if a is not None and a > self.limits.A_max[phase]:
                self.recompute(f"phase {phase} over its limit: {a:.1f} A > {self.limits.A_max[phase]:g} A")
                return
        if self._reading_wanted or (self.last is not None and self.last.settling):
            # Increases wait for the decreases to be written, and for the chargers' own meters to show the new
            # setpoints (settling, docs/control.md); a reading after the writes may show both.
            self._reading_wanted = False
            self.recompute("meter reading after setpoint changes")

    def _arm_stale_timer(self, reading: Reading) -> None:
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        self._stale_call = None
        if reading.stale and reading.updated is not None or not self.running:
            return
        # Never read since this control started: the meter gets stale_s from the start, as after a reading.
        since_s = reading.updated if reading.updated is not None else self._started_s
        due_s = since_s + self.config.stale_s - self.ctx.clock.seconds()
        self._stale_call = self.ctx.clock.callLater(max(0.0, due_s), self._meter_went_stale)

    def _meter_went_stale(self) -> None:
        self._stale_call = None
        self.recompute(f"meter {self.config.meter} silent for {self.config.stale_s:g} s")

    def _on_status(self, name: str, status: ChargerStatus) -> None:
        driven = self.chargers.get(name)
        if driven is None:
            return
        if status.vehicle == "none":
            # The car left: the next car is a new session, its on/off times start afresh.
            self._switched.pop(name, None)
        key = self._status_key(driven)
        if key != driven.seen:
            self.recompute(f"charger {name}: {status.vehicle}{'' if status.online else ', offline'}")

    def _on_session(self, topic: tuple, event) -> None:
        # ("session", name) from evc.session, ("authorization", name) from chargers with token auth: both can
        # change wants_current() without a status change.
        if len(topic) > 1 and topic[1] in self.chargers:
            self.recompute(f"{topic[0]} at {topic[1]}")

    def _charger_started(self, name: str, svc) -> None:
        self._add(name, svc)
        self.recompute(f"charger {name} started")

    def _charger_stopped(self, name: str, svc) -> None:
        driven = self.chargers.get(name)
        if driven is None or driven.instance is not svc:
            return
        self._remove(name)
        self.recompute(f"charger {name} stopped")

    def _on_cap(self, topic: tuple, event) -> None:
        if len(topic) < 2:
            return
        try:
            source, current_A = event
            current_A = None if current_A is None else float(current_A)
        except (TypeError, ValueError):
            log.warn("{control}: ignoring a malformed cap event {event!r} on {topic}", control=self.ctx.key,
                     event=event, topic=topic)
            return
        name = topic[1]
        if self._set_cap(name, str(source), current_A) and name in self.chargers:
            cap = self.cap_A(name)
            self.recompute(f"cap at {name}: {'none' if cap is None else f'{cap:g} A'} ({source})")

    def _set_cap(self, name: str, source: str, current_A: float | None) -> bool:
        """Record one source's cap for a charger; True when the lowest cap changed."""
        before = self.cap_A(name)
        caps = self._caps.setdefault(name, {})
        if current_A is None:
            caps.pop(source, None)
        else:
            caps[source] = max(0.0, current_A)
        if not caps:
            self._caps.pop(name, None)
        after = self.cap_A(name)
        if after != before:
            if after is None:
                self.ctx.state.delete(f"caps/{name}")
            else:
                self.ctx.state.set(f"caps/{name}", after)
        return after != before

    def cap_A(self, name: str) -> float | None:
        """The lowest upstream cap on `name` (A), or None."""
        caps = self._caps.get(name)
        return min(caps.values()) if caps else None

    def allocation_A(self, charger: str) -> int | None:
        if self.last is None:
            return None
        for a in self.last.allocations:
            if a.name == charger:
                return a.setpoint_A
        return None

    def _on_store(self, topic: tuple, event) -> None:
        if event in ("lost", "ok", True, False):
            self.set_store_lost(event in ("lost", True), "reported on the event bus")

    def set_store_lost(self, lost: bool, why: str = "") -> None:
        """The store (etcd) is unreachable (True) or back (False): hold mode, no increases, while it is lost."""
        if lost == self.store_lost:
            return
        self.store_lost = lost
        if lost:
            log.warn("{control}: etcd unreachable ({why}): holding setpoints, no increases", control=self.ctx.key,
                     why=why)
        else:
            log.info("{control}: etcd reachable again", control=self.ctx.key)
        self.recompute("store lost" if lost else "store back")

    def _tick(self) -> None:
        self._down_failed = False       # the chargers retry their failed writes; give increases another chance
        self._probe_store()
        self.recompute("interval")

    def _probe_store(self) -> None:
        store = self.ctx.store
        if store is None or self._probing:
            return
        self._probing = True
        d = store.range(f"{self.ctx.root}/{self.ctx.kind}/{self.ctx.name}/type")
        d.addTimeout(self.config.interval_s, self.ctx.clock)

        def done(result):
            self._probing = False
            if isinstance(result, Exception):
                self.set_store_lost(True, str(result) or type(result).__name__)
            else:
                self.set_store_lost(False)

        d.addCallbacks(done, lambda f: done(f.value))

    # -- the chargers --

    def _add(self, name: str, inst) -> None:
        old = self.chargers.pop(name, None)
        if old is not None:
            old.unsubscribe()
        if not ICharger.providedBy(inst):
            log.warn("{control}: {charger} is not a charger control can drive", control=self.ctx.key, charger=name)
            return
        unsub = inst.subscribe(lambda status, n=name: self._on_status(n, status))
        self.chargers[name] = _Driven(inst, unsub)
        self._asked.pop(name, None)     # a new instance: what it accepted is in its status

    def _remove(self, name: str) -> None:
        driven = self.chargers.pop(name, None)
        if driven is not None:
            driven.unsubscribe()
        for d in (self._asked, self._switched, self._inflight, self._changes):
            d.pop(name, None)
        if name in self._written_allocs:
            self._written_allocs.discard(name)
            self.ctx.state.delete(f"allocations/{name}/A")
            self.ctx.state.delete(f"allocations/{name}/reason")

    @staticmethod
    def _status_key(driven: _Driven) -> tuple:
        st = driven.instance.status
        try:
            wants = bool(driven.instance.wants_current())
        except Exception:
            wants = False
        return tuple(getattr(st, f) for f in _STATUS_KEY) + (wants,)

    def _charger_input(self, name: str, driven: _Driven, now: float) -> ChargerInput:
        inst = driven.instance
        st: ChargerStatus = inst.status
        cfg = inst.config
        driven.seen = self._status_key(driven)
        wants = driven.seen[-1]
        phases = int(getattr(cfg, "phases", 3) or 3)
        phase_map = tuple(getattr(cfg, "phase_map", None) or PHASES)
        a_max = float(getattr(cfg, "A_max", 16))
        if st.limit_A is not None:
            a_max = min(a_max, float(st.limit_A))
        accepted = int(math.ceil(st.setpoint_A - 1e-9))
        asked = self._asked.get(name)
        setpoint = accepted if asked is None else asked
        lost = not st.online
        if lost:
            setpoint = max(accepted, asked or 0)     # it may still apply either: count the larger
        measured, offered_A, draw_s = self._draws.get(
            name, (st.actual_A, st.setpoint_A, st.actual_s if st.actual_s is not None else st.updated))
        measured = measured[:phases]
        draw = tuple(float(a) for a in measured) if len(measured) == phases and None not in measured else None
        if draw is not None and getattr(cfg, "meter", None) == self.config.meter:
            # Metered by the grid meter itself: its "draw" is every load on those phases, so nothing can be
            # attributed to the car (docs/control.md, "A charger metered by the grid meter").
            draw = None
        if draw is not None:
            # A car draws at most what its charger may offer. A reading of the charger's own meter taken before a
            # decrease landed would otherwise make the other loads look smaller than they are (and allow a raise).
            # The bound is the setpoint of the grid reading's moment: a decrease written since is not yet in it.
            bound = max(0.0, float(offered_A))
            draw = tuple(min(a, bound) for a in draw)
        stale = st.updated is not None and now - st.updated > self.config.stale_s
        try:
            return ChargerInput(name=name, wants=wants, priority=int(getattr(cfg, "priority", 0) or 0),
                                phases=phases, phase_map=phase_map, A_max=a_max, cap_A=self.cap_A(name),
                                setpoint_A=max(0, setpoint),
                                draw_A=draw, stale=stale, lost=lost, switched_s=self._switched.get(name),
                                idle_reason=_idle_reason(st), draw_s=draw_s, changes=self._recent_changes(name, now))
        except ValueError as e:
            # A charger whose settings control cannot use is paused, not left uncontrolled.
            return ChargerInput(name=name, wants=False, setpoint_A=max(0, setpoint), lost=lost,
                                idle_reason=f"paused: {e}")

    def _recent_changes(self, name: str, now: float) -> tuple:
        """The setpoint changes a reading of the charger's meter may not show yet: those of the last ramp_s, plus
        the reading lag a meter may have (stale_s): older ones are in every reading control still trusts."""
        changes = self._changes.get(name)
        if not changes:
            return ()
        keep = now - (self.config.ramp_s + self.config.stale_s)
        changes[:] = [c for c in changes if c[0] > keep]
        return tuple(changes)

    def _meter_input(self, now: float) -> MeterReading:
        r: Reading = self.meter.reading
        if all(a is None for a in r.A):
            currents = None
        else:
            # A phase the meter does not measure counts as full: no car gets current on it.
            chargers_A = sum(float(getattr(d.instance.config, "A_max", 16)) for d in self.chargers.values())
            currents = {p: (a if a is not None else self.limits.A_max[p] + chargers_A) for p, a in zip(PHASES, r.A)}
        stale = r.stale or r.updated is None or now - r.updated >= self.config.stale_s
        return MeterReading(self.config.meter, currents, r.updated, stale)

    # -- deciding and writing --

    def recompute(self, why: str = "") -> Result | None:
        """Allocate from the newest inputs and write what changed; re-entrant calls are folded into one more pass."""
        if not self.running or self.meter is None:
            return None
        if self._busy:
            self._again = why
            return None
        self._busy = True
        try:
            while True:
                self._again = None
                self._recompute_once(why)
                if self._again is None:
                    break
                why = self._again
        finally:
            self._busy = False
        return self.last

    def _recompute_once(self, why: str) -> None:
        now = self.ctx.clock.seconds()
        if self._waiting_for_meter(now):
            return
        chargers = [self._charger_input(n, d, now) for n, d in sorted(self.chargers.items())]
        result = allocate(Inputs(now, self.limits, self._meter_input(now), chargers, store_lost=self.store_lost))
        self.last = result
        self.recomputes += 1
        self._publish(result, why)
        self._apply(result, chargers, now)

    def _waiting_for_meter(self, now: float) -> bool:
        """Just started and the meter has not been read yet: leave the chargers as they are for up to stale_s.

        Deciding without a reading would be failsafe, and pausing every car on each EVC restart (then holding
        them off for min_off_s) is worse than the few seconds until the first poll; after stale_s it is failsafe.
        """
        r = self.meter.reading
        return r.updated is None and now - self._started_s < self.config.stale_s

    def _publish(self, result: Result, why: str) -> None:
        if result.mode != self._mode:
            (log.info if result.mode == "normal" else log.warn)(
                "{control}: mode {mode} ({why})", control=self.ctx.key, mode=result.mode, why=why)
            self._mode = result.mode
        state = self.ctx.state
        state.set("mode", result.mode)
        state.update({f"headroom/{p}": round(v, 1) for p, v in result.headroom_A.items()}, deadband=0.2)
        state.update({f"base/{p}": round(v, 1) for p, v in result.base_A.items()}, deadband=0.2)
        for a in result.allocations:
            state.set(f"allocations/{a.name}/A", a.setpoint_A)
            state.set(f"allocations/{a.name}/reason", a.reason)
            self._written_allocs.add(a.name)

    def _apply(self, result: Result, inputs: list[ChargerInput], now: float) -> None:
        downs, ups = [], []
        for a, c in zip(result.allocations, inputs):
            if c.lost:
                continue                # it does not answer: a write would only queue behind a dead device
            if a.setpoint_A < c.setpoint_A:
                downs.append((c.setpoint_A - a.setpoint_A, a.name, a.setpoint_A, a.reason))
            elif a.setpoint_A > c.setpoint_A:
                ups.append((a.name, a.setpoint_A, a.reason))
        downs.sort(key=lambda d: (-d[0], d[1]))
        for _, name, sp, why in downs:
            self._write(name, sp, why, now, decrease=True)
        if not ups:
            return
        if downs:
            # The cars lowered take up to ramp_s to follow: an increase written now could overtake them on the
            # grid. allocate() raises nothing on their phases until their meters show the decrease.
            return
        lost = {c.name for c in inputs if c.lost}
        if self._down_failed or any(n for n, k in self._inflight.items() if k and n not in lost):
            # An increase must not overtake a decrease still on its way (maybe on another bus). Once the writes
            # are done, the next meter reading (which shows them) recomputes from fresh inputs. A write to a
            # charger that stopped answering does not hold everyone back: its worst case is already counted.
            return
        for name, sp, why in ups:
            self._write(name, sp, why, now, decrease=False)

    def _write(self, name: str, current_A: int, why: str, now: float, decrease: bool) -> None:
        driven = self.chargers[name]
        before = self._asked.get(name, int(math.ceil(driven.instance.status.setpoint_A - 1e-9)))
        self._asked[name] = current_A
        if (before == 0) != (current_A == 0):
            self._switched[name] = now
        if before != current_A:
            self._changes.setdefault(name, []).append((now, float(before)))
        log.info("{charger} set to {current_A} A: {reason}", charger=name, current_A=current_A, reason=why)
        self._inflight[name] = self._inflight.get(name, 0) + 1
        self._reading_wanted = True
        d = defer.maybeDeferred(driven.instance.apply, current_A)

        def done(result, ok: bool):
            if name in self._inflight:
                self._inflight[name] -= 1
            self._reading_wanted = True       # accepted or not, the next reading is worth a look
            if not ok:
                log.warn("{charger}: setting {current_A} A failed: {error}", charger=name, current_A=current_A,
                         error=result.getErrorMessage())
                if decrease:
                    self._down_failed = True
            return None

        d.addCallbacks(done, done, callbackArgs=(True,), errbackArgs=(False,))


def _idle_reason(st: ChargerStatus) -> str:
    if not st.online:
        return "offline"
    if st.vehicle == "none":
        return "no car"
    if st.vehicle == "fault":
        return f"fault: {st.fault}" if st.fault else "fault"
    if st.vehicle == "unknown":
        return "car state unknown"
    return "car plugged, not ready: mode, authorization or battery full"


__all__ = ["BuiltinConfig", "BuiltinControl"]
