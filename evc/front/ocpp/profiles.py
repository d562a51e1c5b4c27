"""OCPP 1.6 charging profiles from an upstream backend -> the current cap (A) control applies, and composite schedules.

Pure functions over plain values (no clock, no I/O): front/ocpp keeps the installed profiles of each bridged charger
and asks here what they allow at a given time, when that changes next, and what the composite schedule is.

The rules (OCPP 1.6 §3.13, "Smart charging"): within one purpose the valid profile with the highest stackLevel that
has a period at that time wins (a lower one takes over when it ends); ChargePointMaxProfile (connector 0) caps the
whole charge point; a TxProfile (connector 1, only during a transaction) overrides the TxDefaultProfile; the limit is
the minimum of ChargePointMax and Tx-or-TxDefault. A connector-1 TxDefaultProfile replaces a connector-0 one.
Limits in W are turned into amps at `VOLTAGE_V` per phase over the period's numberPhases (default 3), the way a
charge point with no better knowledge does; docs/front-ocpp.md says so.
"""
from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from typing import Any, Optional

VOLTAGE_V = 230.0
PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
KINDS = ("Absolute", "Recurring", "Relative")
RECURRENCY_S = {"Daily": 86400.0, "Weekly": 7 * 86400.0}
MAX_PERIODS = 24
MAX_PROFILES = 16
MAX_STACK_LEVEL = 10


def parse_time(text: str) -> float:
    """ISO 8601 (with Z or an offset; a time without one is UTC) -> epoch seconds."""
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Period:
    start_s: float            # from the schedule's start
    limit: float              # in `unit`
    phases: int = 3


@dataclasses.dataclass(frozen=True)
class Profile:
    """One installed charging profile, parsed. `raw` is the snake_case document as the backend sent it (persisted)."""
    id: int
    connector_id: int
    stack_level: int
    purpose: str
    kind: str
    unit: str                               # "A" or "W"
    periods: tuple[Period, ...]
    installed_s: float
    recurrency: Optional[str] = None
    valid_from_s: Optional[float] = None
    valid_to_s: Optional[float] = None
    transaction_id: Optional[int] = None
    start_s: Optional[float] = None         # startSchedule
    duration_s: Optional[float] = None
    raw: Any = dataclasses.field(default=None, compare=False, repr=False)

    def amps(self, p: Period) -> float:
        return p.limit if self.unit == "A" else p.limit / (VOLTAGE_V * (p.phases or 3))


