"""The serial link's reopen policy on a MemoryReactorClock: growing delays while the tunnel refuses, capped, reset
once it is back; a local path that does not exist falls back to remote; the leaf is named in every reason."""
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from evc.reader.link import SerialLink


class Driver:
    def __init__(self):
        self.events = []

    def connected(self, write):
        self.events.append("connected")

    def data(self, data):
        self.events.append(data)

    def disconnected(self):
        self.events.append("disconnected")


def make(local=None, remote="127.0.0.1:4001"):
    reactor = MemoryReactorClock()
    states = []
    drivers = []

    def make_driver():
        drivers.append(Driver())
        return drivers[-1]
    link = SerialLink(reactor, reactor, local, remote, 9600, make_driver, lambda *a: states.append(a), name="r1")
    return reactor, link, states, drivers


def refuse(reactor, n):
    host, port, factory, timeout, bind = reactor.tcpClients[n]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def test_refused_connections_back_off_to_the_cap_and_name_the_leaf():
    reactor, link, states, _ = make()
    link.start()
    delays = []
    for n in range(6):
        assert len(reactor.tcpClients) == n + 1
        refuse(reactor, n)
        call = [c for c in reactor.getDelayedCalls() if c.func == link._open][0]
        delays.append(round(call.getTime() - reactor.seconds(), 3))
        reactor.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    up, via, why = states[-1]
    assert not up and via == "remote 127.0.0.1:4001"
    assert why.startswith("config/remote: cannot connect to 127.0.0.1:4001")


def test_a_connection_resets_the_delay_and_its_loss_reopens():
    reactor, link, states, drivers = make()
    link.start()
    refuse(reactor, 0)
    reactor.advance(0.5)
    refuse(reactor, 1)
    reactor.advance(1.0)
    host, port, factory, timeout, bind = reactor.tcpClients[2]
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    assert states[-1] == (True, "remote 127.0.0.1:4001", None) and drivers[-1].events == ["connected"]
    proto.dataReceived(b"abc")
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert drivers[-1].events == ["connected", b"abc", "disconnected"]
    assert not states[-1][0] and states[-1][2].startswith("config/remote: 127.0.0.1:4001 lost")
    call = [c for c in reactor.getDelayedCalls() if c.func == link._open][0]
    assert round(call.getTime() - reactor.seconds(), 3) == 0.5


def test_a_local_path_that_does_not_exist_falls_back_to_remote_or_says_so(tmp_path):
    reactor, link, states, _ = make(local=str(tmp_path / "ttyUSB9"))
    link.start()
    assert len(reactor.tcpClients) == 1                   # remote instead
    reactor, link, states, _ = make(local=str(tmp_path / "ttyUSB9"), remote=None)
    link.start()
    assert states[-1][2] == f"config/local: {tmp_path / 'ttyUSB9'} does not exist on this host (reader unplugged?)"
    link.stop()
    assert not [c for c in reactor.getDelayedCalls() if c.active() and c.func == link._open]
