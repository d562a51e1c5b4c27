"""Sessions: the lifecycle, what is written to data/sessions/, the events, and restarts."""
from __future__ import annotations

import json

import pytest
from twisted.internet import task

from evc.charger.base import ChargerStatus
from evc.events import EventBus
from evc.instance import Context
from evc.session import Session, SessionTracker
from evc.store.memory import MemoryStore

ROOT = "/evc/t"
EPOCH_S = 1_740_000_000.0          # 2025-02-19T21:20:00Z: a real date, so ids and times read like real ones
NONE = ChargerStatus(vehicle="none", online=True)
PLUGGED = ChargerStatus(vehicle="plugged", online=True)
CHARGING = ChargerStatus(vehicle="charging", online=True, setpoint_A=16, actual_A=(15.8, 15.9, 15.7))
PAUSED = ChargerStatus(vehicle="charging", online=True, setpoint_A=0, actual_A=(0.1, 0.0, 0.0))
OFFLINE = ChargerStatus(vehicle="unknown", online=False)


class Site:
    """One charger's context on a shared clock, store and event bus; `events` records ("session", s1) events."""

    def __init__(self, store=None, clock=None):
        self.clock = clock or task.Clock()
        if clock is None:
            self.clock.advance(EPOCH_S)
        self.store = store or MemoryStore()
        self.bus = EventBus()
        self.events: list[Session] = []
        self.bus.subscribe(("session", "s1"), lambda topic, s: self.events.append(s))

    def ctx(self):
        return Context(kind="charger", name="s1", clock=self.clock, state=None, resolve=None, store=self.store,
                       root=ROOT, events=self.bus)

    def tracker(self, **kw) -> SessionTracker:
        t = SessionTracker(self.ctx(), **kw)
        t.start()
        return t

    def stored(self, sid) -> dict | None:
        r = self.store.range(f"{ROOT}/charger/s1/data/sessions/{sid}")
        return json.loads(r.result.kvs[0].value) if r.result.kvs else None

    def current(self) -> str | None:
        r = self.store.range(f"{ROOT}/charger/s1/data/sessions/current")
        return r.result.kvs[0].value.decode() if r.result.kvs else None

    def states(self):
        return [s.state for s in self.events]


@pytest.fixture
def site():
    return Site()


def test_plug_authorize_charge_suspend_unplug_walks_the_whole_lifecycle(site):
    t = site.tracker()
    t.update(NONE, 1000)
    t.update(PLUGGED, 1000)
    t.authorized("TAG1")
    t.update(CHARGING, 1000)
    site.clock.advance(600)
    t.update(PAUSED, 2500)
    t.update(CHARGING, 2500)
    t.update(PLUGGED, 3000)
    t.update(NONE, 3000)
    assert site.states() == ["plugged", "authorized", "charging", "suspended", "charging", "suspended", "ended"]
    ended = site.events[-1]
    assert (ended.reason, ended.id_tag, ended.meter_start_Wh, ended.meter_stop_Wh, ended.energy_Wh) == \
        ("EVDisconnected", "TAG1", 1000, 3000, 2000)
    assert ended.start_time == "2025-02-19T21:20:00.000Z" and ended.stop_time == "2025-02-19T21:30:00.000Z"
    assert t.session is None and not t.may_charge


def test_session_is_stored_with_the_open_id_in_current(site):
    t = site.tracker()
    t.update(PLUGGED, 500)
    sid = t.session.id
    assert site.current() == sid
    assert site.stored(sid)["state"] == "plugged"
    t.authorized("TAG1")
    assert site.stored(sid)["state"] == "authorized" and site.stored(sid)["id_tag"] == "TAG1"
    t.update(NONE, 900)
    doc = site.stored(sid)
    assert site.current() is None
    assert {k: doc[k] for k in ("state", "reason", "meter_start_Wh", "meter_stop_Wh", "energy_Wh")} == \
        {"state": "ended", "reason": "EVDisconnected", "meter_start_Wh": 500, "meter_stop_Wh": 900, "energy_Wh": 400}


def test_session_data_is_not_leased(site):
    t = site.tracker()
    t.update(PLUGGED, 0)
    r = site.store.range(f"{ROOT}/charger/s1/data/sessions/", prefix=True).result
    assert r.kvs and all(kv.lease == 0 for kv in r.kvs)


def test_every_transition_is_published_on_the_session_topic_with_the_session(site):
    other = []
    site.bus.subscribe(("session",), lambda topic, s: other.append((topic, s.state)))
    t = site.tracker()
    t.update(PLUGGED, 0)
    t.authorized("T")
    assert other == [(("session", "s1"), "plugged"), (("session", "s1"), "authorized")]
    assert all(isinstance(s, Session) and s.charger == "s1" for s in site.events)


