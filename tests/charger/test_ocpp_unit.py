"""charger/ocpp on a task.Clock with an in-memory connection: smart charging, transactions, messages, local list."""
import json

import pytest
from ocpp.exceptions import NotSupportedError
from twisted.internet import defer, task

from cs_fakes import FakeServer, Rig, T0, token
from evc.charger.ocpp import BASE_PROFILE_ID, CLOCK_SKEW_S, DYNAMIC_PROFILE_ID, SmartChargingRejected
from evc.errors import ConfigError
from evc.ocpp.central import CallTimeout, NotConnected, OcppCallError
from evc.session import iso_utc

ACCEPTED = {"status": "Accepted"}
START = {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000, "timestamp": "2026-01-01T10:00:00Z"}


def ready(rig, **config) -> Rig:
    """Connected, booted, base profile accepted."""
    conn = rig.connect()
    conn.answer("SetChargingProfile", ACCEPTED)
    return rig


def profile_of(payload):
    return payload["csChargingProfiles"]


# --- smart charging ---

def test_the_base_profile_goes_first_after_boot_and_never_ends():
    rig = Rig(failsafe_A=8, connector=2)
    conn = rig.connect()
    action, payload, _ = conn.calls[0]
    assert action == "SetChargingProfile" and payload["connectorId"] == 2
    p = profile_of(payload)
    assert p["chargingProfileId"] == BASE_PROFILE_ID and p["stackLevel"] == 0
    assert p["chargingProfilePurpose"] == "TxDefaultProfile" and p["chargingProfileKind"] == "Absolute"
    schedule = p["chargingSchedule"]
    assert "duration" not in schedule and schedule["chargingRateUnit"] == "A"
    assert schedule["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 8.0, "numberPhases": 3}]
    assert schedule["startSchedule"] == iso_utc(T0 - CLOCK_SKEW_S)


def test_a_reconnect_without_boot_is_set_up_after_the_boot_wait():
    rig = Rig()
    conn = rig.connect(boot=False)
    assert conn.calls == []
    rig.clock.advance(rig.charger.boot_wait_s)
    assert [a for a, _, _ in conn.calls][0] == "SetChargingProfile"


def test_apply_sends_a_short_lived_profile_above_the_base_and_fires_once_accepted():
    rig = ready(Rig(phases=1, profile_validity_s=30))
    d = rig.charger.apply(10)
    payload = rig.conn.pending("SetChargingProfile")[0][1]
    p = profile_of(payload)
    assert p["chargingProfileId"] == DYNAMIC_PROFILE_ID and p["stackLevel"] == 1
    assert p["chargingSchedule"]["duration"] == CLOCK_SKEW_S + 30
    assert p["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10.0, "numberPhases": 1}]
    assert not d.called
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.result(d) == 10.0
    assert rig.charger.status.setpoint_A == 10 and rig.state.values["smart_charging"] == "ok"


def test_the_dynamic_profile_is_renewed_before_it_runs_out():
    rig = ready(Rig(profile_validity_s=30))
    rig.charger.apply(10)
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    sent = len(rig.conn.sent("SetChargingProfile"))
    rig.clock.advance(9.9)
    assert len(rig.conn.sent("SetChargingProfile")) == sent
    rig.clock.advance(0.1)
    renewed = rig.conn.pending("SetChargingProfile")[0][1]
    assert profile_of(renewed)["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0
    assert profile_of(renewed)["chargingSchedule"]["startSchedule"] == iso_utc(T0 + 10 - CLOCK_SKEW_S)


def test_the_same_value_again_needs_no_message_while_the_profile_is_fresh():
    rig = ready(Rig())
    rig.charger.apply(10)
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    n = len(rig.conn.calls)
    assert rig.result(rig.charger.apply(10)) == 10.0
    assert len(rig.conn.calls) == n


def test_the_newest_value_wins_while_a_profile_is_in_flight():
    rig = ready(Rig())
    d1 = rig.charger.apply(16)
    d2 = rig.charger.apply(8)
    assert len(rig.conn.pending("SetChargingProfile")) == 1          # one at a time
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    assert not d1.called and not d2.called                            # 16 is not what is wanted now
    assert profile_of(rig.conn.pending("SetChargingProfile")[0][1])["chargingSchedule"][
        "chargingSchedulePeriod"][0]["limit"] == 8.0
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.result(d1) == 8.0 and rig.result(d2) == 8.0


def test_setpoint_counts_a_higher_profile_in_flight_and_a_lower_one_only_once_accepted():
    rig = ready(Rig(failsafe_A=6))
    assert rig.charger.status.setpoint_A == 6                         # the base
    rig.charger.apply(10)
    assert rig.charger.status.setpoint_A == 10                        # may have landed already
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    rig.charger.apply(0)
    assert rig.charger.status.setpoint_A == 10                        # not lowered before the charge point says so
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.charger.status.setpoint_A == 0


def test_before_the_base_profile_is_accepted_the_charger_counts_at_a_max():
    rig = Rig(A_max=20)
    assert rig.charger.status.setpoint_A == 20
    conn = rig.connect()
    assert rig.charger.status.setpoint_A == 20 and rig.charger.status.online
    conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.charger.status.setpoint_A == 6


def test_offline_the_charger_counts_the_higher_of_dynamic_and_base():
    rig = ready(Rig(failsafe_A=6, profile_validity_s=30))
    rig.charger.apply(0)
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    rig.disconnect()
    s = rig.charger.status
    assert not s.online and s.setpoint_A == 6          # paused at 0, but without EVC it falls back to 6
    assert rig.state.values["connection"] == "disconnected"
    rig2 = ready(Rig(failsafe_A=6, profile_validity_s=30))
    rig2.charger.apply(12)
    rig2.conn.answer("SetChargingProfile", ACCEPTED)
    rig2.disconnect()
    assert rig2.charger.status.setpoint_A == 12
    rig2.clock.advance(30)                             # the dynamic profile ran out: the base applies
    assert rig2.charger.status.setpoint_A == 6


def test_apply_while_disconnected_fails_and_the_value_is_sent_on_connect():
    rig = Rig()
    d = rig.charger.apply(10)
    with pytest.raises(NotConnected):
        rig.result(d)
    conn = rig.connect()
    conn.answer("SetChargingProfile", ACCEPTED)                        # base
    p = profile_of(conn.pending("SetChargingProfile")[0][1])
    assert p["chargingProfileId"] == DYNAMIC_PROFILE_ID
    assert p["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0


def test_mode_off_pauses_with_a_zero_profile_whatever_control_asks():
    rig = ready(Rig(mode="OFF"))
    p = profile_of(rig.conn.pending("SetChargingProfile")[0][1])
    assert p["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 0.0
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.result(rig.charger.apply(16)) == 0.0


def test_values_below_six_amps_pause_and_fractions_round_down():
    rig = ready(Rig())
    rig.charger.apply(5)
    assert profile_of(rig.conn.answer("SetChargingProfile", ACCEPTED))["chargingSchedule"][
        "chargingSchedulePeriod"][0]["limit"] == 0.0
    rig.charger.apply(7.97)
    assert profile_of(rig.conn.answer("SetChargingProfile", ACCEPTED))["chargingSchedule"][
        "chargingSchedulePeriod"][0]["limit"] == 7.9


@pytest.mark.parametrize("answer, why", [
    ({"status": "Rejected"}, "answered Rejected"),
    ({"status": "NotSupported"}, "answered NotSupported"),
    (OcppCallError("NotImplemented", "no smart charging"), "CALLERROR NotImplemented"),
])
def test_a_charger_that_refuses_profiles_is_reported_and_counted_at_a_max(answer, why):
    rig = Rig(A_max=20)
    conn = rig.connect()
    conn.answer("SetChargingProfile", answer)
    s = rig.charger.status
    assert rig.state.values["smart_charging"] == "rejected" and why in rig.state.values["smart_charging_error"]
    assert not s.online and s.setpoint_A == 20 and "smart charging rejected" in s.fault
    assert not rig.charger.wants_current()
    with pytest.raises(SmartChargingRejected):
        rig.result(rig.charger.apply(10))
    assert conn.pending("SetChargingProfile") == []                    # no more attempts on this connection


def test_a_rejected_dynamic_profile_also_makes_it_uncontrollable():
    rig = ready(Rig())
    d = rig.charger.apply(10)
    rig.conn.answer("SetChargingProfile", {"status": "Rejected"})
    with pytest.raises(SmartChargingRejected):
        rig.result(d)
    assert rig.charger.status.setpoint_A == 16 and not rig.charger.status.online


def test_a_new_boot_tries_smart_charging_again():
    rig = Rig()
    conn = rig.connect()
    conn.answer("SetChargingProfile", {"status": "Rejected"})
    rig.boot()
    assert rig.state.values["smart_charging"] == "pending"
    conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.state.values["smart_charging"] == "ok" and rig.charger.status.online


def test_a_profile_without_reply_is_retried_with_backoff_and_the_newest_value():
    rig = ready(Rig())
    d = rig.charger.apply(10)
    rig.conn.answer("SetChargingProfile", CallTimeout("no reply"))
    with pytest.raises(CallTimeout):
        rig.result(d)
    assert rig.state.values["smart_charging"] == "ok"          # a timeout is not a refusal
    rig.charger.apply(12)
    assert rig.conn.pending("SetChargingProfile") == []         # the retry waits for its delay
    rig.clock.advance(rig.charger.retry_min_s)
    p = profile_of(rig.conn.pending("SetChargingProfile")[0][1])
    assert p["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 12.0
    rig.conn.answer("SetChargingProfile", CallTimeout("no reply"))
    rig.clock.advance(rig.charger.retry_min_s)
    assert rig.conn.pending("SetChargingProfile") == []         # doubled
    rig.clock.advance(rig.charger.retry_min_s)
    assert rig.conn.pending("SetChargingProfile")


def test_a_profile_without_reply_still_counts_until_a_newer_one_is_accepted():
    rig = ready(Rig(failsafe_A=6))
    rig.charger.apply(14)
    rig.conn.answer("SetChargingProfile", CallTimeout("no reply"))
    assert rig.charger.status.setpoint_A == 14           # the charge point may hold it
    rig.charger.apply(8)
    rig.clock.advance(rig.charger.retry_min_s)
    rig.conn.answer("SetChargingProfile", ACCEPTED)
    assert rig.charger.status.setpoint_A == 8


def test_a_reply_from_an_old_connection_changes_nothing_but_its_value_counts_until_confirmed():
    rig = ready(Rig(profile_validity_s=30))
    old = rig.conn
    rig.charger.apply(10)
    new = rig.connect(boot=False)                               # a reconnect: the charge point did not reboot
    old.answer("SetChargingProfile", ACCEPTED)
    assert rig.charger.status.setpoint_A == 10                  # sent on the old one: may hold, not confirmed
    assert rig.charger._dyn_A is None
    rig.clock.advance(rig.charger.boot_wait_s)
    rig.charger.apply(8)
    new.answer("SetChargingProfile", ACCEPTED)                  # base on the new connection
    assert rig.charger.status.setpoint_A == 10
    new.answer("SetChargingProfile", ACCEPTED)                  # 8 A
    assert rig.charger.status.setpoint_A == 8                   # the new profile replaced it


def test_an_unanswered_profile_stops_counting_when_it_would_have_run_out():
    rig = ready(Rig(profile_validity_s=30, failsafe_A=6))
    rig.charger.apply(12)
    rig.disconnect()
    assert rig.charger.status.setpoint_A == 12
    rig.clock.advance(30 + CLOCK_SKEW_S)
    rig.charger._refresh_status()
    assert rig.charger.status.setpoint_A == 6


# --- messages from the charge point ---

def test_boot_is_accepted_with_the_servers_interval_and_kept():
    server = FakeServer()
    server.config.heartbeat_interval_s = 120
    rig = Rig(server=server)
    rig.connect(boot=False)
    result = rig.handle("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "Wallbox 2",
                                             "firmwareVersion": "4.1", "chargePointSerialNumber": "SN1"})
    assert result["status"] == "Accepted" and result["interval"] == 120
    assert result["currentTime"] == iso_utc(T0)
    assert rig.state.values["boot/vendor"] == "ACME" and rig.state.values["boot/model"] == "Wallbox 2"
    assert rig.state.values["boot/firmware"] == "4.1"
    assert json.loads(rig.leaf("data/boot"))["serial"] == "SN1"


def test_heartbeat_answers_the_time():
    rig = Rig()
    rig.clock.advance(1.5)
    assert rig.handle("Heartbeat", {}) == {"currentTime": iso_utc(T0 + 1.5)}


@pytest.mark.parametrize("status, vehicle", [
    ("Available", "none"), ("Preparing", "plugged"), ("Charging", "charging"), ("SuspendedEV", "plugged"),
    ("SuspendedEVSE", "plugged"), ("Finishing", "plugged"), ("Faulted", "fault"), ("Unavailable", "none"),
])
def test_connector_status_becomes_the_vehicle_state(status, vehicle):
    rig = ready(Rig())
    rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": status})
    assert rig.charger.status.vehicle == vehicle
    assert rig.state.values["status"] == status


def test_a_faulted_connector_or_charge_point_is_a_fault_and_other_connectors_are_ignored():
    rig = ready(Rig())
    rig.handle("StatusNotification", {"connectorId": 2, "errorCode": "GroundFailure", "status": "Faulted"})
    assert rig.charger.status.fault == ""
    rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted",
                                      "info": "RCD"})
    assert "GroundFailure: RCD" in rig.charger.status.fault
    rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
    rig.handle("StatusNotification", {"connectorId": 0, "errorCode": "PowerMeterFailure", "status": "Faulted"})
    assert rig.charger.status.vehicle == "fault" and "PowerMeterFailure" in rig.charger.status.fault


@pytest.mark.parametrize("tokens, tag, expected", [
    ({"TAG1": token()}, "TAG1", {"status": "Accepted"}),
    ({"TAG1": token(status="Blocked")}, "TAG1", {"status": "Blocked"}),
    ({"TAG1": token(expiry="2020-01-01T00:00:00Z")}, "TAG1",
     {"status": "Expired", "expiryDate": "2020-01-01T00:00:00.000Z"}),
    ({"TAG1": token(expiry="2099-01-01")}, "TAG1", {"status": "Accepted", "expiryDate": "2099-01-01T00:00:00.000Z"}),
    ({"TAG1": token(chargers=["other"])}, "TAG1", {"status": "Invalid"}),
    ({"TAG1": token(chargers=["cp1"], parent_id_tag="GROUP")}, "TAG1", {"status": "Accepted", "parentIdTag": "GROUP"}),
    ({}, "NOPE", {"status": "Invalid"}),
])
def test_authorize_answers_from_the_token_list(tokens, tag, expected):
    rig = Rig(tokens=tokens)
    assert rig.handle("Authorize", {"idTag": tag}) == {"idTagInfo": expected}


def test_authorize_asks_an_upstream_front_first():
    from zope.interface import implementer
    from evc.auth import AuthResult, IAuthorizer

    @implementer(IAuthorizer)
    class Front:
        name = "front/up"

        def covers(self, charger):
            return charger == "cp1"

        def authorize(self, id_tag, charger):
            return defer.succeed(AuthResult("Blocked", source="front/up"))

    rig = Rig(tokens={"TAG1": token()}, fronts={"up": Front()})
    assert rig.handle("Authorize", {"idTag": "TAG1"}) == {"idTagInfo": {"status": "Blocked"}}


def test_a_transaction_is_a_session_from_start_to_stop():
    rig = ready(Rig(tokens={"TAG1": token()}))
    rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
    assert not rig.charger.wants_current()                        # plugged, but no transaction yet
    answer = rig.handle("StartTransaction", START)
    assert answer == {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
    s = rig.charger.sessions.session
    assert s.state == "authorized" and s.id_tag == "TAG1" and s.meter_start_Wh == 1000
    assert rig.charger.wants_current()
    assert rig.state.values["transaction_id"] == 1
    stored = json.loads(rig.leaf("data/transaction"))
    assert stored["transaction_id"] == 1 and stored["session"] == s.id and stored["open"]
    rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
    assert rig.charger.sessions.session.state == "charging"
    rig.handle("StopTransaction", {"transactionId": 1, "meterStop": 8500, "timestamp": "2026-01-01T11:00:00Z",
                                   "reason": "EVDisconnected"})
    assert rig.charger.sessions.session is None
    last = rig.charger.sessions.last
    assert last.state == "ended" and last.reason == "EVDisconnected" and last.energy_Wh == 7500
    assert json.loads(rig.leaf(f"data/sessions/{last.id}"))["meter_stop_Wh"] == 8500
    assert "transaction_id" not in rig.state.values and not json.loads(rig.leaf("data/transaction"))["open"]
    assert not rig.charger.wants_current()


def test_a_start_transaction_sent_again_gets_the_same_id_and_no_second_session():
    rig = ready(Rig(tokens={"TAG1": token()}))
    first = rig.handle("StartTransaction", START)
    session = rig.charger.sessions.session.id
    again = rig.handle("StartTransaction", START)
    assert again == first and rig.server.allocations == 1
    assert rig.charger.sessions.session.id == session
    other = rig.handle("StartTransaction", dict(START, timestamp="2026-01-01T12:00:00Z"))
    assert other["transactionId"] == 2


def test_a_start_transaction_sent_again_while_the_first_is_answered_waits_for_it():
    server = FakeServer()
    server.hold = defer.Deferred()
    rig = ready(Rig(server=server, tokens={"TAG1": token()}))
    d1 = defer.maybeDeferred(rig.charger.ocpp_call, "StartTransaction", START)
    d2 = defer.maybeDeferred(rig.charger.ocpp_call, "StartTransaction", START)
    assert not d1.called and not d2.called
    server.hold.callback(None)
    assert rig.result(d1) == rig.result(d2) and server.allocations == 1


def test_a_start_transaction_sent_again_after_an_evc_restart_gets_the_same_id():
    rig = ready(Rig(tokens={"TAG1": token()}))
    first = rig.handle("StartTransaction", START)
    rig.stop()
    rig2 = Rig(store=rig.store, clock=rig.clock, server=rig.server, tokens=rig.tokens)
    rig2.connect()
    assert rig2.handle("StartTransaction", START) == first
    assert rig.server.allocations == 1


def test_an_invalid_tag_still_gets_a_transaction_id_but_no_authorized_session():
    rig = ready(Rig())
    answer = rig.handle("StartTransaction", START)
    assert answer["idTagInfo"] == {"status": "Invalid"} and answer["transactionId"] == 1
    assert rig.charger.sessions.session.state == "plugged" and not rig.charger.wants_current()


def test_stop_transaction_uses_its_transaction_data_and_answers_for_its_id_tag():
    rig = ready(Rig(tokens={"TAG1": token()}))
    rig.handle("StartTransaction", START)
    answer = rig.handle("StopTransaction", {
        "transactionId": 1, "meterStop": 3000, "timestamp": "2026-01-01T11:00:00Z", "idTag": "TAG1",
        "transactionData": [{"timestamp": "2026-01-01T10:30:00Z", "sampledValue": [
            {"value": "2.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"}]}]})
    assert answer == {"idTagInfo": {"status": "Accepted"}}
    assert rig.charger.sessions.last.reason == "Local" and rig.charger.sessions.last.meter_stop_Wh == 3000


def test_a_stop_for_a_transaction_that_is_not_open_is_acknowledged():
    rig = ready(Rig())
    assert rig.handle("StopTransaction", {"transactionId": 77, "meterStop": 1, "timestamp": "2026-01-01T11:00:00Z"}) \
        == {}


def test_meter_values_give_current_per_phase_energy_power_and_offered_current():
    rig = ready(Rig(phase_map=["L2", "L3", "L1"]))
    rig.handle("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T10:00:00Z",
                                                                 "sampledValue": [
        {"value": "10.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "11", "measurand": "Current.Import", "phase": "L2-N"},
        {"value": "12", "measurand": "Current.Import", "phase": "L3"},
        {"value": "16", "measurand": "Current.Offered"},
        {"value": "12.345", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
        {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "999", "measurand": "Energy.Active.Import.Register", "format": "SignedData"},
        {"value": "not a number", "measurand": "Current.Import", "phase": "L1"},
        {"value": "230", "measurand": "Voltage", "phase": "L1"},
    ]}]})
    s = rig.charger.status
    assert s.actual_A == (10.5, 11.0, 12.0) and s.offered_A == 16
    assert rig.state.values["actual_A/L2"] == 10.5 and rig.state.values["actual_A/L1"] == 12.0
    assert rig.state.values["energy_Wh"] == 12345.0 and rig.state.values["power_W"] == 7200


def test_a_current_without_phase_counts_on_every_phase_and_other_connectors_are_ignored():
    rig = ready(Rig())
    rig.handle("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T10:00:00Z",
                                                                 "sampledValue": [{"value": "9",
                                                                                   "measurand": "Current.Import"}]}]})
    assert rig.charger.status.actual_A == (9.0, 9.0, 9.0)
    rig.handle("MeterValues", {"connectorId": 2, "meterValue": [{"timestamp": "2026-01-01T10:00:00Z",
                                                                 "sampledValue": [{"value": "1",
                                                                                   "measurand": "Current.Import"}]}]})
    assert rig.charger.status.actual_A == (9.0, 9.0, 9.0)


