"""The builtin allocation: shares a site's per-phase current limit among its chargers, as a pure function.

`allocate(Inputs) -> Result` is the whole contract (DESIGN §4). It reads plain frozen values and
returns plain frozen values: no clock, no I/O, no logging. The control loop around it gathers the
inputs (meter readings, charger states, config), calls it on every interval and event, and applies
the setpoints. docs/control.md explains the rules for operators.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
import dataclasses
from dataclasses import dataclass
from itertools import accumulate
from numbers import Real
from typing import Iterator, Mapping, Sequence, Union

PHASES = ("L1", "L2", "L3")
IEC_MIN_A = 6          # IEC 61851-1: the lowest current a PWM signal may offer

# Budgets are sums of floats; a share of 15.9999999997 A is 16 A, not 15.
_EPS = 1e-9
_INF = math.inf


@dataclass(frozen=True)
class PerPhase:
    """One number per grid phase (L1, L2, L3)."""
    L1: float = 0.0
    L2: float = 0.0
    L3: float = 0.0

    @classmethod
    def uniform(cls, value: float) -> "PerPhase":
        return cls(value, value, value)

    def __getitem__(self, phase: str) -> float:
        if phase not in PHASES:
            raise KeyError(phase)
        return getattr(self, phase)

    def items(self) -> Iterator[tuple[str, float]]:
        return ((p, getattr(self, p)) for p in PHASES)

    def as_dict(self) -> dict[str, float]:
        return {p: getattr(self, p) for p in PHASES}


PhaseValues = Union[PerPhase, Mapping[str, float], float, int]


def per_phase(value: PhaseValues) -> PerPhase:
    """A PerPhase from a PerPhase, a {"L1": .., "L2": .., "L3": ..} mapping, or one number for all three."""
    if isinstance(value, PerPhase):
        return value
    if isinstance(value, Real):
        return PerPhase.uniform(float(value))
    missing = [p for p in PHASES if p not in value]
    extra = [k for k in value if k not in PHASES]
    if missing or extra:
        raise ValueError(f"per-phase values need exactly L1, L2, L3; missing {missing}, unknown {extra}")
    return PerPhase(*(float(value[p]) for p in PHASES))


@dataclass(frozen=True)
class SiteLimits:
    """The site's limits and the control settings (the `control/builtin` config).

    A_max: the most current each grid phase may carry, by the grid meter (the main fuse or the
        contracted limit), e.g. PerPhase(32, 32, 32); a mapping or one number is accepted too.
    failsafe_A: what chargers get while the grid meter is stale: 0 (stop) or >= 6 A. Never an
        increase: a charger at 0 stays at 0.
    stale_s: a meter reading older than this is stale.
    min_on_s: a charger started less than this ago is not paused to make room for others (only
        to keep a phase within its limit).
    min_off_s: a charger paused less than this ago is not started again.
    deadband_A: spare current each phase must keep before a setpoint is raised, so small swings
        of the base load do not move setpoints up and down. Decreases never wait for it.
    ramp_s: how long a car may take to follow a new setpoint (IEC 61851-1 gives it 5 s). A charger's
        own meter reading taken less than ramp_s after a setpoint change does not yet show what the
        car draws at the new setpoint (see ChargerInput.changes).
    """
    A_max: PhaseValues
    failsafe_A: int = 0
    stale_s: float = 10.0
    min_on_s: float = 120.0
    min_off_s: float = 120.0
    deadband_A: float = 1.0
    ramp_s: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "A_max", per_phase(self.A_max))
        if any(v < 0 for _, v in self.A_max.items()):
            raise ValueError(f"A_max must be >= 0 on every phase, got {self.A_max}")
        if self.failsafe_A != 0 and not self.failsafe_A >= IEC_MIN_A:
            raise ValueError(f"failsafe_A must be 0 or >= {IEC_MIN_A} A, got {self.failsafe_A}")
        if not self.stale_s > 0:
            raise ValueError(f"stale_s must be > 0, got {self.stale_s}")
        if self.min_on_s < 0 or self.min_off_s < 0 or self.deadband_A < 0 or self.ramp_s < 0:
            raise ValueError("min_on_s, min_off_s, deadband_A and ramp_s must be >= 0")


@dataclass(frozen=True)
class MeterReading:
    """The grid meter: per-phase currents at the site's connection, cars and every other load included.

    current_A: the last reading (None: never read). updated_s: when it was read (same clock as
    Inputs.now_s; None: never). stale: the meter's own stale flag (e.g. errors since the last reading).
    """
    name: str
    current_A: PhaseValues | None
    updated_s: float | None
    stale: bool = False

    def __post_init__(self) -> None:
        if self.current_A is not None:
            object.__setattr__(self, "current_A", per_phase(self.current_A))


@dataclass(frozen=True)
class ChargerInput:
    """One charger as control sees it.

    wants: a car is plugged, authorized, not full and its mode allows charging.
    priority: higher is served first; equal priorities share equally.
    phases: how many phases the car charges on (1, 2 or 3), using the first `phases` entries of
        phase_map.
    phase_map: the grid phase each charger phase is wired to, e.g. ("L2",) for a single-phase
        charger on L2, ("L2", "L3", "L1") for a rotated three-phase one.
    A_min: the lowest current this charger/car accepts (>= 6 A, IEC 61851).
    A_max: the charger's own maximum. cap_A: a cap from upstream (an OCPP profile), None: none.
    setpoint_A: the setpoint currently applied (0 = paused).
    draw_A: the measured current per charger phase (len == phases), or None when unknown.
        Unknown means: none of the grid meter's current is attributed to this car, and its full
        new setpoint is counted on top; a charger that is on with unknown draw is not raised.
    stale: this charger's state is old; its draw counts as unknown and it is not raised.
    lost: the charger does not answer: its setpoint cannot be changed, so it is held and its
        current (the larger of setpoint and measured draw) is reserved on its phases.
    switched_s: when control last switched it on (0 -> >= 6 A) or off (-> 0); None: no switch on
        record, e.g. a new session (then min_on_s/min_off_s do not apply).
    idle_reason: the reason shown while wants is False.
    draw_s: when draw_A was measured (same clock as now_s); None: unknown.
    changes: control's own record of this charger's recent setpoint changes, ((when_s, setpoint
        before the change), ...). A change less than limits.ramp_s before draw_s (or any, when
        draw_s is unknown) is not yet in draw_A: until it is, the charger is *settling* (rule 3).
    """
    name: str
    wants: bool
    priority: int = 0
    phases: int = 3
    phase_map: tuple[str, ...] = PHASES
    A_min: float = IEC_MIN_A
    A_max: float = 16
    cap_A: float | None = None
    setpoint_A: int = 0
    draw_A: tuple[float, ...] | None = None
    stale: bool = False
    lost: bool = False
    switched_s: float | None = None
    idle_reason: str = "no car"
    draw_s: float | None = None
    changes: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.phases not in (1, 2, 3):
            raise ValueError(f"{self.name}: phases must be 1, 2 or 3, got {self.phases}")
        pm = tuple(self.phase_map)
        object.__setattr__(self, "phase_map", pm)
        if len(pm) < self.phases or len(set(pm)) != len(pm) or any(p not in PHASES for p in pm):
            raise ValueError(f"{self.name}: phase_map {pm} must name {self.phases} distinct phases of {PHASES}")
        if self.A_min < IEC_MIN_A:
            raise ValueError(f"{self.name}: A_min must be >= {IEC_MIN_A} A (IEC 61851), got {self.A_min}")
        if self.setpoint_A < 0:
            raise ValueError(f"{self.name}: setpoint_A must be >= 0, got {self.setpoint_A}")
        if self.draw_A is not None:
            draw = tuple(self.draw_A)
            object.__setattr__(self, "draw_A", draw)
            if len(draw) != self.phases:
                raise ValueError(f"{self.name}: draw_A needs one value per phase used ({self.phases}), got {draw}")
        object.__setattr__(self, "changes", tuple((float(t), float(a)) for t, a in self.changes))

        # Not a field: derived, but read several times per charger per allocation.
        object.__setattr__(self, "grid_phases", pm[:self.phases])

    grid_phases: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    """The grid phases this charger's car draws from (the first `phases` entries of phase_map)."""


