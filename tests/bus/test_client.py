"""The transaction scheduler: one in flight, timeouts and one retry, exceptions, garbage, backoff, priorities."""
import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactor, StringTransport

from evc.bus import codec
from evc.bus.client import IModbusBus, ModbusBus, ModbusClientProtocol
from evc.bus.errors import (BusClosed, BusDisconnected, ModbusException, ModbusTimeout, UnitBackoff)
from evc.bus.tcp import ModbusTcpClient, parse_host_port

from modbus_helpers import AutoTransport, Harness


def test_bus_provides_the_interface():
    assert IModbusBus.providedBy(Harness().bus)


def test_read_returns_the_registers():
    h = Harness()
    d = h.bus.read_input_registers(1, 0x10, 4)
    [req] = h.sent()
    assert (req.function_code, req.dev_id, req.address, req.count) == (4, 1, 0x10, 4)
    h.answer(req, [9, 8, 7, 6])
    assert h.bus.counters(1)["ok"] == 1
    assert d.result == [9, 8, 7, 6]


def test_one_transaction_in_flight_per_connection():
    h = Harness()
    d1 = h.bus.read_input_registers(1, 0, 2)
    d2 = h.bus.read_holding_registers(2, 0, 2)
    [req1] = h.sent()
    assert h.sent() == []
    h.answer(req1)
    [req2] = h.sent()
    assert req2.dev_id == 2 and req2.function_code == 3
    h.answer(req2)
    assert d1.called and d2.called


def test_timeout_then_one_retry_then_error():
    h = Harness(timeout_s=1.0)
    d = h.bus.read_input_registers(1, 0, 2)
    assert len(h.sent()) == 1
    h.clock.advance(0.99)
    assert not d.called
    h.clock.advance(0.01)
    [retry] = h.sent()
    assert retry.address == 0
    h.clock.advance(1.0)
    f = pytest.raises(ModbusTimeout, lambda: d.result.raiseException())
    assert "unit 1" in str(f.value) and "2 attempts" in str(f.value)
    assert isinstance(f.value, defer.TimeoutError)
    assert h.bus.counters(1)["timeouts"] == 2
    assert h.sent() == []


def test_reply_to_the_retry_succeeds():
    h = Harness()
    d = h.bus.read_input_registers(1, 0, 2)
    h.sent()
    h.clock.advance(1.0)
    [retry] = h.sent()
    h.answer(retry, [1, 2])
    assert d.result == [1, 2]
    assert h.bus.counters(1)["timeouts"] == 1 and h.bus.counters(1)["backoff_s"] == 0


def test_exception_reply_is_not_retried_and_names_the_code():
    h = Harness()
    d = h.bus.read_input_registers(1, 0, 76)
    [req] = h.sent()
    h.answer_exception(req, 2)
    err = pytest.raises(ModbusException, lambda: d.result.raiseException()).value
    assert err.code == 2 and "exception 02" in str(err) and "illegal data address" in str(err)
    assert h.sent() == []
    h.clock.advance(5)
    assert h.sent() == []
    assert h.bus.counters(1)["exceptions"] == 1 and h.bus.counters(1)["backoff_s"] == 0


@pytest.mark.parametrize("code", [0x0A, 0x0B])
def test_a_gateway_answering_for_a_silent_unit_is_retried_then_backs_the_unit_off(code):
    """Exception 0A/0B come from a gateway whose unit behind it did not answer: as a timeout, not a refusal."""
    h = Harness(gap_s=0.05, backoff_min_s=1.0)
    d = h.bus.read_input_registers(3, 0, 2)
    [req] = h.sent()
    h.answer_exception(req, code)
    assert not d.called and h.sent() == []
    h.clock.advance(0.05)                      # the retry keeps the bus gap
    [retry] = h.sent()
    h.answer_exception(retry, code)
    err = pytest.raises(ModbusException, lambda: d.result.raiseException()).value
    assert err.code == code and "gateway" in str(err)
    c = h.bus.counters(3)
    assert (c["exceptions"], c["timeouts"], c["backoff_s"]) == (2, 0, 1.0)
    assert isinstance(h.bus.read_input_registers(3, 0, 2).result.value, UnitBackoff)
    h.clock.advance(0.05)
    ok = h.bus.read_input_registers(4, 0, 2)  # another unit is served at once
    [other] = h.sent()
    h.answer(other, [1, 2])
    assert ok.result == [1, 2]


