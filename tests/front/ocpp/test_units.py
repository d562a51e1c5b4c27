"""front/ocpp's per-charger logic on task.Clock with a fake link: what is queued, sent, retried, given up, answered."""
from __future__ import annotations

import json

import pytest
from twisted.internet import task

from evc.auth import AuthResult
from evc.charger.base import ChargerStatus
from evc.front.ocpp import OcppFront, OcppFrontConfig
from evc.front.ocpp.charger import BridgedCharger, ocpp_status
from evc.front.ocpp.link import LinkDown
from evc.session import Session
from evc.store.memory import MemoryStore
from front_helpers import FakeCharger, FakeLink, Site

T0 = 1_795_000_000.0


class Rig:
    def __init__(self, store=None, clock=None, **config):
        self.clock = clock or task.Clock()
        if clock is None:
            self.clock.advance(T0)
        self.store = store or MemoryStore()
        self.site = Site(self.store, self.clock)
        self.charger = FakeCharger(self.site.ctx("charger", "s1"))
        self.charger.start()
        self.site.chargers["s1"] = self.charger
        config.setdefault("url", "ws://backend.invalid/ocpp")
        config.setdefault("meter_value_sample_interval_s", 0)
        self.front = OcppFront(self.site.ctx("front", "up", self.site.state), OcppFrontConfig(**config))
        self.site.fronts["up"] = self.front
        self.caps = []
        self.site.events.subscribe(("cap",), lambda topic, event: self.caps.append((topic[1], event)))
        self.bridged = self.make()

    def make(self, link_state="accepted") -> BridgedCharger:
        b = BridgedCharger(self.front, "s1", self.charger)
        b.link = self.link = FakeLink(link_state)
        self.front.bridged["s1"] = b
        b.start()
        return b

    def restart(self, link_state="accepted") -> BridgedCharger:
        self.bridged.stop()
        self.bridged = self.make(link_state)
        return self.bridged

    def session(self, tag="TAG1"):
        self.charger.plug()
        self.charger.authorize(tag)
        self.charger.charge(16.0, energy_Wh=5)

    def state(self, leaf):
        return self.site.state.values.get(f"s1/{leaf}")

    def handle(self, action, **kw):
        result = self.bridged.handle(action, **kw)
        self.bridged.after(action, **kw)
        return result


@pytest.fixture
def rig():
    return Rig()


def test_a_transaction_message_waits_until_connected_and_then_goes_in_order():
    rig = Rig()
    rig.restart(link_state="offline")
    rig.session()
    rig.charger.unplug()
    assert [e.action for e in rig.bridged.outbox.entries] == ["StartTransaction", "StopTransaction"]
    assert rig.link.calls == []
    rig.link.state = "accepted"
    rig.bridged.booted()
    rig.link.answer_all_status()
    start = rig.link.answer("StartTransaction", {"transactionId": 42, "idTagInfo": {"status": "Accepted"}})
    assert start == {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000, "timestamp": start["timestamp"]}
    stop = rig.link.answer("StopTransaction")
    assert stop["transactionId"] == 42 and stop["reason"] == "EVDisconnected" and stop["meterStop"] == 1005
    assert len(rig.bridged.outbox) == 0 and rig.bridged.records == {}
    assert not rig.store.range("/evc/t/front/up/data/", prefix=True).result.kvs


def test_messages_queued_before_the_start_answer_carry_the_id_the_backend_assigns():
    rig = Rig(meter_value_sample_interval_s=10)
    rig.session()
    rig.clock.advance(10)
    rig.clock.advance(10)
    rig.charger.unplug()
    actions = [e.action for e in rig.bridged.outbox.entries]
    assert actions == ["StartTransaction", "MeterValues", "MeterValues", "StopTransaction"]
    assert all("transactionId" not in e.payload for e in rig.bridged.outbox.entries)
    rig.link.answer("StartTransaction", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}})
    mv = rig.link.answer("MeterValues")
    assert mv["transactionId"] == 7
    values = {v["measurand"]: v for v in mv["meterValue"][0]["sampledValue"] if "phase" not in v}
    assert values["Energy.Active.Import.Register"]["value"] == "1005"
    assert rig.link.answer("MeterValues")["transactionId"] == 7
    assert rig.link.answer("StopTransaction")["transactionId"] == 7


