"""Tokens: the eMSP's PUT/PATCH stored under data/, bad input refused with 2001/2004; real-time authorization
through the site's one authorization path (evc.auth.authorize), and the whitelist rules when the eMSP cannot
answer (down, slow)."""
from __future__ import annotations

import time
import types

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.auth import authorize
from ocpi_rig import Rig, wait_for

T = "2026-01-31T12:00:00Z"


def token(uid="04A1B2C3", whitelist="ALLOWED_OFFLINE", valid=True, **kw):
    return {"country_code": "NL", "party_id": "EMS", "uid": uid, "type": "RFID", "contract_id": f"NL-EMS-{uid}",
            "issuer": "EMS", "valid": valid, "whitelist": whitelist, "last_updated": T, **kw}


def info(uid="04A1B2C3", allowed="ALLOWED", ref="REF-1"):
    return {"allowed": allowed, "token": token(uid), "authorization_reference": ref}


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    pytest_twisted.blockon(defer.ensureDeferred(_start(made)))
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


async def _start(rig):
    await rig.site.charger("s1")
    await rig.start_front()
    await rig.registered()


async def _put(rig, doc, uid=None):
    return await rig.emsp.call_evc("PUT", f"{rig.evc}/2.2.1/tokens/NL/EMS/{uid or doc['uid']}", doc)


def _auth(rig, id_tag, charger="s1"):
    ctx = rig.site.ctx("charger", charger)
    return defer.ensureDeferred(authorize(ctx, id_tag, charger))


# -- the eMSP pushes tokens --

@pytest_twisted.ensureDeferred
async def test_a_pushed_token_is_stored_in_data_and_served_back(rig):
    code, _, doc = await _put(rig, token())
    assert code == 200 and doc["status_code"] == 1000
    keys = await rig.data_keys("tokens/")
    assert keys == [f"{rig.root}/front/roaming/data/tokens/NL/EMS/04A1B2C3/RFID"]
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/tokens/NL/EMS/04A1B2C3")
    assert code == 200 and doc["data"]["whitelist"] == "ALLOWED_OFFLINE"


@pytest_twisted.ensureDeferred
async def test_a_patch_changes_a_stored_token(rig):
    await _put(rig, token())
    code, _, doc = await rig.emsp.call_evc("PATCH", f"{rig.evc}/2.2.1/tokens/NL/EMS/04A1B2C3",
                                           {"valid": False, "last_updated": "2026-02-01T00:00:00Z"})
    assert code == 200
    assert rig.front.tokens.get("NL", "EMS", "04A1B2C3")["valid"] is False


@pytest_twisted.ensureDeferred
async def test_a_patch_without_last_updated_is_2001(rig):
    await _put(rig, token())
    code, _, doc = await rig.emsp.call_evc("PATCH", f"{rig.evc}/2.2.1/tokens/NL/EMS/04A1B2C3", {"valid": False})
    assert code == 400 and doc["status_code"] == 2001 and "last_updated" in doc["status_message"]
    assert rig.front.tokens.get("NL", "EMS", "04A1B2C3")["valid"] is True


@pytest_twisted.ensureDeferred
async def test_a_patch_of_an_unknown_token_is_2004(rig):
    code, _, doc = await rig.emsp.call_evc("PATCH", f"{rig.evc}/2.2.1/tokens/NL/EMS/NOPE",
                                           {"valid": False, "last_updated": T})
    assert code == 404 and doc["status_code"] == 2004


@pytest.mark.parametrize("bad", [
    {"whitelist": "SOMETIMES"}, {"uid": "X" * 37}, {"valid": "yes"}, {"last_updated": "yesterday"},
    {"issuer": None}])
@pytest_twisted.ensureDeferred
async def test_an_invalid_token_is_2001_and_nothing_is_stored(rig, bad):
    doc = {**token(), **bad}
    code, _, answer = await _put(rig, doc, uid="04A1B2C3")
    assert code == 400 and answer["status_code"] == 2001
    assert rig.front.tokens.tokens == {} and await rig.data_keys("tokens/") == []


@pytest_twisted.ensureDeferred
async def test_a_malformed_body_is_2001(rig):
    code, _, answer = await rig.emsp.call_evc("PUT", f"{rig.evc}/2.2.1/tokens/NL/EMS/X1", raw=b"[1, 2")
    assert code == 400 and answer["status_code"] == 2001
    code, _, answer = await rig.emsp.call_evc("PUT", f"{rig.evc}/2.2.1/tokens/NL/EMS/OTHER", token())
    assert code == 400 and answer["status_code"] == 2001 and "uid" in answer["status_message"]
    assert rig.front.tokens.tokens == {}


# -- real-time authorization --