def test_data_transfer_is_unknown_vendor_unless_a_handler_knows_it():
    rig = ready(Rig())
    assert rig.handle("DataTransfer", {"vendorId": "acme"}) == {"status": "UnknownVendorId"}
    rig.charger.data_transfer_handlers["acme"] = lambda message_id, data: {"status": "Accepted", "data": data}
    assert rig.handle("DataTransfer", {"vendorId": "acme", "data": "x"}) == {"status": "Accepted", "data": "x"}


def test_firmware_and_diagnostics_status_go_to_state():
    rig = ready(Rig())
    assert rig.handle("FirmwareStatusNotification", {"status": "Installing"}) == {}
    assert rig.handle("DiagnosticsStatusNotification", {"status": "Uploaded"}) == {}
    assert rig.state.values["firmware_status"] == "Installing"
    assert rig.state.values["diagnostics_status"] == "Uploaded"


def test_an_action_without_a_handler_is_not_supported():
    rig = Rig()
    with pytest.raises(NotSupportedError):
        rig.charger.ocpp_call("SignCertificate", {})


def test_meter_values_are_configured_at_each_connection_when_asked():
    rig = Rig(meter_interval_s=15)
    conn = rig.connect(auto={"SetChargingProfile": ACCEPTED, "TriggerMessage": ACCEPTED,
                             "ChangeConfiguration": lambda p: {"status": "Rejected"}
                             if "Offered" in p["value"] else ACCEPTED})
    assert conn.sent("TriggerMessage") == [{"requestedMessage": "StatusNotification", "connectorId": 1}]
    changes = [(p["key"], p["value"]) for p in conn.sent("ChangeConfiguration")]
    assert changes[0] == ("MeterValueSampleInterval", "15")
    assert changes[-1] == ("MeterValuesSampledData", "Energy.Active.Import.Register,Current.Import")


