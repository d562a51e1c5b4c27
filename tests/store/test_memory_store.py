"""The in-memory store's own behaviour: clock-driven leases, simulated outages, compaction, peers."""
import pytest
from twisted.internet import task

from evc.errors import StoreError, StoreUnavailable
from evc.store import Compare, Put
from evc.store.memory import MemoryStore
from store_helpers import Recorder


def result(d):
    """The result of a Deferred that has already fired (the memory store's always have)."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_lease_expires_after_its_ttl_unless_kept_alive():
    clock = task.Clock()
    store = MemoryStore(clock)
    rec = Recorder()
    result(store.watch_prefix("/s/", rec))
    lease = result(store.grant(10))
    result(store.put("/s/online", b"true", lease=lease))
    clock.advance(9)
    assert result(store.keepalive(lease)) == 10
    clock.advance(9.9)
    assert rec.mirror == {"/s/online": b"true"}
    clock.advance(0.2)
    assert rec.mirror == {} and rec.events[-1].type == "delete"
    assert result(store.keepalive(lease)) == 0
    with pytest.raises(StoreError, match="requested lease not found"):
        result(store.put("/s/x", b"1", lease=lease))


def test_without_a_clock_leases_live_until_revoked():
    store = MemoryStore()
    lease = result(store.grant(1))
    result(store.put("/k", b"v", lease=lease))
    assert result(store.keepalive(lease)) == 1
    result(store.revoke(lease))
    assert result(store.range("/k")).kvs == ()


def test_unavailable_store_fails_every_call_and_pauses_watches():
    store = MemoryStore()
    writer = store.peer()
    rec = Recorder()
    result(store.watch_prefix("/c/", rec))
    store.available = False
    for d in (store.range("/c/"), store.put("/c/a", b"1"), store.delete("/c/a"), store.grant(5),
              store.keepalive(1), store.revoke(1), store.txn([], [Put("/c/a", b"1")])):
        with pytest.raises(StoreUnavailable):
            result(d)
    result(writer.put("/c/a", b"1"))
    result(writer.put("/c/a", b"2"))
    assert rec.calls == [[]]
    store.available = True
    # Back online with the history intact: every change is replayed, in order.
    assert rec.simple() == [("put", "/c/a", b"1"), ("put", "/c/a", b"2")]


def test_compaction_while_unavailable_delivers_the_difference():
    store = MemoryStore()
    writer = store.peer()
    for k in "abc":
        result(writer.put("/c/" + k, b"1"))
    rec = Recorder()
    watch = result(store.watch_prefix("/c/", rec))
    store.available = False
    result(writer.put("/c/a", b"2"))
    result(writer.put("/c/a", b"3"))
    result(writer.delete("/c/b"))
    result(writer.put("/c/d", b"1"))
    result(writer.put("/c/e", b"1"))
    result(writer.delete("/c/e"))
    store.compact(writer.revision)
    store.available = True
    assert sorted(rec.simple()) == [("delete", "/c/b", None), ("put", "/c/a", b"3"), ("put", "/c/d", b"1")]
    assert watch.revision == writer.revision


def test_watch_started_while_unavailable_fires_when_available():
    store = MemoryStore()
    store.available = False
    rec = Recorder()
    d = store.watch_prefix("/c/", rec)
    assert not d.called and rec.calls == []
    store.peer().put("/c/a", b"1")
    store.available = True
    assert d.called and rec.calls == [[rec.events[0]]] and rec.mirror == {"/c/a": b"1"}


def test_writes_from_inside_a_callback_keep_every_watch_in_revision_order():
    store = MemoryStore()
    first_seen, second_seen = [], []

    def echo(events):
        first_seen.extend(events)
        for e in events:
            if e.key == "/c/ping":
                store.put("/c/pong", b"1")
    result(store.watch_prefix("/c/", echo))
    result(store.watch_prefix("/c/", second_seen.extend))
    result(store.put("/c/ping", b"1"))
    for seen in (first_seen, second_seen):
        assert [(e.key, e.revision) for e in seen] == [("/c/ping", 2), ("/c/pong", 3)]


def test_txn_rejects_bad_compares_and_duplicate_keys_like_etcd():
    store = MemoryStore()
    with pytest.raises(TypeError, match="needs bytes"):
        result(store.txn([Compare("/k", "value", "=", 1)], []))
    with pytest.raises(ValueError, match="compare target 'size'"):
        result(store.txn([Compare("/k", "size", "=", 1)], []))
    with pytest.raises(StoreError, match="duplicate key"):
        result(store.txn([], [Put("/k", b"1"), Put("/k", b"2")]))
    assert store.revision == 1


def test_compact_refuses_a_future_or_already_compacted_revision():
    store = MemoryStore()
    result(store.put("/k", b"1"))
    with pytest.raises(StoreError, match="future revision"):
        store.compact(5)
    store.compact(2)
    with pytest.raises(StoreError, match="compacted"):
        store.compact(2)


def test_peers_share_data_but_not_availability():
    store = MemoryStore()
    other = store.peer()
    result(other.put("/k", b"1"))
    other.available = False
    assert result(store.range("/k")).kvs[0].value == b"1"
    with pytest.raises(StoreUnavailable):
        result(other.range("/k"))
