"""The codecs: every request and reply survives a round trip through TCP and RTU framing; garbage is found."""
import pytest
from hypothesis import given, strategies as st

from evc.bus import codec

FRAMINGS = [codec.TcpFraming, codec.RtuFraming]


def roundtrip(framing_cls, pdu, server):
    pdu.transaction_id = 0x1234
    data = framing_cls(server=not server).encode(pdu)
    used, out = framing_cls(server=server).decode(data)
    assert used == len(data)
    assert out is not None
    return out


@pytest.mark.parametrize("framing_cls", FRAMINGS)
@pytest.mark.parametrize("make", [codec.read_input, codec.read_holding])
def test_read_request_round_trip(framing_cls, make):
    out = roundtrip(framing_cls, make(7, 0x0034, 76), server=True)
    assert (out.function_code, out.dev_id, out.address, out.count) == (make(7, 0, 1).function_code, 7, 0x34, 76)


@pytest.mark.parametrize("framing_cls", FRAMINGS)
def test_write_requests_round_trip(framing_cls):
    out = roundtrip(framing_cls, codec.write_multiple(3, 1000, [1, 0xFFFF, 7]), server=True)
    assert (out.function_code, out.address, out.registers) == (16, 1000, [1, 0xFFFF, 7])
    out = roundtrip(framing_cls, codec.write_single(3, 1004, 42), server=True)
    assert (out.function_code, out.address, out.registers) == (6, 1004, [42])


@pytest.mark.parametrize("framing_cls", FRAMINGS)
def test_responses_round_trip(framing_cls):
    req = codec.read_input(1, 0, 76)
    out = roundtrip(framing_cls, codec.read_response(req, list(range(76))), server=False)
    assert out.registers == list(range(76)) and out.dev_id == 1
    out = roundtrip(framing_cls, codec.exception_reply(req, 2), server=False)
    assert out.function_code == 0x84 and out.exception_code == 2
    out = roundtrip(framing_cls, codec.write_response(codec.write_multiple(1, 5, [1, 2])), server=False)
    assert (out.function_code, out.address, out.count) == (16, 5, 2)


def test_tcp_carries_the_transaction_id():
    req = codec.read_input(1, 0, 2)
    req.transaction_id = 0xBEEF
    data = codec.TcpFraming().encode(req)
    assert data[:2] == b"\xbe\xef" and data[6] == 1
    assert codec.TcpFraming(server=True).decode(data)[1].transaction_id == 0xBEEF


@pytest.mark.parametrize("framing_cls", FRAMINGS)
def test_partial_frames_wait_for_more(framing_cls):
    data = framing_cls().encode(codec.read_response(codec.read_input(1, 0, 10), [5] * 10))
    f = framing_cls()
    for n in range(len(data)):
        assert f.decode(data[:n]) == (0, None)


@pytest.mark.parametrize("framing_cls", FRAMINGS)
def test_two_frames_in_one_buffer_decode_one_at_a_time(framing_cls):
    f = framing_cls(server=True)
    a = framing_cls().encode(codec.read_input(1, 0, 2))
    b = framing_cls().encode(codec.read_input(2, 4, 6))
    used, pdu = f.decode(a + b)
    assert used == len(a) and pdu.dev_id == 1
    used, pdu = f.decode(b)
    assert used == len(b) and pdu.dev_id == 2


def test_rtu_bad_crc_is_a_bad_frame():
    data = bytearray(codec.RtuFraming().encode(codec.read_response(codec.read_input(1, 0, 4), [1, 2, 3, 4])))
    data[5] ^= 0x01
    used, pdu = codec.RtuFraming().decode(bytes(data))
    assert used == len(data) and pdu is None


def test_rtu_skips_garbage_before_a_frame():
    frame = codec.RtuFraming().encode(codec.read_response(codec.read_input(1, 0, 4), [1, 2, 3, 4]))
    f = codec.RtuFraming()
    used, pdu = f.decode(b"\xff\x00\x13" + frame)
    assert (used, pdu) == (3, None)
    used, pdu = f.decode(frame)
    assert used == len(frame) and pdu.registers == [1, 2, 3, 4]


def test_rtu_unknown_function_code_is_garbage():
    assert codec.RtuFraming().decode(b"\x01\x7f\x00\x00\x00\x00") == (6, None)


def test_tcp_garbage_header_drops_the_buffer():
    assert codec.TcpFraming().decode(b"\xde\xad\xbe\xef\xde\xad\xbe\xef\x01") == (9, None)


def test_tcp_byte_count_that_disagrees_with_the_length_is_garbage():
    good = bytearray(codec.TcpFraming().encode(codec.read_response(codec.read_input(1, 0, 4), [1, 2, 3, 4])))
    good[8] = 6          # byte count says 3 registers, MBAP length says 4
    used, pdu = codec.TcpFraming().decode(bytes(good))
    assert used == len(good) and pdu is None


def test_requests_outside_the_protocol_limits_are_refused():
    with pytest.raises(ValueError):
        codec.read_input(1, 0, 126)
    with pytest.raises(ValueError):
        codec.read_input(1, 0xFFFF, 2)
    with pytest.raises(ValueError):
        codec.write_single(1, 0, 0x10000)


@given(st.floats(width=32, allow_nan=False))
def test_float32_high_word_first(value):
    regs = codec.float32_to_registers(value)
    assert codec.registers_to_float32(list(regs)) == value


def test_float32_word_order_is_big_endian():
    assert codec.float32_to_registers(230.0) == (0x4366, 0x0000)


@given(st.binary(max_size=64))
def test_rtu_decode_never_raises_and_always_progresses_or_waits(data):
    f = codec.RtuFraming()
    while data:
        used, _ = f.decode(data)
        assert 0 <= used <= len(data)
        if not used:
            break
        data = data[used:]


@given(st.binary(max_size=64))
def test_tcp_decode_never_raises(data):
    used, _ = codec.TcpFraming().decode(data)
    assert 0 <= used <= len(data)


def test_read_response_with_odd_byte_count_is_garbage():
    frame = codec.RtuFraming().encode_raw(b"\x04\x03\x00\x01\x02", 1)
    assert codec.RtuFraming().decode(frame) == (len(frame), None)
