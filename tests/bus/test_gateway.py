"""evc.bus.gateway: one shared connection per gateway host:port, opened by the first user, closed by the last."""
import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from evc.bus import codec
from evc.bus.client import IModbusBus
from evc.bus.gateway import GatewayRegistry
from evc.conn import IBusAddresses
from evc.errors import ConfigError


def setup():
    return GatewayRegistry(), MemoryReactor(), task.Clock()


def connect(reactor, index=-1):
    factory = reactor.tcpClients[index][2]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return factory, proto, transport


def lose(reactor, index=-1):
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionLost(reactor.connectors[index], Failure(ConnectionDone()))


def test_users_of_one_host_port_share_one_connection():
    registry, reactor, clock = setup()
    a = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    b = registry.acquire(reactor, clock, "10.0.0.5", "meter/m2")          # the default port is 502
    c = registry.acquire(reactor, clock, "GW.example:1502", "meter/m3")
    d = registry.acquire(reactor, clock, "gw.example:1502", "meter/m4")   # host names compare without case
    assert a is b and c is d and a is not c
    assert [client[:2] for client in reactor.tcpClients] == [("10.0.0.5", 502), ("GW.example", 1502)]
    assert IModbusBus.providedBy(a) and IBusAddresses.providedBy(a)


def test_requests_of_all_users_go_one_at_a_time_over_the_shared_connection():
    registry, reactor, clock = setup()
    a = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1", gap_s=0.1)
    b = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m2", gap_s=0.1)
    _, proto, transport = connect(reactor)
    da, db = a.read_input_registers(1, 0, 2), b.read_input_registers(2, 0, 2)
    server = codec.TcpFraming(server=True)
    used, req = server.decode(transport.value())
    assert used == len(transport.value()) and req.dev_id == 1          # only the first is on the wire
    transport.clear()
    proto.dataReceived(server.encode(codec.read_response(req, [1, 2])))
    assert da.result == [1, 2] and transport.value() == b""
    clock.advance(0.1)                                                  # the bus gap
    used, req = server.decode(transport.value())
    assert req.dev_id == 2
    proto.dataReceived(server.encode(codec.read_response(req, [3, 4])))
    assert db.result == [3, 4]
    assert a.counters(1)["ok"] == 1 and a.counters(2)["ok"] == 1


def test_the_bus_gap_is_the_largest_any_current_user_asks_for():
    registry, reactor, clock = setup()
    gw = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1", gap_s=0.05)
    registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m2", gap_s=0.2)
    assert gw.gap_s == 0.2
    gw.leave("meter/m2")
    assert gw.gap_s == 0.05


def test_the_last_user_closes_the_connection_and_the_next_one_opens_a_new_one():
    registry, reactor, clock = setup()
    gw = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m2")
    connect(reactor)
    assert gw.leave("meter/m1").called and not reactor.connectors[0]._disconnected
    closed = gw.leave("meter/m2")
    assert reactor.connectors[0]._disconnected and not closed.called
    assert registry.get(reactor, "10.0.0.5:502") is None and len(registry) == 0
    lose(reactor)
    assert closed.called
    again = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    assert again is not gw and len(reactor.tcpClients) == 2


def test_a_new_user_waits_for_the_old_socket_to_close_before_connecting():
    """A gateway that takes one connection would refuse a new one while the old one is still closing."""
    registry, reactor, clock = setup()
    gw = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    connect(reactor)
    gw.leave("meter/m1")
    new = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    d = new.read_input_registers(1, 0, 2)
    assert len(reactor.tcpClients) == 1 and not d.called               # queued, not failed, not connecting
    lose(reactor, 0)
    assert len(reactor.tcpClients) == 2
    _, proto, transport = connect(reactor)
    assert transport.value()                                            # the queued request went out


