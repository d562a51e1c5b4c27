"""Bad input from a charge point: each case gets the right answer (or is dropped and logged); the connection lives."""
import asyncio
import json

import pytest
import pytest_twisted
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, _validate_payload
from twisted.logger import formatEvent, globalLogPublisher

from cs_rig import RawClient, Site, asyncio_test, until, wait
from evc.charger.ocpp import OcppCharger
from evc.ocpp.bridge import to_deferred
from evc.ocpp.central import CallTimeout

MAX_FRAME = 4096


@pytest.fixture
def site(monkeypatch):
    # The charger's own set-up CALLs (after the boot wait) would mix into these hand-written exchanges.
    monkeypatch.setattr(OcppCharger, "boot_wait_s", 60.0)
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


@pytest.fixture
def logged():
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def client(site, **server) -> RawClient:
    site.server(max_frame_bytes=MAX_FRAME, **server)
    site.charger("cp1")
    await site.start()
    raw = await RawClient.open(site.url("cp1"), "cp1")
    await until(lambda: site.instance("charger", "cp1").conn is not None, "connected")
    return raw


async def still_usable(raw: RawClient) -> None:
    reply = await raw.call("Heartbeat", {})
    assert reply[0] == 3 and "currentTime" in reply[2]


def library_code(action: str, payload) -> str | None:
    """The CALLERROR code the ocpp library's own validation gives this payload (None: valid)."""
    try:
        _validate_payload(Call("x", action, payload), "1.6")
    except OCPPError as e:
        return e.code
    return None


@asyncio_test
async def test_invalid_json_with_a_readable_message_id_gets_format_violation(site):
    raw = await client(site)
    await raw.send('[2, "id-1", "Heartbeat", {')
    reply = await raw.recv()
    assert reply[:3] == [4, "id-1", "FormatViolation"] and "not valid JSON" in reply[3]
    await still_usable(raw)


@asyncio_test
async def test_invalid_json_without_a_message_id_is_dropped_and_logged(site, logged):
    raw = await client(site)
    await raw.send("this is not json")
    await raw.send(b"\xff\xfe binary, not UTF-8")
    await still_usable(raw)          # the first reply on the connection is the Heartbeat's: nothing else came
    assert any("cannot be answered (no message id found)" in line for line in logged)
    assert any("binary frame that is not UTF-8" in line for line in logged)


@pytest.mark.parametrize("frame, code", [
    ([2, "id-2", "Heartbeat"], "FormatViolation"),                    # no payload
    ([2, "id-3", "Heartbeat", []], "FormatViolation"),                # payload not an object
    ([2, "id-4", 17, {}], "FormatViolation"),                         # action not a string
    ([2, "id-5", "Heartbeat", {}, "extra"], "FormatViolation"),
    ([7, "id-6", "Heartbeat", {}], "PropertyConstraintViolation"),    # no such MessageTypeId
])
@asyncio_test
async def test_a_frame_of_the_wrong_shape_gets_a_callerror(site, frame, code):
    raw = await client(site)
    await raw.send(frame)
    reply = await raw.recv()
    assert reply[0] == 4 and reply[1] == frame[1] and reply[2] == code and reply[3]
    assert len(reply) == 5 and isinstance(reply[4], dict)
    await still_usable(raw)


@pytest.mark.parametrize("frame", [{"not": "an array"}, [], [2], [2, 5, "Heartbeat", {}], [3], "[true]"])
@asyncio_test
async def test_a_frame_without_a_usable_message_id_is_dropped(site, frame, logged):
    raw = await client(site)
    await raw.send(frame)
    await still_usable(raw)
    assert any("dropped" in line for line in logged)


@pytest.mark.parametrize("action, code", [
    ("FlyToTheMoon", "NotImplemented"),     # not an OCPP 1.6 action
    ("Reset", "NotSupported"),              # a 1.6 action, but one a central system sends
    ("SignCertificate", "NotSupported"),    # security extension: not handled by EVC
])
@asyncio_test
async def test_unknown_or_unsupported_actions(site, action, code):
    raw = await client(site)
    reply = await raw.call(action, {})
    assert reply[2] == code and reply[3]
    await still_usable(raw)


