"""The etcd store against real etcd servers: big values, restarts, compaction, outages, auth, errors."""
import json

import pytest
import pytest_twisted
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, threads

from evc.errors import StoreError, StoreUnavailable
from evc.etcdserver import free_port
from evc.store.etcd import PUT_BATCH_OPS, EtcdStore, _LineProtocol
from store_helpers import Recorder, wait_for


def _revision(etcd) -> int:
    return int(json.loads(etcd.etcdctl("get", "/", "--prefix", "--keys-only", "-w", "json"))["header"]["revision"])


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=40))
def test_watch_stream_lines_are_reassembled_however_the_body_is_chunked(cuts):
    """One JSON object per line may span many chunks, and one chunk may hold many lines."""
    messages = [{"result": {"n": i, "pad": "x" * (i * 37)}} for i in range(20)]
    body = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    got = []
    proto = _LineProtocol(lambda m: got.append(m) or True, lambda reason: None)
    for start, end in zip(bounds, bounds[1:]):
        proto.dataReceived(body[start:end])
    assert got == messages


@pytest_twisted.ensureDeferred
async def test_one_megabyte_value_through_range_and_watch(etcd_session, etcd_root, make_store):
    store = make_store(etcd_session.url)
    rec = Recorder()
    watch = await store.watch_prefix(etcd_root + "/", rec)
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    await store.put(etcd_root + "/data/blob", big)
    await store.put(etcd_root + "/data/after", b"small")
    await wait_for(lambda: len(rec.events) == 2, what="the big value and the one after it")
    assert rec.mirror == {etcd_root + "/data/blob": big, etcd_root + "/data/after": b"small"}
    assert (await store.range(etcd_root + "/data/blob")).kvs[0].value == big
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_watch_survives_etcd_killed_and_restarted(etcd_own, make_store):
    store = make_store(etcd_own.url)
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    await store.put("/evc/a", b"1")
    await wait_for(lambda: len(rec.events) == 1, what="the write before the kill")
    etcd_own.kill()
    await threads.deferToThread(etcd_own.start)
    etcd_own.etcdctl("put", "/evc/b", "2")
    etcd_own.etcdctl("put", "/evc/a", "3")
    await wait_for(lambda: len(rec.events) == 3, what="the writes after the restart")
    await store.put("/evc/c", b"4")
    await wait_for(lambda: len(rec.events) == 4, what="a write through the store after the restart")
    assert rec.simple() == [("put", "/evc/a", b"1"), ("put", "/evc/b", b"2"), ("put", "/evc/a", b"3"),
                            ("put", "/evc/c", b"4")]
    revisions = [e.revision for e in rec.events]
    assert revisions == sorted(set(revisions))  # in order, nothing twice
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_lost_stream_resumes_from_the_next_revision_with_every_event(etcd_own, proxy, make_store):
    """A resumed watch replays each change made while it was cut off, not just the end state."""
    store = make_store(proxy.url)
    etcd_own.etcdctl("put", "/evc/a", "1")
    etcd_own.etcdctl("put", "/evc/b", "1")
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    await proxy.cut()
    etcd_own.etcdctl("put", "/evc/a", "2")
    etcd_own.etcdctl("put", "/evc/a", "3")
    etcd_own.etcdctl("del", "/evc/b")
    proxy.resume()
    await wait_for(lambda: len(rec.events) == 5, what="the three changes made while cut off")
    assert rec.simple() == [("put", "/evc/a", b"2"), ("put", "/evc/a", b"3"), ("delete", "/evc/b", None)]
    assert watch.revision == _revision(etcd_own)
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_compaction_while_cut_off_rereads_and_delivers_exactly_the_difference(etcd_own, proxy, log_events,
                                                                                    make_store):
    store = make_store(proxy.url)
    for k in ("a", "b", "c", "d"):
        etcd_own.etcdctl("put", "/evc/" + k, "1")
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    await store.put("/evc/a", b"2")
    await wait_for(lambda: len(rec.events) == 5, what="the live write")
    await proxy.cut()
    etcd_own.kill()
    await threads.deferToThread(etcd_own.start)
    etcd_own.etcdctl("put", "/evc/b", "2")
    etcd_own.etcdctl("put", "/evc/b", "3")
    etcd_own.etcdctl("del", "/evc/c")
    etcd_own.etcdctl("put", "/evc/e", "1")
    etcd_own.etcdctl("put", "/evc/f", "1")
    etcd_own.etcdctl("del", "/evc/f")
    etcd_own.etcdctl("put", "/other", "1")
    read_revision = _revision(etcd_own)
    etcd_own.etcdctl("compact", str(read_revision))
    proxy.resume()
    await wait_for(lambda: len(rec.calls) == 3, what="the difference")
    # b's intermediate value 2 is gone with the compacted history; a, d and f are not mentioned.
    assert sorted((e.type, e.key, e.value) for e in rec.calls[2]) == [
        ("delete", "/evc/c", None), ("put", "/evc/b", b"3"), ("put", "/evc/e", b"1")]
    assert rec.mirror == {"/evc/a": b"2", "/evc/b": b"3", "/evc/d": b"1", "/evc/e": b"1"}
    assert watch.revision == read_revision
    assert any("hit compaction" in str(e.get("log_format")) for e in log_events)
    rev = await store.put("/evc/g", b"1")
    await wait_for(lambda: len(rec.calls) == 4, what="a write after the re-read")
    assert [(e.key, e.revision) for e in rec.calls[3]] == [("/evc/g", rev)]
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_watch_started_while_etcd_is_down_fires_once_it_is_up(etcd_own, log_events, make_store):
    etcd_own.stop()
    store = make_store(etcd_own.url, log_interval_s=3600)
    rec, stopped = Recorder(), Recorder()
    ready = store.watch_prefix("/evc/", rec)
    never = store.watch_prefix("/evc/", stopped)
    watches = list(store._watches)
    await wait_for(lambda: all(w.retries >= 3 for w in watches), what="three retries each")
    assert not ready.called and rec.calls == []
    warnings = [e for e in log_events if "unreachable, retrying" in str(e.get("log_format"))]
    assert len(warnings) == 2  # once per watch per interval, not on every try
    assert etcd_own.url in warnings[0]["url"] and "Connection refused" in warnings[0]["error"]
    never.cancel()  # stops that watch before its first read
    await threads.deferToThread(etcd_own.start)
    etcd_own.etcdctl("put", "/evc/a", "1")
    watch = await ready
    await wait_for(lambda: rec.mirror == {"/evc/a": b"1"}, what="the key written after etcd came up")
    assert any("reachable again" in str(e.get("log_format")) for e in log_events)
    assert stopped.calls == []
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_server_fails_with_store_unavailable_naming_the_url(make_store):
    url = f"http://127.0.0.1:{free_port()}"
    store = make_store(url)
    with pytest.raises(StoreUnavailable, match=f"etcd at {url} unreachable"):
        await store.range("/x")


