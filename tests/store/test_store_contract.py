"""Behaviour every IStore must show, run against the in-memory store and a real etcd."""
import pytest
import pytest_twisted

from evc.errors import StoreError
from evc.store import Compare, Delete, IStore, IWatch, Put
from store_helpers import Recorder, wait_for


def test_both_stores_provide_the_interface(store):
    assert IStore.providedBy(store)


@pytest_twisted.ensureDeferred
async def test_put_then_range_returns_value_and_revisions(store):
    k = store.root + "/charger/s1/config/A_max"
    rev1 = await store.put(k, b"16")
    rev2 = await store.put(k, b"32")
    assert rev2 > rev1
    result = await store.range(k)
    assert result.revision >= rev2
    (kv,) = result.kvs
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version) == (k, b"32", rev2, rev1, 2)


@pytest_twisted.ensureDeferred
async def test_range_of_a_missing_key_is_empty_and_empty_values_survive(store):
    assert (await store.range(store.root + "/nothing")).kvs == ()
    await store.put(store.root + "/empty", b"")
    (kv,) = (await store.range(store.root + "/empty")).kvs
    assert kv.value == b""


@pytest_twisted.ensureDeferred
async def test_prefix_range_is_sorted_by_key_and_stops_at_the_prefix(store):
    r = store.root
    for k in ("/m/b", "/m/a", "/m/c/deep", "/mx", "/l"):
        await store.put(r + k, k.encode())
    result = await store.range(r + "/m/", prefix=True)
    assert [kv.key for kv in result.kvs] == [r + "/m/a", r + "/m/b", r + "/m/c/deep"]


@pytest_twisted.ensureDeferred
async def test_utf8_keys_round_trip(store):
    k = store.root + "/meter/zähler/config/bus"
    await store.put(k, "hôte:502".encode())
    (kv,) = (await store.range(store.root + "/meter/zä", prefix=True)).kvs
    assert (kv.key, kv.value.decode()) == (k, "hôte:502")


@pytest_twisted.ensureDeferred
async def test_delete_counts_keys_and_deletes_by_prefix(store):
    r = store.root
    for k in ("/d/1", "/d/2", "/d/3", "/e"):
        await store.put(r + k, b"x")
    assert await store.delete(r + "/d/1") == 1
    assert await store.delete(r + "/d/1") == 0
    assert await store.delete(r + "/d/", prefix=True) == 2
    assert [kv.key for kv in (await store.range(r + "/", prefix=True)).kvs] == [r + "/e"]


@pytest_twisted.ensureDeferred
async def test_put_rejects_a_value_that_is_not_bytes(store):
    with pytest.raises(TypeError, match="must be bytes"):
        await store.put(store.root + "/x", "text")


@pytest_twisted.ensureDeferred
async def test_txn_create_if_absent_succeeds_only_once(store):
    k = store.root + "/lock"
    guard = [Compare(k, "version", "=", 0)]
    first = await store.txn(guard, [Put(k, b"me")], [])
    second = await store.txn(guard, [Put(k, b"you")], [])
    assert first.succeeded and not second.succeeded
    assert second.revision == first.revision  # the failed txn wrote nothing
    assert (await store.range(k)).kvs[0].value == b"me"


@pytest_twisted.ensureDeferred
async def test_txn_value_compare_failure_runs_the_failure_branch(store):
    r = store.root
    await store.put(r + "/mode", b"OFF")
    await store.put(r + "/old", b"1")
    result = await store.txn([Compare(r + "/mode", "value", "=", b"ON")],
                             [Put(r + "/s", b"yes")], [Put(r + "/f", b"no"), Delete(r + "/old")])
    assert not result.succeeded
    keys = {kv.key: kv.value for kv in (await store.range(r + "/", prefix=True)).kvs}
    assert keys == {r + "/mode": b"OFF", r + "/f": b"no"}


@pytest_twisted.ensureDeferred
async def test_txn_value_compare_on_a_missing_key_never_holds(store):
    """As in etcd: neither = nor != holds for the value of a key that does not exist."""
    k = store.root + "/missing"
    for op in ("=", "!="):
        assert not (await store.txn([Compare(k, "value", op, b"")], [Put(k, b"x")])).succeeded


@pytest_twisted.ensureDeferred
async def test_txn_mod_revision_guard_detects_a_concurrent_write(store):
    k = store.root + "/counter"
    rev = await store.put(k, b"1")
    assert (await store.txn([Compare(k, "mod", "=", rev)], [Put(k, b"2")])).succeeded
    assert not (await store.txn([Compare(k, "mod", "=", rev)], [Put(k, b"3")])).succeeded
    assert (await store.txn([Compare(k, "mod", ">", rev)], [Put(k, b"3")])).succeeded
    assert (await store.range(k)).kvs[0].value == b"3"


@pytest_twisted.ensureDeferred
async def test_txn_prefix_delete_and_put_share_one_revision(store):
    r = store.root
    await store.put(r + "/state/a", b"1")
    await store.put(r + "/state/b", b"1")
    result = await store.txn([], [Delete(r + "/state/", prefix=True), Put(r + "/other", b"2")])
    assert result.succeeded
    (kv,) = (await store.range(r + "/", prefix=True)).kvs
    assert (kv.key, kv.mod_revision) == (r + "/other", result.revision)


