"""Charging profiles from the backend -> caps and composite schedules (pure functions, OCPP 1.6 §3.13)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from evc.front.ocpp.profiles import (
    Tx, composite, iso, limit_at, next_change, parse_profile, parse_time,
)

T0 = parse_time("2026-11-26T12:00:00Z")


def prof(pid=1, purpose="TxDefaultProfile", stack=0, periods=((0, 16),), unit="A", kind="Absolute", connector=1,
         start=T0, duration=None, **extra):
    sched = {"charging_rate_unit": unit,
             "charging_schedule_period": [{"start_period": s, "limit": lim} for s, lim in periods]}
    if start is not None:
        sched["start_schedule"] = iso(start)
    if duration is not None:
        sched["duration"] = duration
    doc = {"charging_profile_id": pid, "stack_level": stack, "charging_profile_purpose": purpose,
           "charging_profile_kind": kind, "charging_schedule": sched, **extra}
    return parse_profile(connector, doc, T0)


def test_the_highest_stack_level_wins_and_a_lower_one_takes_over_when_it_ends():
    low = prof(1, stack=0, periods=((0, 20),))
    high = prof(2, stack=1, periods=((0, 10),), duration=600)
    assert limit_at([low, high], T0 + 10) == 10
    assert limit_at([low, high], T0 + 600) == 20
    assert next_change([low, high], T0 + 10) == T0 + 600


def test_the_charge_point_maximum_and_the_transaction_default_combine_by_their_minimum():
    cp_max = prof(1, purpose="ChargePointMaxProfile", connector=0, periods=((0, 12),))
    default = prof(2, periods=((0, 20), (3600, 8)))
    assert limit_at([cp_max, default], T0 + 1) == 12
    assert limit_at([cp_max, default], T0 + 3600) == 8


def test_a_tx_profile_counts_only_during_its_transaction_and_overrides_the_default():
    default = prof(1, periods=((0, 20),))
    tx_profile = prof(2, purpose="TxProfile", stack=0, periods=((0, 6),), transaction_id=7)
    assert limit_at([default, tx_profile], T0 + 1) == 20                       # no transaction
    assert limit_at([default, tx_profile], T0 + 1, Tx(7, T0)) == 6
    assert limit_at([default, tx_profile], T0 + 1, Tx(8, T0)) == 20            # someone else's transaction


def test_a_connector_default_replaces_the_charge_point_default():
    everywhere = prof(1, connector=0, periods=((0, 10),))
    here = prof(2, connector=1, periods=((0, 14),))
    assert limit_at([everywhere, here], T0 + 1) == 14


def test_watts_become_amps_at_230_v_per_phase():
    p = prof(periods=((0, 11040),), unit="W")
    assert limit_at([p], T0 + 1) == pytest.approx(16.0)


def test_a_daily_profile_repeats_and_says_when_it_changes_next():
    p = prof(kind="Recurring", recurrency_kind="Daily", start=T0,
             periods=((0, 6), (8 * 3600, 16)))
    assert limit_at([p], T0 + 86400 + 60) == 6
    assert limit_at([p], T0 + 86400 + 9 * 3600) == 16
    assert next_change([p], T0 + 86400 + 60) == T0 + 86400 + 8 * 3600


def test_a_relative_profile_starts_with_the_transaction():
    p = prof(kind="Relative", start=None, periods=((0, 6), (600, 16)))
    tx = Tx(1, T0 + 1000)
    assert limit_at([p], T0 + 1100, tx) == 6
    assert limit_at([p], T0 + 1600, tx) == 16


def test_a_profile_not_yet_valid_or_expired_sets_no_cap():
    p = prof(valid_from=iso(T0 + 100), valid_to=iso(T0 + 200))
    assert limit_at([p], T0 + 50) is None
    assert limit_at([p], T0 + 150) == 16
    assert limit_at([p], T0 + 250) is None


def test_decimal_numbers_from_the_library_are_accepted():
    p = prof(periods=((0, Decimal("13.5")),))
    assert limit_at([p], T0 + 1) == 13.5 and isinstance(p.raw["charging_schedule"]["charging_schedule_period"][0]
                                                         ["limit"], float)


def test_the_composite_schedule_is_the_lower_of_control_and_the_profiles_over_time():
    p = prof(periods=((0, 20), (600, 8), (1200, 20)))
    assert composite([p], T0, 1800, ceiling_A=10) == [
        {"start_period": 0, "limit": 10}, {"start_period": 600, "limit": 8}, {"start_period": 1200, "limit": 10}]
    assert composite([p], T0, 1800, ceiling_A=10, unit="W", phases=1) == [
        {"start_period": 0, "limit": 2300}, {"start_period": 600, "limit": 1840},
        {"start_period": 1200, "limit": 2300}]
    assert composite([], T0, 60, ceiling_A=16) == [{"start_period": 0, "limit": 16}]


@pytest.mark.parametrize("change, message", [
    ({"charging_profile_purpose": "Nope"}, "chargingProfilePurpose 'Nope'"),
    ({"charging_schedule": {"charging_rate_unit": "kW", "charging_schedule_period": [
        {"start_period": 0, "limit": 1}]}}, "chargingRateUnit 'kW'"),
    ({"charging_schedule": {"charging_rate_unit": "A", "charging_schedule_period": []}}, "1..24 periods"),
    ({"charging_schedule": {"charging_rate_unit": "A", "charging_schedule_period": [
        {"start_period": 60, "limit": 1}]}}, "must start at 0"),
    ({"charging_profile_kind": "Recurring"}, "recurrencyKind"),
    ({"stack_level": 99}, "stackLevel 99"),
])
def test_a_profile_that_cannot_be_used_is_refused_naming_what_is_wrong(change, message):
    doc = {"charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
           "charging_profile_kind": "Absolute",
           "charging_schedule": {"charging_rate_unit": "A", "charging_schedule_period": [
               {"start_period": 0, "limit": 16}]}}
    doc.update(change)
    with pytest.raises(ValueError, match=message):
        parse_profile(1, doc, T0)


def test_a_charge_point_maximum_must_be_on_connector_zero():
    with pytest.raises(ValueError, match="connector 0 only"):
        prof(purpose="ChargePointMaxProfile", connector=1)