@pytest.mark.parametrize("action, payload, code", [
    ("Heartbeat", {"extra": 1}, "FormatViolation"),
    ("BootNotification", {"chargePointVendor": 5, "chargePointModel": "m"}, "TypeConstraintViolation"),
    ("BootNotification", {"chargePointModel": "m"}, "ProtocolError"),
    ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Dancing"}, "FormatViolation"),
    ("Authorize", {"idTag": "X" * 21}, "TypeConstraintViolation"),
    ("MeterValues", {"connectorId": 1, "meterValue": []}, "FormatViolation"),
    ("StartTransaction", {"connectorId": "1", "idTag": "T", "meterStart": 0,
                          "timestamp": "2026-01-01T00:00:00Z"}, "TypeConstraintViolation"),
])
@asyncio_test
async def test_a_payload_that_breaks_the_schema_gets_the_librarys_code(site, action, payload, code):
    assert library_code(action, payload) == code        # the mapping pinned here is the ocpp library's own
    raw = await client(site)
    reply = await raw.call(action, payload)
    assert reply[2] == code
    await still_usable(raw)


@asyncio_test
async def test_an_oversized_frame_gets_a_callerror_and_the_connection_lives(site):
    raw = await client(site)
    reply = await raw.call("DataTransfer", {"vendorId": "x", "data": "y" * MAX_FRAME})
    assert reply[2] == "GenericError" and f"larger than the {MAX_FRAME} bytes" in reply[3]
    await still_usable(raw)


@asyncio_test
async def test_a_frame_above_the_hard_limit_closes_the_connection_with_1009(site):
    raw = await client(site)
    await raw.send([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * (MAX_FRAME * 5)}])
    await until(lambda: raw.ws.close_code is not None, "closed")
    assert raw.ws.close_code == 1009
    charger = site.instance("charger", "cp1")
    await until(lambda: charger.conn is None, "the charger saw it go")


@asyncio_test
async def test_a_reply_for_an_unknown_message_id_is_ignored_and_logged(site, logged):
    raw = await client(site)
    await raw.send([3, "nobody-asked", {"status": "Accepted"}])
    await raw.send([4, "nobody-asked-either", "GenericError", "", {}])
    await still_usable(raw)
    assert sum("for unknown message id" in line for line in logged) == 2


@asyncio_test
async def test_a_charge_point_that_never_answers_times_out_and_the_next_call_works(site, logged):
    raw = await client(site, call_timeout_s=0.3)
    charger = site.instance("charger", "cp1")
    d = charger.get_configuration(["HeartbeatInterval"])
    with pytest.raises(CallTimeout):
        await wait(d)
    # Its late reply arrives after the timeout: ignored, and it does not confuse the next call.
    request = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    assert request[2] == "GetConfiguration"
    await raw.send([3, request[1], {"configurationKey": []}])
    d2 = charger.clear_cache()
    nxt = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    assert nxt[2] == "ClearCache"
    await raw.send([3, nxt[1], {"status": "Accepted"}])
    assert await wait(d2) == {"status": "Accepted"}
    assert any("for unknown message id" in line for line in logged)


@asyncio_test
async def test_errors_in_every_spelling_reach_the_caller_as_callerrors(site):
    from evc.ocpp.central import OcppCallError
    raw = await client(site)
    charger = site.instance("charger", "cp1")
    for sent, seen in (("FormationViolation", "FormatViolation"),
                       ("OccurrenceConstraintViolation", "OccurenceConstraintViolation"),
                       ("NoSuchCode", "GenericError")):
        d = charger.clear_cache()
        request = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
        await raw.send([4, request[1], sent, "bad", {}])
        with pytest.raises(OcppCallError) as e:
            await wait(d)
        assert e.value.code == seen
    await still_usable(raw)


@asyncio_test
async def test_a_flood_of_calls_gets_one_answer_each(site):
    raw = await client(site)
    ids = [f"flood-{i}" for i in range(30)]
    for uid in ids:
        await raw.send([2, uid, "Heartbeat", {}])
    replies = [await raw.recv() for _ in ids]
    assert sorted(r[1] for r in replies) == sorted(ids)
    assert all(r[0] == 3 or r[2] == "GenericError" for r in replies)
    await still_usable(raw)


