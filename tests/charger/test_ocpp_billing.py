"""charger/ocpp bills every session from its own transaction's readings: the 80x bug (a leftover meterStop taken as
the next session's start), meters that go backwards, and a property test over messy transaction sequences."""
import json

import pytest
import pytest_twisted
from ocpp.v16 import call

from cs_fakes import Rig, token
from cs_rig import Site, asyncio_test, close_cp, connect_cp, until, wait
from evc.ocpp.bridge import to_deferred
from evc.store import EtcdStore

ACCEPTED = {"status": "Accepted"}


def ready() -> Rig:
    rig = Rig(tokens={"TAG1": token()})
    rig.connect().answer("SetChargingProfile", ACCEPTED)
    return rig


def status(rig, value):
    rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": value})


def start(rig, meter_start, timestamp, tag="TAG1"):
    return rig.handle("StartTransaction", {"connectorId": 1, "idTag": tag, "meterStart": meter_start,
                                           "timestamp": timestamp})["transactionId"]


def stop(rig, tx_id, meter_stop, timestamp, reason="EVDisconnected"):
    rig.handle("StopTransaction", {"transactionId": tx_id, "meterStop": meter_stop, "timestamp": timestamp,
                                   "reason": reason})


def test_the_second_transaction_is_billed_from_its_own_meter_start_not_the_first_ones_stop():
    """The field report: tx1 stopped at 2000; tx2 ran 64217 -> 64999 and was recorded as 2000 -> 62999 Wh."""
    rig = ready()
    status(rig, "Preparing")
    tx1 = start(rig, 1000, "2026-01-01T10:00:00Z")
    status(rig, "Charging")
    stop(rig, tx1, 2000, "2026-01-01T11:00:00Z")
    status(rig, "Available")
    first = rig.charger.sessions.last
    status(rig, "Preparing")                     # the next car plugs in before its transaction starts
    tx2 = start(rig, 64217, "2026-01-02T10:00:00Z")
    status(rig, "Charging")
    stop(rig, tx2, 64999, "2026-01-02T11:00:00Z")
    second = rig.charger.sessions.last
    assert second.id != first.id
    assert (first.meter_start_Wh, first.meter_stop_Wh, first.energy_Wh) == (1000, 2000, 1000)
    assert (second.meter_start_Wh, second.meter_stop_Wh, second.energy_Wh) == (64217, 64999, 782)
    doc = json.loads(rig.leaf(f"data/sessions/{second.id}"))
    assert (doc["meter_start_Wh"], doc["energy_Wh"], doc["transaction_id"]) == (64217, 782, tx2)


@pytest.fixture
def etcd_site(etcd_session, etcd_root):
    from twisted.internet import reactor
    store = EtcdStore(etcd_session.url, reactor)
    site = Site(store=store, root=etcd_root)
    yield site

    async def down():
        await site.stop()
        await wait(store.close())
    pytest_twisted.blockon(to_deferred(down()))


@asyncio_test
async def test_the_80x_bug_over_a_real_websocket_and_etcd(etcd_site):
    """The field report, replayed by a charge point made with the ocpp library against EVC on a real etcd."""
    site = etcd_site
    for d in site.server() + site.charger("cp1") + site.token("TAG1"):
        await wait(d)
    await site.start()
    await until(lambda: site.instance("charger", "cp1"), "the charger")
    charger = site.instance("charger", "cp1")
    cp = await connect_cp(site.url("cp1"), "cp1")
    await cp.boot()
    sessions = []
    for meter_start, meter_stop, day in ((1000, 2000, "01"), (64217, 64999, "02")):
        await cp.status("Preparing")
        started = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=meter_start,
                                                      timestamp=f"2026-01-{day}T10:00:00Z"))
        await cp.status("Charging")
        await cp.call(call.StopTransaction(transaction_id=started.transaction_id, meter_stop=meter_stop,
                                           timestamp=f"2026-01-{day}T11:00:00Z", reason="EVDisconnected"))
        await cp.status("Available")
        sessions.append(charger.sessions.last.id)
    docs = []
    for sid in sessions:
        raw = await until_leaf(site, f"charger/cp1/data/sessions/{sid}", lambda v: v and '"ended"' in v)
        docs.append(json.loads(raw))
    assert [(d["meter_start_Wh"], d["meter_stop_Wh"], d["energy_Wh"]) for d in docs] == \
        [(1000, 2000, 1000), (64217, 64999, 782)]
    assert await until_leaf(site, "charger/cp1/state/session/energy_Wh", lambda v: v == "782") == "782"
    await close_cp(cp)


async def until_leaf(site, key, predicate, timeout_s=10.0):
    import asyncio
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        value = await site.aleaf(key)
        if predicate(value):
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {key}: {value!r}")
        await asyncio.sleep(0.05)
