"""reader/PN532's host side against the simulated PN532 in memory, on a task.Clock: the start-up sequence byte for
byte, polling, one card held = one presentation, aborted polls, NACK on a bad checksum, a module that goes quiet."""
from evc.reader import pn532
from evc.reader.base import ReaderBase
from evc.reader.pn532 import Pn532Reader
from evc.sim.rfid import SimPn532

from reader_helpers import Site, wire


def make(site, **config):
    config.setdefault("local", "/dev/null-reader")
    config.setdefault("charger", "s1")
    reader = Pn532Reader(site.ctx(), Pn532Reader.Config(**config))
    ReaderBase.startService(reader)
    sim = SimPn532(site.clock)
    driver = wire(reader, sim.line)
    return reader, sim, driver


def run(site, seconds):
    site.clock.pump([0.005] * int(seconds / 0.005))


def test_start_up_sends_wakeup_then_sam_configuration_byte_for_byte():
    site = Site()
    reader, sim, driver = make(site)
    run(site, 0.1)
    assert sim.line.heard.startswith(bytes.fromhex("5555000000") + bytes.fromhex("0000FF05FBD4140114010200"))
    assert sim.commands[:4] == [pn532.SAM_CONFIGURATION, pn532.RF_CONFIGURATION, pn532.GET_FIRMWARE_VERSION,
                                pn532.IN_LIST_PASSIVE_TARGET]
    assert sim.retries == 0x02 and sim.configured
    assert reader.ctx.state.values["firmware"] == "PN532 1.6"
    assert reader.ctx.state.values["device"] == "ok"


def test_a_card_held_over_many_polls_is_one_presentation_and_authorizes_the_waiting_charger():
    site = Site()
    reader, sim, driver = make(site)
    site.chargers["s1"].plug()
    run(site, 0.2)
    sim.present("1C78F2BF")
    run(site, 2.0)
    assert reader.polls_with_card >= 5
    assert sim.commands.count(pn532.RF_CONFIGURATION) >= 5          # RF off after each find
    sim.remove()
    run(site, 3.0)
    assert reader.cards == 1 and site.chargers["s1"].authorized_with == ["1C78F2BF"]


def test_a_seven_byte_uid():
    site = Site()
    site.tokens["04C43BC21C2680"] = site.tokens["CARD1"]
    reader, sim, driver = make(site)
    site.chargers["s1"].plug()
    sim.present("04C43BC21C2680")
    run(site, 0.5)
    assert site.chargers["s1"].authorized_with == ["04C43BC21C2680"]


def test_a_module_that_waits_forever_for_a_card_is_aborted_with_an_ack_and_polled_again():
    site = Site()
    reader, sim, driver = make(site)
    run(site, 0.1)
    sim.retries = 0xFF           # as if RFConfiguration had not taken
    heard = len(sim.line.heard)
    run(site, 2.0)
    assert pn532.ACK in sim.line.heard[heard:]
    polls = sim.polls
    site.chargers["s1"].plug()
    sim.present("1C78F2BF")
    run(site, 1.0)
    assert sim.polls > polls and site.chargers["s1"].authorized_with == ["1C78F2BF"]


def test_a_reply_with_a_bad_checksum_is_asked_for_again_with_a_nack():
    site = Site()
    reader, sim, driver = make(site)
    run(site, 0.1)
    site.chargers["s1"].plug()
    sim.corrupt_replies = 1
    sim.present("1C78F2BF")
    run(site, 0.5)
    assert pn532.NACK in sim.line.heard
    assert reader.counters["bad_checksum"] > 0
    assert site.chargers["s1"].authorized_with == ["1C78F2BF"]


def test_extra_leading_zeros_are_fine():
    site = Site()
    reader, sim, driver = make(site)
    sim.leading_zeros = 3
    site.chargers["s1"].plug()
    sim.present("1C78F2BF")
    run(site, 0.5)
    assert site.chargers["s1"].authorized_with == ["1C78F2BF"] and "noise" not in reader.counters


def test_a_quiet_module_sets_state_error_and_clears_it_when_it_answers_again():
    site = Site()
    reader, sim, driver = make(site)
    run(site, 0.2)
    sim.silent = True
    run(site, 5.0)
    assert "does not answer" in reader.ctx.state.values["error"]
    assert reader.ctx.state.values["device"] == "no answer"
    sim.silent = False
    run(site, 5.0)
    assert "error" not in reader.ctx.state.values and reader.ctx.state.values["device"] == "ok"
    assert sim.commands.count(pn532.SAM_CONFIGURATION) >= 2           # started again from the wake-up


def test_noise_on_the_line_is_counted_and_polling_goes_on():
    site = Site()
    reader, sim, driver = make(site)
    run(site, 0.2)
    sim.noise(b"\x13\x37\x00\xff\x05\x00garbage")
    run(site, 2.0)
    site.chargers["s1"].plug()
    sim.present("1C78F2BF")
    run(site, 1.0)
    assert site.chargers["s1"].authorized_with == ["1C78F2BF"]


def test_disconnect_stops_the_loop():
    site = Site()
    reader, sim, driver = make(site)
    run(site, 0.2)
    driver.disconnected()
    heard = len(sim.line.heard)
    run(site, 2.0)
    assert len(sim.line.heard) == heard