def plain(value: Any) -> Any:
    """Decimals (the ocpp library parses profile numbers as Decimal) -> int/float, recursively, for JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value).__name__ == "Decimal":
        f = float(value)
        return int(f) if f.is_integer() else f
    return value


def parse_profile(connector_id: int, doc: dict, installed_s: float) -> Profile:
    """A csChargingProfiles document (snake_case keys) -> Profile; ValueError with a sentence naming the field."""
    doc = plain(doc)
    try:
        purpose = doc["charging_profile_purpose"]
        kind = doc["charging_profile_kind"]
        sched = doc["charging_schedule"]
        unit = sched["charging_rate_unit"]
        raw_periods = sched["charging_schedule_period"]
        pid = int(doc["charging_profile_id"])
        stack = int(doc["stack_level"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"charging profile without {e}") from None
    if purpose not in PURPOSES:
        raise ValueError(f"chargingProfilePurpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    if kind not in KINDS:
        raise ValueError(f"chargingProfileKind {kind!r} is not one of {', '.join(KINDS)}")
    if unit not in ("A", "W"):
        raise ValueError(f"chargingRateUnit {unit!r} is not A or W")
    if not 0 <= stack <= MAX_STACK_LEVEL:
        raise ValueError(f"stackLevel {stack} is outside 0..{MAX_STACK_LEVEL}")
    if not raw_periods or len(raw_periods) > MAX_PERIODS:
        raise ValueError(f"chargingSchedulePeriod needs 1..{MAX_PERIODS} periods, got {len(raw_periods or ())}")
    periods = []
    for p in raw_periods:
        limit = float(p["limit"])
        if limit < 0 or math.isnan(limit):
            raise ValueError(f"a period's limit {limit} is negative")
        periods.append(Period(float(p["start_period"]), limit, int(p.get("number_phases") or 3)))
    periods.sort(key=lambda p: p.start_s)
    if periods[0].start_s != 0:
        raise ValueError("the first chargingSchedulePeriod must start at 0")
    recurrency = doc.get("recurrency_kind")
    if kind == "Recurring" and recurrency not in RECURRENCY_S:
        raise ValueError("a Recurring profile needs recurrencyKind Daily or Weekly")
    start = sched.get("start_schedule")
    if kind == "Recurring" and start is None:
        raise ValueError("a Recurring profile needs chargingSchedule.startSchedule")
    try:
        start_s = parse_time(start) if start is not None else None
        valid_from = parse_time(doc["valid_from"]) if doc.get("valid_from") else None
        valid_to = parse_time(doc["valid_to"]) if doc.get("valid_to") else None
    except ValueError as e:
        raise ValueError(f"a time in the profile is not ISO 8601: {e}") from None
    duration = sched.get("duration")
    if purpose == "ChargePointMaxProfile" and connector_id != 0:
        raise ValueError("a ChargePointMaxProfile goes on connector 0 only")
    if purpose == "TxProfile" and connector_id == 0:
        raise ValueError("a TxProfile goes on a connector (1), not 0")
    return Profile(id=pid, connector_id=connector_id, stack_level=stack, purpose=purpose, kind=kind, unit=unit,
                   periods=tuple(periods), installed_s=installed_s, recurrency=recurrency,
                   valid_from_s=valid_from, valid_to_s=valid_to, transaction_id=doc.get("transaction_id"),
                   start_s=start_s, duration_s=float(duration) if duration is not None else None, raw=doc)


@dataclasses.dataclass(frozen=True)
class Tx:
    """The transaction a TxProfile / Relative schedule refers to: its upstream id (None until known) and start."""
    transaction_id: Optional[int]
    start_s: float


def _schedule_start(p: Profile, t: float, tx: Optional[Tx]) -> float:
    if p.kind == "Relative":
        return tx.start_s if tx is not None else p.installed_s
    base = p.start_s if p.start_s is not None else p.installed_s
    if p.kind == "Recurring":
        cycle = RECURRENCY_S[p.recurrency]
        return base + math.floor((t - base) / cycle) * cycle
    return base


def _profile_amps(p: Profile, t: float, tx: Optional[Tx]) -> Optional[float]:
    """What `p` allows at `t` in A, or None when it says nothing then (not valid, not started, ended)."""
    if p.valid_from_s is not None and t < p.valid_from_s:
        return None
    if p.valid_to_s is not None and t >= p.valid_to_s:
        return None
    offset = t - _schedule_start(p, t, tx)
    if offset < 0:
        return None
    if p.duration_s is not None and offset >= p.duration_s:
        return None
    if p.kind == "Recurring" and offset >= RECURRENCY_S[p.recurrency]:
        return None
    current = None
    for period in p.periods:
        if period.start_s <= offset:
            current = period
        else:
            break
    return None if current is None else p.amps(current)


def applies(p: Profile, tx: Optional[Tx]) -> bool:
    """A TxProfile only counts during a transaction (its own, when it names one)."""
    if p.purpose != "TxProfile":
        return True
    if tx is None:
        return False
    return p.transaction_id is None or tx.transaction_id is None or p.transaction_id == tx.transaction_id


def _purpose_amps(profiles: list[Profile], purpose: str, t: float, tx: Optional[Tx]) -> Optional[float]:
    candidates = [p for p in profiles if p.purpose == purpose and applies(p, tx)]
    if purpose == "TxDefaultProfile" and any(p.connector_id == 1 for p in candidates):
        # A connector's own default replaces the charge point's default for it.
        first = _purpose_amps_in([p for p in candidates if p.connector_id == 1], t, tx)
        return first if first is not None else _purpose_amps_in(
            [p for p in candidates if p.connector_id == 0], t, tx)
    return _purpose_amps_in(candidates, t, tx)


def _purpose_amps_in(candidates: list[Profile], t: float, tx: Optional[Tx]) -> Optional[float]:
    for p in sorted(candidates, key=lambda p: -p.stack_level):
        a = _profile_amps(p, t, tx)
        if a is not None:
            return a
    return None


def limit_at(profiles: list[Profile], t: float, tx: Optional[Tx] = None) -> Optional[float]:
    """The cap in A the installed profiles set at `t` (None: no cap)."""
    cp_max = _purpose_amps(profiles, "ChargePointMaxProfile", t, tx)
    tx_limit = _purpose_amps(profiles, "TxProfile", t, tx)
    if tx_limit is None:
        tx_limit = _purpose_amps(profiles, "TxDefaultProfile", t, tx)
    limits = [a for a in (cp_max, tx_limit) if a is not None]
    return min(limits) if limits else None


def next_change(profiles: list[Profile], t: float, tx: Optional[Tx] = None) -> Optional[float]:
    """The earliest time after `t` at which limit_at() may change (None: never, as far as the profiles say)."""
    times: list[float] = []
    for p in profiles:
        if not applies(p, tx):
            continue
        times += [x for x in (p.valid_from_s, p.valid_to_s) if x is not None]
        start = _schedule_start(p, t, tx)
        starts = [start]
        if p.kind == "Recurring":
            starts.append(start + RECURRENCY_S[p.recurrency])
        for s in starts:
            times += [s + period.start_s for period in p.periods]
            if p.duration_s is not None:
                times.append(s + p.duration_s)
    later = [x for x in times if x > t + 1e-6]
    return min(later) if later else None


def composite(profiles: list[Profile], start_s: float, duration_s: float, ceiling_A: float,
              tx: Optional[Tx] = None, unit: str = "A", phases: int = 3) -> list[dict]:
    """GetCompositeSchedule's periods ({"start_period": s, "limit": x}) from `start_s` for `duration_s`: at every
    moment the lower of `ceiling_A` (what control allows) and the profiles' cap, in `unit` (A, or W at VOLTAGE_V)."""
    periods: list[dict] = []
    t, end = start_s, start_s + duration_s
    while t < end:
        cap = limit_at(profiles, t, tx)
        amps = ceiling_A if cap is None else min(ceiling_A, cap)
        value = amps if unit == "A" else amps * VOLTAGE_V * phases
        value = math.floor(value * 10 + 1e-9) / 10        # the schema allows one decimal; never round up a limit
        if not periods or periods[-1]["limit"] != value:
            periods.append({"start_period": int(t - start_s), "limit": value})
        nxt = next_change(profiles, t, tx)
        if nxt is None or nxt >= end:
            break
        t = nxt
    return periods


__all__ = ["Profile", "Period", "Tx", "parse_profile", "limit_at", "next_change", "composite", "plain",
           "parse_time", "iso", "VOLTAGE_V", "MAX_PROFILES", "MAX_STACK_LEVEL", "MAX_PERIODS"]