def test_a_message_the_backend_fails_to_process_is_retried_at_growing_intervals_then_given_up(log_events):
    rig = Rig(transaction_message_attempts=3, transaction_message_retry_interval_s=60)
    rig.session()
    rig.link.fail("StartTransaction")
    assert not rig.link.pending("StartTransaction")
    rig.clock.advance(59)
    assert not rig.link.pending("StartTransaction")
    rig.clock.advance(1)                                  # 60 s x 1 earlier attempt
    rig.link.fail("StartTransaction")
    rig.clock.advance(119)
    assert not rig.link.pending("StartTransaction")
    rig.clock.advance(1)                                  # 60 s x 2 earlier attempts
    rig.link.fail("StartTransaction")
    assert len(rig.bridged.outbox) == 0                   # third failure of three: given up
    assert rig.state("given_up") == 1 and "StartTransaction" in rig.state("last_given_up")
    assert any("gave up StartTransaction" in (e.get("log_format") or "").replace("{action}", "StartTransaction")
               for e in log_events)
    # Without a transactionId the Stop of that session cannot be sent either: it is given up without a call.
    rig.charger.unplug()
    assert rig.link.pending("StopTransaction") == [] and len(rig.bridged.outbox) == 0
    assert rig.state("given_up") == 2 and rig.bridged.records == {}


def test_a_lost_connection_is_not_an_attempt():
    rig = Rig(transaction_message_attempts=1)
    rig.session()
    a, p, d = rig.link.pending("StartTransaction")[0]
    rig.link.state = "offline"
    d.errback(LinkDown("closed"))
    assert len(rig.bridged.outbox) == 1 and rig.bridged.outbox.entries[0].attempts == 0
    rig.link.state = "accepted"
    rig.bridged.booted()
    assert rig.link.pending("StartTransaction")


def test_the_backend_can_change_attempts_and_interval_and_they_are_kept():
    rig = Rig()
    assert rig.handle("ChangeConfiguration", key="TransactionMessageAttempts", value="1").status == "Accepted"
    assert rig.handle("ChangeConfiguration", key="TransactionMessageRetryInterval", value="5").status == "Accepted"
    assert rig.handle("ChangeConfiguration", key="NumberOfConnectors", value="2").status == "Rejected"
    assert rig.handle("ChangeConfiguration", key="Nonsense", value="2").status == "NotSupported"
    assert rig.handle("ChangeConfiguration", key="HeartbeatInterval", value="-5").status == "Rejected"
    b = rig.restart()
    assert b.keys["TransactionMessageAttempts"] == 1 and b.keys["TransactionMessageRetryInterval"] == 5
    keys = {k["key"]: k for k in rig.handle("GetConfiguration").configuration_key}
    assert keys["TransactionMessageAttempts"] == {"key": "TransactionMessageAttempts", "readonly": False,
                                                  "value": "1"}
    only = rig.handle("GetConfiguration", key=["HeartbeatInterval", "Bogus"])
    assert [k["key"] for k in only.configuration_key] == ["HeartbeatInterval"] and only.unknown_key == ["Bogus"]
    rig.session()
    rig.link.fail("StartTransaction")
    assert len(b.outbox) == 0                              # one attempt now


def test_after_a_restart_the_outbox_drains_and_a_session_that_ended_meanwhile_gets_its_stop():
    rig = Rig()
    rig.restart(link_state="offline")
    rig.session()
    rig.bridged.stop()                                     # EVC stops: the front listens no more
    rig.charger.charge(16.0, energy_Wh=300)
    rig.charger.unplug()                                   # the session ends while nobody listens
    b = rig.make()
    assert [e.action for e in b.outbox.entries] == ["StartTransaction", "StopTransaction"]
    rig.link.answer_all_status()
    rig.link.answer("StartTransaction", {"transactionId": 9, "idTagInfo": {"status": "Accepted"}})
    stop = rig.link.answer("StopTransaction")
    assert stop["transactionId"] == 9 and stop["meterStop"] == 1305 and stop["reason"] == "EVDisconnected"


def test_a_session_authorized_while_the_front_was_away_gets_its_start():
    rig = Rig()
    rig.bridged.stop()
    rig.session()
    b = rig.make()
    assert [e.action for e in b.outbox.entries] == ["StartTransaction"]


def test_a_refused_token_in_the_start_answer_stops_the_session():
    rig = Rig()
    rig.session()
    rig.link.answer("StartTransaction", {"transactionId": 3, "idTagInfo": {"status": "Blocked"}})
    assert rig.charger.sessions.session is None
    assert rig.charger.sessions.last.reason == "DeAuthorized"
    assert rig.link.answer("StopTransaction")["reason"] == "DeAuthorized"


