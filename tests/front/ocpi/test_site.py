"""End to end with the site simulators: twistd's supervisor on a real etcd, an EVSE on a simulated RS485 bus with
its own meter, a car, control; front/roaming (type ocpi) configured through etcd leaves as an operator would, and
the fake eMSP on real TCP. A remote START_SESSION, charging, session updates with the meter's energy, the eMSP down
when the car leaves, the CDR delivered once when it is back, with the charger's own energy."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.etcdserver import free_port
from evc.front.ocpi.objects import errors_of
from evc.testing import wait_for
from evc.sim.emsp import FakeEmsp
from test_tokens import token
from web_helpers import Rig as SiteRig


def _site(etcd_session, etcd_root, reader_port=None):
    from twisted.internet import reactor
    emsp = FakeEmsp(reactor).start()
    port = free_port()
    leaves = {
        "charger/s1/config/mode": "ON",
        "front/roaming/type": "ocpi",
        "front/roaming/config/versions_url": emsp.versions_url,
        "front/roaming/config/token_a": emsp.token_a,
        "front/roaming/config/country_code": "DE",
        "front/roaming/config/party_id": "EVC",
        "front/roaming/config/listen": f"127.0.0.1:{port}",
        "front/roaming/config/public_url": f"http://127.0.0.1:{port}",
        "front/roaming/config/chargers": '["s1"]',
        "front/roaming/config/location/id": "SITE1",
        "front/roaming/config/location/address": "Main St 1",
        "front/roaming/config/location/city": "Berlin",
        "front/roaming/config/location/country": "DEU",
        "front/roaming/config/location/coordinates/latitude": "52.52",
        "front/roaming/config/location/coordinates/longitude": "13.405",
        "front/roaming/config/tariff/price_per_kWh": "0.39",
        "front/roaming/config/session_update_s": "1",
        "front/roaming/config/retry_min_s": "0.1",
        "front/roaming/config/retry_max_s": "0.5",
    }
    if reader_port is not None:
        # A line reader (a USB-serial RFID reader) behind a serial-over-TCP tunnel, serving s1.
        leaves.update({"reader/r1/type": "line", "reader/r1/config/remote": f"127.0.0.1:{reader_port}",
                       "reader/r1/config/charger": "s1"})
    rig = SiteRig(etcd_session.url, etcd_root, extra=leaves)
    rig.emsp = emsp
    rig.evc = f"http://127.0.0.1:{port}/ocpi"
    pytest_twisted.blockon(defer.ensureDeferred(rig.start()))
    return rig


def _down(rig):
    pytest_twisted.blockon(defer.ensureDeferred(rig.stop()))
    pytest_twisted.blockon(defer.ensureDeferred(rig.emsp.stop()))


@pytest.fixture
def site(etcd_session, etcd_root):
    rig = _site(etcd_session, etcd_root)
    yield rig
    _down(rig)


@pytest.fixture
def reader_site(etcd_session, etcd_root):
    from twisted.internet import reactor
    from evc.sim.rfid import SimLineReader
    card = SimLineReader(reactor)
    rig = _site(etcd_session, etcd_root, reader_port=card.line.listen(0))
    rig.card = card
    yield rig
    _down(rig)
    card.close()


def _front(rig):
    r = rig.sup.instances.get(("front", "roaming"))
    return r.service if r else None


@pytest_twisted.ensureDeferred
async def test_a_roaming_driver_starts_charges_and_is_billed_end_to_end(site):
    emsp = site.emsp
    await wait_for(lambda: _front(site) is not None and _front(site).registrar.creds is not None, 15,
                   "front/roaming registered")
    async def registered_in_state():
        return await site.get("front/roaming/state/registration") == "registered"
    await wait_for(registered_in_state, 5, "state/registration in etcd")
    await wait_for(lambda: emsp.requests("PUT", "/ocpi/2.2.1/locations/DE/EVC/SITE1"), 10, "the Location")
    loc = emsp.requests("PUT", "/ocpi/2.2.1/locations/DE/EVC/SITE1")[0].body
    assert errors_of("Location", loc, "2.2.1") == [] and [e["uid"] for e in loc["evses"]] == ["s1"]
    assert loc["evses"][0]["connectors"][0]["max_amperage"] == 32
    # The car is plugged at s1 (auth token): nothing charges until the eMSP starts it.
    body = {"response_url": f"{emsp.base}/2.2.1/commands/START_SESSION/1",
            "token": token("APPDRIVER1", whitelist="NEVER", type="APP_USER"), "location_id": "SITE1",
            "evse_uid": "s1"}
    code, _, doc = await emsp.call_evc("POST", f"{site.evc}/2.2.1/commands/START_SESSION", body)
    assert code == 200 and doc["data"]["result"] == "ACCEPTED"
    await wait_for(lambda: emsp.command_results, 10, "the CommandResult")
    assert emsp.command_results[0][1]["result"] == "ACCEPTED"

    def charging_session():
        s = [v for v in emsp.sessions.values() if v.get("kwh", 0) > 0]
        return s[0] if s else None

    session = await wait_for(charging_session, 30, "a Session PATCH with energy from the charger's meter")
    sid = session["id"]
    assert session["status"] == "ACTIVE" and session["auth_method"] == "COMMAND"
    assert errors_of("Session", session, "2.2.1") == []
    # The eMSP goes down; the car leaves; the CDR waits in the queue (in etcd) and goes out once it is back.
    emsp.mode = "down"
    site.sim.unplug("car1")

    async def ended():
        raw = await site.get(f"charger/s1/data/sessions/{sid}")
        doc = json.loads(raw) if raw else None
        return doc if doc and doc["state"] == "ended" else None

    record = await wait_for(ended, 15, "the charger's session ended")
    await wait_for(lambda: _front(site).pusher.waiting("cdrs"), 10, "the CDR queued")
    assert emsp.cdr_posts == []
    assert any(k.startswith("front/roaming/data/queue/") for k in await site.keys("front/roaming/data/queue/"))
    emsp.mode = "ok"
    await wait_for(lambda: emsp.cdr_posts, 15, "the CDR delivered after the outage")
    await wait_for(lambda: len(_front(site).pusher) == 0, 10, "the queue empty")
    assert len(emsp.cdr_posts) == 1
    cdr = emsp.cdr_posts[0]
    assert errors_of("CDR", cdr, "2.2.1") == []
    assert cdr["id"] == sid and cdr["total_energy"] == round(record["energy_Wh"] / 1000, 3) > 0
    assert cdr["total_cost"]["excl_vat"] == round(cdr["total_energy"] * 0.39, 4)
    assert emsp.sessions[sid]["status"] == "COMPLETED"
    # Nothing of the credentials is in state/.
    state = await site.keys("front/roaming/state/")
    creds = _front(site).registrar.creds
    assert not any(creds.token_c in v or creds.token_b in v for v in state.values())


@pytest_twisted.ensureDeferred
async def test_a_roaming_card_at_a_reader_is_authorized_by_the_emsp_charges_and_is_billed(reader_site):
    site, emsp = reader_site, reader_site.emsp
    await wait_for(lambda: emsp.requests("PUT", "/ocpi/2.2.1/locations/DE/EVC/SITE1"), 15, "the Location")

    async def reader_up():
        return await site.get("reader/r1/state/link") == "up"
    await wait_for(reader_up, 10, "reader/r1 connected to its tunnel")
    # A card the site's token list does not know: the eMSP answers in real time.
    emsp.authorize_answers["04A1B2C3DD"] = {"allowed": "ALLOWED", "token": token("04A1B2C3DD"),
                                            "authorization_reference": "AUTH-77"}
    site.card.present("04A1B2C3DD")

    async def answered():
        raw = await site.get("reader/r1/state/last_card")
        return json.loads(raw) if raw else None
    last = await wait_for(answered, 10, "the reader's answer")
    assert last["answer"] == "Accepted" and last["charger"] == "s1"
    assert emsp.requests("POST", "/ocpi/2.2.1/tokens/04A1B2C3DD/authorize")

    def charging_session():
        s = [v for v in emsp.sessions.values() if v.get("kwh", 0) > 0]
        return s[0] if s else None
    session = await wait_for(charging_session, 30, "a Session with energy from the charger's meter")
    assert session["auth_method"] == "AUTH_REQUEST" and session["authorization_reference"] == "AUTH-77"
    assert session["cdr_token"]["uid"] == "04A1B2C3DD" and errors_of("Session", session, "2.2.1") == []
    site.sim.unplug("car1")
    await wait_for(lambda: emsp.cdr_posts, 20, "the CDR")
    cdr = emsp.cdr_posts[0]
    raw = await site.get(f"charger/s1/data/sessions/{session['id']}")
    assert cdr["id"] == session["id"] and cdr["total_energy"] == round(json.loads(raw)["energy_Wh"] / 1000, 3) > 0
    assert errors_of("CDR", cdr, "2.2.1") == [] and len(emsp.cdr_posts) == 1