@dataclass(frozen=True)
class Inputs:
    """Everything allocate() decides from. now_s: the current time, on the clock of updated_s and switched_s.

    store_lost: the store (etcd) is unreachable: the last good limits stay enforced, nothing is raised.
    """
    now_s: float
    limits: SiteLimits
    meter: MeterReading
    chargers: Sequence[ChargerInput]
    store_lost: bool = False


@dataclass(frozen=True)
class Allocation:
    """The decision for one charger: an integer setpoint (0 or >= A_min) and why, in a few words."""
    name: str
    setpoint_A: int
    reason: str


@dataclass(frozen=True)
class Result:
    """allocate()'s answer.

    allocations: one per input charger, in input order.
    base_A: the non-car load per phase that was assumed (0 in failsafe: unknown).
    headroom_A: A_max - base - sum of setpoints per phase; negative when the base load (or a lost
        charger) alone exceeds the limit.
    mode: "normal", "failsafe" (meter stale) or "hold" (store lost: no increases).
    settling: the chargers whose own meters do not show their newest setpoints yet (rule 3), by name.
    """
    allocations: tuple[Allocation, ...]
    base_A: PerPhase
    headroom_A: PerPhase
    mode: str
    settling: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> Allocation:
        for a in self.allocations:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def setpoints(self) -> dict[str, int]:
        return {a.name: a.setpoint_A for a in self.allocations}


