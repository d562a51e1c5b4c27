"""GET /api/v1/readers on front/manual over real HTTP, on a real etcd, with a line reader on a TCP tunnel: every
response is checked against the front's OpenAPI document (web_helpers)."""
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol

from evc.reader.link import SerialLink
from evc.sim.rfid import SimLineReader
from evc.testing import wait_for

from web_helpers import OPENAPI, Rig


def _reader_rig(etcd_session, etcd_root, monkeypatch, users=False, **front_config):
    monkeypatch.setattr(SerialLink, "reopen_min_s", 0.05)
    from twisted.internet import reactor
    sim = SimLineReader(reactor)
    port = sim.line.listen(0)
    extra = {
        "reader/r1/type": "line",
        "reader/r1/config/remote": f"127.0.0.1:{port}",
        "reader/r1/config/charger": "s1",
        "reader/r2/type": "line",                       # serves only a charger this front does not show
        "reader/r2/config/remote": f"127.0.0.1:{port}",
        "reader/r2/config/charger": "x9",
        "token/1C78F2BF/config/owner": "Bo",
        "token/BADCAFE0/config/status": "Blocked",
    }
    extra.update({f"front/local/config/{k}": v for k, v in front_config.items()})
    made = Rig(etcd_session.url, etcd_root, users=users, extra=extra)
    made.card_sim = sim
    pytest_twisted.blockon(defer.ensureDeferred(made.start()))
    return made


def _stop(made):
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))
    pytest_twisted.blockon(made.card_sim.close())


@pytest.fixture
def reader_rig(etcd_session, etcd_root, monkeypatch):
    made = _reader_rig(etcd_session, etcd_root, monkeypatch)
    yield made
    _stop(made)


@pytest.fixture
def present_rig(etcd_session, etcd_root, monkeypatch):
    """Users alice (operator) and bob (viewer), and present_cards on."""
    made = _reader_rig(etcd_session, etcd_root, monkeypatch, users=True, present_cards="true")
    yield made
    _stop(made)


@pytest_twisted.ensureDeferred
async def test_the_readers_list_shows_the_newest_card_and_its_answer(reader_rig):
    rig = reader_rig
    client = rig.client()

    async def r1():
        r = await client.get("/api/v1/readers/r1")
        return r.json if r.status == 200 and r.json["link"] == "up" else None
    got = await wait_for(r1, 10, "reader r1 listed with its link up")
    assert got["type"] == "line" and got["chargers"] == ["s1"] and got["last_card"] is None
    r = await client.get("/api/v1/readers")
    assert r.status == 200 and [x["name"] for x in r.json] == ["r1"]     # r2 serves x9 only: not shown here
    reader = rig.sup.instances[("reader", "r1")].service
    await wait_for(lambda: rig.sup.instances[("charger", "s1")].service.sessions.session is not None, 10,
                   "car1's session at s1")
    rig.card_sim.present("1C78F2BF")

    async def answered():
        r = await client.get("/api/v1/readers/r1")
        return r.json["last_card"]
    card = await wait_for(answered, 10, "the card's answer in the API")
    assert card["answer"] == "Accepted" and card["charger"] == "s1" and card["id_tag"] == "1C78F2BF"
    assert reader.cards == 1
    r = await client.get("/api/v1/readers/r9")
    assert r.status == 404 and "r9" in r.json["error"]
    r = await client.get("/api/v1/readers/r2")
    assert r.status == 404


@pytest_twisted.ensureDeferred
async def test_a_card_presented_is_a_reader_event_on_the_live_stream(reader_rig):
    rig = reader_rig
    got = []

    class Body(protocol.Protocol):
        def dataReceived(self, data):
            got.append(data)

    r = await treq.get(rig.base + "/api/v1/events", unbuffered=True, persistent=False)
    body = Body()
    r.deliverBody(body)
    await wait_for(lambda: b"event: site" in b"".join(got), 10, "the site event")
    await wait_for(lambda: rig.sup.instances[("charger", "s1")].service.sessions.session is not None, 10,
                   "car1's session at s1")
    rig.card_sim.present("1C78F2BF")

    def answered():
        for f in b"".join(got).split(b"\n\n"):
            if f.startswith(b"event: reader"):
                reader = json.loads(f.split(b"data: ", 1)[1])
                OPENAPI.validate({"$ref": "#/components/schemas/Reader"}, reader, "a reader event")
                if reader["last_card"] is not None:
                    return reader
    reader = await wait_for(answered, 10, "a reader event with the card")
    assert reader["name"] == "r1" and reader["last_card"]["answer"] == "Accepted"
    body.transport._producer.abortConnection()
    await wait_for(lambda: len(rig.front.hub.streams) == 0, 10, "the stream dropped")


# -- POST /api/v1/readers/{name}/present: a card presented from the page (config/present_cards) --

async def _waiting_at_s1(rig):
    """car1 is plugged at s1 (auth token): its session waits for a card."""
    def waits():
        s = rig.sup.instances[("charger", "s1")].service.sessions.session
        return s is not None and s.state == "plugged"
    await wait_for(waits, 10, "car1's session at s1 waiting for authorization")


async def _r1_up(client):
    async def up():
        r = await client.get("/api/v1/readers/r1")
        return r.json if r.status == 200 and r.json["link"] == "up" else None
    return await wait_for(up, 10, "reader r1 listed with its link up")


@pytest_twisted.ensureDeferred
async def test_presenting_a_card_is_refused_while_present_cards_is_off(reader_rig):
    rig = reader_rig
    client = rig.client()
    await _r1_up(client)
    assert (await client.get("/api/v1/site")).json["present_cards"] is False
    session = (await client.get("/api/v1/session")).json
    client.csrf = session["csrf_token"]              # a cookie-less local operator: the CSRF token still applies
    r = await client.request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"})
    assert r.status == 403 and "present_cards" in r.json["error"] and "off" in r.json["error"]
    reader = rig.sup.instances[("reader", "r1")].service
    assert reader.cards == 0 and reader.last_card is None


