"""Readers at a simulated site on a real etcd: each serial type over a pty and over TCP against its simulator, and
QUIO on the RS485 bus it shares with the chargers. A card starts the session of the right charger, a blocked card
is refused and the reader's last_card says so, a vanished tty comes back."""
import json

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.reader.link import SerialLink

from reader_site import ReaderSite


@pytest.fixture(autouse=True)
def fast_reopen(monkeypatch):
    monkeypatch.setattr(SerialLink, "reopen_min_s", 0.05)
    monkeypatch.setattr(SerialLink, "reopen_max_s", 0.2)
    monkeypatch.setattr(SerialLink, "check_s", 0.05)


@pytest.fixture
def sites(etcd_session, etcd_root):
    made = []

    def make(reader_type, path="remote", **config):
        made.append(ReaderSite(etcd_session.url, f"{etcd_root}-{len(made)}", reader_type, path, **config))
        return made[-1]
    yield make
    for site in made:
        pytest_twisted.blockon(defer.ensureDeferred(site.stop()))


async def last_card(site):
    text = await site.get("reader/r1/state/last_card")
    return json.loads(text) if text else None


@pytest.mark.parametrize("reader_type, path", [("RDM6300", "local"), ("RDM6300", "remote"), ("PN532", "local"),
                                               ("PN532", "remote"), ("line", "local"), ("line", "remote"),
                                               ("QUIO", "conn")])
@pytest_twisted.ensureDeferred
async def test_a_card_starts_the_session_of_the_charger_whose_car_waits(sites, reader_type, path):
    site = sites(reader_type, path)
    await site.start()
    await site.plug("s2")
    await site.tap()
    await site.until(lambda: site.session("s2").state in ("authorized", "charging"), "s2 authorized")
    await site.until(lambda: site.session("s2").state == "charging", "s2 charging", 15)
    assert site.session("s2").id_tag == site.tag and site.session("s1") is None
    card = await site.until(lambda: last_card(site), "last_card in etcd")
    assert card["answer"] == "Accepted" and card["charger"] == "s2" and card["id_tag"] == site.tag
    assert await site.get("charger/s2/state/session/state") in ("authorized", "charging")


@pytest.mark.parametrize("reader_type", ["RDM6300", "PN532"])
@pytest_twisted.ensureDeferred
async def test_a_blocked_card_is_refused_and_the_reader_says_so(sites, reader_type):
    site = sites(reader_type)
    await site.start()
    await site.put(f"token/{site.tag}/config/status", "Blocked")
    await site.until(lambda: site.instance("token", site.tag) is not None
                     and site.instance("token", site.tag).config.status == "Blocked", "the token blocked")
    await site.plug("s1")
    await site.tap()
    card = await site.until(lambda: last_card(site), "last_card in etcd")
    assert card["answer"] == "Blocked" and card["charger"] == "s1"
    assert site.session("s1").state == "plugged" and not site.instance("charger", "s1").authorized


@pytest_twisted.ensureDeferred
async def test_a_card_with_no_car_waiting_is_held_for_the_next_car_plugged(sites):
    site = sites("RDM6300")
    await site.start()
    await site.tap()
    assert json.loads(await site.until(lambda: site.get("reader/r1/state/held"), "held in etcd"))["id_tag"] == site.tag
    site.sim.plug("car1", "s1")
    await site.until(lambda: site.session("s1") is not None and site.session("s1").state in ("authorized",
                                                                                              "charging"),
                     "s1 authorized by the held card")
    await site.until(lambda: site.leaf_is("reader/r1/state/held", None), "held cleared")


@pytest_twisted.ensureDeferred
async def test_the_same_card_again_stops_its_session(sites):
    site = sites("line")
    await site.start()
    await site.plug("s1")
    await site.tap()
    await site.until(lambda: site.session("s1").state in ("authorized", "charging"), "s1 authorized")
    await site.until(lambda: site.reader.presence.current is None, "the card gone from the field")
    site.reader._seen_at.clear()            # past the lock-out without waiting for it
    await site.tap()
    await site.until(lambda: site.instance("charger", "s1").sessions.last.state == "ended", "the session ended")
    async def stopped():
        card = await last_card(site)
        return card is not None and card["answer"] == "Stopped"
    await site.until(stopped, "last_card Stopped in etcd")


@pytest.mark.parametrize("reader_type", ["RDM6300", "PN532"])
@pytest_twisted.ensureDeferred
async def test_the_readers_tty_vanishes_and_comes_back(sites, reader_type):
    site = sites(reader_type, "local")
    await site.start()
    await site.until(lambda: site.leaf_is("reader/r1/state/link", "up"), "link up")
    site.card_sim.line.vanish()
    await site.until(lambda: site.leaf_is("reader/r1/state/link", "down"), "link down")
    error = await site.get("reader/r1/state/error")
    assert error.startswith("config/local: ")
    site.card_sim.line.reappear()
    await site.until(lambda: site.leaf_is("reader/r1/state/link", "up"), "link up again")
    await site.until(lambda: site.leaf_is("reader/r1/state/error", None), "error cleared")
    await site.plug("s1")
    await site.tap()
    await site.until(lambda: site.session("s1").state in ("authorized", "charging"), "s1 authorized after")


@pytest_twisted.ensureDeferred
async def test_a_dropped_tunnel_reconnects(sites):
    site = sites("line", "remote")
    await site.start()
    await site.until(lambda: site.card_sim.line.connections == 1 and site.reader.link.up, "connected")
    site.card_sim.line.drop_tunnel()
    await site.until(lambda: site.card_sim.line.connections == 2 and site.reader.link.up, "reconnected")
    await site.plug("s1")
    await site.tap()
    await site.until(lambda: site.session("s1").state in ("authorized", "charging"), "s1 authorized")


@pytest_twisted.ensureDeferred
async def test_a_reader_naming_a_charger_that_does_not_exist_says_so_and_starts_once_it_does(sites):
    site = sites("line")
    await site.start()
    port = site.card_sim.line.tcp_port
    await site.put("reader/r9/type", "line")
    await site.put("reader/r9/config/remote", f"127.0.0.1:{port}")
    await site.put("reader/r9/config/charger", "s9")
    await site.until(lambda: site.leaf_is("reader/r9/state/error", "config/charger: charger 's9' is not configured"),
                     "the dangling reference reported")
    await site.put("reader/r9/config/charger", "s1")
    await site.until(lambda: site.leaf_is("reader/r9/state/link", "up"), "r9 running")
    assert await site.get("reader/r9/state/error") is None