def test_the_set_up_waits_for_the_servers_pacer_but_the_base_profile_does_not():
    from evc.ocpp.pace import SetupPacer
    server = FakeServer()
    server.setup_pacer = SetupPacer(task.Clock(), slots=1)
    held = server.setup_pacer.admit()               # another charger's set-up holds the one slot
    assert held.called
    auto = {"SetChargingProfile": ACCEPTED, "TriggerMessage": ACCEPTED, "ChangeConfiguration": ACCEPTED}
    rig = Rig(server=server, meter_interval_s=15)
    conn = rig.connect(auto=auto)
    assert conn.sent("SetChargingProfile") and not conn.sent("TriggerMessage")
    assert server.setup_pacer.waiting == 1
    server.setup_pacer.release()
    assert conn.sent("TriggerMessage") and conn.sent("ChangeConfiguration")
    assert server.setup_pacer.active == 0           # released when its set-up was done


def test_a_charge_point_that_goes_away_while_its_set_up_waits_gives_up_its_place():
    from evc.ocpp.pace import SetupPacer
    server = FakeServer()
    server.setup_pacer = SetupPacer(task.Clock(), slots=1)
    server.setup_pacer.admit()
    rig = Rig(server=server)
    rig.connect(auto={"SetChargingProfile": ACCEPTED, "TriggerMessage": ACCEPTED})
    assert server.setup_pacer.waiting == 1
    rig.disconnect()
    assert server.setup_pacer.waiting == 0
    conn = rig.connect(auto={"SetChargingProfile": ACCEPTED, "TriggerMessage": ACCEPTED})
    server.setup_pacer.release()
    assert conn.sent("TriggerMessage") and server.setup_pacer.active == 0


