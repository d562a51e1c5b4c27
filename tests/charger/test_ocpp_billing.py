"""charger/ocpp bills every session from its own transaction's readings: the 80x bug (a leftover meterStop taken as
the next session's start), meters that go backwards, and a property test over messy transaction sequences."""
import json

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# --- meters that go backwards ---

def test_a_stop_below_the_start_is_flagged_with_both_values_never_negative():
    rig = ready()
    tx = start(rig, 64217, "2026-01-01T10:00:00Z")
    stop(rig, tx, 120, "2026-01-01T11:00:00Z", reason="PowerLoss")
    s = rig.charger.sessions.last
    assert s.meter_reset and s.meter_resets == ((64217, 120),)
    assert (s.meter_start_Wh, s.meter_stop_Wh, s.energy_Wh) == (64217, 120, 0)
    doc = json.loads(rig.leaf(f"data/sessions/{s.id}"))
    assert doc["meter_reset"] is True and doc["meter_resets"] == [[64217, 120]]
    assert rig.state.values["session/meter_reset"] is True


def test_a_reset_seen_in_meter_values_bills_the_measured_segments_before_and_after_it():
    rig = ready()
    tx = start(rig, 5000, "2026-01-01T10:00:00Z")
    for when, wh in (("10:10", 5400), ("10:20", 30), ("10:30", 330)):
        rig.handle("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
            {"timestamp": f"2026-01-01T{when}:00Z", "sampledValue": [{"value": str(wh), "unit": "Wh"}]}]})
    stop(rig, tx, 530, "2026-01-01T11:00:00Z")
    s = rig.charger.sessions.last
    assert s.meter_reset and s.meter_resets == ((5400, 30),) and s.energy_Wh == 400 + 500


def test_meter_values_of_another_transaction_or_from_before_the_start_do_not_count():
    rig = ready()
    tx1 = start(rig, 100, "2026-01-01T10:00:00Z")
    stop(rig, tx1, 900, "2026-01-01T11:00:00Z")
    tx2 = start(rig, 50_000, "2026-01-02T10:00:00Z")
    late = {"connectorId": 1, "transactionId": tx1, "meterValue": [
        {"timestamp": "2026-01-01T10:30:00Z", "sampledValue": [{"value": "500"}]}]}
    queued = {"connectorId": 1, "meterValue": [
        {"timestamp": "2026-01-01T23:00:00Z", "sampledValue": [{"value": "950"}]}]}
    sampled = {"connectorId": 1, "meterValue": [
        {"timestamp": "2026-01-02T10:30:00Z", "sampledValue": [{"value": "50.4", "unit": "kWh"}]}]}
    for message in (late, queued, sampled):
        rig.handle("MeterValues", message)
    s = rig.charger.sessions.session
    assert (s.transaction_id, s.meter_start_Wh, s.meter_last_Wh, s.energy_Wh, s.meter_reset) == \
        (tx2, 50_000, 50_400, 400, False)


def test_a_new_transaction_while_one_is_open_ends_the_old_session_first():
    rig = ready()
    tx1 = start(rig, 100, "2026-01-01T10:00:00Z")
    first = rig.charger.sessions.session.id
    tx2 = start(rig, 7000, "2026-01-01T12:00:00Z")       # tx1's StopTransaction was lost
    old = json.loads(rig.leaf(f"data/sessions/{first}"))
    assert (old["state"], old["reason"], old["transaction_id"], old["energy_Wh"]) == ("ended", "Other", tx1, 0)
    s = rig.charger.sessions.session
    assert s.id != first and (s.transaction_id, s.meter_start_Wh) == (tx2, 7000) and s.authorized


# --- property: messy sequences on one charge point ---

