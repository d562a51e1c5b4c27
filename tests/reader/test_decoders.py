"""The readers' pure decoders: the reference sheet's frames, and noise, half frames and bad checksums dropped."""
import pytest
from hypothesis import given, settings, strategies as st

from evc.reader import line, pn532, rdm6300
from evc.reader.framing import Dropped, decode_all
from evc.reader.uid import id_tag

GOOD = bytes.fromhex("02 36 46 30 30 37 42 33 39 37 32 35 46 03")
CARD = bytes.fromhex("6F007B3972")


def frames(items):
    return [i for i in items if not isinstance(i, Dropped)]


def dropped(items):
    return {i.reason for i in items if isinstance(i, Dropped)}


# -- RDM6300 --

def test_rdm6300_reference_frame_decodes_to_the_card():
    rest, items = decode_all(rdm6300.decode, GOOD)
    assert rest == b"" and items == [rdm6300.Rdm6300Frame(CARD)]
    assert rdm6300.encode(CARD) == GOOD


def test_rdm6300_decimal_is_the_printed_tag_number():
    assert id_tag(CARD[1:], "decimal") == "0008075634"
    assert id_tag(CARD, "hex") == "6F007B3972"
    assert id_tag(CARD, "hex_reversed") == "72397B006F"


@pytest.mark.parametrize("stream, reason", [
    (b"\x55\xaa\x13" + GOOD, "noise"),                                  # junk before 02
    (GOOD[:7] + GOOD, "half_frame"),                                     # cut short, then a new 02
    (GOOD[:11] + b"5E\x03", "bad_checksum"),                             # ...35 45 03
    (GOOD[:13] + b"\x04" + GOOD, "bad_frame"),                           # wrong end byte
])
def test_rdm6300_noise_cases_are_dropped_and_the_next_good_frame_read(stream, reason):
    rest, items = decode_all(rdm6300.decode, stream)
    assert reason in dropped(items)
    good = frames(items)
    if reason == "bad_checksum":
        assert good == []
    else:
        assert good == [rdm6300.Rdm6300Frame(CARD)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(min_size=5, max_size=5)), max_size=6),
       st.lists(st.integers(1, 20), min_size=1, max_size=10))
def test_rdm6300_every_good_frame_survives_any_noise_between_frames(parts, cuts):
    """Noise never hides a good frame that follows it (the decoder resyncs on every 02) and never crashes it."""
    stream = b"".join(noise + rdm6300.encode(card) for noise, card in parts)
    buf, found, i, k = b"", [], 0, 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        buf, items = decode_all(rdm6300.decode, buf + stream[i:i + n])
        found += [f.data for f in frames(items)]
        i, k = i + n, k + 1
    wanted = iter(found)
    assert all(any(card == f for f in wanted) for _, card in parts), "a good frame was lost"


# -- PN532 --

def test_pn532_reference_frames():
    assert pn532.command(pn532.SAM_CONFIGURATION, pn532.SAM_NORMAL) == bytes.fromhex("0000FF05FBD4140114010200")
    assert pn532.command(pn532.GET_FIRMWARE_VERSION) == bytes.fromhex("0000FF02FED4022A00")
    assert pn532.command(pn532.IN_LIST_PASSIVE_TARGET, pn532.POLL_106A) == bytes.fromhex("0000FF04FCD44A0100E100")
    assert pn532.command(pn532.RF_CONFIGURATION, pn532.RF_FIELD_OFF) == bytes.fromhex("0000FF04FCD4320100F900")
    assert pn532.reply(pn532.GET_FIRMWARE_VERSION, bytes.fromhex("32010607")) == bytes.fromhex(
        "0000FF06FAD50332010607E800")
    assert pn532.reply(pn532.SAM_CONFIGURATION) == bytes.fromhex("0000FF02FED5151600")


@pytest.mark.parametrize("reply, uid", [
    ("0000FF0CF4D54B01010004080 41C78F2BF8900", "1C78F2BF"),
    ("0000FF0FF1D54B010100440007 04C43BC21C26800C00", "04C43BC21C2680"),
    ("0000FF03FDD54B00E000", None),
])
def test_pn532_poll_replies(reply, uid):
    rest, items = decode_all(pn532.decode, bytes.fromhex(reply.replace(" ", "")))
    (frame,) = frames(items)
    assert frame.tfi == pn532.TFI_PN532 and frame.data[0] == 0x4B
    found = pn532.parse_target(frame.data[1:])
    assert (found.hex().upper() if found else None) == uid


