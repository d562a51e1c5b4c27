"""front/manual's API over real HTTP, on a real etcd, with the site simulators (EVSE, meters, a car).

Every response goes through web_helpers.Client, which checks it against the front's OpenAPI document."""
import csv
import io
import json

import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor

from evc.testing import wait_for
from web_helpers import OPENAPI, PASSWORDS, Rig


async def live_site(c):
    async def ready():
        site = (await c.get("/api/v1/site")).json
        grid = [m for m in site["meters"] if m["name"] == "grid"]
        ok = grid and grid[0]["A"][0] is not None and site["chargers"][0]["status"] == "plugged"
        return site if ok else None
    return await wait_for(ready, 15, "the site live")


@pytest_twisted.ensureDeferred
async def test_site_shows_only_the_fronts_chargers_with_meters_control_and_errors(rig):
    c = rig.client()
    assert (await c.login("alice")).status == 200
    site = await live_site(c)
    assert site["name"] == rig.root.rsplit("/", 1)[1]
    assert [ch["name"] for ch in site["chargers"]] == ["s1"]             # x9 is not this front's
    s1 = site["chargers"][0]
    assert s1["type"] == "EVCC_manual" and s1["mode"] == "OFF" and s1["phases"] == 3
    assert s1["session"]["state"] == "plugged" and s1["reason"]
    grid = {m["name"]: m for m in site["meters"]}["grid"]
    assert grid["A"] == [3.0, 2.0, 1.0] and grid["stale"] is False and grid["updated"].endswith("Z")
    assert site["control"]["meter"] == "grid" and site["control"]["A_max"] == [20.0, 20.0, 20.0]
    assert all(not e["key"].startswith("charger/x9") for e in site["errors"])
    assert (await c.get("/api/v1/chargers/x9")).status == 404
    assert (await c.get("/api/v1/chargers/nosuch")).status == 404
    assert [ch["name"] for ch in (await c.get("/api/v1/chargers")).json] == ["s1"]
    # An error anywhere else is listed: a broken meter.
    await rig.put("meter/m9/type", "SDM630")
    await wait_for(lambda: _has_error(c, "meter/m9"), 10, "meter/m9's error in the site")


async def _has_error(c, key):
    errors = (await c.get("/api/v1/site")).json["errors"]
    return any(e["key"] == key and "bus" in e["error"] for e in errors)


