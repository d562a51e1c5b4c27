"""charger/ocpp over real websockets with a charge point written with the ocpp library: messages EVC sends, and a
charge point that refuses profiles as control sees it."""
import json

import pytest
import pytest_twisted
from ocpp.v16 import call
from twisted.internet import reactor

from cs_rig import Site, asyncio_test, close_cp, connect_cp, until, wait
from evc.ocpp.bridge import to_deferred
from evc.sim.modbus import listen_tcp
from evc.sim.sdm import SimSdm630


@pytest.fixture
def site():
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


@asyncio_test
async def test_every_message_for_the_charge_point_arrives_and_its_answer_comes_back(site):
    site.server()
    site.charger("cp1", connector=1)
    await site.start()
    charger = site.instance("charger", "cp1")
    cp = await connect_cp(site.url("cp1"), "cp1")
    await cp.boot()
    await until(lambda: charger.smart == "ok", "set up")
    started = await cp.call(call.StartTransaction(connector_id=1, id_tag="T", meter_start=0,
                                                  timestamp="2026-01-01T00:00:00Z"))
    profile = {"chargingProfileId": 9, "stackLevel": 5, "chargingProfilePurpose": "TxProfile",
               "chargingProfileKind": "Relative", "chargingSchedule": {
                   "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}}
    answers = {
        "RemoteStartTransaction": await wait(charger.remote_start("T")),
        "RemoteStopTransaction": await wait(charger.remote_stop()),
        "ChangeAvailability": await wait(charger.change_availability(False)),
        "ChangeConfiguration": await wait(charger.change_configuration("HeartbeatInterval", "60")),
        "GetConfiguration": await wait(charger.get_configuration(["LocalAuthListMaxLength"])),
        "Reset": await wait(charger.reset()),
        "UnlockConnector": await wait(charger.unlock_connector()),
        "ClearCache": await wait(charger.clear_cache()),
        "SetChargingProfile": await wait(charger.set_charging_profile(profile)),
        "ClearChargingProfile": await wait(charger.clear_charging_profile(profile_id=9)),
        "GetCompositeSchedule": await wait(charger.get_composite_schedule(3600)),
        "TriggerMessage": await wait(charger.trigger_message("Heartbeat")),
        "SendLocalList": await wait(charger.send_local_list(50, "Full", [{"idTag": "X"}])),
        "GetLocalListVersion": await wait(charger.get_local_list_version()),
        "DataTransfer": await wait(charger.data_transfer("acme", "ping", "hello")),
    }
    assert answers["RemoteStartTransaction"] == {"status": "Accepted"}
    assert answers["GetConfiguration"]["configurationKey"][0]["value"] == "100"
    assert answers["UnlockConnector"] == {"status": "Unlocked"}
    assert answers["GetLocalListVersion"] == {"listVersion": 50}
    assert answers["DataTransfer"] == {"status": "Accepted", "data": "pong"}
    composite = answers["GetCompositeSchedule"]
    limit = composite["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
    assert limit == 10.5 and type(limit) is float          # the library's Decimal does not leak out
    json.dumps(answers)
    received = dict(cp.received)
    assert received["RemoteStopTransaction"] == {"transaction_id": started.transaction_id}
    assert received["ChangeAvailability"] == {"connector_id": 1, "type": "Inoperative"}
    assert received["Reset"] == {"type": "Soft"}
    assert received["DataTransfer"] == {"vendor_id": "acme", "message_id": "ping", "data": "hello"}
    assert cp.profiles[-1][1]["charging_profile_id"] == 9
    await close_cp(cp)


@asyncio_test
async def test_a_charge_point_that_refuses_profiles_is_held_at_a_max_by_control(site):
    sim = SimSdm630(unit=1)
    sim.set(V=230, A=(4, 4, 4))
    port = listen_tcp(reactor, [sim], 0)
    try:
        site.configure("meter", "grid", "SDM630", bus=f"127.0.0.1:{port.getHost().port}", bus_addr=1,
                       interval_s=0.2)
        site.configure("control", "master", "builtin", meter="grid", A_max=32, interval_s=0.3, min_on_s=0,
                       min_off_s=0, deadband_A=0)
        site.server()
        site.charger("stubborn", A_max=16)
        site.charger("good", A_max=16)
        site.token("T")
        await site.start()
        stubborn = await connect_cp(site.url("stubborn"), "stubborn")
        stubborn.profile_answer = "Rejected"
        good = await connect_cp(site.url("good"), "good")
        for cp in (stubborn, good):
            await cp.boot()
            await cp.status("Preparing")
            await cp.call(call.StartTransaction(connector_id=1, id_tag="T", meter_start=0,
                                                timestamp="2026-01-01T00:00:00Z"))
        charger = site.instance("charger", "stubborn")
        await until(lambda: charger.smart == "rejected", "refusal seen")
        assert not charger.status.online and charger.status.setpoint_A == 16
        await until(lambda: site.leaf("charger/stubborn/state/smart_charging") == "rejected", "in state")
        # 32 A site, 4 A other load, 16 A held for the charger EVC cannot limit: 12 A left for the other one.
        await until(lambda: site.leaf("control/master/state/allocations/good/A") == "12", "the other one's share",
                    timeout_s=10)
        assert "lost" in site.leaf("control/master/state/allocations/stubborn/reason")
        limits = [float(p["charging_schedule"]["charging_schedule_period"][0]["limit"])
                  for _, p in good.profiles if p["charging_profile_id"] == 2]
        await until(lambda: [float(p["charging_schedule"]["charging_schedule_period"][0]["limit"])
                             for _, p in good.profiles if p["charging_profile_id"] == 2][-1:] == [12.0],
                    "12 A at the other charge point", timeout_s=10)
        assert all(limit <= 12.0 for limit in limits)
        await close_cp(stubborn)
        await close_cp(good)
    finally:
        port.stopListening()