@pytest_twisted.ensureDeferred
async def test_an_unknown_card_is_authorized_in_real_time_by_the_emsp(rig):
    rig.emsp.authorize_answers["CAFE0001"] = info("CAFE0001")
    result = await _auth(rig, "CAFE0001")
    assert result.status == "Accepted" and result.source == "front/roaming"
    req = rig.emsp.requests("POST", "/ocpi/2.2.1/tokens/CAFE0001/authorize")[0]
    assert req.body == {"location_id": "SITE1", "evse_uids": ["s1"]}
    assert rig.front.claims["s1"]["authorization_reference"] == "REF-1"
    assert rig.front.claims["s1"]["token"]["contract_id"] == "NL-EMS-CAFE0001"


@pytest.mark.parametrize("allowed,status", [("BLOCKED", "Blocked"), ("EXPIRED", "Expired"),
                                            ("NO_CREDIT", "Invalid"), ("NOT_ALLOWED", "Invalid")])
@pytest_twisted.ensureDeferred
async def test_the_emsps_refusals_map_onto_the_site(rig, allowed, status):
    rig.emsp.authorize_answers["CAFE0002"] = info("CAFE0002", allowed=allowed)
    assert (await _auth(rig, "CAFE0002")).status == status
    assert "s1" not in rig.front.claims


@pytest_twisted.ensureDeferred
async def test_a_card_the_emsp_does_not_know_falls_to_the_local_list(rig):
    result = await _auth(rig, "DEADBEEF")
    assert result.status == "Invalid" and result.source == "local"
    assert rig.emsp.requests("POST", "/ocpi/2.2.1/tokens/DEADBEEF/authorize")[0].answered == 404


@pytest_twisted.ensureDeferred
async def test_a_card_of_the_sites_own_list_is_not_asked_upstream(rig):
    rig.site.tokens["CARD0001"] = types.SimpleNamespace(config=types.SimpleNamespace(status="Accepted"))
    result = await _auth(rig, "CARD0001")
    assert result.status == "Accepted" and result.source == "local"
    assert rig.emsp.requests("POST", "/ocpi/2.2.1/tokens") == []


@pytest_twisted.ensureDeferred
async def test_a_whitelist_always_token_is_answered_without_asking(rig):
    await _put(rig, token("AA01", whitelist="ALWAYS"))
    assert (await _auth(rig, "AA01")).status == "Accepted"
    await _put(rig, token("AA02", whitelist="ALLOWED", valid=False))
    assert (await _auth(rig, "AA02")).status == "Invalid"
    assert rig.emsp.requests("POST", "/ocpi/2.2.1/tokens") == []
    assert rig.front.claims["s1"]["auth_method"] == "WHITELIST"


@pytest_twisted.ensureDeferred
async def test_while_the_emsp_is_down_allowed_offline_accepts_and_never_refuses(rig):
    await _put(rig, token("BB01", whitelist="ALLOWED_OFFLINE"))
    await _put(rig, token("BB02", whitelist="NEVER"))
    rig.emsp.mode = "down"
    assert (await _auth(rig, "BB01")).status == "Accepted"
    assert (await _auth(rig, "BB02")).status == "Invalid"
    assert (await _auth(rig, "BB03")).status == "Invalid"        # unknown: the local list answers
    assert len(rig.emsp.requests("POST", "/ocpi/2.2.1/tokens")) == 3     # each one was tried first


@pytest_twisted.ensureDeferred
async def test_a_slow_emsp_is_waited_for_authorize_timeout_s_and_blocks_nothing_else(rig):
    await _put(rig, token("CC01", whitelist="ALLOWED_OFFLINE"))
    rig.emsp.mode = "slow"
    started = time.monotonic()
    d = _auth(rig, "CC01")
    await wait_for(lambda: rig.emsp.slow, 5, "the authorize request at the eMSP")
    # Meanwhile EVC's own endpoints answer (the reactor is not blocked).
    rig.emsp.mode = "ok"
    code, _, _ = await rig.emsp.call_evc("GET", f"{rig.evc}/versions")
    assert code == 200 and not d.called
    result = await d
    assert result.status == "Accepted"                      # ALLOWED_OFFLINE: the stored token decides
    assert 0.9 <= time.monotonic() - started < 3            # authorize_timeout_s is 1 in the rig


@pytest_twisted.ensureDeferred
async def test_garbage_from_the_emsp_falls_back_to_the_whitelist(rig):
    await _put(rig, token("DD01", whitelist="ALLOWED_OFFLINE"))
    rig.emsp.mode = "garbage"
    assert (await _auth(rig, "DD01")).status == "Accepted"
    assert (await _auth(rig, "DD02")).status == "Invalid"


@pytest_twisted.ensureDeferred
async def test_an_invalid_authorization_info_is_not_trusted(rig):
    rig.emsp.authorize_answers["EE01"] = {"allowed": "MAYBE", "token": token("EE01")}
    assert (await _auth(rig, "EE01")).status == "Invalid"
    assert "s1" not in rig.front.claims


@pytest_twisted.ensureDeferred
async def test_tokens_survive_a_restart(rig):
    await _put(rig, token("FF01", whitelist="ALWAYS"))
    await rig.stop_front()
    await rig.start_front()
    assert rig.front.tokens.get("NL", "EMS", "FF01")["whitelist"] == "ALWAYS"