@pytest_twisted.ensureDeferred
async def test_server_that_never_answers_times_out_as_unavailable(silent_tcp_server, make_store):
    store = make_store(silent_tcp_server, timeout_s=0.2)
    with pytest.raises(StoreUnavailable, match=r"did not answer /kv/put within 0.2 s"):
        await store.put("/x", b"1")


@pytest_twisted.ensureDeferred
async def test_wrong_gateway_prefix_says_what_is_wrong(etcd_session, make_store):
    """txaioetcd's /v3alpha/ answers 404 on etcd 3.4: the error must point at the gateway path."""
    store = make_store(etcd_session.url, prefix="/v3alpha")
    with pytest.raises(StoreError, match=r"HTTP 404.*3\.4 or newer.*v3alpha"):
        await store.range("/x")


def test_bad_configuration_is_refused_with_a_sentence():
    r = None  # the constructor refuses before it needs a reactor
    with pytest.raises(StoreError, match="must look like http"):
        EtcdStore("127.0.0.1:2379", r)
    with pytest.raises(StoreError, match="not https"):
        EtcdStore("http://127.0.0.1:2379", r, ca_file="/x/ca.pem")
    with pytest.raises(StoreError, match="both a user and a password"):
        EtcdStore("http://127.0.0.1:2379", r, user="root")
    with pytest.raises(StoreError, match="cannot read the etcd CA file '/nonexistent/ca.pem'"):
        EtcdStore("https://127.0.0.1:2379", r, ca_file="/nonexistent/ca.pem")


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_watch_connection_and_close_closes_the_pool(etcd_own, proxy, make_store):
    store = make_store(proxy.url)
    await store.put("/evc/a", b"1")
    await wait_for(lambda: len(proxy.factory.connections) == 1, what="the pooled connection")
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    await store.put("/evc/b", b"1")
    await wait_for(lambda: len(rec.events) == 2, what="the stream to deliver")
    assert len(proxy.factory.connections) == 2  # the pooled one and the stream
    watch.stop()
    await wait_for(lambda: len(proxy.factory.connections) == 1, what="the stream's connection to close")
    await store.close()
    await wait_for(lambda: len(proxy.factory.connections) == 0, what="the pool to close")


@pytest_twisted.ensureDeferred
async def test_a_burst_of_requests_shares_a_few_kept_alive_connections(etcd_own, proxy, make_store):
    """200 puts at once (every charger of a site booting together) open at most max_in_flight connections, go out in
    a few requests, and all of them land; a request and a connection per put stalled the reactor."""
    store = make_store(proxy.url)
    n = 200
    revisions = await defer.gatherResults([store.put(f"/evc/burst/{i:03d}", str(i).encode()) for i in range(n)])
    assert all(r > 0 for r in revisions) and revisions == sorted(revisions)
    assert proxy.factory.requests <= 2 + n // PUT_BATCH_OPS
    got = await store.range("/evc/burst/", prefix=True)
    assert [kv.value for kv in got.kvs] == [str(i).encode() for i in range(n)]
    assert proxy.factory.accepted <= EtcdStore.max_in_flight
    await defer.gatherResults([store.put(f"/evc/burst/{i:03d}", b"again") for i in range(n)])
    assert proxy.factory.accepted <= EtcdStore.max_in_flight      # kept alive: the second burst opens none


@pytest_twisted.ensureDeferred
async def test_puts_made_together_land_in_order_and_a_refused_one_fails_alone(etcd_session, etcd_root, make_store):
    """Batched puts keep their order (the last put of a key wins) and one that etcd refuses (a lease that does not
    exist) fails with its own error while the puts around it land."""
    store = make_store(etcd_session.url)
    ds = [store.put(f"{etcd_root}/k", str(i).encode()) for i in range(30)]
    bad = store.put(f"{etcd_root}/bad", b"x", lease=123456789)
    ds += [store.put(f"{etcd_root}/other/{i}", b"y") for i in range(10)]
    await defer.gatherResults(ds)
    with pytest.raises(StoreError, match="lease"):
        await bad
    assert (await store.range(f"{etcd_root}/k")).kvs[0].value == b"29"
    assert len((await store.range(f"{etcd_root}/other/", prefix=True)).kvs) == 10
    assert (await store.range(f"{etcd_root}/bad")).kvs == ()
