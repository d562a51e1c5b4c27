"""The card -> charger rules (evc.reader.base) on a task.Clock: authorize the waiting charger, hold, stop, refuse,
and one card held = one presentation, with the RDM6300 and line drivers fed by their simulators in memory."""
from hypothesis import given, settings, strategies as st

from evc.reader.base import ReaderBase
from evc.reader.line import LineReader
from evc.reader.rdm6300 import Rdm6300Reader
from evc.sim.rfid import SimLineReader, SimRdm6300

from reader_helpers import Site, wire


def rdm(site, **config):
    config.setdefault("local", "/dev/null-reader")
    if "chargers" not in config:
        config.setdefault("charger", "s1")
    reader = Rdm6300Reader(site.ctx(), Rdm6300Reader.Config(**config))
    ReaderBase.startService(reader)       # the rules without a link: bytes come from wire()
    sim = SimRdm6300(site.clock)
    wire(reader, sim.line)
    return reader, sim


def tap(site, sim, uid="6F007B3972", hold_s=0.3):
    """A card held at the reader for `hold_s`, then taken away (and long enough gone to count as gone)."""
    sim.present(uid)
    site.clock.pump([0.01] * int(hold_s / 0.01))
    sim.remove()
    site.clock.advance(3)


def test_a_card_authorizes_the_charger_whose_car_waits():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    tap(site, sim)
    assert site.chargers["s1"].authorized_with == ["6F007B3972"]
    card = reader.ctx.state.values["last_card"]
    assert card["answer"] == "Accepted" and card["charger"] == "s1" and card["id_tag"] == "6F007B3972"
    assert card["time"].endswith("Z")


def test_one_card_held_in_the_field_is_one_presentation():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    tap(site, sim, hold_s=3.0)          # ~55 frames
    assert sim.frames > 40 and reader.frames > 40
    assert reader.cards == 1 and site.chargers["s1"].authorized_with == ["6F007B3972"]


def test_a_blocked_card_is_refused_and_last_card_says_so():
    site = Site()
    reader, sim = rdm(site, uid_format="hex")
    site.chargers["s1"].plug()
    site.tokens["6F007B3972"] = site.tokens["BLOCKED1"]
    tap(site, sim)
    assert site.chargers["s1"].authorized_with == []
    assert reader.ctx.state.values["last_card"]["answer"] == "Blocked"
    assert reader.ctx.state.values["last_card"]["charger"] == "s1"


def test_an_unknown_card_is_invalid():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    tap(site, sim, uid="0102030405")
    assert reader.last_card["answer"] == "Invalid" and site.chargers["s1"].authorized_with == []


def test_uid_format_decimal_gives_the_printed_number():
    site = Site()
    site.tokens["0008075634"] = site.tokens["CARD1"]
    reader, sim = rdm(site, uid_format="decimal")
    site.chargers["s1"].plug()
    tap(site, sim)
    assert site.chargers["s1"].authorized_with == ["0008075634"]


def test_with_no_car_waiting_the_card_is_held_for_the_next_car_plugged():
    site = Site(chargers=("s1", "s2"))
    reader, sim = rdm(site, chargers=["s1", "s2"], hold_s=60)
    tap(site, sim)
    assert reader.last_card["answer"] == "Accepted" and reader.last_card["charger"] is None
    assert reader.ctx.state.values["held"]["id_tag"] == "6F007B3972"
    site.clock.advance(20)
    site.chargers["s2"].plug()
    site.clock.advance(0.01)
    assert site.chargers["s2"].authorized_with == ["6F007B3972"] and site.chargers["s1"].authorized_with == []
    assert reader.last_card["charger"] == "s2" and "held" not in reader.ctx.state.values


def test_a_held_card_lapses_after_hold_s():
    site = Site()
    reader, sim = rdm(site, hold_s=10)
    tap(site, sim)
    site.clock.advance(11)
    assert reader.held is None
    site.chargers["s1"].plug()
    site.clock.advance(0.01)
    assert site.chargers["s1"].authorized_with == []


def test_the_card_of_the_running_session_stops_it():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    tap(site, sim)
    assert site.chargers["s1"].sessions.session.state == "authorized"
    tap(site, sim)
    assert site.chargers["s1"].deauthorized == 1 and reader.last_card["answer"] == "Stopped"