# --- local list ---

def _ll_auto(profiles="Core,LocalAuthListManagement", chunk="50", max_len="100"):
    keys = {"SupportedFeatureProfiles": profiles, "SendLocalListMaxLength": chunk, "LocalAuthListMaxLength": max_len}
    return {"SetChargingProfile": ACCEPTED, "TriggerMessage": ACCEPTED, "SendLocalList": ACCEPTED,
            "GetConfiguration": {"configurationKey": [{"key": k, "readonly": True, "value": v}
                                                      for k, v in keys.items() if v is not None]}}


def test_the_local_list_is_sent_in_full_in_chunks_with_growing_versions():
    tokens = {"A": token(), "B": token(status="Blocked"), "C": token(chargers=["other"]), "D": token(),
              "E" * 21: token()}
    rig = Rig(tokens=tokens, local_list=True)
    conn = rig.connect(auto=_ll_auto(chunk="2"))
    lists = conn.sent("SendLocalList")
    assert [(p["listVersion"], p["updateType"]) for p in lists] == [(1, "Full"), (2, "Differential")]
    assert [e["idTag"] for p in lists for e in p["localAuthorizationList"]] == ["A", "B", "D"]
    assert lists[0]["localAuthorizationList"][1] == {"idTag": "B", "idTagInfo": {"status": "Blocked"}}
    assert json.loads(rig.leaf("data/local_list"))["version"] == 2
    assert rig.state.values["local_list_version"] == 2


