"""A simulated eMSP (OCPI 2.2.1 and 2.1.1) for front/ocpi's tests and the demo: a twisted.web server on loopback.

It shares no code with front/ocpi: it keeps its own credentials, answers the credentials handshake (calling EVC back
with token B, as an eMSP does), stores what EVC pushes (locations, sessions, CDRs, command results), answers real-time
authorization from a table (`authorize_answers`, or `--allow UID` on the command line), and can be made to fail
(down: 503, garbage, slow: never answers). Every request is recorded with its headers and body.

    python -m evc.sim.emsp --port 19100 --token-a DEMO-TOKEN-A --allow 04A1B2C3DD

prints "PORT <n>" once listening, then one JSON line per object EVC pushes ({"event": "location" | "session" |
"cdr" | "authorize", ...}), so a demo can show what the eMSP sees.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
import json
import secrets
from datetime import datetime, timezone
from typing import Any, Optional

import treq
from twisted.internet import defer
from twisted.web import resource, server

COUNTRY, PARTY = "NL", "EMS"


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: Any
    answered: int = 0

    def header(self, name):
        return self.headers.get(name.lower())


def decode_token(header: Optional[str], version: str) -> Optional[str]:
    if not header or not header.startswith("Token "):
        return None
    raw = header[6:].strip()
    if version == "2.1.1":
        return raw
    try:
        return base64.b64decode(raw, validate=True).decode()
    except Exception:
        return None


class FakeEmsp(resource.Resource):
    isLeaf = True

    def __init__(self, reactor, versions=("2.2.1", "2.1.1")):
        super().__init__()
        self.reactor = reactor
        self.versions = list(versions)
        self.token_a = "TOKEN-A-" + secrets.token_hex(4)
        self.token_c = None              # what EVC must use after registration
        self.token_b = None              # EVC's token, learnt from its POST credentials
        self.evc_versions_url = None
        self.evc_endpoints: dict[str, str] = {}
        self.version = None
        self.seen: list[Seen] = []
        self.locations: dict[str, dict] = {}          # "loc" / "loc/evse" / "loc/evse/conn" -> object (merged)
        self.sessions: dict[str, dict] = {}
        self.cdrs: dict[str, dict] = {}
        self.cdr_posts: list[dict] = []
        self.command_results: list[tuple[str, dict]] = []
        self.authorize_answers: dict[str, Any] = {}   # uid -> AuthorizationInfo (dict) or an int HTTP code
        self.mode = "ok"                               # ok | down | garbage | slow | 401
        self.slow: list = []
        self.port = None
        self.callback_ok = True
        self.on_event = None                           # (kind, object) -> None: what EVC pushed (the demo prints it)

    # -- lifecycle --

    def start(self, port: int = 0):
        site = server.Site(self)
        site.noisy = False
        self.port = self.reactor.listenTCP(port, site, interface="127.0.0.1")
        return self

    def _emit(self, kind: str, doc) -> None:
        if self.on_event is not None:
            self.on_event(kind, doc)

    async def stop(self):
        for req in self.slow:
            if not req.finished and not req._disconnected:
                req.finish()
        if self.port is not None:
            await self.port.stopListening()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/ocpi"

    @property
    def versions_url(self) -> str:
        return self.base + "/versions"

    def endpoints(self, version: str) -> list[dict]:
        b = f"{self.base}/{version}"
        mods = [("credentials", "RECEIVER"), ("locations", "RECEIVER"), ("sessions", "RECEIVER"),
                ("cdrs", "RECEIVER"), ("tokens", "SENDER"), ("commands", "SENDER"), ("tariffs", "RECEIVER")]
        out = []
        for ident, role in mods:
            e = {"identifier": ident, "url": f"{b}/{ident}"}
            if version != "2.1.1":
                e["role"] = role
            out.append(e)
        return out

    # -- what the tests look at --

    def requests(self, method=None, prefix="") -> list[Seen]:
        return [s for s in self.seen if (method is None or s.method == method) and s.path.startswith(prefix)]

    def envelope(self, data=None, code=1000, msg="Success"):
        doc = {"status_code": code, "status_message": msg, "timestamp": now_text()}
        if data is not None:
            doc["data"] = data
        return doc

    # -- HTTP --

    def render(self, request):
        path = request.path.decode()
        method = request.method.decode()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        raw = request.content.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        seen = Seen(method, path, headers, body)
        self.seen.append(seen)
        if self.mode == "slow":
            self.slow.append(request)
            return server.NOT_DONE_YET
        if self.mode == "down":
            request.setResponseCode(503)
            return b"Service Unavailable"
        if self.mode == "garbage":
            request.setResponseCode(200)
            return b"<html>oops</html>"
        d = defer.ensureDeferred(self.handle(method, path, headers, body, request))

        def done(result):
            code, doc, extra = result
            seen.answered = code
            request.setResponseCode(code)
            for k, v in extra.items():
                request.setHeader(k, v)
            request.setHeader("Content-Type", "application/json")
            request.setHeader("X-Request-ID", headers.get("x-request-id", ""))
            request.setHeader("X-Correlation-ID", headers.get("x-correlation-id", ""))
            request.write(json.dumps(doc).encode())
            request.finish()

        def crashed(f):
            request.setResponseCode(500)
            request.write(f.getTraceback().encode())
            request.finish()

        d.addCallbacks(done, crashed)
        return server.NOT_DONE_YET

    def _version_of(self, path: str) -> Optional[str]:
        parts = path.split("/")
        return parts[2] if len(parts) > 2 and parts[2] in ("2.2.1", "2.1.1") else None

    async def handle(self, method, path, headers, body, request):
        version = self._version_of(path) or "2.2.1"
        tokens = {decode_token(headers.get("authorization"), v) for v in ("2.2.1", "2.1.1")}
        registration = path.endswith("/credentials") or path in ("/ocpi/versions", "/ocpi/2.2.1", "/ocpi/2.1.1")
        allowed = {self.token_c} if self.token_c is not None else ({self.token_a} if registration else set())
        self.last_token = next((t for t in tokens if t in allowed), None)
        if self.mode == "401" or self.last_token is None:
            return 401, self.envelope(code=2000, msg="unknown token"), {}
        if path == "/ocpi/versions":
            return 200, self.envelope([{"version": v, "url": f"{self.base}/{v}"} for v in self.versions]), {}
        if path in ("/ocpi/2.2.1", "/ocpi/2.1.1"):
            return 200, self.envelope({"version": version, "endpoints": self.endpoints(version)}), {}
        rest = path.split("/")[3:]
        module = rest[0] if rest else ""
        if module == "credentials":
            return await self.credentials(method, version, body)
        if module == "locations" and method in ("PUT", "PATCH"):
            key = "/".join(rest[3:])
            if method == "PUT":
                self.locations[key] = body
                if isinstance(body, dict):
                    for evse in body.get("evses") or []:
                        self.locations[f"{key}/{evse['uid']}"] = evse
            else:
                self.locations.setdefault(key, {}).update(body)
            self._emit("location", {"method": method, "path": key, "object": body})
            return 200, self.envelope(), {}
        if module == "sessions" and method in ("PUT", "PATCH"):
            sid = rest[-1]
            if method == "PUT":
                self.sessions[sid] = body
            elif sid not in self.sessions:
                return 404, self.envelope(code=2001, msg="unknown session"), {}
            else:
                self.sessions[sid].update(body)
            self._emit("session", {"method": method, "object": self.sessions[sid]})
            return 200, self.envelope(), {}
        if module == "cdrs" and method == "POST":
            self.cdr_posts.append(body)
            self.cdrs[body["id"]] = body
            self._emit("cdr", {"object": body})
            return 200, self.envelope(), {"Location": f"{self.base}/{version}/cdrs/{body['id']}"}
        if module == "tokens" and method == "POST" and rest[-1] == "authorize":
            uid = rest[1]
            answer = self.authorize_answers.get(uid)
            self._emit("authorize", {"uid": uid, "answer": answer if isinstance(answer, dict) else None})
            if answer is None:
                return 404, self.envelope(code=2004, msg="unknown token"), {}
            if isinstance(answer, int):
                return answer, self.envelope(code=3000, msg="error"), {}
            return 200, self.envelope(answer), {}
        if module == "commands" and method == "POST":
            self.command_results.append(("/".join(rest[1:]), body))
            return 200, self.envelope(), {}
        return 404, self.envelope(code=2000, msg=f"no {method} {path}"), {}

    async def credentials(self, method, version, body):
        if method == "GET":
            return 200, self.envelope(self.our_credentials(version, self.token_c or self.token_a)), {}
        if method in ("POST", "PUT"):
            if method == "POST" and self.token_c is not None:
                return 405, self.envelope(code=2000, msg="already registered"), {}
            self.token_b = body["token"]
            self.evc_versions_url = body["url"]
            if self.callback_ok:
                # Call EVC back with token B: its versions, then the chosen version's details.
                await self.fetch_evc(version)
            self.token_c = "TOKEN-C-" + secrets.token_hex(6)
            self.version = version
            return 200, self.envelope(self.our_credentials(version, self.token_c)), {}
        if method == "DELETE":
            self.token_c = None
            self.version = None
            return 200, self.envelope(), {}
        return 405, self.envelope(code=2000), {}

    def our_credentials(self, version, token):
        if version == "2.1.1":
            return {"token": token, "url": self.versions_url, "party_id": PARTY, "country_code": COUNTRY,
                    "business_details": {"name": "Fake eMSP"}}
        return {"token": token, "url": self.versions_url,
                "roles": [{"role": "EMSP", "party_id": PARTY, "country_code": COUNTRY,
                           "business_details": {"name": "Fake eMSP"}}]}

    def auth_header(self, version, token=None):
        token = token or self.token_b
        if version == "2.1.1":
            return f"Token {token}"
        return "Token " + base64.b64encode(token.encode()).decode()

    async def fetch_evc(self, version):
        h = {"Authorization": [self.auth_header(version)]}
        r = await treq.get(self.evc_versions_url, headers=h, persistent=False)
        doc = json.loads(await r.content())
        url = next(v["url"] for v in doc["data"] if v["version"] == version)
        r = await treq.get(url, headers=h, persistent=False)
        doc = json.loads(await r.content())
        self.evc_endpoints = {e["identifier"]: e["url"] for e in doc["data"]["endpoints"]}

    # -- requests the eMSP makes to EVC (tests call these) --

    async def call_evc(self, method, url, body=None, token=None, version=None, headers=None, raw=None):
        version = version or self.version or "2.2.1"
        h = {"Authorization": [self.auth_header(version, token)] if (token or self.token_b) else [],
             "X-Request-ID": ["req-" + secrets.token_hex(4)], "X-Correlation-ID": ["corr-" + secrets.token_hex(4)]}
        if version != "2.1.1":
            h.update({"OCPI-from-country-code": [COUNTRY], "OCPI-from-party-id": [PARTY]})
        for k, v in (headers or {}).items():
            h[k] = [v] if v is not None else []
        h = {k: v for k, v in h.items() if v}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h["Content-Type"] = ["application/json"]
        r = await treq.request(method, url, data=data, headers=h, persistent=False)
        content = await r.content()
        hdrs = {k.decode().lower(): v[0].decode() for k, v in r.headers.getAllRawHeaders()}
        try:
            doc = json.loads(content)
        except ValueError:
            doc = content
        return r.code, hdrs, doc


def allowed_token(uid: str) -> dict:
    """An AuthorizationInfo allowing card `uid` (an RFID card of this eMSP)."""
    token = {"country_code": COUNTRY, "party_id": PARTY, "uid": uid, "type": "RFID",
             "contract_id": f"{COUNTRY}-{PARTY}-C{uid[:8]}", "issuer": "Simulated eMSP", "valid": True,
             "whitelist": "ALLOWED", "last_updated": now_text()}
    return {"allowed": "ALLOWED", "token": token, "authorization_reference": "AUTH-" + secrets.token_hex(4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m evc.sim.emsp", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="listen on 127.0.0.1:PORT (0: any free port)")
    p.add_argument("--token-a", help="the registration token EVC is given (config/token_a)")
    p.add_argument("--allow", action="append", default=[], metavar="UID",
                   help="a card this eMSP authorizes in real time (repeatable)")
    args = p.parse_args(argv)
    from twisted.internet import reactor
    emsp = FakeEmsp(reactor)
    if args.token_a:
        emsp.token_a = args.token_a
    for uid in args.allow:
        emsp.authorize_answers[uid.upper()] = allowed_token(uid.upper())
    emsp.on_event = lambda kind, doc: print(json.dumps({"event": kind, **doc}), flush=True)
    emsp.start(args.port)
    print(f"PORT {emsp.port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
