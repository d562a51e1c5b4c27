"""Helpers for the store tests: polling with a deadline, a watch recorder, a cuttable TCP proxy."""
from __future__ import annotations

from twisted.internet import task
from twisted.protocols import portforward



def _reactor():
    # Imported late: pytest-twisted installs the asyncio reactor after conftest modules are imported.
    from twisted.internet import reactor
    return reactor

async def wait_for(condition, timeout_s: float = 10.0, what: str = "condition"):
    """Poll `condition` on the running reactor until it is true; fail after `timeout_s`."""
    deadline = _reactor().seconds() + timeout_s
    while not condition():
        if _reactor().seconds() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await task.deferLater(_reactor(), 0.01, lambda: None)


class Recorder:
    """A watch callback that keeps every call, and the mirror the events build."""

    def __init__(self):
        self.calls: list[list] = []
        self.mirror: dict[str, bytes] = {}

    def __call__(self, events):
        self.calls.append(list(events))
        for e in events:
            if e.type == "put":
                self.mirror[e.key] = e.value
            else:
                self.mirror.pop(e.key, None)

    @property
    def events(self):
        return [e for call in self.calls for e in call]

    def simple(self, skip_first: bool = True):
        """(type, key, value) of every event after the initial content."""
        calls = self.calls[1:] if skip_first else self.calls
        return [(e.type, e.key, e.value) for call in calls for e in call]


class _TrackedProxyServer(portforward.ProxyServer):
    def connectionMade(self):
        self.factory.connections.add(self)
        self.factory.accepted += 1
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.connections.discard(self)
        super().connectionLost(reason)

    def dataReceived(self, data):
        self.factory.requests += data.count(b"POST /")      # HTTP requests from the client (bodies are JSON)
        super().dataReceived(data)


class CuttableProxy:
    """A TCP forwarder in front of etcd: cut() makes etcd unreachable for clients that use the proxy
    only (refused connections, streams dropped), while tests keep writing to etcd directly."""

    def __init__(self, target_port: int):
        self.factory = portforward.ProxyFactory("127.0.0.1", target_port)
        self.factory.protocol = _TrackedProxyServer
        self.factory.connections = set()
        self.factory.accepted = 0          # connections accepted since the start
        self.factory.requests = 0          # HTTP requests forwarded since the start
        self.port = _reactor().listenTCP(0, self.factory, interface="127.0.0.1")
        self.port_number = self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    async def cut(self):
        await self.port.stopListening()
        for conn in list(self.factory.connections):
            conn.transport.abortConnection()
            if conn.peer is not None:
                conn.peer.transport.abortConnection()

    def resume(self):
        self.port = _reactor().listenTCP(self.port_number, self.factory, interface="127.0.0.1")

    async def close(self):
        if self.port.connected:
            await self.cut()