class _Cand:
    """Working record of one charger that may charge (wants, not lost, limits allow >= A_min)."""
    __slots__ = ("i", "c", "phases", "lo", "hi", "limit", "hi_from", "on", "held_on", "noinc", "why_noinc")

    def __init__(self, i, c, phases, lo, hi, hi_from):
        self.i, self.c, self.phases, self.lo, self.hi_from = i, c, phases, lo, hi_from
        self.limit = hi             # min(A_max, cap_A) in whole amps
        self.hi = hi                # what this round may give: limit, or less when no increases
        self.on = False
        self.held_on = False
        self.noinc = False
        self.why_noinc = ""


def allocate(inputs: Inputs) -> Result:
    """Compute every charger's setpoint from the site limits, the grid meter and the chargers' states.

    Pure: the same inputs give the same result; nothing is read from clocks, files or the network.

    Rules, in the order they apply:

    1. Chargers that cannot charge get 0: not wanting (reason: their idle_reason, "no car" by
       default); a cap or maximum below A_min. A `lost` charger is held at its setpoint and that
       current (or its measured draw, if larger) is reserved on its phases.
    2. Meter stale (its `stale` flag, no reading, or older than limits.stale_s): failsafe. Each
       wanting charger gets min(setpoint, failsafe_A, its max), or 0 if that is below A_min: never
       an increase. As the base load is unknown, the chargers alone must fit A_max; if they do not,
       the lowest priority is paused first.
    3. Otherwise the base load per phase is the measured current minus the cars' measured draw on
       it (clamped >= 0); a car whose draw is unknown (draw_A None, or stale) is not subtracted,
       so its current stays in the base and its new setpoint is counted on top of it. Available =
       A_max - base - lost reservations.
       Settling: a charger whose setpoint changed after the grid meter's reading began to see it,
       but whose own reading predates the change by less than ramp_s (its car may be anywhere
       between the old and the new setpoint when the grid meter read it), counts as drawing the
       most it may: the highest of its setpoint and the setpoints it had before those changes. Its
       own ramp is then never base load. In exchange, nothing on the phases of a charger whose own
       meter does not show its newest setpoint yet (the grid reading older or not) is raised or
       started until it does: the base may be underestimated by what its car has not yet taken,
       and a car that was lowered may still draw its old current for ramp_s. On a phase the grid meter measures over A_max, settling does not apply:
       the cars' measured draws count, so the overload is answered on the reading that shows it.
    4. Who charges: each charging car needs A_min on each of its phases. A paused charger stays
       paused if it was paused less than min_off_s ago, or if it may not increase (store lost,
       charger stale). The others are taken in this order and kept/started if A_min still fits
       on all their phases, else paused: first those started less than min_on_s ago (highest
       priority first), then the rest by priority (highest first), charging before paused,
       paused ones by how long they have waited (switched_s; None last), then by name. So the
       lowest priority is paused first, and min_on_s yields only when a phase would be over.
    5. How much: every charging car keeps A_min; the rest of each phase is filled priority by
       priority (highest first). Within a priority the share is max-min fair in amps per phase
       (water-filling): all rise together until a phase is full or a charger reaches its max
       (min of A_max and cap_A). 1-phase cars use only their phase; 3-phase cars the same current
       on all three.
    6. Integers and hysteresis: a setpoint above its share is lowered to the share rounded down
       (always, at once). It is raised only as far as its share would be with deadband_A less on
       every phase, so a raise leaves spare current for the base load to move. Chargers that may
       not increase (store lost, stale, on with unknown draw) keep at most their setpoint.

    Guarantees (pinned by property tests in tests/control): on a phase where any controllable
    charger charges, base + all setpoints on it (lost ones included) <= A_max; when the base and
    lost chargers alone exceed A_max, every controllable charger on that phase gets 0. Every
    setpoint is 0 or in [A_min, min(A_max, cap_A)]; lost chargers keep theirs. In failsafe and
    hold no setpoint rises. The result does not depend on the order of the chargers, and feeding
    it back (cars drawing what they are offered) gives the same setpoints again.

    Cost: O(n log n); 1,000 chargers take about 5 ms (benchmarks/allocation.py).
    """
    lim = inputs.limits
    chargers = inputs.chargers
    names = [c.name for c in chargers]
    if len(set(names)) != len(names):
        raise ValueError("charger names must be unique")
    n = len(chargers)
    out_sp = [0] * n
    out_why = [""] * n
    meter = inputs.meter
    now = inputs.now_s
    failsafe = (meter.stale or meter.current_A is None or meter.updated_s is None
                or now - meter.updated_s > lim.stale_s)

    reserved = {p: 0.0 for p in PHASES}     # what lost chargers may draw, beyond our control
    cands: list[_Cand] = []
    for i, c in enumerate(chargers):
        phases = c.grid_phases
        if c.lost:
            draw_max = max(c.draw_A) if (c.draw_A is not None and not c.stale) else 0.0
            hold = max(float(c.setpoint_A), draw_max)
            for p in phases:
                reserved[p] += hold
            out_sp[i] = c.setpoint_A
            out_why[i] = (f"lost: not answering, {c.setpoint_A} A held" if c.setpoint_A
                          else "lost: not answering")
            continue
        if not c.wants:
            out_why[i] = c.idle_reason
            continue
        lo = math.ceil(c.A_min - _EPS)
        if c.cap_A is not None and c.cap_A < c.A_max:
            hi, hi_from = math.floor(c.cap_A + _EPS), "cap"
        else:
            hi, hi_from = math.floor(c.A_max + _EPS), "max"
        if hi < lo:
            what = f"cap {c.cap_A:g} A" if hi_from == "cap" else f"charger max {c.A_max:g} A"
            out_why[i] = f"paused: {what} below minimum {lo} A"
            continue
        cands.append(_Cand(i, c, phases, lo, hi, hi_from))

    settling: dict[str, float] = {}
    unconfirmed: list[str] = []
    if failsafe:
        base = PerPhase()
        _failsafe(cands, lim, meter.name, reserved, out_sp, out_why)
        mode = "failsafe"
    else:
        settling, unconfirmed = _settling(chargers, meter, lim)
        base = _base_load(meter.current_A, chargers, settling)
        avail = {p: lim.A_max[p] - base[p] - reserved[p] for p in PHASES}
        waits = {}                  # grid phase -> a charger on it whose meter does not show its new setpoint yet
        for c in chargers:
            if c.name in unconfirmed:
                for p in c.grid_phases:
                    waits.setdefault(p, c.name)
        _normal(cands, lim, now, inputs.store_lost, avail, out_sp, out_why, waits)
        mode = "hold" if inputs.store_lost else "normal"

    used = {p: 0.0 for p in PHASES}
    for i, c in enumerate(chargers):
        if out_sp[i]:
            for p in c.grid_phases:
                used[p] += out_sp[i]
    headroom = PerPhase(*(lim.A_max[p] - base[p] - used[p] for p in PHASES))
    allocations = tuple(Allocation(names[i], out_sp[i], out_why[i]) for i in range(n))
    return Result(allocations, base, headroom, mode, tuple(sorted(unconfirmed)))