def test_garbage_is_counted_as_a_bad_frame_and_a_good_reply_still_counts():
    h = Harness()
    d = h.bus.read_input_registers(1, 0, 2)
    [req] = h.sent()
    h.feed(b"\xde\xad\xbe\xef\x00\x01\x02\x03\x04")
    assert not d.called
    h.answer(req, [3, 4])
    assert d.result == [3, 4]
    assert h.bus.counters(1)["bad_frames"] == 1


def test_rtu_garbage_left_at_timeout_is_a_bad_frame():
    h = Harness(codec.RtuFraming)
    d = h.bus.read_input_registers(1, 0, 2)
    [req] = h.sent()
    h.feed(b"\x01\x04\x40")                    # the start of a reply that never completes
    h.clock.advance(1.0)
    [retry] = h.sent()
    h.answer(retry, [5, 6])
    assert d.result == [5, 6]
    c = h.bus.counters(1)
    assert (c["bad_frames"], c["timeouts"], c["ok"]) == (1, 1, 1)


def test_reply_with_wrong_register_count_is_a_bad_frame():
    h = Harness()
    d = h.bus.read_input_registers(1, 0, 4)
    [req] = h.sent()
    h.answer(req, [1, 2])
    assert not d.called and h.bus.counters(1)["bad_frames"] == 1


def test_reply_with_unknown_transaction_id_is_ignored():
    h = Harness()
    d = h.bus.read_input_registers(1, 0, 2)
    [req] = h.sent()
    req.transaction_id += 100
    h.answer(req)
    assert not d.called
    assert h.bus.counters(1)["bad_frames"] == 0


def test_late_reply_to_the_first_attempt_is_accepted():
    h = Harness()
    d = h.bus.read_input_registers(1, 0, 2)
    [first] = h.sent()
    h.clock.advance(1.0)
    h.sent()
    h.answer(first, [7, 7])
    assert d.result == [7, 7]


def test_writes_go_ahead_of_queued_reads():
    h = Harness()
    h.bus.read_input_registers(1, 0, 2)
    h.bus.read_input_registers(1, 2, 2)
    h.bus.write_registers(1, 100, [5])
    h.bus.write_register(1, 101, 6)
    order = []
    for _ in range(4):
        [req] = h.sent()
        order.append((req.function_code, req.address))
        h.answer(req)
    assert order == [(4, 0), (16, 100), (6, 101), (4, 2)]


def test_write_result_is_none_and_low_priority_write_waits_its_turn():
    h = Harness()
    h.bus.read_input_registers(1, 0, 2)
    h.bus.read_input_registers(1, 2, 2)
    d = h.bus.write_registers(1, 100, [5], priority=False)
    seen = []
    for _ in range(3):
        [req] = h.sent()
        seen.append(req.function_code)
        h.answer(req)
    assert seen == [4, 4, 16] and d.result is None


def test_gap_between_transactions():
    h = Harness(gap_s=0.1)
    h.bus.read_input_registers(1, 0, 2)
    h.bus.read_input_registers(2, 0, 2)
    [req] = h.sent()
    h.answer(req)
    assert h.sent() == []
    h.clock.advance(0.099)
    assert h.sent() == []
    h.clock.advance(0.001)
    assert len(h.sent()) == 1


