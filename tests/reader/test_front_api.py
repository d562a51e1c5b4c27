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


@pytest.fixture
def reader_rig(etcd_session, etcd_root, monkeypatch):
    monkeypatch.setattr(SerialLink, "reopen_min_s", 0.05)
    from twisted.internet import reactor
    sim = SimLineReader(reactor)
    port = sim.line.listen(0)
    made = Rig(etcd_session.url, etcd_root, users=False, extra={
        "reader/r1/type": "line",
        "reader/r1/config/remote": f"127.0.0.1:{port}",
        "reader/r1/config/charger": "s1",
        "reader/r2/type": "line",                       # serves only a charger this front does not show
        "reader/r2/config/remote": f"127.0.0.1:{port}",
        "reader/r2/config/charger": "x9",
        "token/1C78F2BF/config/owner": "Bo",
    })
    made.card_sim = sim
    pytest_twisted.blockon(defer.ensureDeferred(made.start()))
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))
    pytest_twisted.blockon(sim.close())


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
