"""The OCPP 1.6J charge point simulator against a small central system written here with the ocpp library.

Real websockets on loopback; the simulator's own time (heartbeats, samples, profiles, backoff) is a task.Clock
the tests advance, so nothing waits for wall-clock time except the round trips themselves.
"""
from __future__ import annotations

import base64
import itertools
import ssl
from datetime import datetime, timezone

import pytest
import pytest_twisted
import websockets
from ocpp.exceptions import InternalError, NotSupportedError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from twisted.internet import reactor, task
from websockets.asyncio.server import serve

from evc.ocpp.bridge import to_deferred as aio
from evc.sim.ocpp_cp import (ConfigTable, OcppChargePointSim, Profile, ProfileError, ProfileStore,
                             _config_keys, iso)
from evc.testing import wait_for

T0 = 1_700_000_000.0          # the simulator's clock starts here (2023-11-14T22:13:20Z)


def at(t_s: float) -> str:
    return iso(t_s)


class CsSide(ChargePoint):
    """The central system's end of one charger's connection: answers and records what the charger sends."""

    def __init__(self, cp_id, ws, cs: "TinyCs"):
        super().__init__(cp_id, ws, response_timeout=5)
        self.cs = cs

    def _log(self, action, payload):
        self.cs.log.append((self.id, action, payload))

    @on(Action.boot_notification)
    def on_boot(self, **kw):
        self._log("BootNotification", kw)
        status, interval = self.cs.boot_answers.pop(0) if self.cs.boot_answers else ("Accepted", 60)
        return call_result.BootNotification(current_time=at(T0), interval=interval, status=status)

    @on(Action.heartbeat)
    def on_heartbeat(self):
        self._log("Heartbeat", {})
        return call_result.Heartbeat(current_time=at(T0))

    @on(Action.status_notification)
    def on_status(self, **kw):
        self._log("StatusNotification", kw)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag):
        self._log("Authorize", {"id_tag": id_tag})
        return call_result.Authorize(id_tag_info={"status": "Invalid" if id_tag in self.cs.invalid else "Accepted"})

    @on(Action.start_transaction)
    def on_start(self, **kw):
        self._log("StartTransaction", kw)
        if self.cs.fail_starts > 0:
            self.cs.fail_starts -= 1
            raise InternalError(description="database unavailable")
        status = "Invalid" if kw["id_tag"] in self.cs.invalid else "Accepted"
        return call_result.StartTransaction(transaction_id=next(self.cs.tx_ids), id_tag_info={"status": status})

    @on(Action.stop_transaction)
    def on_stop(self, **kw):
        self._log("StopTransaction", kw)
        return call_result.StopTransaction(id_tag_info={"status": "Accepted"})

    @on(Action.meter_values)
    def on_meter_values(self, **kw):
        self._log("MeterValues", kw)
        return call_result.MeterValues()