def test_two_users_of_one_address_on_one_gateway_are_refused_naming_the_holder():
    registry, reactor, clock = setup()
    gw = registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m2")
    gw.claim(1, "meter/m1", leaf="config/bus_addr")
    with pytest.raises(ConfigError, match=r"config/bus_addr: address 1 on gateway 10\.0\.0\.5:502 is already "
                                          r"used by meter/m1"):
        gw.claim(1, "meter/m2", leaf="config/bus_addr")
    gw.claim(2, "meter/m2", leaf="config/bus_addr")
    gw.leave("meter/m1")                                                # leaving gives its addresses back
    gw.claim(1, "meter/m2", leaf="config/bus_addr")
    assert gw.claims == {1: "meter/m2", 2: "meter/m2"}


def test_one_gateway_speaks_one_framing():
    registry, reactor, clock = setup()
    registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1", framing="tcp")
    with pytest.raises(ConfigError, match=r"config/bus: gateway 10\.0\.0\.5:502 is already used with tcp framing "
                                          r"by meter/m1"):
        registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m2", framing="rtu")
    rtu = registry.acquire(reactor, clock, "10.0.0.6:4196", "meter/m3", framing="rtu")
    assert isinstance(rtu.client.framing, codec.RtuFraming)


def test_a_bad_address_names_the_leaf():
    registry, reactor, clock = setup()
    with pytest.raises(ConfigError, match=r"config/bus: .*port must be 1\.\.65535"):
        registry.acquire(reactor, clock, "10.0.0.5:0", "meter/m1")
    assert len(registry) == 0 and not reactor.tcpClients


ADDRESSES = ("10.0.0.5:502", "10.0.0.6:502")
USERS = tuple(f"meter/m{i}" for i in range(4))
ops = st.lists(st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(USERS), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("leave"), st.sampled_from(USERS)),
    st.tuples(st.just("connected"), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("closed"), st.sampled_from(ADDRESSES)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_any_sequence_of_users_keeps_at_most_one_connection_per_gateway(sequence):
    """Whatever users come and go, and whenever sockets finish connecting or closing: never two connections
    (connecting, open or closing) to one gateway, and one exists while the gateway has users."""
    registry, reactor, clock = setup()
    held: dict[str, tuple[str, object]] = {}        # user -> (address, gateway)
    reported: set[int] = set()                      # connector indexes whose end was reported

    def alive(address):
        host, port = address.split(":")
        return [i for i, c in enumerate(reactor.tcpClients)
                if c[:2] == (host, int(port)) and i not in reported]

    for op in sequence:
        if op[0] == "acquire":
            _, user, address = op
            if user in held:
                continue
            held[user] = (address, registry.acquire(reactor, clock, address, user))
        elif op[0] == "leave":
            if op[1] in held:
                _, gw = held.pop(op[1])
                gw.leave(op[1])
        elif op[0] == "connected":
            for i in alive(op[1]):
                if not reactor.connectors[i]._disconnected:
                    connect(reactor, i)
        else:
            for i in alive(op[1]):
                if reactor.connectors[i]._disconnected:
                    reported.add(i)
                    lose(reactor, i)
                    break
        for address in ADDRESSES:
            users = {u for u, (a, _) in held.items() if a == address}
            assert len(alive(address)) <= 1, f"two connections to {address}"
            gw = registry.get(reactor, address)
            assert set(gw.users if gw else ()) == users
            live = [i for i in alive(address) if not reactor.connectors[i]._disconnected]
            closing = [i for i in alive(address) if reactor.connectors[i]._disconnected]
            if users:
                assert live or closing, f"{address} has users but no connection, none pending"
            else:
                assert not live, f"{address} kept a connection without users"


def test_a_gateway_that_is_down_is_tried_again_at_most_5_s_apart():
    """Every meter behind it is stale while it is away: its return must be noticed within seconds."""
    from twisted.internet.error import ConnectionRefusedError
    registry, reactor, clock = setup()
    registry.acquire(reactor, clock, "10.0.0.5:502", "meter/m1")
    delays = []
    for _ in range(6):
        n = len(reactor.tcpClients)
        reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        start = clock.seconds()
        while len(reactor.tcpClients) == n:
            clock.advance(0.25)
        delays.append(clock.seconds() - start)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