def _settling(chargers: Sequence[ChargerInput], meter: MeterReading, lim: SiteLimits
              ) -> tuple[dict[str, float], list[str]]:
    """Rule 3 of allocate(): ({name: the most its car may draw} of the chargers counted at it, [every charger whose
    own meter does not show its newest setpoint yet]); nothing rises on the phases of the latter."""
    most, unconfirmed = {}, []
    for c in chargers:
        if c.lost or not c.changes:
            continue
        unseen = [(t, before) for t, before in c.changes
                  if c.draw_s is None or t > c.draw_s - lim.ramp_s]
        if not unseen:
            continue                # its meter shows every change
        unconfirmed.append(c.name)
        if c.stale or c.draw_A is None or meter.updated_s <= min(t for t, _ in unseen):
            continue                # its draw is unknown anyway, or the grid reading is older than the changes
        if any(meter.current_A[p] > lim.A_max[p] + _EPS for p in c.grid_phases):
            continue                # a measured overload is answered from the measured draws
        most[c.name] = max([float(c.setpoint_A), *(before for _, before in unseen), *c.draw_A])
    return most, unconfirmed


def _base_load(measured: PerPhase, chargers: Sequence[ChargerInput], settling: Mapping[str, float]) -> PerPhase:
    """Measured current minus the cars' known draw (the most a settling car may draw), per phase, never below 0."""
    car = {p: 0.0 for p in PHASES}
    for c in chargers:
        if c.draw_A is not None and not c.stale:
            most = settling.get(c.name)
            for p, a in zip(c.grid_phases, c.draw_A):
                car[p] += max(0.0, a if most is None else most)
    return PerPhase(*(max(0.0, measured[p] - car[p]) for p in PHASES))