class TinyCs:
    """A minimal central system: any id (or, with `passwords`, only those with the right basic auth)."""

    def __init__(self, passwords: dict[str, str] | None = None, ssl_context=None):
        self.passwords = passwords
        self.ssl_context = ssl_context
        self.log: list[tuple[str, str, dict]] = []
        self.cps: dict[str, CsSide] = {}
        self.boot_answers: list[tuple[str, int]] = []
        self.invalid: set[str] = set()
        self.tx_ids = itertools.count(1)
        self.fail_starts = 0                  # answer this many StartTransactions with a CALLERROR
        self.auth_seen: list[str] = []

    async def start(self, port: int = 0):
        self.server = await serve(self._handler, "127.0.0.1", port, subprotocols=["ocpp1.6"],
                                  process_request=self._check_auth, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        scheme = "wss" if self.ssl_context else "ws"
        self.url = f"{scheme}://127.0.0.1:{self.port}/ocpp"

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()

    def _check_auth(self, connection, request):
        if self.passwords is None:
            return None
        cp_id = request.path.rsplit("/", 1)[-1]
        header = request.headers.get("Authorization", "")
        self.auth_seen.append(header)
        expected = "Basic " + base64.b64encode(f"{cp_id}:{self.passwords.get(cp_id)}".encode()).decode()
        if cp_id not in self.passwords or header != expected:
            return connection.respond(401, "bad credentials\n")
        return None

    async def _handler(self, ws):
        cp_id = ws.request.path.rsplit("/", 1)[-1]
        side = self.cps[cp_id] = CsSide(cp_id, ws, self)
        try:
            await side.start()
        except websockets.exceptions.ConnectionClosed:
            pass

    def sent(self, action: str, cp_id: str = "cp1") -> list[dict]:
        return [p for c, a, p in self.log if c == cp_id and a == action]

    def actions(self, cp_id: str = "cp1") -> list[str]:
        return [a for c, a, _ in self.log if c == cp_id]

    def statuses(self, connector_id: int = 1, cp_id: str = "cp1") -> list[str]:
        return [p["status"] for p in self.sent("StatusNotification", cp_id) if p["connector_id"] == connector_id]

    async def ask(self, payload, cp_id: str = "cp1"):
        """A CS -> CP call; CALLERRORs raise."""
        return await aio(self.cps[cp_id].call(payload, suppress=False))

    async def drop(self, cp_id: str = "cp1"):
        await aio(self.cps[cp_id]._connection.close())


class Rig:
    def __init__(self):
        self.cs = TinyCs()
        self.sims: list[OcppChargePointSim] = []

    def sim(self, cp_id="cp1", clock=None, url=None, **kw) -> OcppChargePointSim:
        if clock is None:
            clock = task.Clock()
            clock.advance(T0)
        kw.setdefault("config", {"MeterValueSampleInterval": "10"})
        kw.setdefault("car", {"max_current_A": 16.0, "soc": 0.3})
        s = OcppChargePointSim(clock, url or self.cs.url, cp_id, **kw)
        s.start(reactor)
        self.sims.append(s)
        return s


@pytest_twisted.async_yield_fixture
async def rig():
    r = Rig()
    await aio(r.cs.start())
    yield r
    for s in r.sims:
        await s.stop(reactor)
    await aio(r.cs.stop())


async def until(cond, what="condition", timeout_s=5.0):
    return await wait_for(cond, timeout_s, what)


def step(clock, seconds: int) -> None:
    """Advance one second at a time, so every timer fires at its own moment."""
    for _ in range(seconds):
        clock.advance(1)


async def charging(rig, **kw) -> OcppChargePointSim:
    """A simulator online with its car plugged in, charging for tag AA."""
    sim = rig.sim(**kw)
    await until(lambda: sim.online and rig.cs.statuses() == ["Available"], "boot and first status")
    sim.plug(1, "AA")
    await until(lambda: sim.connectors[1].tx is not None and sim.connectors[1].tx.id is not None, "transaction")
    await until(lambda: rig.cs.statuses()[-1:] == ["Charging"], "Charging")
    return sim


def tx_profile(profile_id, stack_level, limit, *, purpose="TxProfile", start=None, duration=None, unit="A",
               phases=None, kind="Absolute", **extra):
    period = {"startPeriod": 0, "limit": limit}
    if phases:
        period["numberPhases"] = phases
    schedule = {"chargingRateUnit": unit, "chargingSchedulePeriod": [period]}
    if start is not None:
        schedule["startSchedule"] = at(start)
    if duration is not None:
        schedule["duration"] = duration
    return {"chargingProfileId": profile_id, "stackLevel": stack_level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}


def values(meter_values: dict, measurand: str) -> dict:
    """{phase or '': value} of one measurand in a MeterValues payload."""
    out = {}
    for mv in meter_values["meter_value"]:
        for sv in mv["sampled_value"]:
            if sv.get("measurand") == measurand:
                out[sv.get("phase", "")] = float(sv["value"])
    return out


# -- boot and heartbeat ----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_boots_then_reports_every_connector_and_heartbeats_on_the_cs_interval(rig):
    sim = rig.sim()
    await until(lambda: sim.online, "boot accepted")
    await until(lambda: len(rig.cs.sent("StatusNotification")) == 2, "statuses of connector 0 and 1")
    assert [(p["connector_id"], p["status"]) for p in rig.cs.sent("StatusNotification")] == \
        [(0, "Available"), (1, "Available")]
    boot = rig.cs.sent("BootNotification")[0]
    assert boot["charge_point_vendor"] == "EVC" and boot["charge_point_serial_number"] == "cp1"
    assert sim.config.get("HeartbeatInterval") == "60"
    step(sim.clock, 59)
    assert rig.cs.sent("Heartbeat") == []
    sim.clock.advance(1)
    await until(lambda: len(rig.cs.sent("Heartbeat")) == 1, "a heartbeat after 60 s")
    step(sim.clock, 60)
    await until(lambda: len(rig.cs.sent("Heartbeat")) == 2, "the next one 60 s later")


@pytest_twisted.ensureDeferred
async def test_pending_boot_waits_the_interval_refuses_remote_start_and_answers_configuration(rig):
    rig.cs.boot_answers = [("Pending", 20), ("Rejected", 30)]
    sim = rig.sim()
    await until(lambda: sim.registration == "Pending" and sim.phase == "boot-wait", "Pending")
    answer = await rig.cs.ask(call.GetConfiguration(key=["HeartbeatInterval"]))
    assert answer.configuration_key == [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
    refused = await rig.cs.ask(call.RemoteStartTransaction(id_tag="AA", connector_id=1))
    assert refused.status == "Rejected"
    step(sim.clock, 19)
    assert len(rig.cs.sent("BootNotification")) == 1
    sim.clock.advance(1)
    await until(lambda: sim.registration == "Rejected" and sim.phase == "boot-wait", "Rejected")
    step(sim.clock, 30)
    await until(lambda: sim.online, "accepted at the third boot")
    await until(lambda: len(rig.cs.sent("StatusNotification")) == 2, "statuses")
    # Nothing but BootNotification went out before Accepted.
    assert rig.cs.actions()[:3] == ["BootNotification"] * 3


# -- a transaction ----------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_plug_with_a_tag_runs_a_whole_transaction_with_meter_values(rig):
    sim = await charging(rig)
    assert rig.cs.statuses() == ["Available", "Preparing", "Charging"]
    assert rig.cs.actions().index("Authorize") < rig.cs.actions().index("StartTransaction")
    start = rig.cs.sent("StartTransaction")[0]
    assert (start["connector_id"], start["id_tag"], start["meter_start"]) == (1, "AA", 0)
    assert start["timestamp"] == at(T0)
    step(sim.clock, 10)
    await until(lambda: rig.cs.sent("MeterValues"), "a sample after MeterValueSampleInterval")
    mv = rig.cs.sent("MeterValues")[0]
    assert mv["transaction_id"] == 1
    assert values(mv, "Current.Import") == {"L1": 16.0, "L2": 16.0, "L3": 16.0}
    assert values(mv, "Power.Active.Import") == {"": 16 * 3 * 230.0}
    assert values(mv, "Energy.Active.Import.Register")[""] == pytest.approx(16 * 3 * 230 * 10 / 3600, abs=0.1)
    step(sim.clock, 50)
    sim.unplug(1)
    await until(lambda: rig.cs.sent("StopTransaction"), "StopTransaction")
    stop = rig.cs.sent("StopTransaction")[0]
    assert (stop["transaction_id"], stop["reason"], stop["id_tag"]) == (1, "EVDisconnected", "AA")
    assert stop["meter_stop"] == round(16 * 3 * 230 * 60 / 3600)
    await until(lambda: rig.cs.statuses()[-1] == "Available", "Available again")
    assert len(rig.cs.sent("MeterValues")) == 6


@pytest_twisted.ensureDeferred
async def test_full_or_holding_car_is_suspended_ev_and_a_refused_tag_starts_nothing(rig):
    rig.cs.invalid = {"BAD"}
    sim = await charging(rig, connectors=2)
    sim.cars[1].charge_enabled = False
    sim.refresh()
    await until(lambda: rig.cs.statuses()[-1] == "SuspendedEV", "SuspendedEV")
    sim.cars[1].charge_enabled = True
    sim.cars[1].soc = 1.0
    sim.refresh()
    await until(lambda: rig.cs.statuses()[-2:] == ["Charging", "SuspendedEV"], "full: SuspendedEV again")
    sim.plug(2, "BAD")
    await until(lambda: rig.cs.sent("Authorize")[-1:] == [{"id_tag": "BAD"}]
                and sim.connectors[2].pending_tag is None, "BAD refused by the CS")
    assert sim.connectors[2].tx is None
    assert [p["id_tag"] for p in rig.cs.sent("StartTransaction")] == ["AA"]


@pytest_twisted.ensureDeferred
async def test_remote_start_with_a_profile_waits_for_the_car_and_remote_stop_finishes(rig):
    sim = rig.sim()
    await until(lambda: sim.online and rig.cs.statuses() == ["Available"], "online")
    answer = await rig.cs.ask(call.RemoteStartTransaction(
        id_tag="BB", connector_id=1, charging_profile=tx_profile(7, 1, 10.0)))
    assert answer.status == "Accepted"
    await until(lambda: rig.cs.statuses()[-1] == "Preparing" and rig.cs.sent("Authorize"), "Preparing, Authorize")
    assert rig.cs.sent("StartTransaction") == []
    sim.plug(1)
    await until(lambda: rig.cs.sent("StartTransaction"), "StartTransaction once plugged")
    assert sim.connectors[1].offered_A == 10.0
    assert sim.cars[1].draw_A == (10.0, 10.0, 10.0)
    await until(lambda: sim.connectors[1].tx.id == 1, "transaction id")
    assert (await rig.cs.ask(call.RemoteStopTransaction(transaction_id=99))).status == "Rejected"
    assert (await rig.cs.ask(call.RemoteStopTransaction(transaction_id=1))).status == "Accepted"
    await until(lambda: rig.cs.sent("StopTransaction"), "StopTransaction")
    assert rig.cs.sent("StopTransaction")[0]["reason"] == "Remote"
    await until(lambda: rig.cs.statuses()[-1] == "Finishing", "Finishing while the car is still plugged")
    assert sim.profiles.profiles == []            # the TxProfile ended with its transaction
    sim.unplug(1)
    await until(lambda: rig.cs.statuses()[-1] == "Available", "Available after unplugging")
    assert rig.cs.statuses() == ["Available", "Preparing", "Charging", "Finishing", "Available"]


@pytest_twisted.ensureDeferred
async def test_lost_start_reply_resends_the_same_start_and_uses_the_answer_it_got(rig):
    sim = await charging(rig, lose_start_replies=1)
    starts = rig.cs.sent("StartTransaction")
    assert len(starts) == 2 and starts[0] == starts[1]
    assert sim.connectors[1].tx.start_replies == [1, 2]
    assert sim.connectors[1].tx.id == 2
    step(sim.clock, 10)
    await until(lambda: rig.cs.sent("MeterValues"), "a sample")
    assert rig.cs.sent("MeterValues")[0]["transaction_id"] == 2


@pytest_twisted.ensureDeferred
async def test_a_start_answered_with_a_callerror_is_retried_after_the_retry_interval(rig):
    rig.cs.fail_starts = 1
    sim = rig.sim()
    await until(lambda: sim.online and rig.cs.statuses() == ["Available"], "online")
    sim.plug(1, "AA")
    await until(lambda: len(rig.cs.sent("StartTransaction")) == 1 and sim._txq[0].attempts == 1, "first try failed")
    assert sim.cars[1].current_A == 16.0, "the car charges while the StartTransaction waits for its retry"
    step(sim.clock, 59)
    assert len(rig.cs.sent("StartTransaction")) == 1
    sim.clock.advance(1)                              # TransactionMessageRetryInterval (60 s) x 1 earlier try
    await until(lambda: sim.connectors[1].tx.id == 1, "the retry got a transaction id")
    assert rig.cs.sent("StartTransaction")[0] == rig.cs.sent("StartTransaction")[1]


# -- smart charging ----------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_profiles_limit_the_offered_current_and_expire_back_to_the_base(rig):
    sim = await charging(rig)
    c = sim.connectors[1]
    assert c.offered_A == 32.0                    # no profile: the charger's own maximum; the car takes 16 A
    assert (await rig.cs.ask(call.SetChargingProfile(
        connector_id=0, cs_charging_profiles=tx_profile(1, 0, 13.0, purpose="TxDefaultProfile")))).status == "Accepted"
    assert c.offered_A == 13.0 and sim.cars[1].draw_A == (13.0, 13.0, 13.0)
    # A dynamic limit on top, for 60 s, with a stricter one for its first 20 s one stack level higher.
    assert (await rig.cs.ask(call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(
        2, 1, 10.0, start=T0, duration=60)))).status == "Accepted"
    assert (await rig.cs.ask(call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(
        3, 2, 7.0, start=T0, duration=20)))).status == "Accepted"
    assert c.offered_A == 7.0
    composite = await rig.cs.ask(call.GetCompositeSchedule(connector_id=1, duration=120))
    assert composite.status == "Accepted"
    assert [(p["start_period"], float(p["limit"])) for p in composite.charging_schedule["charging_schedule_period"]] \
        == [(0, 7.0), (20, 10.0), (60, 13.0)]
    step(sim.clock, 10)
    await until(lambda: rig.cs.sent("MeterValues"), "a sample at 7 A")
    assert values(rig.cs.sent("MeterValues")[-1], "Current.Import")["L1"] == 7.0
    step(sim.clock, 10)
    assert c.offered_A == 10.0
    step(sim.clock, 40)
    assert c.offered_A == 13.0, "the TxProfile expired: back to the TxDefaultProfile"
    step(sim.clock, 10)
    await until(lambda: len(rig.cs.sent("MeterValues")) == 7, "samples")
    assert values(rig.cs.sent("MeterValues")[-1], "Current.Import")["L1"] == 13.0
    # The charge point's own maximum caps everything, in W here: 4140 W on 3 phases is 6 A.
    assert (await rig.cs.ask(call.SetChargingProfile(connector_id=0, cs_charging_profiles=tx_profile(
        4, 0, 4140.0, purpose="ChargePointMaxProfile", unit="W", valid_to=at(T0 + 100))))).status == "Accepted"
    assert c.offered_A == pytest.approx(6.0)
    # Under 6 A nothing is offered: SuspendedEVSE. (Without startSchedule it would count from the
    # transaction's start, 70 s ago, and be over already.)
    assert (await rig.cs.ask(call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(
        5, 3, 5.0, start=T0 + 70, duration=30)))).status == "Accepted"
    assert c.offered_A == 0.0
    await until(lambda: rig.cs.statuses()[-1] == "SuspendedEVSE", "SuspendedEVSE")
    cleared = await rig.cs.ask(call.ClearChargingProfile(id=5))
    assert cleared.status == "Accepted"
    await until(lambda: rig.cs.statuses()[-1] == "Charging", "Charging again")
    step(sim.clock, 30)                           # T0 + 100: the ChargePointMaxProfile's validTo
    assert c.offered_A == 13.0
    assert (await rig.cs.ask(call.ClearChargingProfile(id=42))).status == "Unknown"