def test_meter_only_changes_are_saved_at_most_every_save_interval_and_not_published(site):
    t = site.tracker(save_interval_s=60)
    t.update(PLUGGED, 0)
    t.authorized("T")
    t.update(CHARGING, 0)
    sid, n_events = t.session.id, len(site.events)
    for i in range(1, 31):
        site.clock.advance(10)
        t.update(CHARGING, 100 * i)
    assert len(site.events) == n_events
    # Saved at 60 s, 120 s, ... 300 s: the stored value is never more than 60 s old.
    assert site.stored(sid)["meter_last_Wh"] == 3000
    site.clock.advance(10)
    t.update(CHARGING, 3100)
    assert site.stored(sid)["meter_last_Wh"] == 3000


def test_authorization_before_plug_in_authorizes_the_next_session_within_the_connection_timeout(site):
    t = site.tracker(connection_timeout_s=60)
    t.update(NONE, 0)
    t.authorized("EARLY")
    assert t.session is None
    site.clock.advance(30)
    t.update(PLUGGED, 0)
    assert t.session.state == "authorized" and t.session.id_tag == "EARLY"


def test_authorization_before_plug_in_expires_after_the_connection_timeout(site):
    t = site.tracker(connection_timeout_s=60)
    t.update(NONE, 0)
    t.authorized("LATE")
    site.clock.advance(61)
    t.update(PLUGGED, 0)
    assert t.session.state == "plugged" and t.session.id_tag is None


def test_authorize_on_plug_authorizes_without_a_token(site):
    t = site.tracker(authorize_on_plug=True)
    t.update(PLUGGED, 0)
    assert t.session.state == "authorized" and t.session.id_tag is None and t.may_charge


def test_car_found_charging_without_authorization_is_recorded_as_authorized_without_token(site):
    t = site.tracker()
    t.update(CHARGING, 10)
    assert t.session.state == "charging" and t.session.authorized_time is not None and t.session.id_tag is None


def test_charging_status_without_current_is_suspended_not_charging(site):
    t = site.tracker()
    t.update(PLUGGED, 0)
    t.authorized("T")
    t.update(PAUSED, 0)
    assert t.session.state == "authorized"        # never charged yet: still waiting, not suspended
    t.update(CHARGING, 0)
    t.update(PAUSED, 0)
    assert t.session.state == "suspended"


def test_stop_while_plugged_ends_the_session_and_a_new_token_starts_a_new_one(site):
    t = site.tracker()
    t.update(PLUGGED, 0)
    t.authorized("T1")
    first = t.session.id
    t.end("Remote")
    assert site.events[-1].state == "ended" and site.events[-1].reason == "Remote"
    t.update(PLUGGED, 0)
    assert t.session is None                      # the car stayed, but the person stopped: no new session by itself
    t.authorized("T2")
    assert t.session.state == "authorized" and t.session.id_tag == "T2" and t.session.id != first
    assert site.current() == t.session.id


def test_stop_while_plugged_then_replug_starts_a_new_session(site):
    t = site.tracker()
    t.update(PLUGGED, 0)
    t.end("Local")
    t.update(NONE, 0)
    t.update(PLUGGED, 0)
    assert t.session is not None and t.session.state == "plugged"


def test_end_refuses_an_unknown_reason(site):
    t = site.tracker()
    t.update(PLUGGED, 0)
    with pytest.raises(ValueError, match="not one of"):
        t.end("Bored")


def test_an_offline_charger_changes_nothing(site):
    t = site.tracker()
    t.update(PLUGGED, 0)
    t.update(OFFLINE, None)
    t.update(ChargerStatus(vehicle="none", online=False), None)
    assert t.session is not None and site.states() == ["plugged"]


def test_restart_continues_the_same_session_when_the_car_is_still_plugged(site):
    t = site.tracker()
    t.update(PLUGGED, 100)
    t.authorized("T")
    t.update(CHARGING, 100)
    sid = t.session.id
    t.stop()

    again = Site(store=site.store, clock=site.clock)
    t2 = again.tracker()
    assert t2.session.id == sid                   # loaded, undecided until the charger reports
    t2.update(OFFLINE, None)
    assert t2.session.id == sid
    site.clock.advance(5)
    t2.update(CHARGING, 700)
    assert t2.session.id == sid and t2.session.state == "charging" and t2.session.meter_start_Wh == 100
    assert t2.session.energy_Wh == 600 and again.events[0].id == sid
    t2.update(NONE, 800)
    assert again.stored(sid)["energy_Wh"] == 700 and again.current() is None


