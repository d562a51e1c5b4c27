"""End to end on a real etcd: the supervisor, a simulated grid meter, control/builtin, server/ocpp and a charge point
written with the ocpp library (not EVC's simulator) — boot, local list, authorize from the token list, a transaction
that becomes a session in data/sessions, control's setpoints arriving as SetChargingProfile."""
import asyncio
import json

import pytest
import pytest_twisted
from ocpp.v16 import call
from twisted.internet import reactor

from cs_rig import Site, asyncio_test, close_cp, connect_cp, until, wait
from evc.charger.ocpp import DYNAMIC_PROFILE_ID
from evc.ocpp.bridge import to_deferred
from evc.sim.modbus import listen_tcp
from evc.sim.sdm import SimSdm630
from evc.store import EtcdStore


@pytest.fixture
def grid_meter():
    sim = SimSdm630(unit=1)
    sim.set(V=230, A=(4, 4, 4))
    port = listen_tcp(reactor, [sim], 0)
    yield sim, port.getHost().port
    port.stopListening()


@pytest.fixture
def etcd_site(etcd_session, etcd_root):
    store = EtcdStore(etcd_session.url, reactor)
    site = Site(store=store, root=etcd_root)
    yield site

    async def down():
        await site.stop()
        await wait(store.close())
    pytest_twisted.blockon(to_deferred(down()))


async def until_leaf(site, key, predicate, what, timeout_s=10.0):
    """Poll an etcd leaf until `predicate(value)`; returns the value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        value = await site.aleaf(key)
        if predicate(value):
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}: {key} = {value!r}")
        await asyncio.sleep(0.05)


def limits(cp):
    """The limits of the dynamic profiles the charge point received, in order."""
    return [float(p["charging_schedule"]["charging_schedule_period"][0]["limit"])
            for _, p in cp.profiles if p["charging_profile_id"] == DYNAMIC_PROFILE_ID]


@asyncio_test
async def test_a_library_charge_point_charges_under_control_on_etcd(etcd_site, grid_meter):
    site = etcd_site
    _, meter_port = grid_meter
    await wait_all(site.configure("meter", "grid", "SDM630", bus=f"127.0.0.1:{meter_port}", bus_addr=1,
                                  interval_s=0.2))
    await wait_all(site.configure("control", "master", "builtin", meter="grid", A_max=32, interval_s=0.5,
                                  min_on_s=0, min_off_s=0, deadband_A=0))
    await wait_all(site.server())
    await wait_all(site.charger("cp1", A_max=16, meter_interval_s=5, failsafe_A=6))
    await wait_all(site.token("TAG1"))
    await wait_all(site.token("BLOCKED", status="Blocked"))
    await site.start()
    await until(lambda: site.instance("charger", "cp1") and site.instance("control", "master"), "instances up")
    charger = site.instance("charger", "cp1")

    cp = await connect_cp(site.url("cp1"), "cp1")
    assert (await cp.boot()).status == "Accepted"
    await until(lambda: cp.profiles, "the base profile")
    base = cp.profiles[0][1]
    assert base["charging_profile_id"] == 1 and float(base["charging_schedule"]["charging_schedule_period"][0][
        "limit"]) == 6.0
    await until(lambda: cp.local_lists, "the local list")
    assert [e["id_tag"] for e in cp.local_lists[0]["list"]] == ["BLOCKED", "TAG1"]
    assert ("MeterValueSampleInterval", "5") in cp.configuration
    await until_leaf(site, "charger/cp1/state/boot/vendor", lambda v: v == "LibVendor", "boot info in state")

    assert (await cp.call(call.Authorize(id_tag="TAG1"))).id_tag_info["status"] == "Accepted"
    assert (await cp.call(call.Authorize(id_tag="BLOCKED"))).id_tag_info["status"] == "Blocked"
    await cp.status("Preparing")
    started = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=5000,
                                                  timestamp="2026-03-01T10:00:00Z"))
    assert started.id_tag_info["status"] == "Accepted"
    tx = started.transaction_id

    # Control sees a car that wants current and gives it the charger's maximum (the site has room).
    await until(lambda: 16.0 in limits(cp), "control's 16 A arriving as a charging profile", timeout_s=10)
    await cp.status("Charging")
    await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
        "timestamp": "2026-03-01T10:05:00Z", "sampledValue": [
            {"value": "15.8", "measurand": "Current.Import", "phase": phase, "unit": "A"} for phase in
            ("L1", "L2", "L3")] + [{"value": "5400", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]))
    await until(lambda: charger.status.actual_A == (15.8, 15.8, 15.8), "draw seen")
    await until_leaf(site, "charger/cp1/state/online", lambda v: v == "true", "online in etcd")
    await until_leaf(site, "control/master/state/allocations/cp1/A", lambda v: v == "16", "allocation in etcd")

    await cp.call(call.StopTransaction(transaction_id=tx, meter_stop=12000, timestamp="2026-03-01T11:00:00Z",
                                       reason="Local"))
    session_id = charger.sessions.last.id
    stored = json.loads(await until_leaf(site, f"charger/cp1/data/sessions/{session_id}",
                                         lambda v: v and json.loads(v)["state"] == "ended", "the ended session"))
    assert stored["id_tag"] == "TAG1" and stored["meter_start_Wh"] == 5000 and stored["meter_stop_Wh"] == 12000
    assert stored["energy_Wh"] == 7000 and stored["reason"] == "Local"
    assert await site.aleaf("charger/cp1/data/sessions/current") is None
    transaction = json.loads(await site.aleaf("charger/cp1/data/transaction"))
    assert transaction["transaction_id"] == tx and transaction["session"] == session_id and not transaction["open"]
    assert await site.aleaf("server/cs/data/transaction_id") == str(tx)
    # No transaction: control pauses the charger.
    await until(lambda: limits(cp)[-1] == 0.0, "paused after the transaction", timeout_s=10)
    await close_cp(cp)
    await until_leaf(site, "charger/cp1/state/connection", lambda v: v == "disconnected", "disconnected")


async def wait_all(ds):
    for d in ds:
        await wait(d)