@pytest_twisted.ensureDeferred
async def test_mode_put_writes_config_and_the_setpoint_follows(rig):
    c = rig.client()
    await c.login("alice")
    await live_site(c)
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"})
    assert r.status == 200 and r.json["mode"] == "ON"
    assert await rig.get("charger/s1/config/mode") == "ON"
    # The mode change restarts charger s1: a start while it is offline is refused (409), then accepted.
    async def started():
        r = await c.request("POST", "/api/v1/chargers/s1/start", {"id_tag": "CARD0001"})
        assert r.status in (202, 409), r.json
        return r.status == 202 or ("offline" not in r.json["error"] and "not running" not in r.json["error"]
                                   and r.json)
    assert await wait_for(started, 15, "a start accepted") is True
    async def charging():
        ch = (await c.get("/api/v1/chargers/s1")).json
        return ch if ch["setpoint_A"] and ch["setpoint_A"] >= 6 and ch["session"]["state"] == "charging" else None
    ch = await wait_for(charging, 15, "s1 charging at a setpoint")
    assert ch["session"]["id_tag"] == "CARD0001"
    # Control shares 20 A per phase minus the base load: s1 is limited by the site.
    assert ch["setpoint_A"] <= 17
    # A second start is refused by the session's state, a stop is accepted and ends the session.
    r = await c.request("POST", "/api/v1/chargers/s1/start", {})
    assert r.status == 409 and "already" in r.json["error"]
    assert (await c.request("POST", "/api/v1/chargers/s1/stop")).status == 202
    await wait_for(lambda: _session_ended(c), 10, "the session ended")
    assert (await c.request("POST", "/api/v1/chargers/s1/stop")).status == 409

    r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "FAST"})
    assert r.status == 400 and "OFF, ON" in r.json["error"] and "FAST" in r.json["error"]
    assert await rig.get("charger/s1/config/mode") == "ON"          # nothing written
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": 1})
    assert r.status == 400 and r.json["error"].startswith("mode: must be a string")
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON", "extra": 1})
    assert r.status == 400 and "extra" in r.json["error"]
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", [1, 2])
    assert r.status == 400 and "JSON object" in r.json["error"]
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", raw=b"{nope")
    assert r.status == 400 and "not valid JSON" in r.json["error"]
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", raw=b'{"mode": "' + b"x" * 70000 + b'"}')
    assert r.status == 413
    r = await c.request("POST", "/api/v1/chargers/s1/start", {"id_tag": "has space"})
    assert r.status == 400 and "id_tag" in r.json["error"]


async def _session_ended(c):
    ch = (await c.get("/api/v1/chargers/s1")).json
    sessions = (await c.get("/api/v1/sessions?charger=s1")).json
    return ch["session"] is None or ch["session"]["state"] == "plugged" and sessions[0]["reason"] == "DeAuthorized"


@pytest_twisted.ensureDeferred
async def test_logins_cookies_csrf_roles_and_basic_auth(rig):
    c = rig.client()
    r = await c.get("/api/v1/site")
    assert r.status == 401 and "log in" in r.json["error"]
    assert (await c.login("alice", "wrong")).status == 401
    assert (await c.login("nobody", "x")).status == 401
    r = await c.login("alice")
    assert r.status == 200 and r.json["user"] == "alice" and r.json["role"] == "operator"
    cookie = r.header("set-cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Expires=" in cookie and "Secure" not in cookie
    assert (await c.get("/api/v1/session")).json["user"] == "alice"
    # A change with the cookie needs the CSRF header, equal to the login's token.
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"}, csrf=False)
    assert r.status == 403 and "X-CSRF-Token" in r.json["error"]
    r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"}, csrf=False,
                        headers={"X-CSRF-Token": "forged"})
    assert r.status == 403
    assert await rig.get("charger/s1/config/mode") == "OFF"
    # A forged cookie and an expired one are no login.
    forged = rig.client()
    forged.cookie = "A" * 43
    assert (await forged.get("/api/v1/site")).status == 401
    rig.front.auth.sessions[c.cookie].expires_s = reactor.seconds() - 1
    r = await c.get("/api/v1/site")
    assert r.status == 401 and "expired" in r.json["error"]
    # A viewer sees and changes nothing.
    v = rig.client()
    assert (await v.login("bob")).json["role"] == "viewer"
    assert (await v.get("/api/v1/site")).status == 200
    r = await v.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"})
    assert r.status == 403 and "viewer" in r.json["error"]
    assert (await v.request("PUT", "/api/v1/tokens/NEW1", {"status": "Accepted"})).status == 403
    # Logout ends the cookie's login.
    assert (await v.request("POST", "/api/v1/logout")).status == 204
    assert (await v.get("/api/v1/site")).status == 401
    # Scripts: HTTP Basic on any path, no CSRF header needed.
    b = rig.client()
    r = await b.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"}, auth=("alice", PASSWORDS["alice"]))
    assert r.status == 200
    r = await b.get("/api/v1/site", auth=("alice", "wrong"))
    assert r.status == 401 and r.header("www-authenticate").startswith("Basic")
    r = await b.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "OFF"}, auth=("bob", PASSWORDS["bob"]))
    assert r.status == 403


@pytest_twisted.ensureDeferred
async def test_a_login_flood_is_refused_per_address(rig):
    c = rig.client()
    for _ in range(5):
        assert (await c.login("alice", "guess")).status == 401
    r = await c.login("alice")                      # even the right password: the address waits
    assert r.status == 429 and "try again" in r.json["error"] and int(r.header("retry-after")) >= 1
    assert (await c.get("/api/v1/site", auth=("alice", PASSWORDS["alice"]))).status == 429
    for q in rig.front.auth.limit._failures.values():     # the window passes
        q.clear()
    assert (await c.login("alice")).status == 200