def _failsafe(cands, lim, meter_name, reserved, out_sp, out_why) -> None:
    """Meter stale: at most failsafe_A, never more than before, and the cars alone within A_max."""
    why = f"failsafe: meter {meter_name} stale"
    left = {p: lim.A_max[p] - reserved[p] for p in PHASES}
    fixed = []
    for k in cands:
        s = k.c.setpoint_A
        target = min(s, lim.failsafe_A, k.hi)
        if target < k.lo:
            out_why[k.i] = why
        else:
            fixed.append((k, target))
    fixed.sort(key=lambda kt: (-kt[0].c.priority, kt[0].c.name))
    for k, target in fixed:
        full = [p for p in k.phases if left[p] + _EPS < target]
        if full:
            out_why[k.i] = f"{why}; paused: phase {full[0]} full at failsafe current"
            continue
        for p in k.phases:
            left[p] -= target
        out_sp[k.i] = target
        out_why[k.i] = f"{why}, {target} A"


def _normal(cands, lim, now, store_lost, avail, out_sp, out_why, waits) -> None:
    """Rules 4-6 of allocate(): who charges, how much, and the integer setpoints with hysteresis.

    waits: {grid phase: a settling charger on it}: nothing on those phases rises (rule 3)."""
    eligible: list[_Cand] = []
    for k in cands:
        c = k.c
        s = c.setpoint_A
        k.on = s >= k.lo
        since_switch_s = _INF if c.switched_s is None else now - c.switched_s
        if store_lost:
            k.noinc, k.why_noinc = True, "store lost, no increases"
        elif c.stale:
            k.noinc, k.why_noinc = True, "charger state stale, no increases"
        elif c.draw_A is None and k.on:
            k.noinc, k.why_noinc = True, "draw unknown, no increases"
        else:
            busy = next((waits[p] for p in k.phases if p in waits), None)
            if busy is not None:
                k.noinc = True
                k.why_noinc = ("new setpoint settling" if busy == c.name
                               else f"waiting for {busy}'s new setpoint to show in its meter")
        if not k.on:
            if k.noinc:
                out_why[k.i] = f"paused: {k.why_noinc}"
                continue
            if since_switch_s < lim.min_off_s:
                out_why[k.i] = f"paused: minimum off-time, {math.ceil(lim.min_off_s - since_switch_s)} s left"
                continue
        else:
            k.held_on = since_switch_s < lim.min_on_s
            if k.noinc:
                k.hi = min(k.hi, s)
        eligible.append(k)

    # Rule 4: greedy in order; a charger joins if A_min still fits on all its phases.
    def order(k: _Cand):
        c = k.c
        since = c.switched_s if c.switched_s is not None else (-_INF if k.on else _INF)
        return (not k.held_on, -c.priority, not k.on, since, c.name)
    eligible.sort(key=order)
    left = dict(avail)
    active: list[_Cand] = []
    blocked: list[tuple[_Cand, str]] = []
    for k in eligible:
        full = [p for p in k.phases if left[p] + _EPS < k.lo]
        if full:
            blocked.append((k, full[0]))
            continue
        for p in k.phases:
            left[p] -= k.lo
        active.append(k)
    _explain_paused(blocked, active, out_why)

    # Rules 5-6: each priority fills what A_min reservations and higher priorities left.
    slack = left                    # avail minus every active charger's A_min
    db = lim.deadband_A
    tiers: dict[int, list[_Cand]] = {}
    for k in active:
        tiers.setdefault(k.c.priority, []).append(k)
    for prio in sorted(tiers, reverse=True):
        tier = tiers[prio]
        budget = dict(slack)
        for k in tier:
            for p in k.phases:
                budget[p] += k.lo
        share, binding = _fill(tier, budget)
        # The deadband fill only matters to chargers that may rise; in a steady state none do.
        rising = any(not k.noinc and (k.c.setpoint_A if k.on else 0) < min(k.hi, math.floor(f + _EPS))
                     for k, f in zip(tier, share))
        if db > 0 and rising:
            share_db, binding_db = _fill(tier, {p: b - db for p, b in budget.items()})
        else:
            share_db, binding_db = share, binding
        for j, k in enumerate(tier):
            s = k.c.setpoint_A if k.on else 0
            top = min(k.hi, math.floor(share[j] + _EPS))
            raise_to = min(top, max(k.lo, math.floor(share_db[j] + _EPS)))
            if s > top:
                sp = top                     # lower at once: the share is what fits
            elif k.noinc:
                sp = s
            else:
                sp = max(s, raise_to)
            out_sp[k.i] = sp
            for p in k.phases:
                slack[p] -= sp - k.lo
            out_why[k.i] = _explain_active(k, sp, top, binding[j], binding_db[j], db)


