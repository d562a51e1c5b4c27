"""Roaming sessions and CDRs: PUT when authorized by the eMSP, PATCHed on changes and every session_update_s,
COMPLETED at the end, one CDR with the session's own energy; only the eMSP's sessions go out; an eMSP outage or an
EVC restart loses nothing and duplicates nothing."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.auth import authorize
from evc.front.ocpi.objects import errors_of
from ocpi_rig import Rig, wait_for
from test_tokens import info


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


async def _start(rig, **kw):
    s1 = await rig.site.charger("s1", meter_Wh=10000.0)
    await rig.start_front(**kw)
    await rig.registered()
    await rig.located()
    await rig.delivered()
    return s1


async def _roaming_card(rig, charger, uid="CAFE0001"):
    """A card the site does not know, presented at `charger`: the site asks (the eMSP allows), the charger is
    authorized with it (what a reader or an OCPP charger's Authorize leads to)."""
    rig.emsp.authorize_answers[uid] = info(uid)
    result = await defer.ensureDeferred(authorize(rig.site.ctx("charger", charger.ctx.name), uid, charger.ctx.name))
    assert result.accepted
    charger.authorize(uid)


def _session_requests(rig, sid, method=None):
    return rig.emsp.requests(method, f"/ocpi/2.2.1/sessions/DE/EVC/{sid}")


@pytest_twisted.ensureDeferred
async def test_a_roaming_session_is_put_patched_completed_and_billed_once(rig):
    s1 = await _start(rig, tariff={"price_per_kWh": 0.4, "vat_percent": 19})
    s1.plug()
    await _roaming_card(rig, s1)
    sid = s1.sessions.session.id
    await wait_for(lambda: _session_requests(rig, sid, "PUT"), 5, "the Session PUT")
    put = _session_requests(rig, sid, "PUT")[0].body
    assert errors_of("Session", put, "2.2.1") == []
    assert put["status"] == "ACTIVE" and put["kwh"] == 0 and put["auth_method"] == "AUTH_REQUEST"
    assert put["cdr_token"] == {"country_code": "NL", "party_id": "EMS", "uid": "CAFE0001", "type": "RFID",
                                "contract_id": "NL-EMS-CAFE0001"}
    assert put["authorization_reference"] == "REF-1" and put["evse_uid"] == "s1" and put["location_id"] == "SITE1"
    s1.charge(16.0, 0)
    s1.charge(16.0, 7250)            # the charger's own meter: 10000 -> 17250 Wh
    await wait_for(lambda: _session_requests(rig, sid, "PATCH"), 5, "a PATCH")
    s1.unplug()
    await wait_for(lambda: rig.emsp.cdr_posts, 5, "the CDR")
    await rig.delivered()
    patches = [r.body for r in _session_requests(rig, sid, "PATCH")]
    for p in patches:
        assert errors_of("Session", p, "2.2.1", partial=True) == []
    assert patches[-1]["status"] == "COMPLETED" and patches[-1]["kwh"] == 7.25 and "end_date_time" in patches[-1]
    assert len(rig.emsp.cdr_posts) == 1
    cdr = rig.emsp.cdr_posts[0]
    assert errors_of("CDR", cdr, "2.2.1") == []
    assert cdr["id"] == sid and cdr["session_id"] == sid and cdr["total_energy"] == 7.25
    assert cdr["total_cost"] == {"excl_vat": 2.9, "incl_vat": 3.451}
    assert cdr["cdr_location"]["evse_id"] == "DE*EVC*ES1" and cdr["tariffs"][0]["currency"] == "EUR"
    assert cdr["authorization_reference"] == "REF-1"
    rec = await rig.data(f"sessions/{sid}")
    assert rec["cdr_queued"] is True and rec["cdr_url"].endswith(f"/cdrs/{sid}")


@pytest_twisted.ensureDeferred
async def test_an_active_session_is_patched_every_session_update_s(rig):
    s1 = await _start(rig)
    s1.plug()
    await _roaming_card(rig, s1)
    s1.charge(16.0, 500)
    sid = s1.sessions.session.id
    await wait_for(lambda: len(_session_requests(rig, sid, "PATCH")) >= 3, 6, "periodic PATCHes")
    assert {p.body["status"] for p in _session_requests(rig, sid, "PATCH")} == {"ACTIVE"}


@pytest_twisted.ensureDeferred
async def test_a_session_not_authorized_by_the_emsp_is_not_sent(rig):
    s1 = await _start(rig)
    s1.plug()
    s1.authorize("LOCALCARD")           # authorized by the site itself (its token list, the page)
    s1.charge(16.0, 1000)
    s1.unplug()
    await rig.delivered()
    assert rig.emsp.requests(None, "/ocpi/2.2.1/sessions") == [] and rig.emsp.cdr_posts == []


@pytest_twisted.ensureDeferred
async def test_the_emsp_down_while_a_session_ends_gets_the_cdr_later_once(rig):
    s1 = await _start(rig)
    s1.plug()
    await _roaming_card(rig, s1)
    s1.charge(16.0, 3000)
    await rig.delivered()
    rig.emsp.mode = "down"
    s1.unplug()
    await wait_for(lambda: rig.state.values.get("last_push_error", "").endswith("HTTP 503"), 5, "a failed push")
    assert rig.emsp.cdr_posts == []
    assert "queue" in rig.state.values and rig.state.values["queue"] >= 2
    rig.emsp.mode = "ok"
    await wait_for(lambda: rig.emsp.cdr_posts, 10, "the CDR after the outage")
    await rig.delivered()
    assert len(rig.emsp.cdr_posts) == 1 and rig.emsp.cdr_posts[0]["total_energy"] == 3.0
    assert "last_push_error" not in rig.state.values


@pytest_twisted.ensureDeferred
async def test_garbage_answers_are_retried(rig):
    s1 = await _start(rig)
    s1.plug()
    rig.emsp.mode = "garbage"
    await _roaming_card_when_garbage(rig, s1)
    await wait_for(lambda: "without an OCPI envelope" in rig.state.values.get("last_push_error", ""), 5, "garbage")
    rig.emsp.mode = "ok"
    await rig.delivered()
    assert rig.emsp.sessions[s1.sessions.session.id]["status"] == "ACTIVE"


async def _roaming_card_when_garbage(rig, s1):
    # The eMSP answers garbage to authorize too: a whitelisted token it pushed earlier lets the driver start.
    tok = {"country_code": "NL", "party_id": "EMS", "uid": "AB12", "type": "RFID", "contract_id": "C-AB12",
           "issuer": "EMS", "valid": True, "whitelist": "ALLOWED_OFFLINE", "last_updated": "2026-01-01T00:00:00Z"}
    await rig.front.tokens.put(tok, "NL", "EMS", "AB12", "2.2.1")
    result = await defer.ensureDeferred(authorize(rig.site.ctx("charger", "s1"), "AB12", "s1"))
    assert result.accepted
    s1.authorize("AB12")


@pytest_twisted.ensureDeferred
async def test_evc_restarted_with_pushes_queued_sends_them_in_order_once(rig):
    s1 = await _start(rig)
    s1.plug()
    await _roaming_card(rig, s1)
    sid = s1.sessions.session.id
    await rig.delivered()
    rig.emsp.mode = "down"
    s1.charge(16.0, 1000)
    s1.set(vehicle="fault", fault="ventilation")
    s1.unplug()
    await wait_for(lambda: len(rig.front.pusher) >= 3, 5, "pushes queued")
    queued = [e.payload["what"] for e in rig.front.pusher.outbox.entries]
    await rig.stop_front()
    assert len(await rig.data_keys("queue/")) == len(queued)
    rig.emsp.mode = "ok"
    n_before = len(rig.emsp.seen)
    await rig.start_front()
    await rig.delivered()
    after = [f"{r.method} {r.path}" for r in rig.emsp.seen[n_before:] if r.answered == 200 and r.method != "GET"]
    assert len(after) == len(queued)
    assert [w.split(" ")[0] for w in queued] == [a.split(" ")[0] for a in after]      # the same order
    assert len(rig.emsp.cdr_posts) == 1 and rig.emsp.sessions[sid]["status"] == "COMPLETED"
    assert await rig.data_keys("queue/") == []


@pytest_twisted.ensureDeferred
async def test_the_emsp_can_pull_sessions_and_cdrs(rig):
    s1 = await _start(rig)
    s1.plug()
    await _roaming_card(rig, s1)
    s1.charge(16.0, 2000)
    s1.unplug()
    await rig.delivered()
    code, hdrs, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/cdrs")
    assert code == 200 and len(doc["data"]) == 1 and hdrs["x-total-count"] == "1"
    assert doc["data"][0]["total_energy"] == 2.0
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/sessions?limit=10")
    assert code == 200 and doc["data"][0]["status"] == "COMPLETED"


@pytest_twisted.ensureDeferred
async def test_a_session_and_its_cdr_in_2_1_1(etcd_session, etcd_root):
    rig = Rig(etcd_session.url, etcd_root, versions=("2.1.1",))
    try:
        s1 = await _start(rig, tariff={"price_per_kWh": 0.5})
        s1.plug()
        await _roaming_card(rig, s1, "CAFE0211")
        sid = s1.sessions.session.id
        s1.charge(16.0, 4000)
        s1.unplug()
        await wait_for(lambda: rig.emsp.cdr_posts, 5, "the CDR")
        await rig.delivered()
        put = rig.emsp.requests("PUT", f"/ocpi/2.1.1/sessions/DE/EVC/{sid}")[0].body
        assert errors_of("Session", put, "2.1.1") == []
        assert put["auth_id"] == "NL-EMS-CAFE0211" and put["location"]["evses"][0]["uid"] == "s1"
        cdr = rig.emsp.cdr_posts[0]
        assert errors_of("CDR", cdr, "2.1.1") == []
        assert cdr["total_energy"] == 4.0 and cdr["total_cost"] == 2.0 and "stop_date_time" in cdr
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_emsp_times_pushes_out_and_blocks_nothing_else(rig):
    s1 = await _start(rig, request_timeout_s=1)
    rig.emsp.mode = "slow"
    s1.plug()                                   # an EVSE PATCH: it hangs at the eMSP
    await wait_for(lambda: rig.emsp.slow, 5, "a push hanging at the eMSP")
    # Meanwhile the site goes on: EVC's endpoints answer, the charger's sessions are written.
    rig.emsp.mode = "ok"
    code, _, _ = await rig.emsp.call_evc("GET", f"{rig.evc}/versions")
    assert code == 200
    s1.authorize("LOCAL")
    assert s1.sessions.session.authorized
    await wait_for(lambda: "no answer within 1 s" in rig.state.values.get("last_push_error", ""), 5, "the timeout")
    await rig.delivered()
    assert [r.body["status"] for r in rig.emsp.requests("PATCH", "/ocpi/2.2.1/locations")
            if r.answered == 200] == ["CHARGING"]


@pytest_twisted.ensureDeferred
async def test_a_session_that_ended_while_the_front_was_stopped_is_completed_and_billed_at_its_start(rig):
    s1 = await _start(rig)
    s1.plug()
    await _roaming_card(rig, s1)
    sid = s1.sessions.session.id
    await rig.delivered()
    await rig.stop_front()                      # the front alone restarts (a config change)
    s1.charge(16.0, 2500)
    s1.unplug()
    await wait_for(lambda: s1.sessions._writing is None and not s1.sessions._dirty, 5, "the session stored")
    await rig.start_front()
    await wait_for(lambda: rig.emsp.cdr_posts, 5, "the CDR")
    await rig.delivered()
    assert rig.emsp.sessions[sid]["status"] == "COMPLETED" and rig.emsp.cdr_posts[0]["total_energy"] == 2.5
    assert len(rig.emsp.cdr_posts) == 1


@pytest_twisted.ensureDeferred
async def test_the_tariff_is_served_and_valid(rig):
    await _start(rig, tariff={"price_per_kWh": 0.39, "price_per_hour": 1.2, "vat_percent": 19})
    code, hdrs, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/tariffs")
    assert code == 200 and hdrs["x-total-count"] == "1"
    tariff = doc["data"][0]
    assert errors_of("Tariff", tariff, "2.2.1") == []
    assert [(c["type"], c["price"], c["vat"]) for c in tariff["elements"][0]["price_components"]] == [
        ("ENERGY", 0.39, 19.0), ("TIME", 1.2, 19.0)]
    await wait_for(lambda: rig.emsp.requests("PUT", "/ocpi/2.2.1/locations"), 5, "the Location PUT")
    loc = rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")[0].body
    assert loc["evses"][0]["connectors"][0]["tariff_ids"] == ["default"]