def test_pn532_ack_nack_error_and_extended_frames():
    long = bytes(range(256)) + b"\x01"
    stream = pn532.ACK + pn532.NACK + pn532.ERROR_FRAME + pn532.encode(0xD5, long)
    rest, items = decode_all(pn532.decode, stream)
    assert items == [pn532.Ack(), pn532.Nack(), pn532.ErrorFrame(), pn532.Frame(0xD5, long)]


def test_pn532_bad_lcs_and_bad_dcs_are_dropped_and_counted():
    good = pn532.reply(pn532.SAM_CONFIGURATION)
    bad_lcs = good[:4] + bytes([good[4] ^ 1]) + good[5:]
    bad_dcs = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    rest, items = decode_all(pn532.decode, bad_lcs + bad_dcs + good)
    assert {"bad_frame", "bad_checksum"} <= dropped(items) <= {"bad_frame", "bad_checksum", "noise"}
    assert frames(items) == [pn532.Frame(0xD5, b"\x15")]


def test_pn532_extra_leading_zeros_are_preamble_not_noise():
    rest, items = decode_all(pn532.decode, b"\x00\x00\x00" + pn532.ACK)
    assert items == [pn532.Ack()]


def _chunked(decode, stream, cuts):
    buf, found, i, k = b"", [], 0, 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        buf, items = decode_all(decode, buf + stream[i:i + n])
        found += items
        i, k = i + n, k + 1
    return found


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20).map(lambda b: b.replace(b"\x00", b"\x01")),
                          st.binary(min_size=1, max_size=40)), max_size=5),
       st.lists(st.integers(1, 16), min_size=1, max_size=8))
def test_pn532_every_frame_after_noise_is_found_whatever_the_chunks(parts, cuts):
    """Noise without a start code (no 00) between frames: every frame is found, in any chunking."""
    stream = b"".join(noise + pn532.encode(0xD5, data) for noise, data in parts)
    found = [f.data for f in _chunked(pn532.decode, stream, cuts) if isinstance(f, pn532.Frame)]
    assert found == [data for _, data in parts]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 32), min_size=1, max_size=8))
def test_pn532_decoder_never_crashes_on_any_bytes(stream, cuts):
    """Whatever arrives (a fake header in the noise may swallow what follows; the driver's retry covers that)."""
    items = _chunked(pn532.decode, stream, cuts)
    assert all(isinstance(i, (Dropped, pn532.Frame, pn532.Ack, pn532.Nack, pn532.ErrorFrame)) for i in items)


# -- line --

@pytest.mark.parametrize("stream", [b"0008075634\r\n", b"0008075634\r", b"0008075634\n"])
def test_line_ends_with_cr_lf_or_both(stream):
    rest, items = decode_all(line.decode, stream)
    assert items == [b"0008075634"]


def test_line_two_lines_in_one_chunk_and_stray_enters():
    rest, items = decode_all(line.decode, b"\r\n\r\n1C78F2BF\r\nA1B2C3D4\n\r")
    assert items == [b"1C78F2BF", b"A1B2C3D4"] and rest == b""


def test_line_overlong_is_dropped():
    rest, items = decode_all(lambda b: line.decode(b, 8), b"123456789012\r\n1234\r\n")
    assert dropped(items) == {"overlong"} and frames(items) == [b"1234"]


@pytest.mark.parametrize("text, fmt, uid", [
    (b"1C78F2BF", "hex", "1C78F2BF"), (b"1c-78-f2-bf", "hex", "1C78F2BF"), (b"0008075634", "decimal", "007B3972"),
    (b"3220338716", "decimal", "BFF2781C"), (b"7B3972", "hex", "7B3972"), (b"xyz", "hex", None),
    (b"12ab", "decimal", None), (b"1C78\x01F2BF", "hex", None),
])
def test_line_parse(text, fmt, uid):
    got = line.parse(text, fmt)
    assert (got.hex().upper() if got is not None else None) == uid


def test_a_keyboard_readers_little_endian_decimal_maps_to_the_ocpp_form():
    assert id_tag(line.parse(b"3220338716", "decimal"), "hex_reversed") == "1C78F2BF"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=32).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=8),
       st.sampled_from([b"\r", b"\n", b"\r\n"]), st.lists(st.integers(1, 16), min_size=1, max_size=8))
def test_line_chunks_never_change_what_is_read(lines, end, cuts):
    """Lines split over chunks or merged into one: the same lines come out (overlong lines across chunks are the
    driver's, see test_rules.py)."""
    stream = b"".join(x + end for x in lines)
    got = [i for i in _chunked(lambda b: line.decode(b, 32), stream, cuts) if not isinstance(i, Dropped)]
    assert got == [x for x in lines if x]