def test_token_changes_go_out_as_one_differential_update():
    tokens = {"A": token(), "B": token()}
    rig = Rig(tokens=tokens, local_list=True)
    conn = rig.connect(auto=_ll_auto())
    del tokens["A"]
    tokens["B"] = token(status="Blocked")
    tokens["C"] = token()
    for tag in ("A", "B", "C"):
        rig.events.publish(("instance", "token", tag), ("started", None))
    assert len(conn.sent("SendLocalList")) == 1
    rig.clock.advance(rig.charger.local_list_delay_s)
    update = conn.sent("SendLocalList")[-1]
    assert update["updateType"] == "Differential" and update["listVersion"] == 2
    assert update["localAuthorizationList"] == [{"idTag": "B", "idTagInfo": {"status": "Blocked"}},
                                                {"idTag": "C", "idTagInfo": {"status": "Accepted"}},
                                                {"idTag": "A"}]


def test_list_versions_keep_growing_across_an_evc_restart():
    rig = Rig(tokens={"A": token()}, local_list=True)
    rig.connect(auto=_ll_auto())
    rig.stop()
    rig2 = Rig(store=rig.store, clock=rig.clock, tokens=rig.tokens, local_list=True)
    conn = rig2.connect(auto=_ll_auto())
    assert [p["listVersion"] for p in conn.sent("SendLocalList")] == [2]