def fail_once(h, unit=1):
    d = h.bus.read_input_registers(unit, 0, 2)
    h.clock.advance(h.bus.timeout_s)
    h.clock.advance(h.bus.timeout_s)
    h.sent()
    assert isinstance(d.result.value, ModbusTimeout)


def test_backoff_grows_and_requests_fail_fast_meanwhile():
    h = Harness(backoff_min_s=1.0, backoff_max_s=4.0)
    backoffs = []
    for _ in range(4):
        fail_once(h)
        backoff_s = h.bus.counters(1)["backoff_s"]
        backoffs.append(backoff_s)
        d = h.bus.read_input_registers(1, 0, 2)
        assert isinstance(d.result.value, UnitBackoff)
        assert h.sent() == []
        h.clock.advance(backoff_s)
    assert backoffs == [1.0, 2.0, 4.0, 4.0]
    assert h.bus.counters(1)["failed_fast"] == 4


def test_unit_recovers_after_backoff_when_it_answers():
    h = Harness()
    fail_once(h)
    h.clock.advance(h.bus.counters(1)["backoff_s"])
    d = h.bus.read_input_registers(1, 0, 2)
    [req] = h.sent()
    h.answer(req)
    assert d.result == [0, 1]
    assert h.bus.counters(1)["backoff_s"] == 0
    fail_once(h)
    assert h.bus.counters(1)["backoff_s"] == 1.0


def test_queued_requests_of_a_unit_entering_backoff_fail_fast():
    h = Harness()
    d1 = h.bus.read_input_registers(1, 0, 2)
    d2 = h.bus.read_input_registers(1, 2, 2)
    h.clock.advance(1.0)
    h.clock.advance(1.0)
    assert isinstance(d1.result.value, ModbusTimeout)
    assert isinstance(d2.result.value, UnitBackoff)


def test_a_dead_unit_does_not_starve_a_healthy_one():
    """Poll unit 1 (answers) and unit 2 (dead) every second for 120 s: unit 1 gets nearly every poll."""
    clock = task.Clock()
    bus = ModbusBus(clock, codec.TcpFraming(), timeout_s=1.0, backoff_min_s=1.0, backoff_max_s=30.0)
    proto = ModbusClientProtocol(bus)
    transport = AutoTransport(codec.TcpFraming, alive={1})
    transport.proto = proto
    proto.makeConnection(transport)
    results = {1: [], 2: []}
    for _ in range(120):
        for unit in (1, 2):
            bus.read_input_registers(unit, 0, 2).addBoth(results[unit].append)
        clock.advance(1.0)
    ok_1 = sum(1 for r in results[1] if r == [0, 0])
    assert ok_1 >= 100, ok_1
    # the dead unit was asked rarely: backoff grew instead of a timeout on every poll
    assert transport.seen.count(2) <= 20, transport.seen.count(2)
    assert bus.counters(2)["backoff_s"] >= 16


def test_cancelled_queued_request_is_never_sent():
    h = Harness()
    h.bus.read_input_registers(1, 0, 2)
    d = h.bus.read_input_registers(1, 10, 2)
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    [req] = h.sent()
    h.answer(req)
    assert h.sent() == []


def test_cancelled_in_flight_request_keeps_the_bus_in_step():
    h = Harness()
    d1 = h.bus.read_input_registers(1, 0, 2)
    d1.addErrback(lambda f: f.trap(defer.CancelledError))
    d2 = h.bus.read_input_registers(1, 10, 2)
    [req1] = h.sent()
    d1.cancel()
    assert h.sent() == []          # the next request waits for the cancelled one's reply
    h.answer(req1)
    [req2] = h.sent()
    h.answer(req2)
    assert d2.result == [10, 11]


def test_link_down_fails_pending_and_new_requests_fail_fast():
    h = Harness()
    d1 = h.bus.read_input_registers(1, 0, 2)
    d2 = h.bus.read_input_registers(1, 2, 2)
    h.proto.connectionLost(None)
    for d in (d1, d2):
        assert isinstance(d.result.value, BusDisconnected)
        assert "lost" in str(d.result.value)
    d3 = h.bus.read_input_registers(1, 0, 2)
    assert isinstance(d3.result.value, BusDisconnected)


