"""Shared fixtures: a real etcd server on free loopback ports."""
import pytest

from evc.etcdserver import EtcdServer


@pytest.fixture(scope="session")
def etcd_session():
    """One etcd for the whole run; tests isolate themselves with the `etcd_root` prefix."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_root(request, etcd_session):
    """A fresh key prefix per test, e.g. /t/test_name-3."""
    etcd_root.n = getattr(etcd_root, "n", 0) + 1
    return f"/t/{request.node.name[:40]}-{etcd_root.n}"


@pytest.fixture
def etcd_own():
    """An etcd of this test's own, for tests that stop, kill, restart or compact it."""
    server = EtcdServer().start()
    yield server
    server.cleanup()