def test_no_local_list_for_a_charge_point_without_local_auth_list_management():
    rig = Rig(tokens={"A": token()}, local_list=True)
    conn = rig.connect(auto=_ll_auto(profiles="Core,SmartCharging"))
    assert conn.sent("SendLocalList") == [] and rig.state.values["local_list"] == "not supported"


def test_a_refused_update_is_followed_by_a_full_list():
    tokens = {"A": token()}
    rig = Rig(tokens=tokens, local_list=True)
    auto = _ll_auto()
    conn = rig.connect(auto=auto)
    conn.auto["SendLocalList"] = {"status": "VersionMismatch"}
    tokens["B"] = token()
    rig.events.publish(("instance", "token", "B"), ("started", None))
    rig.clock.advance(rig.charger.local_list_delay_s)
    conn.auto["SendLocalList"] = ACCEPTED
    tokens["C"] = token()
    rig.events.publish(("instance", "token", "C"), ("started", None))
    rig.clock.advance(rig.charger.local_list_delay_s)
    last = conn.sent("SendLocalList")[-1]
    assert last["updateType"] == "Full" and last["listVersion"] == 3
    assert [e["idTag"] for e in last["localAuthorizationList"]] == ["A", "B", "C"]


# --- config ---

@pytest.mark.parametrize("config, leaf", [
    ({"failsafe_A": 3}, "config/failsafe_A"),
    ({"failsafe_A": 20}, "config/failsafe_A"),
    ({"password_hash": "secret"}, "config/password_hash"),
    ({"phases": 1, "phase_map": ["L1", "L2"]}, "config/phase_map"),
    ({"A_max": 100}, "config/A_max"),
])
def test_config_errors_name_the_leaf(config, leaf):
    from evc.charger.ocpp import OcppChargerConfig
    with pytest.raises(ConfigError, match=f"^{leaf}:"):
        OcppChargerConfig(**dict({"server": "cs", "A_max": 16}, **config))