def test_restart_ends_the_session_as_ev_disconnected_with_the_last_known_meter_when_the_car_left(site):
    t = site.tracker(save_interval_s=60)
    t.update(PLUGGED, 100)
    t.authorized("T")
    t.update(CHARGING, 100)
    site.clock.advance(60)
    t.update(CHARGING, 900)                        # saved: 60 s since the last save
    seen = t.session.updated_time
    sid = t.session.id
    t.stop()

    site.clock.advance(3600)
    again = Site(store=site.store, clock=site.clock)
    t2 = again.tracker()
    t2.update(NONE, 1200)                          # the counter now includes whatever happened while EVC was away
    doc = again.stored(sid)
    assert (doc["state"], doc["reason"], doc["meter_stop_Wh"], doc["energy_Wh"]) == \
        ("ended", "EVDisconnected", 900, 800)
    assert doc["stop_time"] == seen                # when EVC last saw the car, not an hour later
    assert again.current() is None and t2.session is None
    assert [s.state for s in again.events] == ["ended"]


def test_restart_ends_the_session_as_power_loss_when_the_counter_restarted_and_opens_a_new_one(site):
    t = site.tracker()
    t.update(PLUGGED, 5000)
    t.authorized("T")
    sid = t.session.id
    t.stop()

    again = Site(store=site.store, clock=site.clock)
    t2 = again.tracker()
    t2.update(PLUGGED, 3)
    assert again.stored(sid)["reason"] == "PowerLoss"
    assert t2.session.id != sid and t2.session.state == "plugged" and t2.session.meter_start_Wh == 3
    assert again.current() == t2.session.id


def test_ids_are_unique_and_time_ordered_within_a_run_and_across_restarts(site):
    ids = []
    t = site.tracker()
    for _ in range(5):                             # five sessions in the same millisecond
        t.update(PLUGGED, 0)
        ids.append(t.session.id)
        t.update(NONE, 0)
    site.clock.advance(0.001)
    t2 = Site(store=site.store, clock=site.clock).tracker()
    t2.update(PLUGGED, 0)
    ids.append(t2.session.id)
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert ids[0].startswith("20250219T212000000Z-")


def test_session_writes_are_retried_when_the_store_is_down_and_the_newest_wins(site):
    t = site.tracker(retry_s=1)
    site.store.available = False
    t.update(PLUGGED, 0)
    t.authorized("T")
    sid = t.session.id
    site.store.available = True
    assert site.current() is None                  # nothing was written yet: the retry is due in 1 s
    site.clock.advance(1)
    assert site.current() == sid and site.stored(sid)["state"] == "authorized"


def test_updates_before_the_store_answers_are_applied_once_it_does(site):
    t = SessionTracker(site.ctx(), retry_s=1)
    site.store.available = False
    d = t.start()
    t.update(PLUGGED, 0)
    assert t.session is None and not d.called
    site.store.available = True
    site.clock.advance(1)
    assert d.called and t.session is not None and site.current() == t.session.id


def test_a_dangling_current_pointer_is_removed(site):
    site.store.put(f"{ROOT}/charger/s1/data/sessions/current", b"gone")
    t = site.tracker()
    assert t.session is None and site.current() is None


def test_a_session_opened_while_the_meter_is_stale_starts_at_its_own_first_reading(site):
    """Never a leftover of the previous session: the meter was replaced (50000 Wh) while it did not answer."""
    t = site.tracker(authorize_on_plug=True)
    t.update(PLUGGED, 1000)
    t.update(NONE, 2000)
    t.update(NONE, None)
    t.update(PLUGGED, None)
    assert t.session.meter_start_Wh is None and t.session.energy_Wh is None
    t.update(CHARGING, 50_000)
    t.update(CHARGING, 50_600)
    t.update(NONE, 50_700)
    ended = site.events[-1]
    assert (ended.meter_start_Wh, ended.meter_stop_Wh, ended.energy_Wh, ended.meter_reset) == \
        (50_000, 50_700, 700, False)


def test_a_counter_that_goes_back_during_a_session_is_flagged_never_negative(site):
    t = site.tracker(authorize_on_plug=True)
    t.update(PLUGGED, 5000)
    t.update(CHARGING, 5400)
    t.update(CHARGING, 10)              # the meter was reset
    t.update(CHARGING, 110)
    t.update(NONE, 110)
    ended = site.events[-1]
    assert ended.meter_reset and ended.meter_resets == ((5400, 10),)
    assert (ended.meter_start_Wh, ended.meter_stop_Wh, ended.energy_Wh) == (5000, 110, 500)
    assert site.stored(ended.id)["meter_resets"] == [[5400, 10]]