@pytest_twisted.ensureDeferred
async def test_a_card_presented_from_the_page_authorizes_the_waiting_car_and_a_blocked_one_is_refused(present_rig):
    rig = present_rig
    client = rig.client()
    assert (await client.login("alice")).status == 200
    await _r1_up(client)
    assert (await client.get("/api/v1/site")).json["present_cards"] is True
    await _waiting_at_s1(rig)

    r = await client.request("POST", "/api/v1/readers/r1/present", {"uid": "BADCAFE0"})
    assert r.status == 202 and r.json["name"] == "r1" and r.json["chargers"] == ["s1"]

    async def answered(tag):
        r = await client.get("/api/v1/readers/r1")
        card = r.json["last_card"]
        return card if card is not None and card["id_tag"] == tag else None
    card = await wait_for(lambda: answered("BADCAFE0"), 10, "the blocked card's answer in last_card")
    assert card["answer"] == "Blocked" and card["charger"] == "s1"
    s1 = rig.sup.instances[("charger", "s1")].service
    assert s1.sessions.session.state == "plugged"                   # still waiting: nothing was authorized

    r = await client.request("POST", "/api/v1/readers/r1/present", {"uid": "1c:78:f2:bf"})
    assert r.status == 202
    card = await wait_for(lambda: answered("1C78F2BF"), 10, "the good card's answer in last_card")
    assert card["answer"] == "Accepted" and card["charger"] == "s1"
    await wait_for(lambda: s1.sessions.session.state != "plugged", 10, "s1's session authorized")
    assert s1.sessions.session.id_tag == "1C78F2BF"
    stored = json.loads(await rig.get("reader/r1/state/last_card") or "null")
    assert stored is not None and stored["id_tag"] == "1C78F2BF" and stored["answer"] == "Accepted"

    # The same card again at once is the same presentation (never a stop right after a start).
    r = await client.request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"})
    assert r.status == 409 and "same card" in r.json["error"]
    assert rig.sup.instances[("reader", "r1")].service.cards == 2


@pytest_twisted.ensureDeferred
async def test_presenting_a_card_is_for_operators_with_the_csrf_token(present_rig):
    rig = present_rig
    alice = rig.client()
    await alice.login("alice")
    await _r1_up(alice)
    bob = rig.client()
    assert (await bob.login("bob")).status == 200
    r = await bob.request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"})
    assert r.status == 403 and "viewer" in r.json["error"]
    r = await rig.client().request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"},
                                   auth=("bob", "bob-secret-pw"))
    assert r.status == 403 and "viewer" in r.json["error"]
    r = await alice.request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"}, csrf=False)
    assert r.status == 403 and "X-CSRF-Token" in r.json["error"]
    r = await rig.client().request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"})
    assert r.status == 401
    assert rig.sup.instances[("reader", "r1")].service.cards == 0
    r = await rig.client().request("POST", "/api/v1/readers/r1/present", {"uid": "1C78F2BF"},
                                   auth=("alice", "alice-secret-pw"))     # a script with Basic auth: no CSRF
    assert r.status == 202


@pytest.mark.parametrize("body, says", [
    ({"uid": "XYZ"}, "uid: 'XYZ' is not a card's UID in hex"),
    ({"uid": "1C78F2B"}, "an even number"),
    ({"uid": ""}, "uid: '' is not"),
    ({"uid": "00" * 17}, "2 to 32 hex digits"),
    ({"uid": 12345678}, "uid: must be a string"),
    ({}, "uid: missing"),
    ({"uid": "1C78F2BF", "charger": "s1"}, "charger: not a member"),
    ([], "must be a JSON object"),
])
@pytest_twisted.ensureDeferred
async def test_a_bad_uid_or_body_is_refused(present_rig, body, says):
    rig = present_rig
    client = rig.client()
    await client.login("alice")
    r = await client.request("POST", "/api/v1/readers/r1/present", body)
    assert r.status == 400 and says in r.json["error"], r.json
    assert rig.sup.instances[("reader", "r1")].service.cards == 0


@pytest_twisted.ensureDeferred
async def test_presenting_at_a_reader_this_front_does_not_show_or_with_get_is_refused(present_rig):
    rig = present_rig
    client = rig.client()
    await client.login("alice")
    for name in ("r9", "r2"):                        # r2 serves only x9, which this front does not show
        r = await client.request("POST", f"/api/v1/readers/{name}/present", {"uid": "1C78F2BF"})
        assert r.status == 404 and name in r.json["error"]
    r = await client.get("/api/v1/readers/r1/present")
    assert r.status == 405


@pytest_twisted.ensureDeferred
async def test_presenting_at_a_reader_that_is_not_running_says_why(present_rig):
    rig = present_rig
    client = rig.client()
    await client.login("alice")
    for key, value in (("reader/r3/config/uid_format", "octal"), ("reader/r3/config/charger", "s1"),
                       ("reader/r3/config/remote", "127.0.0.1:9"), ("reader/r3/type", "line")):
        await rig.put(key, value)               # invalid from the start: r3 never runs and says why

    async def refused():
        r = await client.request("POST", "/api/v1/readers/r3/present", {"uid": "1C78F2BF"})
        return r if r.status == 409 and "uid_format" in r.json["error"] else None
    r = await wait_for(refused, 10, "the refusal naming r3's error")
    assert "reader r3 is not running" in r.json["error"]