def test_a_password_never_shows_in_the_config_repr_or_errors():
    from evc.charger.ocpp import OcppChargerConfig
    cfg = OcppChargerConfig(server="cs", A_max=16, password="hunter2-hunter2-x")
    assert "hunter2" not in repr(cfg)
    with pytest.raises(ConfigError) as e:
        OcppChargerConfig(server="cs", A_max=16, password_hash="hunter2-hunter2-x")
    assert "hunter2" not in str(e.value)


def test_a_server_with_a_security_profile_needs_a_password():
    server = FakeServer()
    server.config.security_profile = 1
    with pytest.raises(ConfigError, match="^config/password_hash: server cs uses security profile 1"):
        Rig(server=server)


def test_stopping_unregisters_and_leaves_the_connection_to_the_server():
    rig = ready(Rig())
    d = rig.charger.apply(10)
    rig.stop()
    assert not rig.conn.closed and rig.server.registered == {}
    with pytest.raises(NotConnected):
        rig.result(d)


def test_a_charger_meter_replaces_the_charge_points_own_currents():
    from zope.interface import implementer
    from evc.meter.base import IMeter, Reading

    @implementer(IMeter)
    class Meter:
        reading = Reading(A=(1.0, 2.0, 3.0), updated=T0, stale=False)
        callbacks = []

        def subscribe(self, cb):
            self.callbacks.append(cb)
            return lambda: None

    meter = Meter()
    rig = ready(Rig(meters={"m1": meter}, meter="m1", phases=1, phase_map=["L3"]))
    rig.handle("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T10:00:00Z",
                                                                 "sampledValue": [{"value": "9", "phase": "L1",
                                                                                   "measurand": "Current.Import"}]}]})
    assert rig.charger.status.actual_A == (3.0,)
    meter.reading = Reading(A=(1.0, 2.0, 7.5), updated=T0 + 1, stale=False)
    for cb in meter.callbacks:
        cb(meter.reading)
    assert rig.charger.status.actual_A == (7.5,) and rig.state.values["actual_A/L3"] == 7.5
    meter.reading = Reading(A=(1.0, 2.0, 7.5), updated=T0 + 1, stale=True)
    for cb in meter.callbacks:
        cb(meter.reading)
    assert rig.charger.status.actual_A == (None,)


def test_a_meter_that_gives_no_readings_is_refused_naming_the_leaf():
    with pytest.raises(ConfigError, match="^config/meter:"):
        Rig(meters={"m1": object()}, meter="m1")
