"""OCPI transport: envelope, token header forms, request/routing headers, pagination, and the client's failure
kinds against a real HTTP server on loopback."""
from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import defer, task

from evc.front.ocpi.transport import (BadRequest, Client, OcpiError, Page, Party, envelope, next_link, paginate,
                                      parse_page, parse_time, request_headers, token_header, tokens_in)

from evc.sim.emsp import FakeEmsp


def test_envelope_has_status_message_and_timestamp():
    doc = envelope({"a": 1}, now_s=0)
    assert doc == {"data": {"a": 1}, "status_code": 1000, "status_message": "Success",
                   "timestamp": "1970-01-01T00:00:00Z"}
    assert "data" not in envelope(None, 2001, "bad", now_s=0)


def test_token_is_base64_in_221_and_raw_in_211():
    assert token_header("abc", "2.2.1") == "Token " + base64.b64encode(b"abc").decode()
    assert token_header("abc", "2.1.1") == "Token abc"


def test_inbound_tokens_are_accepted_in_both_forms():
    assert "abc-123" in tokens_in("Token " + base64.b64encode(b"abc-123").decode())
    assert tokens_in("Token abc-123") == ["abc-123"]
    assert tokens_in("Basic abc") == [] and tokens_in(None) == [] and tokens_in("Token ") == []


def test_routing_headers_only_in_221_and_only_with_both_parties():
    h = request_headers("t", "2.2.1", from_party=Party("DE", "EVC"), to_party=Party("NL", "EMS"))
    assert h["OCPI-from-country-code"] == "DE" and h["OCPI-to-party-id"] == "EMS"
    assert h["X-Request-ID"] and h["X-Correlation-ID"]
    assert "OCPI-from-party-id" not in request_headers("t", "2.2.1")
    assert "OCPI-from-party-id" not in request_headers("t", "2.1.1", from_party=Party("DE", "EVC"),
                                                       to_party=Party("NL", "EMS"))


def test_page_arguments_are_checked():
    assert parse_page({}) == Page(0, 50)
    assert parse_page({"limit": "1000"}).limit == 100       # capped; X-Limit tells the client
    assert parse_page({"date_from": "2026-01-01T00:00:00Z"}).date_from == parse_time("2026-01-01T00:00:00Z")
    for bad in ({"offset": "-1"}, {"limit": "x"}, {"date_to": "yesterday"}):
        with pytest.raises(BadRequest) as e:
            parse_page(bad)
        assert e.value.status_code == 2001


def test_pagination_headers_and_date_window():
    items = [{"id": f"L{i}", "last_updated": f"2026-01-0{i}T00:00:00Z"} for i in range(1, 8)]
    page, headers = paginate(items, Page(0, 3), "https://evc/ocpi/2.2.1/locations", {})
    assert [i["id"] for i in page] == ["L1", "L2", "L3"]
    assert headers["X-Total-Count"] == "7" and headers["X-Limit"] == "3"
    nxt = next_link(headers["Link"])
    assert nxt == "https://evc/ocpi/2.2.1/locations?offset=3&limit=3"
    page, headers = paginate(items, Page(6, 3), "u", {})
    assert [i["id"] for i in page] == ["L7"] and "Link" not in headers
    window = Page(0, 10, parse_time("2026-01-02T00:00:00Z"), parse_time("2026-01-04T00:00:00Z"))
    page, headers = paginate(items, window, "u", {})
    assert [i["id"] for i in page] == ["L2", "L3"] and headers["X-Total-Count"] == "2"


# -- the client against a real server --

@pytest.fixture
def emsp():
    from twisted.internet import reactor
    fake = FakeEmsp(reactor).start()
    yield fake
    pytest_twisted.blockon(defer.ensureDeferred(fake.stop()))


def _client(clock=None):
    from twisted.internet import reactor
    return Client(reactor, clock or reactor, timeout_s=5)


@pytest_twisted.ensureDeferred
async def test_client_gets_the_envelope_with_request_ids(emsp):
    r = await _client().request("GET", emsp.versions_url, token=emsp.token_a, version="2.2.1")
    assert r.status_code == 1000 and [v["version"] for v in r.data] == ["2.2.1", "2.1.1"]
    seen = emsp.seen[-1]
    assert seen.header("x-request-id") == r.request_id and seen.header("x-correlation-id")
    assert seen.header("authorization") == token_header(emsp.token_a, "2.2.1")


@pytest_twisted.ensureDeferred
async def test_client_reports_http_errors_with_their_code(emsp):
    with pytest.raises(OcpiError) as e:
        await _client().request("GET", emsp.versions_url, token="wrong", version="2.2.1")
    assert e.value.kind == "http" and e.value.http_code == 401 and not e.value.retry
    emsp.mode = "down"
    with pytest.raises(OcpiError) as e:
        await _client().request("GET", emsp.versions_url, token=emsp.token_a, version="2.2.1")
    assert e.value.kind == "http" and e.value.http_code == 503 and e.value.retry


@pytest_twisted.ensureDeferred
async def test_client_reports_garbage(emsp):
    emsp.mode = "garbage"
    with pytest.raises(OcpiError) as e:
        await _client().request("GET", emsp.versions_url, token=emsp.token_a, version="2.2.1")
    assert e.value.kind == "garbage" and e.value.retry


@pytest_twisted.ensureDeferred
async def test_client_reports_an_unreachable_peer():
    from evc.etcdserver import free_port
    with pytest.raises(OcpiError) as e:
        await _client().request("GET", f"http://127.0.0.1:{free_port()}/ocpi/versions", token="t",
                                version="2.2.1")
    assert e.value.kind == "unreachable" and e.value.retry


@pytest_twisted.ensureDeferred
async def test_client_times_out_on_a_slow_peer(emsp):
    from evc.testing import wait_for
    emsp.mode = "slow"
    clock = task.Clock()
    d = defer.ensureDeferred(_client(clock).request("GET", emsp.versions_url, token=emsp.token_a,
                                                    version="2.2.1", timeout_s=3))
    await wait_for(lambda: emsp.slow, 5, "the request at the slow eMSP")
    assert not d.called
    clock.advance(3)
    with pytest.raises(OcpiError) as e:
        await d
    assert e.value.kind == "timeout" and e.value.retry


@pytest_twisted.ensureDeferred
async def test_client_reports_an_ocpi_error_status(emsp):
    with pytest.raises(OcpiError) as e:
        await _client().request("POST", f"{emsp.base}/2.2.1/tokens/NOPE/authorize", token=emsp.token_a,
                                version="2.2.1")
    assert e.value.kind == "http" and e.value.http_code == 401    # token A opens registration only