AUTO = {"SetChargingProfile": ACCEPTED, "TriggerMessage": ACCEPTED, "ChangeConfiguration": ACCEPTED}
meter = st.integers(min_value=0, max_value=200_000)
step = st.one_of(
    st.tuples(st.just("plug")),
    st.tuples(st.just("unplug")),
    st.tuples(st.just("charging")),
    st.tuples(st.just("start"), st.one_of(meter, st.integers(0, 3000).map(lambda d: -d - 1))),
    st.tuples(st.just("resend_start")),
    st.tuples(st.just("mv"), st.one_of(meter, st.integers(0, 3000)), st.sampled_from(["own", "none", "early",
                                                                                      "stale"])),
    st.tuples(st.just("stop"), st.one_of(meter, st.integers(0, 3000)), st.sampled_from(
        ["EVDisconnected", "Local", "Reboot", "PowerLoss", "Remote"])),
    st.tuples(st.just("stop_stale"), meter),
    st.tuples(st.just("boot")),
)


def _stamp(minute: int) -> str:
    return f"2026-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=25))
def test_every_session_is_billed_from_its_own_transaction_or_flagged(steps):
    """Transactions with arbitrary meter values, resent StartTransactions, reboots, late and foreign MeterValues and
    meter resets: each record's readings are its own transaction's; energy is stop - start unless flagged."""
    rig = Rig(tokens={"TAG1": token()})
    rig.connect(auto=AUTO)
    minute = 0
    register = 1000                     # the charge point's counter
    readings: dict[int, list[float]] = {}      # transaction id -> readings EVC must count for it, in order
    open_tx = None
    last_start = None
    seen = []
    tx_of = {}                          # session id -> the transaction that opened it
    for op, *args in steps:
        minute += 1
        rig.clock.advance(30)
        if op == "plug":
            status(rig, "Preparing")
        elif op == "unplug":
            status(rig, "Available")
        elif op == "charging":
            status(rig, "Charging")
        elif op == "start":
            register = args[0] if args[0] >= 0 else register + (-args[0] - 1)
            last_start = {"connectorId": 1, "idTag": "TAG1", "meterStart": register, "timestamp": _stamp(minute)}
            tx = rig.handle("StartTransaction", last_start)["transactionId"]
            assert tx not in readings
            readings[tx] = [register]
            tx_of[rig.charger.sessions.session.id] = tx
            open_tx = tx
            seen.append(tx)
        elif op == "resend_start" and last_start is not None:
            tx = rig.handle("StartTransaction", last_start)["transactionId"]
            assert tx == seen[-1]                          # a duplicate gets the same id, and no second session
        elif op == "mv":
            value, kind = args
            register = value if value > 3000 else register + value
            payload = {"connectorId": 1, "meterValue": [{"timestamp": _stamp(minute - 1000 if kind == "early"
                                                                             else minute),
                                                         "sampledValue": [{"value": str(register)}]}]}
            if kind == "own" and open_tx is not None:
                payload["transactionId"] = open_tx
            elif kind == "stale" and len(seen) > 1:
                payload["transactionId"] = seen[-2] if seen[-1] == open_tx else seen[-1]
            counted = open_tx is not None and (payload.get("transactionId") == open_tx or
                                               ("transactionId" not in payload and kind != "early"))
            rig.handle("MeterValues", payload)
            if counted:
                readings[open_tx].append(register)
        elif op == "stop" and open_tx is not None:
            value, reason = args
            register = value if value > 3000 else register + value
            stop(rig, open_tx, register, _stamp(minute), reason=reason)
            readings[open_tx].append(register)
            open_tx = None
        elif op == "stop_stale" and seen and seen[-1] != open_tx:
            stop(rig, seen[-1], args[0], _stamp(minute))
        elif op == "boot":
            rig.boot()
    records = [json.loads(kv.value) for kv in rig.store.range(
        "/evc/t/charger/cp1/data/sessions/", prefix=True).result.kvs if not kv.key.endswith("/current")]
    if rig.charger.sessions.session is not None:
        # An open session's meter-only changes reach the store every save_interval_s: take the live one.
        live = json.loads(rig.charger.sessions.session.to_json())
        records = [r for r in records if r["id"] != live["id"]] + [live]
    by_tx = {}
    for r in records:
        tx = tx_of.get(r["id"])
        if tx is None:
            assert r["meter_start_Wh"] is None and r["energy_Wh"] is None, r      # a plug-in without a transaction
            continue
        assert r.get("transaction_id") == tx and tx not in by_tx, "one session per transaction, naming it"
        by_tx[tx] = r
    assert set(by_tx) == set(readings)
    for tx, r in by_tx.items():
        own = readings[tx]
        last = r["meter_stop_Wh"] if r["state"] == "ended" else r["meter_last_Wh"]
        assert r["meter_start_Wh"] == own[0], (r, own)
        assert r["energy_Wh"] is not None and r["energy_Wh"] >= 0
        went_back = any(b < a for a, b in zip(own, own[1:]))
        assert r.get("meter_reset", False) == went_back, (r, own)
        if went_back:
            assert r["energy_Wh"] <= sum(max(0, b - a) for a, b in zip(own, own[1:]))
        else:
            assert last == own[-1] and r["energy_Wh"] == last - r["meter_start_Wh"], (r, own)