@pytest_twisted.ensureDeferred
async def test_invalid_profiles_are_rejected_and_change_nothing(rig):
    sim = await charging(rig)
    before = sim.connectors[1].offered_A
    bad = [
        (1, tx_profile(1, 0, 10.0, purpose="ChargePointMaxProfile")),     # CP max belongs on connector 0
        (0, tx_profile(2, 0, 10.0)),                                       # TxProfile on connector 0
        (1, tx_profile(3, 9, 10.0)),                                       # stackLevel > max 8
        (1, tx_profile(4, 0, 10.0, transactionId=99)),                     # not this transaction
        (1, tx_profile(5, 0, 10.0, kind="Recurring")),                     # Recurring needs recurrencyKind
        (3, tx_profile(6, 0, 10.0, purpose="TxDefaultProfile")),           # no connector 3
    ]
    for connector_id, profile in bad:
        answer = await rig.cs.ask(call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile))
        assert answer.status == "Rejected", profile
    assert sim.profiles.profiles == [] and sim.connectors[1].offered_A == before
    sim.unplug(1)
    await until(lambda: sim.connectors[1].tx is None, "stopped")
    answer = await rig.cs.ask(call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(7, 0, 8.0)))
    assert answer.status == "Rejected", "a TxProfile without a transaction"


