"""The etcd store against an etcd with authentication enabled: tokens, refusal, transparent re-login."""
import pytest
import pytest_twisted

from evc.errors import StoreError
from evc.etcdserver import EtcdServer
from store_helpers import Recorder, wait_for


def _enable_auth(etcd):
    etcd.etcdctl("user", "add", "root:s3cret-pw")
    etcd.etcdctl("auth", "enable")
    return etcd


@pytest.fixture(scope="module")
def etcd_auth_shared():
    """For tests that leave tokens alone."""
    with EtcdServer() as server:
        yield _enable_auth(server)


@pytest.fixture
def etcd_auth(etcd_own):
    """For tests that invalidate tokens or cut connections."""
    return _enable_auth(etcd_own)


def _ctl(etcd, *args):
    return etcd.etcdctl("--user", "root:s3cret-pw", *args)


@pytest_twisted.ensureDeferred
async def test_good_password_reads_writes_and_watches(etcd_auth_shared, make_store):
    store = make_store(etcd_auth_shared.url, user="root", password="s3cret-pw")
    await store.put("/evc/a", b"1")
    assert (await store.range("/evc/a")).kvs[0].value == b"1"
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    _ctl(etcd_auth_shared, "put", "/evc/b", "2")
    await wait_for(lambda: rec.mirror == {"/evc/a": b"1", "/evc/b": b"2"}, what="the write by etcdctl")
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_bad_password_is_a_clear_error_that_does_not_show_the_password(etcd_auth_shared, make_store):
    store = make_store(etcd_auth_shared.url, user="root", password="wrong-pw")
    with pytest.raises(StoreError, match="refused user 'root'.*authentication failed") as caught:
        await store.range("/evc/a")
    assert "wrong-pw" not in str(caught.value)
    # A watch does not retry forever on a wrong password: its Deferred fails with the same reason.
    with pytest.raises(StoreError, match="authentication failed"):
        await store.watch_prefix("/evc/", Recorder())
    assert not store._watches


@pytest_twisted.ensureDeferred
async def test_missing_credentials_say_that_etcd_wants_them(etcd_auth_shared, make_store):
    store = make_store(etcd_auth_shared.url)
    with pytest.raises(StoreError, match="requires authentication.*configure a user and password"):
        await store.range("/evc/a")


def _invalidate_tokens(etcd):
    # Turning authentication off and on again drops every token etcd has handed out.
    _ctl(etcd, "auth", "disable")
    etcd.etcdctl("auth", "enable")


def _formats(log_events):
    return [(str(e.get("log_format")), str(e.get("error", ""))) for e in log_events
            if e.get("log_namespace") == "evc.store.etcd"]


@pytest_twisted.ensureDeferred
async def test_an_invalidated_token_is_renewed_once_transparently(etcd_auth, make_store, log_events):
    store = make_store(etcd_auth.url, user="root", password="s3cret-pw")
    await store.put("/evc/a", b"1")
    _invalidate_tokens(etcd_auth)
    assert (await store.range("/evc/a")).kvs[0].value == b"1"
    assert any("no longer accepts our token" in f for f, _ in _formats(log_events))
    assert len([f for f, _ in _formats(log_events) if f.startswith("authenticated to etcd")]) == 2
    assert not any("s3cret-pw" in repr(e) for e in log_events)


@pytest_twisted.ensureDeferred
async def test_a_watch_renews_its_token_when_it_reconnects(etcd_auth, proxy, make_store, log_events):
    store = make_store(proxy.url, user="root", password="s3cret-pw")
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    _ctl(etcd_auth, "put", "/evc/a", "1")
    await wait_for(lambda: len(rec.events) == 1, what="the first write")
    await proxy.cut()  # drops the stream: the watch must reconnect, with a token etcd no longer knows
    _invalidate_tokens(etcd_auth)
    _ctl(etcd_auth, "put", "/evc/b", "2")
    proxy.resume()
    await wait_for(lambda: rec.mirror == {"/evc/a": b"1", "/evc/b": b"2"}, what="a write after the restart")
    logins = [f for f, _ in _formats(log_events) if f.startswith("authenticated to etcd")]
    assert len(logins) == 2  # the first one, and once more after etcd refused the old token
    await store.put("/evc/c", b"3")
    await wait_for(lambda: len(rec.events) == 3, what="our own write")
    assert [e.key for e in rec.events] == ["/evc/a", "/evc/b", "/evc/c"]
    watch.stop()