@pytest.mark.parametrize("rule, expected", [("local", None), ("reject", "Invalid"), ("accept", "Accepted")])
def test_authorize_falls_back_to_the_offline_rule_when_the_backend_is_slow(rule, expected):
    rig = Rig(offline_auth=rule, authorize_timeout_s=5)
    d = rig.front.authorize("TAG9", "s1")
    assert rig.link.pending("Authorize")[0][1] == {"idTag": "TAG9"}
    rig.clock.advance(4.9)
    assert not d.called
    rig.clock.advance(0.1)
    result = d.result
    assert (result.status if result is not None else None) == expected
    rig.link.answer("Authorize", {"idTagInfo": {"status": "Blocked"}})   # late: ignored, nothing breaks


def test_authorize_asks_the_backend_and_uses_its_answer():
    rig = Rig()
    d = rig.front.authorize("TAG9", "s1")
    rig.link.answer("Authorize", {"idTagInfo": {"status": "Accepted", "expiryDate": "2027-01-01T00:00:00Z"}})
    assert d.result == AuthResult("Accepted", expiry="2027-01-01T00:00:00Z", source="front/up")


def test_authorize_while_offline_answers_at_once_by_the_rule():
    rig = Rig(offline_auth="reject")
    rig.link.state = "offline"
    assert rig.front.authorize("TAG9", "s1").result.status == "Invalid"
    assert rig.link.calls == []


def test_local_first_accepts_a_listed_token_without_asking():
    rig = Rig(authorize="local-first")
    rig.site.tokens["LOCAL1"] = type("Tok", (), {"config": type("C", (), {"status": "Accepted"})()})()
    assert rig.front.authorize("LOCAL1", "s1").result.source == "local"
    assert rig.link.calls == []
    rig.front.authorize("OTHER", "s1")
    assert rig.link.pending("Authorize")


@pytest.mark.parametrize("status, session, after_end, inoperative, expected", [
    (None, None, False, False, "Unavailable"),
    (ChargerStatus(online=False), None, False, False, "Faulted"),
    (ChargerStatus(vehicle="fault", online=True, fault="RCD"), None, False, False, "Faulted"),
    (ChargerStatus(vehicle="none", online=True), None, False, True, "Unavailable"),
    (ChargerStatus(vehicle="none", online=True), None, False, False, "Available"),
    (ChargerStatus(vehicle="plugged", online=True), None, False, False, "Preparing"),
    (ChargerStatus(vehicle="plugged", online=True), None, True, False, "Finishing"),
    (ChargerStatus(vehicle="plugged", online=True), "plugged", False, False, "Preparing"),
    (ChargerStatus(vehicle="charging", online=True, setpoint_A=16), "charging", False, False, "Charging"),
    (ChargerStatus(vehicle="plugged", online=True, setpoint_A=0), "suspended", False, False, "SuspendedEVSE"),
    (ChargerStatus(vehicle="plugged", online=True, setpoint_A=10), "suspended", False, False, "SuspendedEV"),
    (ChargerStatus(vehicle="plugged", online=True, setpoint_A=10), "authorized", False, False, "SuspendedEV"),
])
def test_status_notification_mirrors_the_charger_and_its_session(status, session, after_end, inoperative, expected):
    s = Session(id="x", charger="s1", state=session, start_time="") if session else None
    assert ocpp_status(status, s, after_end, inoperative)[0] == expected


def test_status_changes_are_sent_newest_first_one_at_a_time(rig):
    rig.bridged.booted()
    sent = [p["status"] for a, p, d in rig.link.pending("StatusNotification")]
    assert sent == ["Available", "Available"]            # connector 0 and connector 1 after a boot
    rig.charger.plug()
    rig.charger.authorize("T")
    rig.charger.charge()
    rig.link.answer_all_status()
    statuses = [p["status"] for a, p, d in rig.link.calls if a == "StatusNotification" and p["connectorId"] == 1]
    assert statuses == ["Available", "Charging"]          # what was in between was overtaken while one was out


def test_a_charging_profile_becomes_a_cap_on_the_bus_and_clearing_it_removes_it(rig):
    profile = {"charging_profile_id": 5, "stack_level": 1, "charging_profile_purpose": "TxDefaultProfile",
               "charging_profile_kind": "Absolute",
               "charging_schedule": {"charging_rate_unit": "A", "start_schedule": "2020-01-01T00:00:00Z",
                                     "charging_schedule_period": [{"start_period": 0, "limit": 10}]}}
    assert rig.handle("SetChargingProfile", connector_id=1, cs_charging_profiles=profile).status == "Accepted"
    assert rig.caps[-1] == ("s1", ("front/up", 10.0)) and rig.front.caps() == {"s1": 10.0}
    b = rig.restart()                                      # profiles are kept
    assert b.cap_A == 10.0
    assert rig.handle("ClearChargingProfile", id=5).status == "Accepted"
    assert rig.caps[-1] == ("s1", ("front/up", None))
    assert rig.handle("ClearChargingProfile", id=5).status == "Unknown"