def _explain_paused(blocked, active, out_why) -> None:
    """Name the full phase and who holds it, for chargers that did not fit A_min."""
    on_phase: dict[str, list[_Cand]] = {p: [] for p in PHASES}
    for k in active:
        for p in k.phases:
            on_phase[p].append(k)
    for k, p in blocked:
        there = on_phase[p]
        prio = k.c.priority
        if k.held_on:
            why = f"paused: phase {p} full (minimum on-time overridden for safety)"
        elif not there:
            why = f"paused: phase {p} full (non-car load)"
        else:
            top = max(o.c.priority for o in there)
            if top > prio:
                why = f"paused: phase {p} full (priority {prio} < {top})"
            elif any(o.held_on for o in there):
                why = f"paused: phase {p} full (others within minimum on-time)"
            else:
                why = f"paused: phase {p} full (equal priority {prio}, others charging first)"
        out_why[k.i] = why


def _explain_active(k: _Cand, sp: int, top: int, phase: str | None, phase_db: str | None, db: float) -> str:
    """phase: what stopped its share (None: its hi); phase_db: the same with the deadband taken off."""
    if sp < top:
        if k.noinc:
            return f"held at {sp} A: {k.why_noinc}"
        where = phase_db or phase
        if sp == k.c.setpoint_A:
            return f"held at {sp} A: raise waits for {db:g} A spare on {where}"
        return f"limited by phase {where} headroom, keeping {db:g} A spare"
    if sp == k.hi:
        if sp < k.limit:            # hi was lowered to its old setpoint: no increases
            return f"held at {sp} A: {k.why_noinc}"
        return f"at cap {sp} A" if k.hi_from == "cap" else f"at charger max {sp} A"
    return f"limited by phase {phase} headroom"