@asyncio_test
async def test_a_charging_limit_goes_before_calls_that_wait_behind_a_slow_one(site):
    raw = await client(site, call_timeout_s=5)
    charger = site.instance("charger", "cp1")
    conn = charger.conn
    slow = conn.call("GetConfiguration", {})
    first = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    ordinary = conn.call("ClearCache", {})
    limit = conn.call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 2, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.0}]}}}, priority=True)
    await raw.send([3, first[1], {"configurationKey": []}])
    await wait(slow)
    second = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    assert second[2] == "SetChargingProfile"          # one CALL at a time, the limit first
    await raw.send([3, second[1], {"status": "Accepted"}])
    assert await wait(limit) == {"status": "Accepted"}
    third = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    assert third[2] == "ClearCache"
    await raw.send([3, third[1], {"status": "Accepted"}])
    assert await wait(ordinary) == {"status": "Accepted"}


@asyncio_test
async def test_calls_waiting_when_the_connection_ends_fail_as_not_connected(site):
    from evc.ocpp.central import NotConnected
    raw = await client(site, call_timeout_s=5)
    conn = site.instance("charger", "cp1").conn
    in_flight = conn.call("GetConfiguration", {})
    waiting = conn.call("ClearCache", {})
    await asyncio.wait_for(raw.ws.recv(), 2)
    await raw.close()
    for d in (in_flight, waiting):
        with pytest.raises(NotConnected):
            await wait(d)


@asyncio_test
async def test_a_start_transaction_cut_off_by_a_dropped_connection_completes_and_its_resend_gets_the_same_id(site):
    from twisted.internet import defer
    raw = await client(site)
    site.token("T")
    await until(lambda: site.instance("token", "T"), "token")
    server = site.instance("server", "cs")
    hold, allocate = defer.Deferred(), server.allocate_transaction_id
    calls = []

    def held():
        calls.append(1)
        return hold.addCallback(lambda _: allocate())
    server.allocate_transaction_id = held
    start = {"connectorId": 1, "idTag": "T", "meterStart": 10, "timestamp": "2026-01-01T00:00:00Z"}
    await raw.send([2, "s1", "StartTransaction", start])
    await until(lambda: calls, "the allocation under way")
    await raw.close()
    charger = site.instance("charger", "cp1")
    await until(lambda: charger.conn is None, "disconnected")
    hold.callback(None)
    await until(lambda: charger.tx is not None, "the transaction recorded all the same")
    raw2 = await RawClient.open(site.url("cp1"), "cp1")
    reply = await raw2.call("StartTransaction", start)
    assert reply[2]["transactionId"] == charger.tx["transaction_id"] and len(calls) == 1
    assert charger.sessions.session is not None and charger.sessions.session.authorized
    await raw2.close()


@asyncio_test
async def test_evcs_own_request_that_breaks_the_schema_never_reaches_the_charge_point(site, logged):
    from evc.ocpp.central import OcppCallError
    raw = await client(site)
    charger = site.instance("charger", "cp1")
    with pytest.raises(OcppCallError):
        await wait(charger.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": 300}))   # not a string
    assert any("EVC's own ChangeConfiguration breaks the schema" in line for line in logged)
    d = charger.clear_cache()                  # the next CALL is the first frame the charge point sees
    request = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    assert request[2] == "ClearCache"
    await raw.send([3, request[1], {"status": "Accepted"}])
    assert await wait(d) == {"status": "Accepted"}


@asyncio_test
async def test_a_reply_that_breaks_the_schema_fails_the_call_and_the_connection_lives(site):
    from evc.ocpp.central import OcppCallError
    raw = await client(site)
    charger = site.instance("charger", "cp1")
    d = charger.clear_cache()
    request = json.loads(await asyncio.wait_for(raw.ws.recv(), 2))
    await raw.send([3, request[1], {"status": "Perhaps"}])
    with pytest.raises(OcppCallError):
        await wait(d)
    await still_usable(raw)