@pytest_twisted.ensureDeferred
async def test_tokens_are_written_leaf_by_leaf_and_validated(rig):
    c = rig.client()
    await c.login("alice")
    tokens = (await c.get("/api/v1/tokens")).json
    assert tokens == [{"id": "CARD0001", "status": "Accepted", "expiry": None, "chargers": "*", "owner": "Ann",
                       "parent_id_tag": None}]
    r = await c.request("PUT", "/api/v1/tokens/04A2B3C4", {"status": "Accepted", "owner": "Bo", "chargers": ["s1"],
                                                           "expiry": "2030-01-01T00:00:00Z"})
    assert r.status == 201 and r.json["owner"] == "Bo"
    assert await rig.keys("token/04A2B3C4/config/") == {
        "token/04A2B3C4/config/status": "Accepted", "token/04A2B3C4/config/owner": "Bo",
        "token/04A2B3C4/config/chargers": '["s1"]', "token/04A2B3C4/config/expiry": "2030-01-01T00:00:00Z"}
    # Block it: a whole object replaces the old one (the expiry and the chargers go).
    r = await c.request("PUT", "/api/v1/tokens/04A2B3C4", {"status": "Blocked", "owner": "Bo"})
    assert r.status == 200 and r.json["status"] == "Blocked" and r.json["chargers"] == "*"
    assert set(await rig.keys("token/04A2B3C4/config/")) == {"token/04A2B3C4/config/status", "token/04A2B3C4/config/owner"}
    await wait_for(lambda: ("token", "04A2B3C4") in rig.sup.instances
                   and rig.sup.instances[("token", "04A2B3C4")].service.config.status == "Blocked", 10,
                   "the token instance Blocked")
    assert (await c.get("/api/v1/tokens/04A2B3C4")).json["status"] == "Blocked"
    # What the schema would refuse in etcd is refused here.
    for body, word in (({"status": "Maybe"}, "status"), ({"expiry": "soon"}, "expiry"),
                       ({"colour": "red"}, "colour"), ({"parent_id_tag": "x" * 21}, "parent_id_tag"),
                       ({"chargers": "s1"}, "chargers")):
        r = await c.request("PUT", "/api/v1/tokens/BAD1", body)
        assert r.status == 400 and word in r.json["error"], (body, r.json)
    assert await rig.keys("token/BAD1/config/") == {}
    for odd in ("has%20space", "a%2Fb", "x" * 21, "%E2%82%AC", "tab%09"):
        r = await c.request("PUT", f"/api/v1/tokens/{odd}", {"status": "Accepted"})
        assert r.status == 400 and "idTag" in r.json["error"], odd
    assert (await c.request("DELETE", "/api/v1/tokens/04A2B3C4")).status == 204
    assert await rig.keys("token/04A2B3C4/config/") == {}
    assert (await c.get("/api/v1/tokens/04A2B3C4")).status == 404
    assert (await c.request("DELETE", "/api/v1/tokens/04A2B3C4")).status == 404


@pytest_twisted.ensureDeferred
async def test_sessions_are_listed_newest_first_paginated_and_as_csv(rig):
    c = rig.client()
    await c.login("alice")
    for i, (start, stop) in enumerate((("2026-01-01T10:00:00.000Z", "2026-01-01T11:00:00.000Z"),
                                       ("2026-01-02T10:00:00.000Z", "2026-01-02T10:30:00.000Z"),
                                       ("2026-01-03T10:00:00.000Z", None))):
        sid = f"2026010{i + 1}T100000000Z-aaaa0{i}"
        rec = {"id": sid, "charger": "s1", "state": "ended" if stop else "charging", "start_time": start,
               "stop_time": stop, "energy_Wh": 1000.0 * (i + 1), "id_tag": "CARD0001", "reason": "Local" if stop
               else None, "meter_reset": False}
        await rig.put(f"charger/s1/data/sessions/{sid}", json.dumps(rec))
    await rig.put("charger/x9/data/sessions/20260101T100000000Z-bbbb00", json.dumps(
        {"id": "x", "charger": "x9", "state": "ended", "start_time": "2026-01-01T10:00:00.000Z"}))
    async def three():
        rows = (await c.get("/api/v1/sessions?from=2026-01-01&to=2026-02-01")).json
        return rows if len(rows) == 3 else None
    rows = await wait_for(three, 10, "three sessions")
    assert [r["start_time"][:10] for r in rows] == ["2026-01-03", "2026-01-02", "2026-01-01"]
    assert rows[1]["duration_s"] == 1800 and rows[1]["energy_Wh"] == 2000 and rows[1]["meter_reset"] is False
    assert all(r["charger"] == "s1" for r in rows)                       # x9's are not this front's
    page = await c.get("/api/v1/sessions?from=2026-01-01&to=2026-02-01&limit=2")
    assert len(page.json) == 2 and page.header("x-next-after") == page.json[-1]["id"]
    rest = (await c.get(f"/api/v1/sessions?from=2026-01-01&to=2026-02-01&limit=2&after={page.json[-1]['id']}")).json
    assert [r["start_time"][:10] for r in rest] == ["2026-01-01"]
    only = (await c.get("/api/v1/sessions?from=2026-01-02T00:00:00Z&to=2026-01-03")).json
    assert [r["start_time"][:10] for r in only] == ["2026-01-02"]
    r = await c.get("/api/v1/sessions.csv?charger=s1&from=2026-01-01&to=2026-02-01")
    assert r.status == 200 and r.header("content-type").startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.body.decode())))
    assert len(table) == 3 and table[2]["energy_Wh"] == "1000.0" and table[2]["stop_time"] == "2026-01-01T11:00:00.000Z"
    assert table[0]["stop_time"] == "" and table[1]["duration_s"] == "1800.0"
    for bad, word in (("from=yesterday", "from"), ("limit=0", "limit"), ("colour=red", "colour"),
                      ("charger=x9", "x9"), ("after=nosuch", "after")):
        r = await c.get(f"/api/v1/sessions?{bad}")
        assert r.status in (400, 404) and word in r.json["error"], bad