def test_callbacks_that_submit_again_keep_one_in_flight():
    clock = task.Clock()
    bus = ModbusBus(clock, codec.TcpFraming())
    proto = ModbusClientProtocol(bus)
    transport = AutoTransport(codec.TcpFraming, alive={1})
    transport.proto = proto
    proto.makeConnection(transport)
    done = []

    def again(result, n):
        done.append(result)
        if n:
            bus.read_input_registers(1, 0, 2).addCallback(again, n - 1)

    bus.read_input_registers(1, 0, 2).addCallback(again, 50)
    assert len(done) == 51 and bus.counters(1)["ok"] == 51


# --- ModbusTcpClient: connecting and reconnecting ---

def make_tcp_client(**kw):
    reactor, clock = MemoryReactor(), task.Clock()
    client = ModbusTcpClient(reactor, clock, "10.9.8.7", 1502, **kw)
    return reactor, clock, client


def connect(reactor, index=-1):
    host, port, factory, timeout, _ = reactor.tcpClients[index]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return factory, proto, transport


def test_tcp_client_waits_for_the_connection_then_sends():
    reactor, clock, client = make_tcp_client()
    client.start()
    d = client.read_input_registers(1, 0, 2)
    assert reactor.tcpClients[0][:2] == ("10.9.8.7", 1502)
    factory, proto, transport = connect(reactor)
    used, req = codec.TcpFraming(server=True).decode(transport.value())
    proto.dataReceived(codec.TcpFraming(server=True).encode(codec.read_response(req, [1, 2])))
    assert d.result == [1, 2]


def test_tcp_client_reconnects_with_growing_delay_and_fails_pending_on_loss():
    reactor, clock, client = make_tcp_client(reconnect_min_s=0.5, reconnect_max_s=2.0)
    client.start()
    factory, proto, transport = connect(reactor)
    d = client.read_input_registers(1, 0, 2)
    from twisted.internet.error import ConnectionDone, ConnectionRefusedError
    from twisted.python.failure import Failure
    proto.connectionLost(Failure(ConnectionDone()))
    factory.clientConnectionLost(None, Failure(ConnectionDone()))
    err = d.result.value
    assert isinstance(err, BusDisconnected) and "10.9.8.7:1502" in str(err)
    assert isinstance(client.read_input_registers(1, 0, 2).result.value, BusDisconnected)
    delays = []
    for _ in range(4):
        n = len(reactor.tcpClients)
        start = clock.seconds()
        while len(reactor.tcpClients) == n:
            clock.advance(0.25)
        delays.append(clock.seconds() - start)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert delays == [0.5, 1.0, 2.0, 2.0]
    n = len(reactor.tcpClients)
    clock.advance(2.0)
    factory, proto, transport = connect(reactor)
    d = client.read_input_registers(1, 0, 2)
    assert transport.value()


def test_tcp_client_stop_fails_pending_and_stops_reconnecting():
    reactor, clock, client = make_tcp_client()
    client.start()
    d = client.read_input_registers(1, 0, 2)
    stopped = client.stop()
    assert isinstance(d.result.value, BusClosed)
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionDone()))
    assert stopped.called
    clock.advance(60)
    assert len(reactor.tcpClients) == 1


@pytest.mark.parametrize("text,expected", [
    ("host1:502", ("host1", 502)), ("10.0.0.1", ("10.0.0.1", 502)), ("[::1]:5020", ("::1", 5020)),
    ("::1", ("::1", 502)),
])
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:0", "host:99999", ":502", "[::1", "host:x"])
def test_parse_host_port_refuses(text):
    with pytest.raises(ValueError):
        parse_host_port(text)
