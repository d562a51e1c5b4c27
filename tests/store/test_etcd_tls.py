"""The etcd store over https: a private CA, client certificates, and refusals that say what is wrong."""
import pytest
import pytest_twisted

from evc.errors import StoreError
from store_helpers import Recorder, wait_for
from tls_pki import TlsEtcdServer, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def etcd_tls(pki):
    with TlsEtcdServer(pki) as server:
        yield server


@pytest.fixture(scope="module")
def etcd_mtls(pki):
    with TlsEtcdServer(pki, client_auth=True) as server:
        yield server


@pytest_twisted.ensureDeferred
async def test_https_with_the_right_ca_works_for_requests_and_watches(etcd_tls, pki, make_store):
    store = make_store(etcd_tls.url, ca_file=pki.ca)
    rec = Recorder()
    watch = await store.watch_prefix("/evc/", rec)
    await store.put("/evc/a", b"1")
    await wait_for(lambda: rec.mirror == {"/evc/a": b"1"}, what="the write over TLS")
    watch.stop()


@pytest_twisted.ensureDeferred
async def test_a_server_signed_by_another_ca_is_refused_clearly(etcd_tls, pki, make_store):
    store = make_store(etcd_tls.url, ca_file=pki.other_ca)
    with pytest.raises(StoreError, match=rf"TLS with etcd at {etcd_tls.url} failed: the server's certificate is "
                                         rf"not signed by a CA in ca_file '{pki.other_ca}'") as caught:
        await store.range("/evc/a")
    assert type(caught.value) is StoreError  # not StoreUnavailable: retrying will not help
    with pytest.raises(StoreError, match="TLS with etcd"):
        await store.watch_prefix("/evc/", Recorder())


@pytest_twisted.ensureDeferred
async def test_a_host_name_the_certificate_does_not_name_is_refused(etcd_tls, pki, make_store):
    """The certificate names 127.0.0.1 only; `localhost` reaches the same server under another name."""
    store = make_store(etcd_tls.url.replace("127.0.0.1", "localhost"), ca_file=pki.ca)
    with pytest.raises(StoreError, match="TLS with etcd at https://localhost.*does not name the host 'localhost'"):
        await store.range("/evc/a")


@pytest_twisted.ensureDeferred
async def test_client_certificate_is_presented_when_configured(etcd_mtls, pki, make_store):
    store = make_store(etcd_mtls.url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    await store.put("/evc/a", b"1")
    assert (await store.range("/evc/a")).kvs[0].value == b"1"
    without = make_store(etcd_mtls.url, ca_file=pki.ca)
    with pytest.raises(StoreError, match="TLS with etcd.*refused the connection with no client certificate"):
        await without.range("/evc/a")


def test_a_key_that_does_not_match_the_certificate_is_refused_at_construction(pki):
    with pytest.raises(StoreError, match="do not load as a pair"):
        from evc.store.etcd import EtcdStore
        EtcdStore("https://127.0.0.1:2379", None, ca_file=pki.ca, cert_file=pki.client_cert,
                  key_file=pki.server_key)


@pytest_twisted.ensureDeferred
async def test_plain_http_to_a_tls_port_hints_at_https(etcd_tls, make_store):
    store = make_store(etcd_tls.url.replace("https://", "http://"))
    with pytest.raises(StoreError, match="use an https:// URL"):
        await store.range("/evc/a")