@pytest_twisted.ensureDeferred
async def test_lease_keepalive_then_revoke_removes_its_keys(store):
    r = store.root
    lease = await store.grant(30)
    assert lease != 0
    await store.put(r + "/state/online", b"true", lease=lease)
    await store.put(r + "/config/A_max", b"16")
    (kv,) = (await store.range(r + "/state/online")).kvs
    assert kv.lease == lease
    assert 0 < await store.keepalive(lease) <= 30
    await store.revoke(lease)
    assert [kv.key for kv in (await store.range(r + "/", prefix=True)).kvs] == [r + "/config/A_max"]
    assert await store.keepalive(lease) == 0
    await store.revoke(lease)  # revoking a lease that is gone is not an error: its keys are gone too


@pytest_twisted.ensureDeferred
async def test_put_with_an_unknown_lease_fails_with_etcds_message(store):
    with pytest.raises(StoreError, match="requested lease not found"):
        await store.put(store.root + "/x", b"1", lease=123456789)


@pytest_twisted.ensureDeferred
async def test_watch_delivers_content_then_puts_and_deletes_in_order(store):
    r = store.root
    await store.put(r + "/w/a", b"1")
    await store.put(r + "/w/b", b"2")
    rec = Recorder()
    watch = await store.watch_prefix(r + "/w/", rec)
    assert IWatch.providedBy(watch)
    assert [(e.type, e.key, e.value) for e in rec.calls[0]] == [("put", r + "/w/a", b"1"), ("put", r + "/w/b", b"2")]
    await store.put(r + "/w/a", b"3")
    await store.delete(r + "/w/b")
    await store.put(r + "/w/c", b"4")
    await store.delete(r + "/w/", prefix=True)
    await wait_for(lambda: len(rec.events) == 7, what="seven events")
    assert rec.simple() == [("put", r + "/w/a", b"3"), ("delete", r + "/w/b", None), ("put", r + "/w/c", b"4"),
                            ("delete", r + "/w/a", None), ("delete", r + "/w/c", None)]
    revisions = [e.revision for e in rec.events[2:]]
    assert revisions == sorted(revisions) and watch.revision == revisions[-1]
    assert rec.mirror == {}
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_watch_of_an_empty_prefix_starts_with_an_empty_call(store):
    rec = Recorder()
    watch = await store.watch_prefix(store.root + "/none/", rec)
    assert rec.calls == [[]]
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_watch_sees_only_its_prefix_and_a_txn_as_one_revision(store):
    r = store.root
    rec = Recorder()
    watch = await store.watch_prefix(r + "/in/", rec)
    await store.put(r + "/inx", b"no")
    await store.put(r + "/out/a", b"no")
    result = await store.txn([], [Put(r + "/in/a", b"1"), Put(r + "/in/b", b"2"), Put(r + "/out/b", b"no")])
    await wait_for(lambda: len(rec.events) == 2, what="the txn's two events")
    assert {(e.key, e.revision) for e in rec.events} == {(r + "/in/a", result.revision),
                                                          (r + "/in/b", result.revision)}
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_watch_reports_lease_revocation_as_deletes(store):
    r = store.root
    lease = await store.grant(30)
    await store.put(r + "/s/online", b"true", lease=lease)
    rec = Recorder()
    watch = await store.watch_prefix(r + "/s/", rec)
    await store.revoke(lease)
    await wait_for(lambda: rec.mirror == {} and len(rec.calls) > 1, what="the delete")
    assert rec.simple() == [("delete", r + "/s/online", None)]
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_stopped_watch_gets_no_more_callbacks(store):
    r = store.root
    stopped, witness = Recorder(), Recorder()
    watch = await store.watch_prefix(r + "/x/", stopped)
    other = await store.watch_prefix(r + "/x/", witness)
    watch.stop()
    await store.put(r + "/x/a", b"1")
    await store.put(r + "/x/b", b"1")
    await wait_for(lambda: len(witness.events) == 2, what="the witness watch")
    assert stopped.calls == [[]]
    other.stop()


@pytest_twisted.ensureDeferred
async def test_a_failing_callback_does_not_end_the_watch(store):
    r = store.root
    seen = []

    def callback(events):
        seen.extend(events)
        if events and events[0].value == b"boom":
            raise RuntimeError("consumer bug")
    watch = await store.watch_prefix(r + "/f/", callback)
    await store.put(r + "/f/a", b"boom")
    await store.put(r + "/f/a", b"fine")
    await wait_for(lambda: len(seen) == 2, what="the event after the failing one")
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_close_stops_watches_and_later_calls_fail_clearly(store):
    r = store.root
    rec = Recorder()
    await store.watch_prefix(r + "/c/", rec)
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.range(r + "/c/")
    with pytest.raises(StoreError, match="closed"):
        await store.watch_prefix(r + "/c/", rec)
    assert rec.calls == [[]]