@pytest.mark.parametrize("mode", ["reject", "unsupported"])
@pytest_twisted.ensureDeferred
async def test_a_charger_without_smart_charging_keeps_its_current(rig, mode):
    sim = await charging(rig, smart_charging=mode)
    request = call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(1, 0, 8.0))
    if mode == "reject":
        assert (await rig.cs.ask(request)).status == "Rejected"
        assert (await rig.cs.ask(call.GetCompositeSchedule(connector_id=1, duration=60))).status == "Rejected"
    else:
        with pytest.raises(NotSupportedError):
            await rig.cs.ask(request)
        known = (await rig.cs.ask(call.GetConfiguration(key=["SupportedFeatureProfiles"]))).configuration_key
        assert "SmartCharging" not in known[0]["value"]
    assert sim.profiles.profiles == []
    assert sim.connectors[1].offered_A == 32.0 and sim.cars[1].draw_A == (16.0, 16.0, 16.0)


def test_profile_stacks_recurrence_and_validity_without_a_network():
    """Pure schedule arithmetic: daily recurrence, validFrom in the future, replacement by stack level."""
    clock = task.Clock()
    clock.advance(T0)
    sim = OcppChargePointSim(clock, "ws://127.0.0.1:1/ocpp", "unit", car={"max_current_A": 32.0})
    midnight = T0 - T0 % 86400
    daily = Profile.from_payload(0, {
        "charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Recurring", "recurrency_kind": "Daily",
        "charging_schedule": {"charging_rate_unit": "A", "start_schedule": at(midnight), "charging_schedule_period": [
            {"start_period": 0, "limit": 20}, {"start_period": 18 * 3600, "limit": 8}]}}, T0)
    sim.profiles.install(daily)
    later = Profile.from_payload(1, {
        "charging_profile_id": 2, "stack_level": 1, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute", "valid_from": at(T0 + 3600),
        "charging_schedule": {"charging_rate_unit": "A", "charging_schedule_period": [{"start_period": 0,
                                                                                      "limit": 11}]}}, T0)
    sim.profiles.install(later)
    # A connector-1 TxDefault replaces the connector-0 ones for connector 1 only; before validFrom it says nothing.
    assert sim.profiles.relevant("TxDefaultProfile", 1) == [later]
    assert sim.composite_schedule(1, 7200) == [{"startPeriod": 0, "limit": 32.0}, {"startPeriod": 3600, "limit": 11.0}]
    sim.profiles.clear(profile_id=2)
    now_offset = T0 - midnight                      # 22:13:20 UTC: after 18:00, so 8 A until midnight
    schedule = sim.composite_schedule(1, 86400)
    assert schedule == [{"startPeriod": 0, "limit": 8.0},
                        {"startPeriod": int(86400 - now_offset), "limit": 20.0},
                        {"startPeriod": int(86400 - now_offset + 18 * 3600), "limit": 8.0}]
    # Same stack level and purpose on the same connector replaces; a W schedule converts with numberPhases.
    store = ProfileStore()
    store.install(daily)
    store.install(Profile.from_payload(0, {
        "charging_profile_id": 9, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Relative", "charging_schedule": {"charging_rate_unit": "W",
                                                                   "charging_schedule_period": [
                                                                       {"start_period": 0, "limit": 2300,
                                                                        "number_phases": 1}]}}, T0))
    assert [p.id for p in store.profiles] == [9]
    sim.profiles = store                            # 2300 W on one phase = 10 A, on one phase, in W again
    assert sim.composite_schedule(1, 600, "W") == [{"startPeriod": 0, "limit": 2300.0, "numberPhases": 1}]
    assert sim.composite_schedule(1, 600, "A") == [{"startPeriod": 0, "limit": 10.0, "numberPhases": 1}]
    with pytest.raises(ProfileError, match="startPeriod"):
        Profile.from_payload(0, {"charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose": "TxProfile",
                                 "charging_profile_kind": "Absolute", "charging_schedule": {
                                     "charging_rate_unit": "A", "charging_schedule_period": [
                                         {"start_period": 0, "limit": 6}, {"start_period": 0, "limit": 7}]}}, T0)


