"""The durable outbox: persisted before it may be sent, in order, surviving store failures and a reload."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import task

from evc.front.ocpp.outbox import Outbox, Writer
from evc.store.etcd import EtcdStore
from evc.store.interface import Put
from evc.store.memory import MemoryStore

PREFIX = "/evc/t/front/up/data/outbox/s1"


def _loaded(store, clock, **kw):
    box = Outbox(store, PREFIX, clock, **kw)
    box.load()
    return box


def test_a_message_is_offered_only_once_it_is_in_the_store():
    clock = task.Clock()
    store = MemoryStore()
    ready = []
    box = Outbox(store, PREFIX, clock, on_ready=lambda: ready.append(1), retry_s=0.5)
    box.load()
    store.available = False
    entry = box.append("StartTransaction", {"connectorId": 1}, "sess1")
    assert box.head() is None and len(box) == 1          # queued, not written: may not be sent yet
    clock.advance(0.5)
    assert box.head() is None
    store.available = True
    clock.advance(10)
    assert box.head() is entry and ready
    kv = store.range(box.key(entry.seq)).result.kvs
    assert json.loads(kv[0].value) == {"action": "StartTransaction", "payload": {"connectorId": 1},
                                       "session": "sess1", "queued": None}


def test_outboxes_sharing_a_writer_are_written_together_each_in_its_order():
    clock = task.Clock()
    store = MemoryStore()
    writer = Writer(store, clock)
    boxes = [Outbox(store, f"{PREFIX}{i}", clock, writer=writer) for i in range(3)]
    for box in boxes:
        box.load()
    store.available = False
    for n in range(4):
        for box in boxes:
            box.append("MeterValues", {"n": n}, "s")
    store.available = True
    clock.advance(1)
    assert writer.txns == 2                                 # the first (failed) try and one batch with all twelve
    for box in boxes:
        assert [e.payload["n"] for e in box.entries] == [0, 1, 2, 3] and box.head() is box.entries[0]
        assert box.unwritten == 0


def test_store_failures_retry_with_growing_delays_and_keep_the_order():
    clock = task.Clock()
    store = MemoryStore()
    box = _loaded(store, clock, retry_s=1, retry_max_s=4)
    store.available = False
    for i in range(5):
        box.append("MeterValues", {"n": i}, "s")
    delays = []
    for _ in range(4):
        call = [c for c in clock.getDelayedCalls()][0]
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1, 2, 4, 4]
    store.available = True
    clock.advance(4)
    stored = store.range(PREFIX + "/", prefix=True).result.kvs
    assert [json.loads(kv.value)["payload"]["n"] for kv in stored] == [0, 1, 2, 3, 4]
    assert box.unwritten == 0


def test_a_reloaded_outbox_has_every_message_in_order_and_numbers_on_after_them():
    clock = task.Clock()
    store = MemoryStore()
    box = _loaded(store, clock)
    for i in range(12):
        box.append("MeterValues", {"n": i}, "s")
    box.remove(box.head())
    again = _loaded(store, clock)
    assert [e.payload["n"] for e in again.entries] == list(range(1, 12))
    assert all(e.persisted for e in again.entries)
    new = again.append("StopTransaction", {}, "s")
    assert new.seq == 13 and again.key(13) > again.key(12)    # zero-padded: etcd's key order is the queue's


def test_removal_and_what_the_answer_changed_are_written_together():
    clock = task.Clock()
    store = MemoryStore()
    box = _loaded(store, clock)
    entry = box.append("StartTransaction", {}, "s")
    store.available = False
    d = box.remove(entry, [Put("/evc/t/front/up/data/transactions/s", b'{"transaction_id": 7}')])
    assert not d.called and store.peer().range(box.key(entry.seq)).result.kvs   # neither is written yet
    store.available = True
    clock.advance(1)
    assert d.called
    assert not store.range(box.key(entry.seq)).result.kvs
    assert store.range("/evc/t/front/up/data/transactions/s").result.kvs


def test_an_unreadable_stored_message_is_dropped_with_a_log_line(log_events):
    clock = task.Clock()
    store = MemoryStore()
    store.put(PREFIX + "/000000000001", b"not json")
    store.put(PREFIX + "/000000000002", json.dumps({"action": "MeterValues", "payload": {}}).encode())
    box = _loaded(store, clock)
    assert [e.seq for e in box.entries] == [2]
    assert not store.range(PREFIX + "/000000000001").result.kvs
    assert any("dropping unreadable" in e.get("log_format", "") for e in log_events)


def test_append_before_load_is_refused():
    box = Outbox(MemoryStore(), PREFIX, task.Clock())
    with pytest.raises(RuntimeError):
        box.append("MeterValues", {}, "s")


def test_only_transaction_messages_are_queued():
    box = _loaded(MemoryStore(), task.Clock())
    with pytest.raises(ValueError, match="Authorize is not a transaction message"):
        box.append("Authorize", {}, None)


@pytest_twisted.ensureDeferred
async def test_on_etcd_a_large_batch_is_split_below_the_txn_limit(etcd_session, etcd_root):
    from twisted.internet import reactor
    from evc.testing import wait_for
    store = EtcdStore(etcd_session.url, reactor)
    try:
        box = Outbox(store, f"{etcd_root}/outbox/s1", reactor)
        await box.load()
        for i in range(300):                  # one burst: more operations than etcd takes in one txn
            box.append("MeterValues", {"n": i}, "s")
        await wait_for(lambda: box.unwritten == 0 and all(e.persisted for e in box.entries), 10, "written")
        again = Outbox(store, f"{etcd_root}/outbox/s1", reactor)
        await again.load()
        assert [e.payload["n"] for e in again.entries] == list(range(300))
    finally:
        await store.close()
