"""Commands from the eMSP: the CommandResponse at once, the CommandResult to response_url later; START_SESSION on
a free, an occupied, a faulted charger, twice; STOP_SESSION; the unsupported ones; bad input."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.front.ocpi.objects import errors_of
from ocpi_rig import Rig, wait_for
from test_tokens import token


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


async def _start(rig, **kw):
    s1 = await rig.site.charger("s1", meter_Wh=5000.0)
    s2 = await rig.site.charger("s2")
    await rig.start_front(**kw)
    await rig.registered()
    await rig.located()
    await rig.delivered()
    return s1, s2


def _start_session(rig, n=1, evse="s1", uid="APP00001", location="SITE1", **kw):
    body = {"response_url": f"{rig.emsp.base}/2.2.1/commands/START_SESSION/{n}", "token":
            token(uid, whitelist="NEVER", type="APP_USER"), "location_id": location, **kw}
    if evse is not None:
        body["evse_uid"] = evse
    return rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/START_SESSION", body)


def _results(rig, n, command="START_SESSION"):
    return [b for path, b in rig.emsp.command_results if path == f"{command}/{n}"]


@pytest_twisted.ensureDeferred
async def test_start_session_authorizes_the_charger_and_reports_accepted(rig):
    s1, _ = await _start(rig)
    s1.plug()
    code, _, doc = await _start_session(rig, authorization_reference="AUTH-77")
    assert code == 200 and doc["data"] == {"result": "ACCEPTED", "timeout": 60}
    assert errors_of("CommandResponse", doc["data"], "2.2.1") == []
    await wait_for(lambda: _results(rig, 1), 5, "the CommandResult")
    assert _results(rig, 1) == [{"result": "ACCEPTED"}]
    assert s1.tag == "APP00001" and s1.sessions.session.authorized
    sid = s1.sessions.session.id
    await wait_for(lambda: sid in rig.emsp.sessions, 5, "the Session")
    session = rig.emsp.sessions[sid]
    assert session["auth_method"] == "COMMAND" and session["authorization_reference"] == "AUTH-77"
    assert session["cdr_token"]["type"] == "APP_USER"


@pytest_twisted.ensureDeferred
async def test_start_session_without_an_evse_takes_a_free_one(rig):
    s1, s2 = await _start(rig)
    s1.plug()
    s1.authorize("LOCAL")                 # s1 is in use by someone else
    code, _, doc = await _start_session(rig, evse=None)
    assert doc["data"]["result"] == "ACCEPTED"
    await wait_for(lambda: _results(rig, 1), 5, "the CommandResult")
    assert s2.tag == "APP00001" and s1.tag == "LOCAL"


@pytest_twisted.ensureDeferred
async def test_start_session_at_an_occupied_charger_reports_evse_occupied(rig):
    s1, _ = await _start(rig)
    s1.plug()
    s1.authorize("LOCAL")
    code, _, doc = await _start_session(rig)
    assert doc["data"]["result"] == "ACCEPTED"
    await wait_for(lambda: _results(rig, 1), 5, "the CommandResult")
    assert _results(rig, 1)[0]["result"] == "EVSE_OCCUPIED" and s1.tag == "LOCAL"


@pytest_twisted.ensureDeferred
async def test_start_session_at_a_faulted_charger_reports_evse_inoperative(rig):
    s1, _ = await _start(rig)
    s1.set(vehicle="fault", fault="RCD")
    await _start_session(rig)
    await wait_for(lambda: _results(rig, 1), 5, "the CommandResult")
    assert _results(rig, 1)[0]["result"] == "EVSE_INOPERATIVE" and s1.tag is None


@pytest_twisted.ensureDeferred
async def test_the_same_start_session_twice_is_rejected_the_second_time(rig):
    s1, _ = await _start(rig)
    _, _, first = await _start_session(rig, 1)         # no car yet: the authorization waits for it
    _, _, second = await _start_session(rig, 2)
    assert first["data"]["result"] == "ACCEPTED" and second["data"]["result"] == "REJECTED"
    await wait_for(lambda: _results(rig, 1), 5, "the first CommandResult")
    s1.plug()
    await wait_for(lambda: s1.sessions.session and s1.sessions.session.authorized, 5, "authorized on plug-in")
    _, _, third = await _start_session(rig, 3)
    await wait_for(lambda: _results(rig, 3), 5, "the third CommandResult")
    assert third["data"]["result"] == "ACCEPTED" and _results(rig, 3)[0]["result"] == "EVSE_OCCUPIED"


@pytest_twisted.ensureDeferred
async def test_a_charger_that_refuses_reports_rejected(rig):
    s1, _ = await _start(rig)
    s1.authorize = lambda tag: defer.fail(RuntimeError("the charge point refused RemoteStartTransaction"))
    await _start_session(rig)
    await wait_for(lambda: _results(rig, 1), 5, "the CommandResult")
    assert _results(rig, 1)[0]["result"] == "REJECTED"
    assert rig.front.commands.pending == {} and "s1" not in rig.front.claims


@pytest_twisted.ensureDeferred
async def test_a_charger_that_does_not_answer_reports_timeout(rig):
    s1, _ = await _start(rig, command_timeout_s=1)
    s1.authorize = lambda tag: defer.Deferred()        # never fires
    code, _, doc = await _start_session(rig)
    assert doc["data"]["timeout"] == 1
    await wait_for(lambda: _results(rig, 1), 5, "the CommandResult")
    assert _results(rig, 1)[0]["result"] == "TIMEOUT"


@pytest_twisted.ensureDeferred
async def test_stop_session_ends_the_roaming_session_and_bills_it(rig):
    s1, _ = await _start(rig)
    s1.plug()
    await _start_session(rig)
    await wait_for(lambda: s1.sessions.session and s1.sessions.session.authorized, 5, "authorized")
    sid = s1.sessions.session.id
    s1.charge(16.0, 1500)
    body = {"response_url": f"{rig.emsp.base}/2.2.1/commands/STOP_SESSION/1", "session_id": sid}
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/STOP_SESSION", body)
    assert doc["data"]["result"] == "ACCEPTED"
    await wait_for(lambda: _results(rig, 1, "STOP_SESSION"), 5, "the CommandResult")
    assert _results(rig, 1, "STOP_SESSION") == [{"result": "ACCEPTED"}]
    await wait_for(lambda: rig.emsp.cdr_posts, 5, "the CDR")
    assert rig.emsp.cdr_posts[0]["total_energy"] == 1.5
    assert s1.sessions.last.reason == "Remote"
    # Again: the session is over.
    body["response_url"] = f"{rig.emsp.base}/2.2.1/commands/STOP_SESSION/2"
    _, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/STOP_SESSION", body)
    assert doc["data"]["result"] == "UNKNOWN_SESSION"


@pytest_twisted.ensureDeferred
async def test_stop_session_of_an_unknown_or_foreign_session_is_unknown_session(rig):
    s1, _ = await _start(rig)
    s1.plug()
    s1.authorize("LOCAL")                             # not the eMSP's session
    for sid in ("NOPE", s1.sessions.session.id):
        body = {"response_url": f"{rig.emsp.base}/2.2.1/commands/STOP_SESSION/9", "session_id": sid}
        _, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/STOP_SESSION", body)
        assert doc["data"]["result"] == "UNKNOWN_SESSION"
    assert s1.sessions.session.authorized


@pytest.mark.parametrize("command,body,result", [
    ("UNLOCK_CONNECTOR", {"location_id": "SITE1", "evse_uid": "s1", "connector_id": "1"}, "NOT_SUPPORTED"),
    ("UNLOCK_CONNECTOR", {"location_id": "SITE1", "evse_uid": "s9", "connector_id": "1"}, "REJECTED"),
    ("RESERVE_NOW", {"token": token("R1"), "expiry_date": "2030-01-01T00:00:00Z", "reservation_id": "R1",
                     "location_id": "SITE1"}, "NOT_SUPPORTED"),
    ("CANCEL_RESERVATION", {"reservation_id": "R1"}, "NOT_SUPPORTED"),
])
@pytest_twisted.ensureDeferred
async def test_unsupported_and_unknown_commands(rig, command, body, result):
    await _start(rig)
    body = {"response_url": f"{rig.emsp.base}/2.2.1/commands/{command}/1", **body}
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/{command}", body)
    assert code == 200 and doc["data"]["result"] == result


@pytest_twisted.ensureDeferred
async def test_start_session_at_an_unknown_location_or_evse_is_rejected(rig):
    s1, _ = await _start(rig)
    _, _, doc = await _start_session(rig, location="ELSEWHERE")
    assert doc["data"]["result"] == "REJECTED"
    _, _, doc = await _start_session(rig, evse="s9")
    assert doc["data"]["result"] == "REJECTED"
    assert s1.tag is None


@pytest_twisted.ensureDeferred
async def test_malformed_commands_are_2001_and_unknown_ones_404(rig):
    s1, _ = await _start(rig)
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/START_SESSION",
                                           {"response_url": "not a url", "location_id": "SITE1"})
    assert code == 400 and doc["status_code"] == 2001
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/START_SESSION", raw=b"\xff\xfe")
    assert code == 400 and doc["status_code"] == 2001
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/SELF_DESTRUCT", {})
    assert code == 404
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/commands/START_SESSION")
    assert code == 405
    assert s1.tag is None


@pytest_twisted.ensureDeferred
async def test_commands_in_2_1_1(etcd_session, etcd_root):
    rig = Rig(etcd_session.url, etcd_root, versions=("2.1.1",))
    try:
        s1, _ = await _start(rig)
        s1.set(vehicle="fault", fault="x")
        tok = {k: v for k, v in token("APP1").items() if k not in ("country_code", "party_id", "contract_id")}
        tok["auth_id"] = "NL-EMS-APP1"
        body = {"response_url": f"{rig.emsp.base}/2.1.1/commands/START_SESSION/1", "token": tok,
                "location_id": "SITE1", "evse_uid": "s1"}
        code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.1.1/commands/START_SESSION", body)
        assert code == 200 and doc["data"] == {"result": "ACCEPTED"}
        await wait_for(lambda: rig.emsp.command_results, 5, "the result")
        assert rig.emsp.command_results[0][1] == {"result": "REJECTED", "message": [
            {"language": "en", "text": "EVSE s1 is outoforder"}]}
        code, _, _ = await rig.emsp.call_evc("POST", f"{rig.evc}/2.1.1/commands/CANCEL_RESERVATION", {})
        assert code == 404
    finally:
        await rig.stop()
