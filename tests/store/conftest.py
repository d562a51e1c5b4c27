"""Fixtures for the store tests: both IStore implementations, a watch recorder, a cuttable TCP proxy."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.logger import globalLogPublisher

from evc.store.etcd import EtcdStore
from evc.store.memory import MemoryStore
from store_helpers import CuttableProxy, Recorder



def _reactor():
    # Imported late: pytest-twisted installs the asyncio reactor after conftest modules are imported.
    from twisted.internet import reactor
    return reactor

@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def log_events():
    """Every twisted.logger event emitted during the test."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest_twisted.async_yield_fixture(params=["memory", "etcd"])
async def store(request):
    """Each IStore implementation, with a fresh key prefix as `store.root`."""
    if request.param == "memory":
        s = MemoryStore()
        s.root = "/t/mem"
    else:
        etcd = request.getfixturevalue("etcd_session")
        s = EtcdStore(etcd.url, _reactor())
        s.root = request.getfixturevalue("etcd_root")
    yield s
    await s.close()


@pytest_twisted.async_yield_fixture
async def proxy(etcd_own):
    p = CuttableProxy(etcd_own.client_port)
    yield p
    await p.close()


@pytest.fixture
def silent_tcp_server():
    """A TCP server that accepts connections and never answers (for timeouts)."""
    port = _reactor().listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    port.stopListening()


@pytest_twisted.async_yield_fixture
async def make_store():
    """make_store(url, **kw) -> EtcdStore on the real reactor, closed after the test even if it fails.
    Retries are quick (50 ms doubling to 200 ms) so outage tests stay short."""
    made = []

    def make(url, **kw):
        kw.setdefault("retry_initial_s", 0.05)
        kw.setdefault("retry_max_s", 0.2)
        s = EtcdStore(url, _reactor(), **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        await s.close()
