"""The builtin allocation: one example test per control rule, and hypothesis properties for its invariants."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evc.control import (
    PHASES, ChargerInput, Inputs, MeterReading, PerPhase, SiteLimits, allocate,
)

NOW_S = 1000.0
# Fixed and derandomized so CI on a small box is quick and every run checks the same cases.
PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def car(name, *, draw=None, **kw):
    """A wanting 3-phase 16 A charger; draw=X means it measures X A on each of its phases."""
    kw.setdefault("wants", True)
    c = ChargerInput(name=name, **kw)
    if draw is not None:
        c = dataclasses.replace(c, draw_A=(float(draw),) * c.phases)
    return c


def run(chargers, meter_A=0.0, A_max=32, *, now=NOW_S, meter_age_s=1.0, meter_stale=False,
        store_lost=False, **limits):
    """allocate() on a site with A_max per phase and a fresh grid meter reading meter_A."""
    meter = MeterReading("m1", meter_A, updated_s=now - meter_age_s, stale=meter_stale)
    return allocate(Inputs(now, SiteLimits(A_max=A_max, **limits), meter, chargers, store_lost=store_lost))


def phase_sum(result, chargers, phase):
    sp = result.setpoints
    return sum(sp[c.name] for c in chargers if phase in c.grid_phases)


# --- example tests, one per rule -----------------------------------------------------------------

def test_no_phase_over_its_limit_by_measured_values():
    """Base load (meter minus the cars' draw) plus the setpoints stays within A_max on each phase."""
    chargers = [car("a", draw=10, setpoint_A=10, A_max=32), car("b", draw=10, setpoint_A=10, A_max=32)]
    r = run(chargers, meter_A={"L1": 35, "L2": 25, "L3": 20}, A_max=40, deadband_A=0)
    assert r.base_A == PerPhase(15, 5, 0)
    for p in PHASES:
        assert r.base_A[p] + phase_sum(r, chargers, p) <= 40
    assert r.setpoints == {"a": 12, "b": 12}           # L1: (40 - 15) / 2 = 12.5, rounded down
    assert r["a"].reason == "limited by phase L1 headroom"


def test_base_load_never_negative_when_cars_draw_more_than_meter_shows():
    r = run([car("a", draw=20, setpoint_A=16)], meter_A=10)
    assert r.base_A == PerPhase(0, 0, 0)


def test_unknown_draw_counts_as_full_setpoint():
    """A car with unknown draw is not subtracted from the meter, and its setpoint is counted on top."""
    known = run([car("a", draw=16, setpoint_A=16)], meter_A=20, A_max=32)
    unknown = run([car("a", draw=None, setpoint_A=16)], meter_A=20, A_max=32)
    assert known.setpoints["a"] == 16                  # base 4 + 16 <= 32
    assert unknown.base_A == PerPhase(20, 20, 20)      # all 20 A may be non-car load
    assert unknown.setpoints["a"] == 12                # ... and the car may take its setpoint on top


def test_unknown_draw_does_not_raise_a_charging_car():
    r = run([car("a", draw=None, setpoint_A=8, A_max=16)], meter_A=0)
    assert r.setpoints["a"] == 8
    assert r["a"].reason == "held at 8 A: draw unknown, no increases"


def test_unknown_draw_does_not_stop_a_paused_car_from_starting():
    """A paused EVSE offers nothing, so its car draws nothing: its start is counted in full."""
    r = run([car("a", draw=None, setpoint_A=0)], meter_A=0)
    assert r.setpoints["a"] == 16


def test_lowest_priority_paused_first_when_minimum_cannot_be_met():
    chargers = [car("low", priority=1, draw=6, setpoint_A=6), car("high", priority=3, draw=6, setpoint_A=6),
                car("mid", priority=2, draw=6, setpoint_A=6)]
    r = run(chargers, meter_A=18 + 4, A_max=16)         # base 4: 12 A left, room for two at 6 A
    assert r.setpoints == {"low": 0, "high": 6, "mid": 6}
    assert r["low"].reason == "paused: phase L1 full (priority 1 < 3)"


def test_higher_priority_is_filled_before_lower_priority_rises_above_minimum():
    chargers = [car("low", priority=0, A_max=32, draw=0), car("high", priority=5, A_max=32, draw=0)]
    r = run(chargers, A_max=32, deadband_A=0)
    assert r.setpoints == {"low": 6, "high": 26}
    assert r["high"].reason == "limited by phase L1 headroom"


def test_equal_priority_shares_equally_respecting_each_max():
    """Water-filling: the small charger gets its max, the others split what is left."""
    chargers = [car("small", A_max=8, draw=0), car("b", A_max=32, draw=0), car("c", A_max=32, draw=0)]
    r = run(chargers, A_max=40, deadband_A=0)
    assert r.setpoints == {"small": 8, "b": 16, "c": 16}
    assert r["small"].reason == "at charger max 8 A"


def test_every_car_at_its_max_when_the_site_has_room():
    r = run([car("a", draw=0), car("b", draw=0)], A_max=63)
    assert r.setpoints == {"a": 16, "b": 16}
    assert r["a"].reason == "at charger max 16 A"


def test_single_phase_charger_only_uses_its_phase():
    one = car("one", phases=1, phase_map=("L2",), A_max=32, draw=0)
    three = car("three", A_max=32, draw=0)
    r = run([one, three], A_max=32, deadband_A=0)
    # Only L2 is shared: the 1-phase car and the 3-phase car split it, L1 and L3 keep spare.
    assert r.setpoints == {"one": 16, "three": 16}
    assert r.headroom_A == PerPhase(16, 0, 16)


def test_single_phase_charger_is_not_limited_by_the_other_phases():
    one = car("one", phases=1, phase_map=("L1",), A_max=32, draw=0)
    r = run([one], meter_A={"L1": 0, "L2": 30, "L3": 30}, A_max=32, deadband_A=0)
    assert r.setpoints == {"one": 32}                   # L2 and L3 are full, but it only uses L1


def test_rotated_phase_map_assigns_draw_and_current_to_grid_phases():
    """Charger phase 1 on grid L2: its draw is subtracted from L2, its current limited by L2's headroom."""
    rotated = car("r", phase_map=("L2", "L3", "L1"), phases=1, A_max=32, draw_A=(10.0,), setpoint_A=10)
    r = run([rotated], meter_A={"L1": 5, "L2": 30, "L3": 5}, A_max=32, deadband_A=0)
    assert r.base_A == PerPhase(5, 20, 5)
    assert r.setpoints == {"r": 12}
    assert r["r"].reason == "limited by phase L2 headroom"


def test_two_of_three_phases_used_by_a_two_phase_car():
    c = car("two", phases=2, phase_map=("L1", "L2", "L3"), draw=0)
    r = run([c], meter_A={"L1": 0, "L2": 0, "L3": 30}, A_max=32)
    assert r.setpoints == {"two": 16}                   # L3 is full, but this car does not use it


def test_min_on_time_keeps_a_just_started_charger_against_higher_priority():
    started = car("started", priority=0, draw=6, setpoint_A=6, switched_s=NOW_S - 30)
    newcomer = car("vip", priority=9, draw=0, setpoint_A=0)
    r = run([started, newcomer], meter_A=6, A_max=12, min_on_s=120)
    assert r.setpoints == {"started": 6, "vip": 6}     # both fit at 6 A
    r = run([started, newcomer], meter_A=6, A_max=10, min_on_s=120)
    assert r.setpoints == {"started": 9, "vip": 0}     # 10 A, keeping the 1 A deadband spare
    assert r["vip"].reason == "paused: phase L1 full (others within minimum on-time)"
    r = run([dataclasses.replace(started, switched_s=NOW_S - 121), newcomer], meter_A=6, A_max=10,
            min_on_s=120)
    assert r.setpoints == {"started": 0, "vip": 9}     # its minimum on-time is over


def test_min_on_time_yields_when_a_phase_would_be_over_its_limit():
    started = car("started", draw=6, setpoint_A=6, switched_s=NOW_S - 5)
    r = run([started], meter_A={"L1": 6, "L2": 6, "L3": 33}, A_max=32, min_on_s=120)
    assert r.setpoints == {"started": 0}
    assert r["started"].reason == "paused: phase L3 full (minimum on-time overridden for safety)"


def test_min_off_time_keeps_a_just_paused_charger_paused():
    paused = car("p", draw=0, setpoint_A=0, switched_s=NOW_S - 50)
    r = run([paused], A_max=32, min_off_s=120)
    assert r.setpoints == {"p": 0}
    assert r["p"].reason == "paused: minimum off-time, 70 s left"
    r = run([dataclasses.replace(paused, switched_s=NOW_S - 120)], A_max=32, min_off_s=120)
    assert r.setpoints == {"p": 16}


def test_new_session_is_not_held_by_min_off_time():
    """switched_s=None (no switch on record, e.g. a car just plugged) starts at once."""
    r = run([car("new", draw=0, setpoint_A=0, switched_s=None)], A_max=32, min_off_s=600)
    assert r.setpoints == {"new": 16}


def test_raise_waits_for_deadband_spare():
    c = car("a", A_max=32, draw=20, setpoint_A=20)
    # base 10 A: share 22 A, but 22 would leave no spare: raise to 21, keeping 1 A.
    r = run([c], meter_A=30, A_max=32, deadband_A=1)
    assert r.setpoints == {"a": 21}
    assert r["a"].reason == "limited by phase L1 headroom, keeping 1 A spare"


def test_setpoint_held_within_deadband_instead_of_moving_by_one_amp():
    c = car("a", A_max=32, draw=21, setpoint_A=21)
    # base 10.5 A: share 21.5 -> 21 fits; with 1 A spare only 20.5: neither lowered nor raised.
    r = run([c], meter_A=31.5, A_max=32, deadband_A=1)
    assert r.setpoints == {"a": 21}
    # base 9.9 A: share 22.1, with the deadband 21.1: still 21, no 1 A step up for 0.1 A more room.
    r = run([c], meter_A=30.9, A_max=32, deadband_A=1)
    assert r.setpoints == {"a": 21}
    assert r["a"].reason == "held at 21 A: raise waits for 1 A spare on L1"


def test_decrease_needed_for_safety_happens_at_once_despite_deadband():
    c = car("a", A_max=32, draw=21, setpoint_A=21)
    r = run([c], meter_A=32.5, A_max=32, deadband_A=5)  # base 11.5 A: only 20.5 A fit
    assert r.setpoints == {"a": 20}


def test_upstream_cap_limits_setpoint():
    r = run([car("a", cap_A=10.5, A_max=32, draw=0)], A_max=63)
    assert r.setpoints == {"a": 10}
    assert r["a"].reason == "at cap 10 A"


def test_cap_below_minimum_pauses_the_charger():
    r = run([car("a", cap_A=4, setpoint_A=16, draw=16)], A_max=63)
    assert r.setpoints == {"a": 0}
    assert r["a"].reason == "paused: cap 4 A below minimum 6 A"


def test_car_minimum_above_six_amps_is_respected():
    r = run([car("a", A_min=8, draw=0)], A_max=7.5)
    assert r.setpoints == {"a": 0}
    r = run([car("a", A_min=8, draw=0)], A_max=8, deadband_A=0)
    assert r.setpoints == {"a": 8}


def test_not_wanting_charger_gets_zero_with_its_reason():
    r = run([car("a", wants=False, setpoint_A=16, draw=0),
             car("b", wants=False, idle_reason="mode OFF")], A_max=63)
    assert r.setpoints == {"a": 0, "b": 0}
    assert r["a"].reason == "no car"
    assert r["b"].reason == "mode OFF"


def test_stale_meter_sets_failsafe_and_never_increases():
    chargers = [car("high", draw=16, setpoint_A=16), car("low", draw=4, setpoint_A=4),
                car("off", draw=0, setpoint_A=0), car("idle", wants=False, setpoint_A=10)]
    r = run(chargers, meter_A=40, A_max=63, meter_stale=True, failsafe_A=6)
    assert r.mode == "failsafe"
    assert r.setpoints == {"high": 6, "low": 0, "off": 0, "idle": 0}
    assert r["high"].reason == "failsafe: meter m1 stale, 6 A"
    assert r["off"].reason == "failsafe: meter m1 stale"


def test_failsafe_zero_stops_every_charger():
    r = run([car("a", draw=16, setpoint_A=16)], A_max=63, meter_stale=True, failsafe_A=0)
    assert r.setpoints == {"a": 0}


def test_meter_older_than_stale_s_is_stale():
    c = [car("a", draw=16, setpoint_A=16)]
    assert run(c, A_max=63, meter_age_s=9.9, stale_s=10).mode == "normal"
    r = run(c, A_max=63, meter_age_s=10.1, stale_s=10, failsafe_A=6)
    assert (r.mode, r.setpoints) == ("failsafe", {"a": 6})


def test_meter_never_read_is_stale():
    meter = MeterReading("m1", None, updated_s=None)
    r = allocate(Inputs(NOW_S, SiteLimits(A_max=63, failsafe_A=6), meter, [car("a", setpoint_A=16)]))
    assert r.mode == "failsafe"
    assert r.setpoints == {"a": 6}


def test_failsafe_pauses_lowest_priority_when_cars_alone_exceed_the_limit():
    """The base load is unknown, so at least the failsafe currents themselves must fit A_max."""
    chargers = [car(f"c{i}", priority=i, setpoint_A=16) for i in range(3)]
    r = run(chargers, A_max=13, meter_stale=True, failsafe_A=6)
    assert r.setpoints == {"c0": 0, "c1": 6, "c2": 6}
    assert r["c0"].reason == "failsafe: meter m1 stale; paused: phase L1 full at failsafe current"


def test_store_lost_keeps_enforcing_limits_without_increases():
    chargers = [car("a", draw=10, setpoint_A=10), car("b", draw=0, setpoint_A=0)]
    r = run(chargers, meter_A=10, A_max=63, store_lost=True)
    assert r.mode == "hold"
    assert r.setpoints == {"a": 10, "b": 0}
    assert r["b"].reason == "paused: store lost, no increases"
    r = run(chargers, meter_A=30, A_max=25, store_lost=True)       # base 20 A: decrease still happens
    assert r.setpoints == {"a": 0, "b": 0}
    r = run(chargers, meter_A=25, A_max=25, store_lost=True, deadband_A=0)
    assert r.setpoints == {"a": 10, "b": 0}


def test_stale_charger_is_not_raised_and_its_draw_is_unknown():
    c = car("a", draw=10, setpoint_A=10, stale=True)
    r = run([c], meter_A=10, A_max=63)
    assert r.base_A == PerPhase(10, 10, 10)             # its old draw is not subtracted
    assert r.setpoints == {"a": 10}
    assert r["a"].reason == "held at 10 A: charger state stale, no increases"


def test_lost_charger_is_held_and_its_current_reserved():
    lost = car("lost", draw=10, setpoint_A=16, lost=True)
    other = car("other", A_max=32, draw=0)
    r = run([lost, other], meter_A=14, A_max=32, deadband_A=0)
    # base 4 A; the lost one may still take its 16 A: 32 - 4 - 16 = 12 A for the other.
    assert r.setpoints == {"lost": 16, "other": 12}
    assert r["lost"].reason == "lost: not answering, 16 A held"


def test_base_load_over_limit_pauses_every_charger_and_reports_negative_headroom():
    r = run([car("a", draw=6, setpoint_A=6), car("b", phases=1, phase_map=("L2",), draw=6, setpoint_A=6)],
            meter_A={"L1": 46, "L2": 6, "L3": 6}, A_max=32)
    assert r.setpoints == {"a": 0, "b": 16}
    assert r["a"].reason == "paused: phase L1 full (non-car load)"
    assert r.headroom_A.L1 == pytest.approx(-8)


def test_equal_priority_keeps_charging_cars_before_starting_waiting_ones():
    chargers = [car("waiting", draw=0, setpoint_A=0), car("charging", draw=6, setpoint_A=6)]
    r = run(chargers, meter_A=6, A_max=8)
    assert r.setpoints == {"waiting": 0, "charging": 7}
    assert r["waiting"].reason == "paused: phase L1 full (equal priority 0, others charging first)"


def test_waiting_cars_start_in_the_order_they_were_paused():
    chargers = [car("later", draw=0, switched_s=NOW_S - 300), car("earlier", draw=0, switched_s=NOW_S - 900)]
    r = run(chargers, A_max=8)
    assert r.setpoints == {"later": 0, "earlier": 7}


def test_setpoints_are_whole_amps():
    chargers = [car(f"c{i}", A_max=32, draw=0) for i in range(3)]
    r = run(chargers, A_max=32, deadband_A=0)
    assert all(isinstance(a.setpoint_A, int) for a in r.allocations)
    assert r.setpoints == {"c0": 10, "c1": 10, "c2": 10}


def test_result_lists_chargers_in_input_order():
    names = ["z", "a", "m"]
    r = run([car(n, draw=0) for n in names], A_max=63)
    assert [a.name for a in r.allocations] == names


@pytest.mark.parametrize("kw, message", [
    (dict(phases=3, phase_map=("L1",)), "phase_map"),
    (dict(phases=1, phase_map=("L4",)), "phase_map"),
    (dict(phases=2, phase_map=("L1", "L1")), "phase_map"),
    (dict(A_min=5), "A_min"),
    (dict(draw_A=(1.0, 2.0)), "draw_A"),
])
def test_invalid_charger_input_is_rejected(kw, message):
    with pytest.raises(ValueError, match=message):
        ChargerInput("x", True, **kw)


def test_failsafe_between_zero_and_six_is_rejected():
    with pytest.raises(ValueError, match="failsafe_A"):
        SiteLimits(A_max=32, failsafe_A=3)


def test_duplicate_charger_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        run([car("a"), car("a")])


# --- properties ----------------------------------------------------------------------------------

def one_in(n):
    """True about once in n draws (hypothesis favours the first element, so it is the common case)."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def chargers_st(draw, n_max=10, three_phase_only=False):
    n = draw(st.integers(0, n_max))
    out = []
    for i in range(n):
        phases = 3 if three_phase_only else draw(st.sampled_from([1, 1, 2, 3, 3, 3]))
        phase_map = tuple(draw(st.permutations(PHASES)))[:draw(st.integers(phases, 3))]
        A_max = draw(st.sampled_from([4, 10, 16, 16, 20, 32, 32.5]))
        setpoint = draw(st.sampled_from([0, 0, 3, 6, 7, 10, 16, 25, 32]))
        known = draw(st.booleans()) or draw(st.booleans())
        draw_A = tuple(draw(st.floats(0, 35)) for _ in range(phases)) if known else None
        out.append(ChargerInput(
            name=f"c{i}", wants=not draw(one_in(5)), priority=draw(st.integers(0, 3)),
            phases=phases, phase_map=phase_map, A_min=draw(st.sampled_from([6, 6, 6, 8])), A_max=A_max,
            cap_A=draw(st.sampled_from([None, None, None, None, 0, 5, 6, 8.5, 13, 40])), setpoint_A=setpoint,
            draw_A=draw_A, stale=draw(one_in(10)), lost=draw(one_in(15)),
            switched_s=draw(st.none() | st.floats(NOW_S - 400, NOW_S)),
        ))
    return out


@st.composite
def inputs_st(draw, chargers=chargers_st()):
    limits = SiteLimits(
        A_max=PerPhase(*(draw(st.integers(0, 100) | st.integers(25, 80)) + draw(st.sampled_from([0, 0.25, 0.5])) for _ in PHASES)),
        failsafe_A=draw(st.sampled_from([0, 6, 10])),
        min_on_s=draw(st.sampled_from([0, 60, 300])), min_off_s=draw(st.sampled_from([0, 60, 300])),
        deadband_A=draw(st.sampled_from([0, 0.5, 1, 2])),
    )
    chargers = draw(chargers)
    # The meter sees a non-car load plus what the cars draw (give or take: cars may be between readings).
    measured = {p: draw(st.integers(0, 30)) + draw(st.floats(-3, 3)) for p in PHASES}
    for c in chargers:
        for p, a in zip(c.grid_phases, c.draw_A or ()):
            measured[p] += a
    meter = MeterReading("m1", {p: max(0.0, a) for p, a in measured.items()},
                         updated_s=NOW_S - draw(st.sampled_from([0.5, 0, 2, 5, 9.9, 10.1])), stale=draw(one_in(8)))
    return Inputs(NOW_S, limits, meter, chargers, store_lost=draw(one_in(7)))


def limit_of(c):
    return min(c.A_max, c.cap_A if c.cap_A is not None else c.A_max)


def expected_base(inp, phase):
    """The spec's base load: the meter minus the cars' known draw; unknown while the meter is stale."""
    if allocate(inp).mode == "failsafe":
        return 0.0          # unknown: the cars alone must fit
    cars = sum(a for c in inp.chargers if c.draw_A is not None and not c.stale
               for p, a in zip(c.grid_phases, c.draw_A) if p == phase)
    return max(0.0, inp.meter.current_A[phase] - cars)


@PROPERTY
@given(inputs_st())
def test_property_no_phase_over_its_limit(inp):
    """base + setpoints <= A_max on every phase, unless no controllable charger on it charges."""
    r = allocate(inp)
    sp = r.setpoints
    for p in PHASES:
        base = expected_base(inp, p)
        assert r.base_A[p] == pytest.approx(base)
        total = base + sum(sp[c.name] for c in inp.chargers if p in c.grid_phases)
        controllable = [c for c in inp.chargers if p in c.grid_phases and not c.lost]
        if any(sp[c.name] for c in controllable):
            assert total <= inp.limits.A_max[p] + 1e-6, (p, r)
        assert r.headroom_A[p] == pytest.approx(inp.limits.A_max[p] - total)


@PROPERTY
@given(inputs_st())
def test_property_setpoints_zero_or_within_charger_limits(inp):
    r = allocate(inp)
    for c, a in zip(inp.chargers, r.allocations):
        assert isinstance(a.setpoint_A, int) and a.reason
        if c.lost:
            assert a.setpoint_A == c.setpoint_A        # cannot be changed; held
        elif a.setpoint_A:
            assert c.wants
            assert c.A_min <= a.setpoint_A <= limit_of(c), (c, a)


@PROPERTY
@given(inputs_st())
def test_property_stale_meter_or_lost_store_never_increases(inp):
    r = allocate(inp)
    stale = r.mode == "failsafe"
    if stale or inp.store_lost:
        for c, a in zip(inp.chargers, r.allocations):
            assert a.setpoint_A <= c.setpoint_A, (c, a)
            if stale and not c.lost:
                assert a.setpoint_A <= max(inp.limits.failsafe_A, 0)


@st.composite
def contention_st(draw):
    """Many wanting chargers of mixed priorities and phases on a site too small for all of them."""
    chargers = [dataclasses.replace(c, wants=True, lost=False, stale=False, A_min=6, cap_A=None,
                                    A_max=max(c.A_max, 6))
                for c in draw(chargers_st(n_max=10))]
    limits = SiteLimits(A_max=draw(st.integers(6, 40)), min_on_s=draw(st.sampled_from([0, 60])),
                        min_off_s=draw(st.sampled_from([0, 60])))
    meter = MeterReading("m1", {p: draw(st.integers(0, 10)) + sum(
        a for c in chargers for q, a in zip(c.grid_phases, c.draw_A or ()) if q == p) for p in PHASES},
        updated_s=NOW_S)
    return Inputs(NOW_S, limits, meter, chargers)


@PROPERTY
@given(inputs_st() | contention_st())
def test_property_priorities_respected(inp):
    """No lower-priority charger charges while a higher-priority one that could charge is paused.

    Exceptions allowed by the rules: the lower one is within its minimum on-time, or it does not
    use every phase of the higher one (so pausing it would not free the phase that is full).
    """
    r = allocate(inp)
    if r.mode != "normal":
        return
    lim = inp.limits
    sp = r.setpoints

    def could_charge(c):
        return (c.wants and not c.lost and not c.stale and c.A_min == 6 and limit_of(c) >= 6
                and (c.switched_s is None or c.setpoint_A >= 6 or NOW_S - c.switched_s >= lim.min_off_s))

    def held_on(c):
        return c.setpoint_A >= c.A_min and c.switched_s is not None and NOW_S - c.switched_s < lim.min_on_s

    for h in inp.chargers:
        if sp[h.name] or not could_charge(h):
            continue
        for lo in inp.chargers:
            if (lo.priority < h.priority and sp[lo.name] and not lo.lost and lo.A_min == 6
                    and not held_on(lo)):
                assert not set(h.grid_phases) <= set(lo.grid_phases), (h, lo, r)


@st.composite
def equals_st(draw):
    """Equal-priority uncapped 3-phase chargers, among others with other priorities and phases."""
    k = draw(st.integers(2, 8))
    prio = draw(st.integers(0, 3))
    A_max = draw(st.sampled_from([16, 32]))
    equals = [ChargerInput(name=f"e{i}", wants=True, priority=prio, phases=3,
                           phase_map=tuple(draw(st.permutations(PHASES))), A_max=A_max,
                           setpoint_A=draw(st.sampled_from([0, 6, 9, 13, 16, 20, 32])),
                           draw_A=tuple(draw(st.floats(0, 32)) for _ in PHASES)) for i in range(k)]
    others = [dataclasses.replace(c, name=f"o{c.name}", lost=False, stale=False)
              for c in draw(chargers_st(n_max=5)) if c.priority != prio]
    return equals, others


@PROPERTY
@given(equals_st(), st.floats(0, 200), st.floats(0, 60), st.sampled_from([0, 0.5, 1]))
def test_property_fair_among_equal_priority(equals_others, A_max, base_A, deadband_A):
    """Equal-priority 3-phase chargers that charge and are below their max differ by at most 1 A."""
    equals, others = equals_others
    chargers = equals + others
    measured = base_A + sum(max(c.draw_A) for c in chargers if c.draw_A)
    meter = MeterReading("m1", measured, updated_s=NOW_S)
    r = allocate(Inputs(NOW_S, SiteLimits(A_max=A_max, deadband_A=deadband_A), meter, chargers))
    charging = [r.setpoints[c.name] for c in equals if r.setpoints[c.name]]
    if charging:
        assert max(charging) - min(charging) <= 1, r


@PROPERTY
@given(inputs_st())
def test_property_result_does_not_depend_on_charger_order(inp):
    r = allocate(inp)
    flipped = allocate(dataclasses.replace(inp, chargers=list(reversed(inp.chargers))))
    assert flipped.setpoints == r.setpoints
    assert {a.name: a.reason for a in flipped.allocations} == {a.name: a.reason for a in r.allocations}


@PROPERTY
@given(inputs_st(chargers=chargers_st(n_max=8)))
def test_property_steady_state_does_not_flap(inp):
    """Applying the result and recomputing with the cars drawing what they were offered changes nothing."""
    inp = dataclasses.replace(inp, store_lost=False, meter=dataclasses.replace(inp.meter, stale=False,
                                                                               updated_s=NOW_S))
    chargers = [dataclasses.replace(c, lost=False, stale=False, draw_A=(0.0,) * c.phases)
                for c in inp.chargers]
    base = inp.meter.current_A
    first = allocate(dataclasses.replace(inp, chargers=chargers))

    def applied(c, sp):
        switched = (sp > 0) != (c.setpoint_A >= c.A_min)
        return dataclasses.replace(c, setpoint_A=sp, draw_A=(float(sp),) * c.phases,
                                   switched_s=NOW_S if switched else c.switched_s)
    after = [applied(c, first.setpoints[c.name]) for c in chargers]
    measured = PerPhase(*(base[p] + sum(first.setpoints[c.name] for c in after if p in c.grid_phases)
                          for p in PHASES))
    second = allocate(dataclasses.replace(inp, chargers=after,
                                          meter=dataclasses.replace(inp.meter, current_A=measured)))
    assert second.setpoints == first.setpoints, (first, second)