def test_a_tx_profile_without_a_transaction_is_rejected(rig):
    profile = {"charging_profile_id": 5, "stack_level": 1, "charging_profile_purpose": "TxProfile",
               "charging_profile_kind": "Relative",
               "charging_schedule": {"charging_rate_unit": "A",
                                     "charging_schedule_period": [{"start_period": 0, "limit": 10}]}}
    assert rig.handle("SetChargingProfile", connector_id=1, cs_charging_profiles=profile).status == "Rejected"
    rig.session()
    assert rig.handle("SetChargingProfile", connector_id=1, cs_charging_profiles=profile).status == "Accepted"
    assert rig.bridged.cap_A == 10.0
    rig.charger.unplug()                                    # the transaction ended: its profile goes
    assert rig.bridged.cap_A is None and rig.bridged.profiles == []


def test_inoperative_caps_the_charger_at_zero_and_waits_for_a_running_transaction(rig):
    rig.session()
    assert rig.handle("ChangeAvailability", connector_id=0, type="Inoperative").status == "Scheduled"
    assert rig.bridged.cap_A is None
    rig.charger.unplug()
    assert rig.bridged.cap_A == 0.0 and rig.bridged.current_status()[0] == "Unavailable"
    assert rig.restart().inoperative                       # kept across a restart
    assert rig.handle("ChangeAvailability", connector_id=1, type="Operative").status == "Accepted"
    assert rig.bridged.cap_A is None
    assert rig.handle("ChangeAvailability", connector_id=2, type="Operative").status == "Rejected"


def test_remote_start_authorizes_the_charger_and_remote_stop_ends_the_session(rig):
    rig.charger.plug()
    assert rig.handle("RemoteStartTransaction", id_tag="REMOTE1").status == "Accepted"
    assert rig.charger.tag == "REMOTE1" and rig.charger.sessions.session.authorized
    rig.link.answer("StartTransaction", {"transactionId": 11, "idTagInfo": {"status": "Accepted"}})
    assert rig.handle("RemoteStopTransaction", transaction_id=12).status == "Rejected"
    assert rig.handle("RemoteStopTransaction", transaction_id=11).status == "Accepted"
    assert rig.charger.sessions.session is None
    assert rig.link.answer("StopTransaction")["reason"] == "Remote"
    assert rig.state("last_action") == "RemoteStopTransaction: Accepted"


def test_a_charger_refusing_a_remote_command_after_the_answer_is_logged_not_left_unhandled(rig):
    """OCPP answers the backend before acting: a later refusal by the charger is logged once, naming the charger,
    and never ends as an unhandled error."""
    from twisted.internet import defer
    from twisted.logger import globalLogPublisher
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        rig.charger.plug()
        rig.charger.authorize = lambda id_tag: defer.fail(RuntimeError("charge point said Rejected"))
        assert rig.handle("RemoteStartTransaction", id_tag="REMOTE1").status == "Accepted"
    finally:
        globalLogPublisher.removeObserver(seen.append)
    failures = [e for e in seen if e.get("log_failure") is not None]
    warned = [e for e in seen if e.get("command") == "<lambda>" or "failed after the backend was answered"
              in e.get("log_format", "")]
    assert not failures and len(warned) == 1 and warned[0]["error"] == "charge point said Rejected"


def test_remote_start_is_refused_where_the_charger_cannot_be_authorized():
    rig = Rig()
    rig.charger.authorize = None
    del rig.charger.authorize                              # a charger type without token authorization
    assert rig.handle("RemoteStartTransaction", id_tag="REMOTE1").status == "Rejected"
    assert rig.handle("RemoteStartTransaction", id_tag="X", connector_id=2).status == "Rejected"


def test_commands_evc_cannot_do_are_answered_as_such(rig):
    assert rig.handle("UnlockConnector", connector_id=1).status == "NotSupported"
    assert rig.handle("DataTransfer", vendor_id="acme").status == "UnknownVendorId"
    assert rig.handle("TriggerMessage", requested_message="FirmwareStatusNotification").status == "NotImplemented"
    assert rig.handle("Reset", type="Soft").status == "Accepted" and rig.link.reconnects