def test_another_card_does_not_stop_someone_elses_session():
    site = Site(chargers=("s1", "s2"))
    reader, sim = rdm(site, chargers="*")
    site.chargers["s1"].plug()
    tap(site, sim)
    tap(site, sim, uid="1C78F2BF00")      # unknown elsewhere, nothing waits: refused, s1 untouched
    assert site.chargers["s1"].deauthorized == 0 and reader.last_card["answer"] == "Invalid"


def test_when_two_cars_wait_the_one_plugged_last_is_authorized():
    site = Site(chargers=("s1", "s2"))
    reader, sim = rdm(site, chargers=["s1", "s2"])
    site.chargers["s2"].plug()
    site.clock.advance(30)
    site.chargers["s1"].plug()
    tap(site, sim)
    assert site.chargers["s1"].authorized_with == ["6F007B3972"] and site.chargers["s2"].authorized_with == []


def test_the_same_card_right_after_it_left_is_not_a_new_presentation():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    sim.present("6F007B3972")
    site.clock.pump([0.01] * 30)
    sim.remove()
    site.clock.pump([0.01] * 80)        # gone (0.5 s), but within the 2 s lock-out
    sim.present("6F007B3972")
    site.clock.pump([0.01] * 30)
    sim.remove()
    site.clock.advance(3)
    assert reader.cards == 1 and site.chargers["s1"].deauthorized == 0
    assert reader.counters["repeats"] == 1


def test_noise_half_frames_and_bad_checksums_are_counted_never_fatal():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    good = sim.frame(bytes.fromhex("6F007B3972"))
    sim.noise(b"\x55\xaa" + good[:6] + good[:11] + b"5E\x03" + good[:13] + b"\x04")
    assert reader.cards == 0
    assert {"noise", "half_frame", "bad_checksum", "bad_frame"} <= set(reader.counters)
    assert reader.ctx.state.values["counters/bad_checksum"] == 14
    tap(site, sim)
    assert site.chargers["s1"].authorized_with == ["6F007B3972"]


def test_no_id_tag_in_the_log(capsys):
    from twisted.logger import globalLogPublisher
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        site = Site()
        reader, sim = rdm(site)
        site.chargers["s1"].plug()
        tap(site, sim)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    from twisted.logger import formatEvent
    assert seen and not any("6F007B3972" in formatEvent(e) for e in seen)


# -- line --

def line_reader(site, **config):
    config.setdefault("local", "/dev/null-reader")
    config.setdefault("charger", "s1")
    reader = LineReader(site.ctx(), LineReader.Config(**config))
    ReaderBase.startService(reader)
    sim = SimLineReader(site.clock)
    wire(reader, sim.line)
    return reader, sim


def test_a_line_reader_card_authorizes_the_waiting_charger():
    site = Site()
    site.tokens["0008075634"] = site.tokens["CARD1"]
    reader, sim = line_reader(site, line_format="decimal", uid_format="decimal")
    site.chargers["s1"].plug()
    sim.present("0008075634")
    site.clock.advance(0.01)
    assert site.chargers["s1"].authorized_with == ["0008075634"]


def test_a_keyboard_style_decimal_reader_matches_the_ocpp_form():
    site = Site()
    reader, sim = line_reader(site, line_format="decimal", uid_format="hex_reversed")
    site.chargers["s1"].plug()
    sim.present("3220338716")
    assert site.chargers["s1"].authorized_with == ["1C78F2BF"]


def test_overlong_lines_are_dropped_whole_even_across_chunks():
    site = Site()
    reader, sim = line_reader(site, max_line=10)
    site.chargers["s1"].plug()
    sim.noise(b"1C78F2BF1C78F2BF")
    sim.noise(b"1C78F2BF\r\n")             # the tail of the overlong line: not a card
    assert reader.cards == 0 and reader.counters["overlong"] > 0
    sim.present("1C78F2BF")
    assert site.chargers["s1"].authorized_with == ["1C78F2BF"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["1C78F2BF", "A1B2C3D4", "", "X" * 40, "04C43BC21C2680"]), max_size=6),
       st.lists(st.integers(1, 12), min_size=1, max_size=6), st.sampled_from([b"\r", b"\n", b"\r\n"]))