@pytest_twisted.ensureDeferred
async def test_events_stream_changes_and_a_client_that_goes_away_costs_nothing(rig):
    c = rig.client()
    await c.login("alice")
    await live_site(c)
    got = []
    done = defer.Deferred()

    class Reader(protocol.Protocol):
        def dataReceived(self, data):
            got.append(data)

        def connectionLost(self, reason):
            done.callback(None)

    r = await treq.get(rig.base + "/api/v1/events", headers={"Cookie": [f"evc_session={c.cookie}"]},
                       unbuffered=True, persistent=False)
    assert r.code == 200 and r.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    OPENAPI.check("GET", "/api/v1/events", r.code, "text/event-stream", b"")
    reader = Reader()
    r.deliverBody(reader)
    await wait_for(lambda: b"event: site" in b"".join(got), 10, "the first event: the site")
    first = b"".join(got).split(b"\n\n")
    site = json.loads([f for f in first if f.startswith(b"event: site")][0].split(b"data: ", 1)[1])
    OPENAPI.validate({"$ref": "#/components/schemas/Site"}, site, "the site event")
    assert rig.front.ctx.state is not None and len(rig.front.hub.streams) == 1
    await rig.put("charger/s1/config/mode", "ON")
    def mode_on():
        for f in b"".join(got).split(b"\n\n"):
            if f.startswith(b"event: charger"):
                ch = json.loads(f.split(b"data: ", 1)[1])
                OPENAPI.validate({"$ref": "#/components/schemas/Charger"}, ch, "a charger event")
                if ch["mode"] == "ON":
                    return ch
    await wait_for(mode_on, 10, "a charger event with mode ON")
    rig.sim.set_base_load(6, 2, 1)
    await wait_for(lambda: any(f.startswith(b"event: meter") and b'"grid"' in f and b'"A":[6.0' in f
                               for f in b"".join(got).split(b"\n\n")), 10, "a meter event with the new load")
    # The browser goes away mid-stream: the front forgets it, and keeps serving everyone else.
    reader.transport._producer.abortConnection()
    await done
    await wait_for(lambda: len(rig.front.hub.streams) == 0, 10, "the stream dropped")
    await rig.put("charger/s1/config/mode", "OFF")
    assert (await c.get("/api/v1/chargers/s1")).status == 200
    # Logging out closes the login's streams too.
    r = await treq.get(rig.base + "/api/v1/events", headers={"Cookie": [f"evc_session={c.cookie}"]},
                       unbuffered=True, persistent=False)
    await wait_for(lambda: len(rig.front.hub.streams) == 1, 10, "a second stream")
    assert (await c.request("POST", "/api/v1/logout")).status == 204
    assert len(rig.front.hub.streams) == 0


