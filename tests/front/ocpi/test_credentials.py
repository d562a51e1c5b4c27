"""Registration in both directions, on real etcd and real TCP: token A, B and C, versions, 401/405 rules, PUT
rotation, DELETE, failures to state/error with backoff; credentials live in data/, never in state/ or logs."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.front.ocpi.transport import token_header
from ocpi_rig import Rig, wait_for


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


def _no_secret_anywhere(rig, log_events, *secrets):
    from twisted.logger import formatEvent
    text = "\n".join(formatEvent(e) for e in log_events)
    state = repr(rig.state.values)
    for s in secrets:
        assert s not in text, "a token reached the log"
        assert s not in state, "a token reached state/"


@pytest_twisted.ensureDeferred
async def test_evc_registers_itself_with_token_a_and_keeps_token_c_in_data(rig, log_events):
    await rig.start_front()
    creds = await rig.registered()
    emsp = rig.emsp
    assert creds.version == "2.2.1" and creds.token_c == emsp.token_c and creds.token_b == emsp.token_b
    assert emsp.evc_endpoints["locations"].endswith("/ocpi/2.2.1/locations")     # it called EVC back with B
    stored = await rig.data("credentials")
    assert stored["token_c"] == emsp.token_c and stored["party"]["party_id"] == "EMS"
    assert rig.state.values["registration"] == "registered" and rig.state.values["emsp"] == "NL*EMS"
    assert "error" not in rig.state.values
    post = emsp.requests("POST", "/ocpi/2.2.1/credentials")[0]
    assert post.header("authorization") == token_header(emsp.token_a, "2.2.1")
    assert post.body["roles"][0]["role"] == "CPO" and post.body["url"] == rig.front.versions_url
    assert "ocpi-from-party-id" not in post.headers            # never on credentials / versions
    _no_secret_anywhere(rig, log_events, emsp.token_a, emsp.token_b, emsp.token_c)


@pytest_twisted.ensureDeferred
async def test_the_highest_common_version_up_to_the_configured_one_is_chosen(etcd_session, etcd_root):
    rig = Rig(etcd_session.url, etcd_root, versions=("2.1.1",))
    try:
        await rig.start_front()
        creds = await rig.registered()
        assert creds.version == "2.1.1"
        post = rig.emsp.requests("POST", "/ocpi/2.1.1/credentials")[0]
        assert post.header("authorization") == f"Token {rig.emsp.token_a}"      # raw in 2.1.1
        assert post.body["party_id"] == "EVC" and "roles" not in post.body
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_configured_2_1_1_is_used_even_when_the_emsp_offers_2_2_1(rig):
    await rig.start_front(version="2.1.1")
    assert (await rig.registered()).version == "2.1.1"


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_a_goes_to_state_error_and_is_retried_with_backoff(rig):
    await rig.start_front(token_a="not-the-token")
    await wait_for(lambda: "error" in rig.state.values, 5, "state/error")
    assert "HTTP 401" in rig.state.values["error"] and rig.state.values["registration"] == "failed"
    assert "not-the-token" not in rig.state.values["error"]
    n = len(rig.emsp.requests("GET", "/ocpi/versions"))
    await wait_for(lambda: len(rig.emsp.requests("GET", "/ocpi/versions")) >= n + 2, 5, "two more attempts")
    assert rig.front.registrar.creds is None


@pytest_twisted.ensureDeferred
async def test_an_unreachable_emsp_is_retried_until_it_answers(rig):
    rig.emsp.mode = "down"
    await rig.start_front()
    await wait_for(lambda: "HTTP 503" in rig.state.values.get("error", ""), 5, "the 503 in state/error")
    rig.emsp.mode = "ok"
    await rig.registered()
    await wait_for(lambda: "error" not in rig.state.values, 5, "state/error cleared")


@pytest_twisted.ensureDeferred
async def test_no_common_version_is_reported(etcd_session, etcd_root):
    rig = Rig(etcd_session.url, etcd_root, versions=("2.2.1",))
    try:
        await rig.start_front(version="2.1.1")
        await wait_for(lambda: "no OCPI version in common" in rig.state.values.get("error", ""), 5, "the error")
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_registration_survives_a_restart(rig):
    await rig.start_front()
    creds = await rig.registered()
    await rig.stop_front()
    await rig.start_front()
    assert rig.front.registrar.creds.token_c == creds.token_c
    assert len(rig.emsp.requests("POST", "/ocpi/2.2.1/credentials")) == 1      # not registered a second time


# -- EVC's own endpoints --

@pytest_twisted.ensureDeferred
async def test_requests_without_or_with_a_wrong_token_get_401_and_change_nothing(rig):
    await rig.start_front()
    await rig.registered()
    emsp = rig.emsp
    for token in ("wrong-token", None):
        headers = {"Authorization": None} if token is None else {}
        code, hdrs, doc = await emsp.call_evc("GET", f"{rig.evc}/versions", token=token, headers=headers)
        assert code == 401 and doc["status_code"] == 2000 and "timestamp" in doc
        assert hdrs["x-request-id"] and hdrs["x-correlation-id"]
    token = {"country_code": "NL", "party_id": "EMS", "uid": "X1", "type": "RFID", "contract_id": "C1",
             "issuer": "EMS", "valid": True, "whitelist": "ALWAYS", "last_updated": "2026-01-01T00:00:00Z"}
    code, _, _ = await emsp.call_evc("PUT", f"{rig.evc}/2.2.1/tokens/NL/EMS/X1", token, token="wrong")
    assert code == 401 and rig.front.tokens.get("NL", "EMS", "X1") is None


@pytest_twisted.ensureDeferred
async def test_answers_echo_the_request_ids(rig):
    await rig.start_front()
    await rig.registered()
    code, hdrs, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/versions",
                                              headers={"X-Request-ID": "r-1", "X-Correlation-ID": "c-1"})
    assert code == 200 and hdrs["x-request-id"] == "r-1" and hdrs["x-correlation-id"] == "c-1"
    assert [v["version"] for v in doc["data"]] == ["2.2.1", "2.1.1"]


@pytest_twisted.ensureDeferred
async def test_the_token_is_accepted_raw_or_base64(rig):
    await rig.start_front()
    creds = await rig.registered()
    for header in (f"Token {creds.token_b}", token_header(creds.token_b, "2.2.1")):
        code, _, _ = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1", headers={"Authorization": header})
        assert code == 200


@pytest_twisted.ensureDeferred
async def test_the_emsp_registers_with_incoming_token_a_once(rig):
    token_a = "incoming-token-a-0123456789"
    await rig.start_front(versions_url=None, token_a=None, incoming_token_a=token_a)
    emsp = rig.emsp
    emsp.token_c = "EMSP-TOKEN-FOR-EVC"          # what the eMSP gives EVC to call it with
    code, _, doc = await emsp.call_evc("GET", f"{rig.evc}/versions", token=token_a)
    assert code == 200
    code, _, doc = await emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations", token=token_a)
    assert code == 401                            # token A opens the credentials module only
    body = emsp.our_credentials("2.2.1", emsp.token_c)
    code, _, doc = await emsp.call_evc("POST", f"{rig.evc}/2.2.1/credentials", body, token=token_a)
    assert code == 200 and doc["status_code"] == 1000, doc
    token_b = doc["data"]["token"]
    assert doc["data"]["roles"][0]["party_id"] == "EVC"
    creds = rig.front.registrar.creds
    assert creds.token_c == "EMSP-TOKEN-FOR-EVC" and creds.token_b == token_b
    assert emsp.requests("GET", "/ocpi/versions")[-1].header("authorization") == \
        token_header("EMSP-TOKEN-FOR-EVC", "2.2.1")                               # EVC read its endpoints
    # Token A is dead now, even for versions; a second POST is 405.
    code, _, _ = await emsp.call_evc("GET", f"{rig.evc}/versions", token=token_a)
    assert code == 401
    code, _, _ = await emsp.call_evc("POST", f"{rig.evc}/2.2.1/credentials", body, token=token_b)
    assert code == 405
    # After DELETE, the used token A still does not open a new registration.
    code, _, _ = await emsp.call_evc("DELETE", f"{rig.evc}/2.2.1/credentials", token=token_b)
    assert code == 200 and rig.front.registrar.creds is None
    assert await rig.data("credentials") is None
    code, _, _ = await emsp.call_evc("POST", f"{rig.evc}/2.2.1/credentials", body, token=token_a)
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_put_rotates_the_tokens_and_rereads_the_endpoints(rig):
    await rig.start_front()
    creds = await rig.registered()
    emsp = rig.emsp
    old_b = creds.token_b
    emsp.token_c = "ROTATED-TOKEN-C"
    body = emsp.our_credentials("2.2.1", "ROTATED-TOKEN-C")
    n = len(emsp.requests("GET", "/ocpi/2.2.1"))
    code, _, doc = await emsp.call_evc("PUT", f"{rig.evc}/2.2.1/credentials", body, token=old_b)
    assert code == 200 and doc["data"]["token"] != old_b
    assert rig.front.registrar.creds.token_c == "ROTATED-TOKEN-C"
    assert len(emsp.requests("GET", "/ocpi/2.2.1")) == n + 1
    code, _, _ = await emsp.call_evc("GET", f"{rig.evc}/2.2.1/credentials", token=old_b)
    assert code == 401                               # the old token B is gone
    code, _, doc = await emsp.call_evc("GET", f"{rig.evc}/2.2.1/credentials", token=doc["data"]["token"])
    assert code == 200 and (await rig.data("credentials"))["token_c"] == "ROTATED-TOKEN-C"


@pytest_twisted.ensureDeferred
async def test_put_can_switch_the_version(rig):
    await rig.start_front()
    creds = await rig.registered()
    body = rig.emsp.our_credentials("2.1.1", rig.emsp.token_c)
    code, _, doc = await rig.emsp.call_evc("PUT", f"{rig.evc}/2.1.1/credentials", body, token=creds.token_b,
                                           version="2.1.1")
    assert code == 200 and "party_id" in doc["data"]
    assert rig.front.registrar.creds.version == "2.1.1"


@pytest_twisted.ensureDeferred
async def test_put_and_delete_when_not_registered_are_405(rig):
    token_a = "incoming-token-a-0123456789"
    await rig.start_front(versions_url=None, token_a=None, incoming_token_a=token_a)
    body = rig.emsp.our_credentials("2.2.1", "x")
    code, hdrs, _ = await rig.emsp.call_evc("PUT", f"{rig.evc}/2.2.1/credentials", body, token=token_a)
    assert code == 405 and hdrs["allow"] == "POST"
    code, _, _ = await rig.emsp.call_evc("DELETE", f"{rig.evc}/2.2.1/credentials", token=token_a)
    assert code == 405


@pytest_twisted.ensureDeferred
async def test_malformed_credentials_are_2001_and_change_nothing(rig):
    token_a = "incoming-token-a-0123456789"
    await rig.start_front(versions_url=None, token_a=None, incoming_token_a=token_a)
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/credentials", raw=b"{not json",
                                           token=token_a)
    assert code == 400 and doc["status_code"] == 2001
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/credentials", {"token": "x"}, token=token_a)
    assert code == 400 and doc["status_code"] == 2001 and "url: missing" in doc["status_message"]
    assert rig.front.registrar.creds is None
    # Token A is still good: nothing was used up.
    code, _, _ = await rig.emsp.call_evc("GET", f"{rig.evc}/versions", token=token_a)
    assert code == 200