def test_a_session_a_front_ended_first_takes_the_charge_points_meter_stop():
    """front/ocpp ends the session on a backend's RemoteStop before the charge point's StopTransaction arrives."""
    rig = ready()
    tx = start(rig, 1000, "2026-01-01T10:00:00Z")
    rig.handle("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": "2026-01-01T10:30:00Z", "sampledValue": [{"value": "1400"}]}]})
    rig.charger.sessions.end("Remote")
    sid = rig.charger.sessions.last.id
    stop(rig, tx, 1650, "2026-01-01T11:00:00Z", reason="Remote")
    doc = json.loads(rig.leaf(f"data/sessions/{sid}"))
    assert (doc["reason"], doc["meter_stop_Wh"], doc["energy_Wh"]) == ("Remote", 1650, 650)
    assert rig.state.values["session/energy_Wh"] == 650


def test_a_session_stored_without_its_transaction_id_is_not_taken_over_by_the_next_transaction():
    """After an upgrade: the open session (an older EVC's record, no transaction_id) belongs to data/transaction."""
    rig = Rig(tokens={"TAG1": token()})
    rig.stop()
    legacy = {"id": "20260101T100000000Z-abcdef", "charger": "cp1", "state": "authorized", "id_tag": "TAG1",
              "start_time": "2026-01-01T10:00:00.000Z", "authorized_time": "2026-01-01T10:00:00.000Z",
              "meter_start_Wh": 2000, "meter_last_Wh": 2000, "energy_Wh": 0}
    base = "/evc/t/charger/cp1/data/"
    rig.store.put(base + f"sessions/{legacy['id']}", json.dumps(legacy).encode())
    rig.store.put(base + "sessions/current", legacy["id"].encode())
    rig.store.put(base + "transaction", json.dumps({"transaction_id": 1, "connector": 1, "id_tag": "TAG1",
                                                    "meter_start_Wh": 2000, "timestamp": "2026-01-01T10:00:00Z",
                                                    "open": True, "session": legacy["id"]}).encode())
    rig.server.next_id = 1
    rig2 = Rig(store=rig.store, clock=rig.clock, server=rig.server, tokens=rig.tokens)
    rig2.connect().answer("SetChargingProfile", ACCEPTED)
    tx = start(rig2, 64217, "2026-01-02T10:00:00Z")
    old = json.loads(rig2.leaf(f"data/sessions/{legacy['id']}"))
    assert (old["state"], old["reason"]) == ("ended", "Other")
    s = rig2.charger.sessions.session
    assert s.id != legacy["id"] and (s.transaction_id, s.meter_start_Wh) == (tx, 64217)