def test_phase_limit_and_charge_point_maximum_shared_by_two_transactions():
    clock = task.Clock()
    clock.advance(T0)
    sim = OcppChargePointSim(clock, "ws://127.0.0.1:1/ocpp", "unit", connectors=2, car={"max_current_A": 32.0})
    for n in (1, 2):
        sim.plug(n)
        sim._start_tx(sim.connectors[n], "AA")   # offline start, as after a local authorization
    assert sim.status()["queued_tx_messages"] == 2
    assert sim._set_charging_profile(0, {
        "charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose": "ChargePointMaxProfile",
        "charging_profile_kind": "Absolute", "charging_schedule": {
            "charging_rate_unit": "A", "charging_schedule_period": [{"start_period": 0, "limit": 30}]}}) == "Accepted"
    assert sim.connectors[1].offered_A == 15.0 and sim.connectors[2].offered_A == 15.0
    assert sim._set_charging_profile(1, {
        "charging_profile_id": 2, "stack_level": 0, "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative", "charging_schedule": {
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": 10, "number_phases": 1}]}}) == "Accepted"
    assert sim.cars[1].draw_A == (10.0, 0.0, 0.0)
    sim._stop_tx(sim.connectors[2], "Local")
    sim.refresh()
    # Connector 2 is shown the share it would get when its next transaction starts.
    assert sim.connectors[1].limit_A == 10.0 and sim.connectors[2].limit_A == 15.0
    assert sim.connectors[2].offered_A == 0.0


# -- configuration, local list, availability, triggers -----------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_configuration_keys_read_change_and_refuse(rig):
    sim = rig.sim()
    await until(lambda: sim.online, "online")
    answer = await rig.cs.ask(call.GetConfiguration(key=["MeterValueSampleInterval", "Nope", "AuthorizationKey"]))
    assert answer.configuration_key == [{"key": "MeterValueSampleInterval", "readonly": False, "value": "10"}]
    assert answer.unknown_key == ["Nope", "AuthorizationKey"]
    everything = (await rig.cs.ask(call.GetConfiguration())).configuration_key
    names = {k["key"] for k in everything}
    assert {"HeartbeatInterval", "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit",
            "LocalAuthListEnabled", "MeterValuesSampledData", "NumberOfConnectors"} <= names
    assert "AuthorizationKey" not in names
    for key, value, status in [("NumberOfConnectors", "2", "Rejected"), ("Nope", "1", "NotSupported"),
                               ("MeterValueSampleInterval", "soon", "Rejected"),
                               ("MeterValuesSampledData", "Energy.Active.Import.Register,Frequency", "Rejected"),
                               ("AuthorizationKey", "short", "Rejected"),
                               ("AuthorizationKey", "0123456789abcdef0123", "Accepted"),
                               ("LocalPreAuthorize", "TRUE", "Accepted"),
                               ("HeartbeatInterval", "5", "Accepted"),
                               ("ClockAlignedDataInterval", "15", "Accepted")]:
        assert (await rig.cs.ask(call.ChangeConfiguration(key=key, value=value))).status == status, key
    assert sim.password == "0123456789abcdef0123"
    assert sim.config.bool("LocalPreAuthorize")
    step(sim.clock, 5)
    await until(lambda: rig.cs.sent("Heartbeat"), "heartbeat on the new interval")
    step(sim.clock, 5)                                # T0 + 10 is a multiple of 15 s: clock-aligned data
    await until(lambda: rig.cs.sent("MeterValues"), "clock-aligned meter values")
    sampled = rig.cs.sent("MeterValues")[0]["meter_value"][0]
    assert sampled["timestamp"] == at(T0 + 10) and (T0 + 10) % 15 == 0
    assert [(v["measurand"], v["context"]) for v in sampled["sampled_value"]] == \
        [("Energy.Active.Import.Register", "Sample.Clock")]


@pytest_twisted.ensureDeferred
async def test_local_list_versions_and_offline_authorization(rig):
    sim = rig.sim(connectors=2, backoff_s=100)
    await until(lambda: sim.online, "online")
    entries = [{"idTag": "AA", "idTagInfo": {"status": "Accepted"}},
               {"idTag": "BB", "idTagInfo": {"status": "Blocked"}}]
    full = await rig.cs.ask(call.SendLocalList(list_version=3, update_type="Full", local_authorization_list=entries))
    assert full.status == "Accepted"
    assert (await rig.cs.ask(call.GetLocalListVersion())).list_version == 3
    stale = await rig.cs.ask(call.SendLocalList(list_version=3, update_type="Differential",
                                                local_authorization_list=[{"idTag": "CC"}]))
    assert stale.status == "VersionMismatch"
    diff = await rig.cs.ask(call.SendLocalList(list_version=4, update_type="Differential", local_authorization_list=[
        {"idTag": "BB"}, {"idTag": "CC", "idTagInfo": {"status": "Accepted"}}]))
    assert diff.status == "Accepted"
    assert sorted(sim.local_list) == ["AA", "CC"] and sim.local_list_version == 4
    # Offline: a tag on the local list starts charging; an unknown one does not.
    await rig.cs.drop()
    await until(lambda: sim.phase == "backoff", "offline")
    sim.plug(1, "CC")
    sim.plug(2, "ZZ")
    await until(lambda: sim.connectors[1].tx is not None, "offline start for CC")
    await until(lambda: sim.connectors[2].pending_tag is None, "ZZ refused")
    assert sim.connectors[2].tx is None and sim.cars[1].current_A == 16.0
    step(sim.clock, 10)                             # a sample while offline is queued
    sim.clock.advance(90)                           # reconnect (and one more sample, at T0 + 100)
    await until(lambda: len(rig.cs.sent("MeterValues")) == 2, "queued messages after reconnecting")
    assert [a for a in rig.cs.actions() if a in ("StartTransaction", "MeterValues")] == \
        ["StartTransaction", "MeterValues", "MeterValues"]
    assert [mv["meter_value"][0]["timestamp"] for mv in rig.cs.sent("MeterValues")] == [at(T0 + 10), at(T0 + 100)]
    assert rig.cs.sent("StartTransaction")[-1]["timestamp"] == at(T0)


@pytest_twisted.ensureDeferred
async def test_availability_is_scheduled_during_a_transaction_and_unlock_stops_it(rig):
    sim = await charging(rig)
    answer = await rig.cs.ask(call.ChangeAvailability(connector_id=1, type="Inoperative"))
    assert answer.status == "Scheduled"
    assert (await rig.cs.ask(call.UnlockConnector(connector_id=1))).status == "Unlocked"
    await until(lambda: rig.cs.sent("StopTransaction"), "stopped by the unlock")
    assert rig.cs.sent("StopTransaction")[0]["reason"] == "UnlockCommand"
    await until(lambda: rig.cs.statuses()[-1] == "Unavailable", "Unavailable once the transaction ended")
    assert (await rig.cs.ask(call.RemoteStartTransaction(id_tag="AA", connector_id=1))).status == "Rejected"
    assert (await rig.cs.ask(call.ChangeAvailability(connector_id=0, type="Operative"))).status == "Accepted"
    await until(lambda: rig.cs.statuses()[-1] == "Finishing", "operative again, the car still plugged")
    assert (await rig.cs.ask(call.UnlockConnector(connector_id=5))).status == "NotSupported"


@pytest_twisted.ensureDeferred
async def test_trigger_message_sends_what_was_asked(rig):
    sim = await charging(rig)
    n = len(rig.cs.sent("StatusNotification"))
    assert (await rig.cs.ask(call.TriggerMessage(requested_message="StatusNotification", connector_id=1))).status \
        == "Accepted"
    await until(lambda: len(rig.cs.sent("StatusNotification")) == n + 1, "a triggered status")
    assert (await rig.cs.ask(call.TriggerMessage(requested_message="MeterValues", connector_id=1))).status \
        == "Accepted"
    await until(lambda: rig.cs.sent("MeterValues"), "triggered meter values")
    assert rig.cs.sent("MeterValues")[0]["meter_value"][0]["sampled_value"][0]["context"] == "Trigger"
    assert (await rig.cs.ask(call.TriggerMessage(requested_message="Heartbeat"))).status == "Accepted"
    await until(lambda: rig.cs.sent("Heartbeat"), "triggered heartbeat")
    assert (await rig.cs.ask(call.TriggerMessage(requested_message="StatusNotification", connector_id=4))).status \
        == "Rejected"
    assert sim.online


# -- connection ------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_reconnects_with_backoff_and_replays_transaction_messages_in_order(rig):
    sim = await charging(rig, backoff_s=5, backoff_max_s=20)
    await rig.cs.drop()
    await until(lambda: sim.phase == "backoff", "offline")
    assert sim.next_retry_s == sim.clock.seconds() + 5
    await aio(rig.cs.stop())                          # the CS is down: the next tries fail and back off
    step(sim.clock, 5)
    await until(lambda: sim.phase == "backoff" and sim.next_retry_s == sim.clock.seconds() + 10, "backoff 10 s")
    step(sim.clock, 5)                                # T0 + 10: a sample, queued
    sim.unplug(1)                                     # a Stop while offline joins the queue
    await aio(rig.cs.start(rig.cs.port))
    step(sim.clock, 5)
    await until(lambda: sim.online and rig.cs.sent("StopTransaction"), "reconnected and replayed")
    assert sim.boots == 2
    tail = [a for a in rig.cs.actions() if a in ("MeterValues", "StopTransaction", "BootNotification")]
    assert tail[-3:] == ["BootNotification", "MeterValues", "StopTransaction"]
    assert rig.cs.sent("StopTransaction")[0]["transaction_id"] == 1


@pytest_twisted.ensureDeferred
async def test_soft_reset_stops_the_transaction_and_boots_again(rig):
    sim = await charging(rig)
    assert (await rig.cs.ask(call.Reset(type="Soft"))).status == "Accepted"
    await until(lambda: rig.cs.sent("StopTransaction") and sim.boots == 2 and sim.online, "stopped and rebooted")
    assert rig.cs.sent("StopTransaction")[0]["reason"] == "SoftReset"
    assert sim.connects == 2


@pytest_twisted.ensureDeferred
async def test_basic_auth_sends_the_id_and_password_and_a_wrong_one_is_refused(rig):
    rig.cs.passwords = {"cp1": "correct-horse-battery", "cp2": "correct-horse-battery"}
    good = rig.sim("cp1", password="correct-horse-battery")
    bad = rig.sim("cp2", password="wrong-password-here")
    await until(lambda: good.online, "cp1 accepted")
    await until(lambda: bad.phase == "backoff", "cp2 refused")
    assert "HTTP 401" in bad.last_error
    assert "wrong-password-here" not in bad.last_error
    assert not any("cp2" in a for a in rig.cs.cps)


@pytest_twisted.ensureDeferred
async def test_wss_with_a_private_ca(rig, tmp_path):
    from tls_pki import make_pki
    pki = make_pki(str(tmp_path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    tls_cs = TinyCs(ssl_context=ctx)
    await aio(tls_cs.start())
    try:
        trusted = rig.sim("cp1", url=tls_cs.url, ca_file=pki.ca)
        stranger = rig.sim("cp2", url=tls_cs.url, ca_file=pki.other_ca)
        await until(lambda: trusted.online, "wss accepted")
        await until(lambda: stranger.phase == "backoff", "unknown CA refused")
        assert "CERTIFICATE_VERIFY_FAILED" in stranger.last_error
    finally:
        for s in (trusted, stranger):
            await s.stop(reactor)
        await aio(tls_cs.stop())


@pytest_twisted.ensureDeferred
async def test_command_line_charger_plugs_in_and_reports_its_status(rig):
    """`python -m evc.sim.ocpp_cp` as the demo runs it: --plug-at with --id-tag, `status` on stdin."""
    import asyncio
    import json
    import sys

    async def session():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evc.sim.ocpp_cp", "--url", rig.cs.url, "--id", "cli1", "--plug-at", "0",
            "--id-tag", "AA", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            while not rig.cs.sent("StartTransaction", "cli1"):
                await asyncio.sleep(0.05)
            proc.stdin.write(b"status\nbogus\n")
            await proc.stdin.drain()
            return [json.loads(await proc.stdout.readline()) for _ in range(2)]
        finally:
            proc.terminate()
            await proc.wait()

    status, bogus = await aio(asyncio.wait_for(session(), 30))
    assert status["ok"] and status["registration"] == "Accepted"
    assert status["connectors"][0]["id_tag"] == "AA" and status["connectors"][0]["plugged"]
    assert bogus == {"ok": False, "error": "unknown command 'bogus'"}


def test_config_table_checks_values():
    table = ConfigTable(_config_keys(1, True))
    assert table.change("ClockAlignedDataInterval", "-1") == "Rejected"
    assert table.change("StopTxnSampledData", "Energy.Active.Import.Register,SoC") == "Accepted"
    assert table.list("StopTxnSampledData") == ["Energy.Active.Import.Register", "SoC"]
    assert table.report(["ChargeProfileMaxStackLevel"]) == ([{"key": "ChargeProfileMaxStackLevel",
                                                              "readonly": True, "value": "8"}], [])
    assert datetime.fromisoformat(iso(T0)) == datetime.fromtimestamp(T0, timezone.utc)