def test_trigger_message_sends_what_was_asked(rig):
    assert rig.handle("TriggerMessage", requested_message="StatusNotification").status == "Accepted"
    assert rig.link.pending("StatusNotification")
    rig.session()
    rig.link.answer("StartTransaction", {"transactionId": 4, "idTagInfo": {"status": "Accepted"}})
    assert rig.handle("TriggerMessage", requested_message="MeterValues", connector_id=1).status == "Accepted"
    mv = rig.link.pending("MeterValues")[0][1]
    assert mv["transactionId"] == 4 and mv["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert len(rig.bridged.outbox) == 0                   # triggered values are not queued


def test_the_composite_schedule_is_what_control_allows_capped_by_the_profiles(rig):
    class Control:
        def allocation_A(self, name):
            return 12

    from zope.interface import directlyProvides
    from evc.control.builtin import IAllocations
    control = Control()
    directlyProvides(control, IAllocations)
    rig.site.controls["master"] = control
    rig.session()
    result = rig.handle("GetCompositeSchedule", connector_id=1, duration=600)
    assert result.status == "Accepted"
    assert result.charging_schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 12}]
    profile = {"charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose": "ChargePointMaxProfile",
               "charging_profile_kind": "Relative",
               "charging_schedule": {"charging_rate_unit": "A", "charging_schedule_period": [
                   {"start_period": 0, "limit": 8}, {"start_period": 300, "limit": 16}]}}
    rig.handle("SetChargingProfile", connector_id=0, cs_charging_profiles=profile)
    periods = rig.handle("GetCompositeSchedule", connector_id=0, duration=600).charging_schedule[
        "charging_schedule_period"]
    assert periods[0] == {"start_period": 0, "limit": 8} and periods[-1]["limit"] == 12


def test_stored_transaction_records_name_the_session_and_the_transaction():
    rig = Rig()
    rig.session()
    sid = rig.charger.sessions.session.id
    raw = rig.store.range(f"/evc/t/front/up/data/transactions/{sid}").result.kvs[0].value
    assert json.loads(raw)["transaction_id"] is None
    rig.link.answer("StartTransaction", {"transactionId": 77, "idTagInfo": {"status": "Accepted"}})
    raw = rig.store.range(f"/evc/t/front/up/data/transactions/{sid}").result.kvs[0].value
    assert json.loads(raw)["transaction_id"] == 77 and rig.state("transaction_id") == 77


def test_a_start_given_up_takes_a_long_backlog_of_its_meter_values_with_it():
    rig = Rig(transaction_message_attempts=1, meter_value_sample_interval_s=1)
    rig.restart(link_state="offline")
    rig.session()
    for _ in range(1500):
        rig.clock.advance(1)
    rig.charger.unplug()
    assert len(rig.bridged.outbox) == 1502
    rig.link.state = "accepted"
    rig.bridged.booted()
    rig.link.fail("StartTransaction")
    assert len(rig.bridged.outbox) == 0 and rig.bridged.given_up == 1502
    assert rig.link.pending("MeterValues") == [] and rig.link.pending("StopTransaction") == []


def test_the_next_message_goes_out_before_the_removal_is_written_but_only_so_many():
    rig = Rig(meter_value_sample_interval_s=1)
    rig.session()
    rig.link.answer("StartTransaction", {"transactionId": 1, "idTagInfo": {"status": "Accepted"}})
    for _ in range(100):
        rig.clock.advance(1)
    rig.store.available = False                  # removals cannot be written now
    for _ in range(60):
        rig.link.answer("MeterValues")
        if not rig.link.pending("MeterValues"):
            break
    answered = len([1 for a, p, d in rig.link.calls if a == "MeterValues" and d.called])
    assert 30 <= answered <= 34                  # MAX_UNWRITTEN_REMOVALS, then it waits for the store
    rig.store.available = True
    rig.clock.advance(60)
    assert rig.link.pending("MeterValues")       # and goes on once the store took them


def test_meter_values_are_sampled_from_the_transaction_start():
    rig = Rig(meter_value_sample_interval_s=10)
    rig.clock.advance(3)
    rig.session()
    rig.clock.advance(9.9)
    assert [e.action for e in rig.bridged.outbox.entries] == ["StartTransaction"]
    rig.clock.advance(0.1)                     # the transaction's start + 10 s, not the front's
    assert [e.action for e in rig.bridged.outbox.entries] == ["StartTransaction", "MeterValues"]
    b = rig.restart()                          # after a restart the rhythm stays the transaction's
    rig.clock.advance(9.9)
    assert [e.action for e in b.outbox.entries].count("MeterValues") == 1
    rig.clock.advance(0.1)
    assert [e.action for e in b.outbox.entries].count("MeterValues") == 2