def _fill(members: list[_Cand], budget: dict[str, float]) -> tuple[list[float], list[str | None]]:
    """Max-min fair shares in [lo, hi] with sum per phase <= budget (progressive filling).

    Returns each member's share and the phase that stopped it (None: it reached its hi). If the
    budget cannot even hold every lo, the members on that phase get lo (the caller made sure the
    real budget holds them; this only happens for the deadband's reduced budget).
    """
    m = len(members)
    share = [0.0] * m
    binding: list[str | None] = [None] * m
    if m == 1:                      # common with many priorities: skip the sweep
        k = members[0]
        room = min(budget[p] for p in k.phases)
        if room >= k.hi - _EPS:
            share[0] = float(k.hi)
        else:
            share[0] = max(float(k.lo), room)
            binding[0] = min(k.phases, key=lambda p: budget[p])
        return share, binding
    los = [k.lo for k in members]
    his = [k.hi for k in members]
    on_phase: dict[str, list[int]] = {p: [] for p in PHASES}
    for j, k in enumerate(members):
        for p in k.phases:
            on_phase[p].append(j)
    frozen = [False] * m
    used = {p: 0.0 for p in PHASES}
    left = m
    # Each round fills one or more phases and freezes everyone on them: at most three rounds.
    while left:
        levels = {}
        for p in PHASES:
            js = on_phase[p] = [j for j in on_phase[p] if not frozen[j]]
            if js:
                levels[p] = _level([los[j] for j in js], [his[j] for j in js], budget[p] - used[p])
        t = min(levels.values())
        if t == _INF:
            for j in range(m):
                if not frozen[j]:
                    share[j] = float(his[j])
            break
        for p, tp in levels.items():
            if tp > t + _EPS:
                continue
            for j in on_phase[p]:
                if frozen[j]:
                    continue
                lo, hi = los[j], his[j]
                v = lo if t < lo else (hi if t > hi else t)
                frozen[j] = True
                left -= 1
                share[j] = float(v)
                binding[j] = p if v < hi else None
                for q in members[j].phases:
                    used[q] += v
    return share, binding


def _level(los: list[int], his: list[int], budget: float) -> float:
    """The largest t with sum(clamp(t, lo, hi)) <= budget; -inf if even the los exceed it, inf if all his fit.

    f(t) = sum(clamp(t, lo_i, hi_i)) is continuous, piecewise linear and non-decreasing with
    breakpoints at every lo and hi: binary-search the breakpoints using sorted prefix sums, then
    solve the linear piece. O(n log n) for the sort, O(log^2 n) for the search.
    """
    fixed = 0.0
    lo_s, hi_s = [], []
    for lo, hi in zip(los, his):
        if hi <= lo:
            fixed += lo             # no room to move: contributes lo for every t
        else:
            lo_s.append(lo)
            hi_s.append(hi)
    total_lo = fixed + sum(lo_s)
    if total_lo > budget + _EPS:
        return -_INF
    if fixed + sum(hi_s) <= budget + _EPS:
        return _INF
    lo_s.sort()
    hi_s.sort()
    pre_lo = [0, *accumulate(lo_s)]
    pre_hi = [0, *accumulate(hi_s)]
    sum_lo = pre_lo[-1]

    def f(t: float) -> float:
        a = bisect_left(lo_s, t)     # lo < t: these have risen off their lo
        b = bisect_right(hi_s, t)    # hi <= t: these are at their hi
        return fixed + (sum_lo - pre_lo[a]) + pre_hi[b] + t * (a - b)

    points = sorted(lo_s + hi_s)
    # f(points[0]) = total_lo <= budget and f(points[-1]) = sum of his > budget.
    lo_i, hi_i = 0, len(points) - 1
    while hi_i - lo_i > 1:
        mid = (lo_i + hi_i) // 2
        if f(points[mid]) <= budget:
            lo_i = mid
        else:
            hi_i = mid
    t0 = points[lo_i]
    slope = bisect_right(lo_s, t0) - bisect_right(hi_s, t0)
    if slope <= 0:      # cannot happen for a consistent f; stay at the safe breakpoint
        return t0
    return t0 + (budget - f(t0)) / slope
