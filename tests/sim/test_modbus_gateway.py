"""evc.sim.modbus.SimGateway: one TCP connection, one serial line with its timing, collisions counted."""
import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from evc.bus import codec
from evc.sim.modbus import GATEWAY_TARGET_FAILED, SimGateway
from evc.sim.sdm import SimSdm630

BAUD = 9600
CHAR_S = 10 / BAUD


def gateway(framing_cls=codec.TcpFraming, **options):
    clock = task.Clock()
    gw = SimGateway(clock, [SimSdm630(1), SimSdm630(2)], framing_cls, baud=BAUD, turnaround_s=0.002,
                    target_timeout_s=0.1, **options)
    proto = gw.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return clock, gw, proto, transport


def request(framing_cls, unit, count=76, tid=1):
    pdu = codec.read_input(unit, 0, count)
    pdu.transaction_id = tid
    return framing_cls().encode(pdu)


def test_a_second_connection_is_refused_while_one_is_open():
    clock, gw, proto, _ = gateway()
    assert gw.buildProtocol(None) is None
    assert gw.stats["refused"] == 1 and gw.stats["connections"] == 1
    proto.connectionLost(None)
    assert gw.buildProtocol(None) is not None


def test_the_reply_comes_after_the_wire_time_of_request_and_reply():
    clock, gw, proto, transport = gateway()
    proto.dataReceived(request(codec.TcpFraming, 1))
    wire_s = (8 + 5 + 2 * 76) * CHAR_S + 0.002          # RTU request, RTU reply, turnaround
    clock.advance(wire_s - 0.001)
    assert transport.value() == b""
    clock.advance(0.002)
    used, reply = codec.TcpFraming().decode(transport.value())
    assert used == len(transport.value()) and len(reply.registers) == 76 and reply.transaction_id == 1


def test_two_requests_on_the_line_at_once_collide_and_neither_is_answered():
    clock, gw, proto, transport = gateway()
    proto.dataReceived(request(codec.TcpFraming, 1, tid=1) + request(codec.TcpFraming, 2, tid=2))
    clock.advance(1.0)
    assert transport.value() == b"" and gw.stats["overlaps"] == 1


def test_the_idle_time_of_the_line_before_each_request_is_recorded():
    clock, gw, proto, transport = gateway()
    proto.dataReceived(request(codec.TcpFraming, 1, count=2))
    clock.advance((8 + 9) * CHAR_S + 0.002)            # the reply leaves
    assert transport.value()
    clock.advance(0.25)
    proto.dataReceived(request(codec.TcpFraming, 2, count=2))
    assert gw.gaps == [pytest.approx(0.25)]


@pytest.mark.parametrize("answer", [False, True])
def test_a_silent_unit_holds_the_line_for_the_gateway_timeout(answer):
    clock, gw, proto, transport = gateway(answer_timeouts=answer)
    gw.devices[2].set_fault("silent")
    proto.dataReceived(request(codec.TcpFraming, 2, count=2))
    clock.advance(8 * CHAR_S + 0.099)
    assert transport.value() == b""
    clock.advance(0.002)
    if answer:
        _, reply = codec.TcpFraming().decode(transport.value())
        assert reply.function_code == 0x84 and reply.exception_code == GATEWAY_TARGET_FAILED
    else:
        assert transport.value() == b""
    assert gw.stats["silent"] == 1


def test_rtu_over_tcp_framing_is_passed_through():
    clock, gw, proto, transport = gateway(codec.RtuFraming)
    proto.dataReceived(request(codec.RtuFraming, 2, count=2))
    clock.advance(0.1)
    used, reply = codec.RtuFraming().decode(transport.value())
    assert used == len(transport.value()) and reply.dev_id == 2 and len(reply.registers) == 2