@pytest_twisted.ensureDeferred
async def test_the_page_and_static_files_and_nothing_else(rig):
    c = rig.client()
    r = await c.get("/")
    assert r.status == 200 and b"/static/app.js" in r.body and r.header("content-type").startswith("text/html")
    assert r.header("x-frame-options") == "DENY"
    assert (await c.get("/static/app.js")).status == 200
    assert (await c.get("/static/style.css")).status == 200
    for path in ("/static/../front.py", "/static/%2e%2e/front.py", "/..%2F..%2Fetc%2Fpasswd", "/static/",
                 "/static/index.html/..", "/api/v2/site", "/%ff"):
        r = await c.get(path)
        assert r.status == 404 and "error" in r.json, path
    doc = (await c.get("/api/openapi.json")).json
    assert doc["openapi"].startswith("3.1")
    assert (await c.request("DELETE", "/api/v1/site", auth=("alice", PASSWORDS["alice"]))).status == 405


@pytest_twisted.ensureDeferred
async def test_without_users_the_page_needs_no_login_but_keeps_csrf(etcd_session, etcd_root):
    rig = Rig(etcd_session.url, etcd_root, users=False)
    await rig.start()
    try:
        c = rig.client()
        s = (await c.get("/api/v1/session")).json
        assert s["user"] is None and s["role"] == "operator"
        assert (await c.get("/api/v1/site")).status == 200
        r = await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"})
        assert r.status == 403                                 # another web site cannot post here
        c.csrf = s["csrf_token"]
        assert (await c.request("PUT", "/api/v1/chargers/s1/mode", {"mode": "ON"})).status == 200
        assert (await c.login("alice")).status == 400
        # Not on loopback without users: refused with a reason, and nothing listens.
        await rig.put("front/local/config/listen", "0.0.0.0:0")
        await wait_for(lambda: rig.get("front/local/state/error"), 10, "front/local's error")
        error = await rig.get("front/local/state/error")
        assert error.startswith("config/users:") and "loopback" in error
    finally:
        await rig.stop()


def test_the_openapi_check_catches_a_response_that_does_not_fit():
    """The check every test relies on can fail: a charger without its session, an undocumented status."""
    import pytest
    with pytest.raises(AssertionError, match="session"):
        OPENAPI.check("GET", "/api/v1/chargers/s1", 200, "application/json", json.dumps(
            {"name": "s1", "type": None, "mode": "ON", "status": "none", "setpoint_A": None,
             "current_A": [None, None, None], "phases": 3, "reason": None, "error": None}).encode())
    with pytest.raises(AssertionError, match="not documented"):
        OPENAPI.check("GET", "/api/v1/site", 418, "application/json", b'{"error": "x"}')


async def _is(rig, key, value):
    return await rig.get(key) == value


def _self_signed(tmp_path):
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "web.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "web.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return str(tmp_path / "web.pem"), str(tmp_path / "web.key")


@pytest_twisted.ensureDeferred
async def test_tls_serves_https_with_a_secure_cookie(etcd_session, etcd_root, tmp_path):
    import ssl
    import urllib.request
    from twisted.internet import threads
    cert, key = _self_signed(tmp_path)
    rig = Rig(etcd_session.url, etcd_root, extra={"front/local/config/tls_cert": cert,
                                                  "front/local/config/tls_key": key})
    await rig.start()
    try:
        assert rig.base.startswith("https://")
        await wait_for(lambda: _is(rig, "front/local/state/tls", "true"), 10, "state/tls true")
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False
        body = json.dumps({"user": "alice", "password": PASSWORDS["alice"]}).encode()
        req = urllib.request.Request(rig.base + "/api/v1/login", data=body,
                                     headers={"Content-Type": "application/json"})
        r = await threads.deferToThread(urllib.request.urlopen, req, context=ctx, timeout=10)
        assert r.status == 200 and "; Secure" in r.headers["Set-Cookie"]
        # A key file that cannot be read is an error naming the leaf, and nothing listens.
        await rig.put("front/local/config/tls_key", str(tmp_path / "missing.key"))
        await wait_for(lambda: rig.get("front/local/state/error"), 10, "front/local's error")
        assert "config/tls_key: cannot read" in await rig.get("front/local/state/error")
    finally:
        await rig.stop()