def test_line_driver_reads_the_same_cards_however_the_bytes_are_chunked(lines, cuts, end):
    site = Site()
    reader, sim = line_reader(site, max_line=32)
    seen = []
    reader.uid_seen = lambda uid: seen.append(uid.hex().upper())
    stream = b"".join(x.encode() + end for x in lines)
    i = k = 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        sim.noise(stream[i:i + n])
        i, k = i + n, k + 1
    assert seen == [x for x in lines if x and len(x) <= 32 and x != "X" * 40]


# -- present(uid): a card presented from elsewhere than the device (front/manual's "present a card") --

def test_present_is_one_presentation_through_the_same_rules_as_the_device():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    d = reader.present(bytes.fromhex("6F007B3972"))
    site.clock.advance(0.01)
    assert d is not None and d.called
    assert site.chargers["s1"].authorized_with == ["6F007B3972"] and reader.cards == 1
    assert reader.last_card["answer"] == "Accepted" and reader.last_card["charger"] == "s1"
    assert reader.presence.current is None          # a sighting followed by absence: nothing stays in the field
    site.clock.advance(3)
    reader.present(bytes.fromhex("6F007B3972"))     # the same card again, later: its own session stops
    site.clock.advance(0.01)
    assert site.chargers["s1"].deauthorized == 1 and reader.last_card["answer"] == "Stopped"


def test_present_takes_the_uid_in_the_readers_uid_format():
    site = Site()
    site.tokens["0008075634"] = site.tokens["CARD1"]
    reader, sim = rdm(site, uid_format="decimal")
    site.chargers["s1"].plug()
    reader.present(bytes.fromhex("6F007B3972"))
    site.clock.advance(0.01)
    assert site.chargers["s1"].authorized_with == ["0008075634"]


def test_present_of_a_blocked_card_is_refused_and_last_card_says_so():
    site = Site()
    reader, sim = rdm(site)
    site.tokens["6F007B3972"] = site.tokens["BLOCKED1"]
    site.chargers["s1"].plug()
    reader.present(bytes.fromhex("6F007B3972"))
    site.clock.advance(0.01)
    assert site.chargers["s1"].authorized_with == [] and reader.last_card["answer"] == "Blocked"


def test_present_twice_within_the_lockout_is_one_presentation():
    site = Site()
    reader, sim = rdm(site)
    site.chargers["s1"].plug()
    assert reader.present(bytes.fromhex("6F007B3972")) is not None
    site.clock.advance(0.5)
    assert reader.present(bytes.fromhex("6F007B3972")) is None       # never a stop right after a start
    site.clock.advance(0.01)
    assert reader.cards == 1 and site.chargers["s1"].deauthorized == 0
    assert reader.ctx.state.values["counters/repeats"] == 1


def test_present_leaves_a_card_held_at_the_device_where_it_is():
    """A card in the field at the device meanwhile does not count again on its next frame (seen(); gone() would)."""
    site = Site(chargers=("s1", "s2"))
    reader, sim = rdm(site, chargers=["s1", "s2"])
    sim.present("6F007B3972")
    site.clock.pump([0.01] * 10)
    assert reader.cards == 1
    reader.present(bytes.fromhex("1C78F2BF00"))
    site.clock.pump([0.01] * 300)                   # the device's card is still held: its frames go on for 3 s
    assert reader.cards == 2 and reader.presence.current == bytes.fromhex("6F007B3972")
    reader.present(bytes.fromhex("6F007B3972"))     # the very card in the field: that presentation, nothing new
    assert reader.cards == 2
    sim.remove()


def test_a_card_presented_from_the_page_does_not_cut_short_the_lock_out_of_the_card_at_the_device():
    """Card A at the device starts s1; B comes from the page; A lost for a moment and back is still A's presentation
    (never a stop right after a start)."""
    site = Site(chargers=("s1", "s2"))
    reader, sim = rdm(site, chargers=["s1", "s2"])
    site.chargers["s1"].plug()
    sim.present("6F007B3972")
    site.clock.pump([0.01] * 30)
    assert site.chargers["s1"].authorized_with == ["6F007B3972"]
    reader.present(bytes.fromhex("1C78F2BF00"))
    site.clock.pump([0.01] * 30)
    sim.remove()
    site.clock.pump([0.01] * 80)        # A gone (0.5 s), but within its 2 s lock-out
    sim.present("6F007B3972")
    site.clock.pump([0.01] * 30)
    sim.remove()
    site.clock.advance(3)
    assert site.chargers["s1"].deauthorized == 0 and reader.counters["repeats"] == 1
