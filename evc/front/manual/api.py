"""The HTTP side of front/manual: the JSON API under /api/v1/, the live stream, the OpenAPI document, the page.

Every error is `{"error": "<sentence naming what is wrong>"}` with its status: 400 a bad body or value, 401 no or a
wrong login, 403 a viewer or a missing CSRF header, 404 an unknown name, 409 a command the charger's state does not
allow, 413 a body over 64 KiB, 429 too many failed logins. The API is described in openapi.json (this package);
docs/front-manual.md shows it with curl.
"""
from __future__ import annotations

import csv
import email.utils
import io
import json
import re
import urllib.parse
from importlib import resources
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from evc.errors import ConfigError
from evc.front.manual.auth import COOKIE, Login
from evc.front.manual.events import frame
from evc.front.manual.site import parse_time
from evc.ocpp.cs_auth import parse_basic_auth
from evc.store.interface import Delete, Put
from evc.tree import leaf_text

log = Logger(namespace="evc.front.manual")

MAX_BODY = 64 * 1024
STATIC = {"": ("index.html", "text/html; charset=utf-8"),
          "index.html": ("index.html", "text/html; charset=utf-8"),
          "static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "static/style.css": ("style.css", "text/css; charset=utf-8")}
# An OCPP 1.6 idTag: CiString20, printable ASCII without spaces; "/" would be a new level in the etcd tree.
ID_TAG = re.compile(r"^[\x21-\x2e\x30-\x7e]{1,20}$")
# A card's UID: 4, 7 or 10 bytes for ISO 14443 cards, 5 for EM4100; a few more are allowed for other readers.
MAX_UID_BYTES = 16
UID_HEX = re.compile(r"^[0-9A-Fa-f]{2,%d}$" % (2 * MAX_UID_BYTES))
SESSION_COLUMNS = ("id", "charger", "state", "id_tag", "start_time", "stop_time", "duration_s", "energy_Wh",
                   "meter_start_Wh", "meter_stop_Wh", "reason")
SECURITY_HEADERS = {
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Content-Security-Policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Reply:
    def __init__(self, status: int, body: Any = None, content_type: str = "application/json",
                 headers: dict | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def openapi_bytes() -> bytes:
    return resources.files("evc.front.manual").joinpath("openapi.json").read_bytes()


def static_bytes(name: str) -> bytes:
    return resources.files("evc.front.manual").joinpath("static", name).read_bytes()


def valid_id_tag(text: str) -> bool:
    return bool(ID_TAG.match(text))


def parse_uid(text: str) -> bytes:
    """A card's UID as the API takes it ("1C78F2BF"; "1c:78:f2:bf" and "1C-78-F2-BF" too) -> its bytes."""
    digits = re.sub(r"[\s:-]", "", text)
    if not UID_HEX.match(digits) or len(digits) % 2:
        raise ApiError(400, f"uid: {text[:40]!r} is not a card's UID in hex: 2 to {2 * MAX_UID_BYTES} hex digits, "
                            "an even number of them, byte 0 first (e.g. 1C78F2BF)")
    return bytes.fromhex(digits)


class Root(resource.Resource):
    """Everything below `/`; one leaf resource that routes by path, so no child lookup can reach the file system."""
    isLeaf = True

    def __init__(self, front):
        super().__init__()
        self.front = front

    def render(self, request):
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._crashed, request)
        d.addCallback(self._send, request)
        return server.NOT_DONE_YET

    def _crashed(self, f, request):
        if f.check(ApiError):
            return Reply(f.value.status, {"error": f.value.message}, headers=f.value.headers)
        log.failure("front/manual: {method} {path} failed", f, method=request.method.decode("ascii", "replace"),
                    path=request.path.decode("ascii", "replace"))
        return Reply(500, {"error": "internal error; the front's log says more"})

    def _send(self, reply: Optional[Reply], request) -> None:
        if reply is None or request.finished or getattr(request, "_disconnected", False):
            return                  # a stream that owns the request, or a client that went away
        request.setResponseCode(reply.status)
        for name, value in reply.headers.items():
            request.setHeader(name, value)
        if reply.body is None:
            body = b""
        elif isinstance(reply.body, bytes):
            body = reply.body
        else:
            body = json.dumps(reply.body, separators=(",", ":")).encode("utf-8")
        if reply.status != 204:
            request.setHeader(b"Content-Type", reply.content_type.encode("ascii"))
            request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def _handle(self, request) -> Optional[Reply]:
        raw = request.path.decode("ascii", errors="replace")
        if not raw.startswith("/"):
            raise ApiError(404, "no such page")
        try:
            segments = [urllib.parse.unquote(s, errors="strict") for s in raw[1:].split("/")]
        except UnicodeDecodeError:
            raise ApiError(404, "no such page") from None
        method = request.method.decode("ascii", errors="replace")
        if segments[:1] == ["api"]:
            if segments[1:] == ["openapi.json"]:
                _only(method, "GET")
                return Reply(200, openapi_bytes())
            if segments[1:2] != ["v1"]:
                raise ApiError(404, f"no API at {raw} (the API is under /api/v1/)")
            return await self.front.api.handle(request, method, segments[2:])
        key = "/".join(segments)
        if key not in STATIC:
            raise ApiError(404, "no such page")
        _only(method, "GET")
        name, ctype = STATIC[key]
        return Reply(200, static_bytes(name), ctype, headers={b"Cache-Control": b"no-cache"})


def _only(method: str, *allowed: str) -> None:
    if method == "HEAD" and "GET" in allowed:
        return
    if method not in allowed:
        raise ApiError(405, f"method {method} is not allowed here (allowed: {', '.join(allowed)})",
                       {b"Allow": ", ".join(allowed).encode("ascii")})


def read_json(request, *, required: bool = True) -> Any:
    """The request's JSON body: at most 64 KiB, application/json; ApiError naming what is wrong."""
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"the body is {int(length)} bytes; at most {MAX_BODY} are accepted")
    request.content.seek(0)
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} bytes; at most {MAX_BODY} are accepted")
    if not data.strip():
        if required:
            raise ApiError(400, "the request needs a JSON body")
        return None
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json":
        raise ApiError(400, "the body must be JSON, sent with Content-Type: application/json")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None


def body_object(request, allowed: dict[str, type | tuple], required: tuple = (), optional_body: bool = False) -> dict:
    """A JSON object body whose members are among `allowed` (name -> Python type(s)); errors name the member."""
    doc = read_json(request, required=not optional_body)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(doc).__name__}")
    for name in doc:
        if name not in allowed:
            raise ApiError(400, f"{name}: not a member of this request (allowed: {', '.join(allowed) or 'none'})")
    for name in required:
        if name not in doc:
            raise ApiError(400, f"{name}: missing")
    for name, value in doc.items():
        types = allowed[name]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
            want = " or ".join(t.__name__ for t in _tuple(types)).replace("str", "string")
            raise ApiError(400, f"{name}: must be a {want}")
    return doc


def _tuple(t):
    return t if isinstance(t, tuple) else (t,)


class Api:
    """/api/v1/...: authentication, then one method per route."""

    def __init__(self, front):
        self.front = front

    @property
    def view(self):
        return self.front.view

    @property
    def auth(self):
        return self.front.auth

    async def handle(self, request, method: str, path: list[str]) -> Optional[Reply]:
        if path == ["login"]:
            _only(method, "POST")
            return await self.login(request)
        login = await self.authenticate(request)
        if path == ["session"]:
            _only(method, "GET")
            return Reply(200, login.public())
        if path == ["logout"]:
            _only(method, "POST")
            self.may_change(request, login, need_operator=False)
            return self.logout(request, login)
        if method not in ("GET", "HEAD"):
            self.may_change(request, login)
        if path == ["site"]:
            _only(method, "GET")
            return Reply(200, self.front.site())
        if path == ["events"]:
            _only(method, "GET")
            return self.events(request, login)
        if path[:1] == ["chargers"]:
            return await self.chargers(request, method, path[1:])
        if path[:1] == ["tokens"]:
            return await self.tokens(request, method, path[1:])
        if path[:1] == ["readers"]:
            return self.readers(request, method, path[1:], login)
        if path == ["sessions"]:
            _only(method, "GET")
            return self.sessions(request)
        if path == ["sessions.csv"]:
            _only(method, "GET")
            return self.sessions_csv(request)
        raise ApiError(404, f"no API at /api/v1/{'/'.join(path)}")

    # -- authentication --

    def _address(self, request) -> str:
        addr = request.getClientAddress()
        return getattr(addr, "host", None) or str(addr)

    def _limited(self, request) -> None:
        wait = self.auth.limit.retry_after_s(self._address(request))
        if wait:
            raise ApiError(429, f"too many failed logins from this address; try again in {int(wait + 0.999)} s",
                           {b"Retry-After": str(int(wait + 0.999)).encode("ascii")})

    async def login(self, request) -> Reply:
        self._limited(request)
        doc = body_object(request, {"user": str, "password": str}, required=("user", "password"))
        if not self.auth.users:
            raise ApiError(400, f"{self.front.ctx.key} has no users: nobody needs to log in here")
        user = await self.auth.check(doc["user"], doc["password"])
        if user is None:
            self.auth.limit.failed(self._address(request))
            log.info("front/manual: failed login from {address}", address=self._address(request))
            raise ApiError(401, "wrong user name or password")
        login = self.auth.open_session(user)
        log.info("front/manual: {user} logged in ({role})", user=user.name, role=user.role)
        expires = email.utils.formatdate(login.expires_s, usegmt=True)
        cookie = (f"{COOKIE}={login.token}; Path=/; HttpOnly; SameSite=Strict; Expires={expires}; "
                  f"Max-Age={int(self.auth.session_ttl_s)}" + ("; Secure" if self.front.tls else ""))
        return Reply(200, login.public(), headers={b"Set-Cookie": cookie.encode("ascii")})

    def logout(self, request, login: Login) -> Reply:
        if login.token:
            self.auth.close_session(login.token)
            self.front.hub.close_login(login.token)
        cookie = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0" + ("; Secure" if self.front.tls else "")
        return Reply(204, headers={b"Set-Cookie": cookie.encode("ascii")})

    async def authenticate(self, request) -> Login:
        header = request.getHeader(b"authorization")
        if header is not None:
            self._limited(request)
            creds = parse_basic_auth(header.decode("latin-1"))
            login = await self.auth.basic(*creds) if creds is not None and self.auth.users else None
            if login is None:
                self.auth.limit.failed(self._address(request))
                why = ("this front has no users (leave the Authorization header out)" if not self.auth.users
                       else "wrong user name or password in the Authorization header")
                raise ApiError(401, why, {b"WWW-Authenticate": b'Basic realm="EVC", charset="UTF-8"'})
            return login
        cookie = request.getCookie(COOKIE.encode("ascii"))
        if cookie is not None:
            login = self.auth.session(cookie.decode("ascii", errors="replace"))
            if login is not None:
                return login
            if self.auth.anonymous is None:
                raise ApiError(401, "the login has expired or is not valid; log in again")
        if self.auth.anonymous is not None:
            return self.auth.anonymous
        raise ApiError(401, "log in first (POST /api/v1/login) or use HTTP Basic authentication")

    def may_change(self, request, login: Login, need_operator: bool = True) -> None:
        if login.by_cookie or login is self.auth.anonymous:
            sent = request.getHeader(b"x-csrf-token")
            if sent is None or not _same(sent.decode("latin-1"), login.csrf_token):
                raise ApiError(403, "the X-CSRF-Token header is missing or does not match the login's csrf_token")
        if need_operator and not login.may_change:
            raise ApiError(403, f"{login.user} is a viewer: viewers see everything and change nothing")

    # -- the live stream --

    def events(self, request, login: Login) -> None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        self.front.hub.add(request, login, frame("site", self.front.site()))
        return None

    # -- chargers --

    def _charger(self, name: str) -> str:
        if not name or not self.view.visible(name) or not self.view.exists("charger", name):
            raise ApiError(404, f"no charger {name!r} at this front")
        return name

    async def chargers(self, request, method: str, path: list[str]) -> Reply:
        if not path:
            _only(method, "GET")
            return Reply(200, [self.view.charger(n) for n in self.view.chargers()])
        name = self._charger(path[0])
        if len(path) == 1:
            _only(method, "GET")
            return Reply(200, self.view.charger(name))
        if len(path) == 2 and path[1] == "mode":
            _only(method, "PUT")
            return await self.set_mode(request, name)
        if len(path) == 2 and path[1] in ("start", "stop"):
            _only(method, "POST")
            return self.command(request, name, path[1])
        raise ApiError(404, f"no API at /api/v1/chargers/{'/'.join(path)}")

    async def set_mode(self, request, name: str) -> Reply:
        doc = body_object(request, {"mode": str}, required=("mode",))
        mode = doc["mode"]
        type_name = self.view.type_of("charger", name)
        try:
            schema = self.front.catalog.type_schema("charger", type_name or "")
        except ConfigError:
            raise ApiError(409, f"charger {name} has type {type_name!r}, whose modes this EVC does not know") from None
        ps = (schema.get("properties") or {}).get("mode") or {}
        allowed = ps.get("enum") or []
        if mode not in allowed:
            raise ApiError(400, f"mode: {mode!r} is not a mode of charger {name} (type {type_name}): "
                                f"{', '.join(allowed)}")
        rel = f"charger/{name}/config/mode"
        await self.front.ctx.store.put(f"{self.view.root}/{rel}", leaf_text(mode).encode("utf-8"))
        self.view.put_local(rel, mode)
        log.info("front/manual: charger {charger} set to mode {mode}", charger=name, mode=mode)
        return Reply(200, self.view.charger(name))

    def command(self, request, name: str, what: str) -> Reply:
        doc = body_object(request, {"id_tag": str} if what == "start" else {}, optional_body=True)
        id_tag = doc.get("id_tag") or self.front.config.start_id_tag
        if not valid_id_tag(id_tag):
            raise ApiError(400, "id_tag: 1 to 20 printable characters without spaces or '/' (an OCPP idTag)")
        charger = self.view.charger(name)
        try:
            inst = self.front.ctx.resolve("charger", name)
        except ConfigError:
            raise ApiError(409, f"charger {name} is not running ({charger['error'] or 'see its state/error'})") \
                from None
        fn = getattr(inst, "authorize" if what == "start" else "deauthorize", None)
        if not callable(fn):
            raise ApiError(409, f"charger {name} (type {charger['type']}) cannot be started or stopped by EVC")
        if charger["status"] in ("offline", "unknown", "error"):
            raise ApiError(409, f"charger {name} is {charger['status']}: it cannot be {what}ed now")
        session = charger["session"]
        authorized = session is not None and session["state"] in ("authorized", "charging", "suspended")
        if what == "start" and authorized:
            raise ApiError(409, f"charger {name} already has an authorized session ({session['state']})")
        if what == "stop" and not authorized:
            raise ApiError(409, f"charger {name} has no session to stop")
        d = defer.maybeDeferred(fn, id_tag) if what == "start" else defer.maybeDeferred(fn)
        d.addErrback(lambda f: log.warn("front/manual: {command} at charger {charger} failed: {error}",
                                        command=what, charger=name, error=f.getErrorMessage()))
        log.info("front/manual: {command} at charger {charger}", command=what, charger=name)
        return Reply(202, {"charger": name, "command": what})

    # -- readers --

    def readers(self, request, method: str, path: list[str], login: Login) -> Reply:
        if len(path) == 2 and path[1] == "present":
            _only(method, "POST")
            return self.present(request, path[0], login)
        _only(method, "GET")
        if not path:
            return Reply(200, [self.view.reader(n) for n in self.view.readers()])
        if len(path) == 1:
            return Reply(200, self.view.reader(self._reader(path[0])))
        raise ApiError(404, f"no API at /api/v1/readers/{'/'.join(path)}")

    def _reader(self, name: str) -> str:
        if name not in self.view.readers():
            raise ApiError(404, f"no reader {name!r} at this front")
        return name

    def present(self, request, name: str, login: Login) -> Reply:
        """A card presented at reader `name` from the page: one presentation through the reader's own rules."""
        from evc.reader.base import ReaderBase
        if not self.front.config.present_cards:
            raise ApiError(403, f"presenting a card from the page is off at {self.front.ctx.key} (it is for demos "
                                "and commissioning): set its config/present_cards to true to allow it")
        name = self._reader(name)
        doc = body_object(request, {"uid": str}, required=("uid",))
        uid = parse_uid(doc["uid"])
        try:
            inst = self.front.ctx.resolve("reader", name)
        except ConfigError:
            error = self.view.reader(name)["error"]
            raise ApiError(409, f"reader {name} is not running ({error or 'see its state/error'})") from None
        if not isinstance(inst, ReaderBase):
            raise ApiError(409, f"reader {name} (type {inst.type_name}) cannot take a card from the page")
        if inst.present(uid) is None:
            raise ApiError(409, f"the same card was presented at reader {name} less than {inst.lockout_s:g} s ago, "
                                "or is held at the reader now: it counts as that presentation (present it again "
                                "later)")
        log.info("front/manual: a card presented at reader {reader} from the page by {user}", reader=name,
                 user=login.user or "a local operator")
        return Reply(202, self.view.reader(name))

    # -- tokens --

    def _token_id(self, text: str) -> str:
        if not valid_id_tag(text):
            raise ApiError(400, f"token id {text!r} is not an OCPP idTag: 1 to 20 printable ASCII characters "
                                "without spaces or '/'")
        return text

    async def tokens(self, request, method: str, path: list[str]) -> Reply:
        if not path:
            _only(method, "GET")
            return Reply(200, self.view.tokens())
        if len(path) != 1:
            raise ApiError(404, f"no API at /api/v1/tokens/{'/'.join(path)}")
        id_tag = self._token_id(path[0])
        if method in ("GET", "HEAD"):
            if not self.view.exists("token", id_tag):
                raise ApiError(404, f"no token {id_tag!r}")
            return Reply(200, self.view.token(id_tag))
        if method == "PUT":
            return await self.put_token(request, id_tag)
        if method == "DELETE":
            if not self.view.exists("token", id_tag):
                raise ApiError(404, f"no token {id_tag!r}")
            # Its settings only: state/ is EVC's (it goes when the supervisor stops the instance).
            base = f"{self.view.root}/token/{id_tag}"
            await self.front.ctx.store.txn([], [Delete(f"{base}/config/", prefix=True), Delete(f"{base}/type")])
            for rel in [r for r in self.view.leaves if r.startswith((f"token/{id_tag}/config/",
                                                                     f"token/{id_tag}/type"))]:
                self.view.put_local(rel, None)
            log.info("front/manual: token deleted")
            return Reply(204)
        _only(method, "GET", "PUT", "DELETE")

    async def put_token(self, request, id_tag: str) -> Reply:
        from evc.token.token import TokenConfig
        doc = read_json(request)
        if not isinstance(doc, dict):
            raise ApiError(400, f"the body must be a JSON object, not {type(doc).__name__}")
        doc = {k: v for k, v in doc.items() if not (k == "id" and v == id_tag)}   # a GET's object may come back
        doc = {k: v for k, v in doc.items() if v is not None}                     # null: not set
        try:
            full = self.front.catalog.validate("token", "token", doc, base="token")
            TokenConfig(**full)
        except ConfigError as e:
            raise ApiError(400, str(e).replace("config/", "")) from None
        except TypeError as e:
            raise ApiError(400, str(e)) from None
        prefix = f"token/{id_tag}/config/"
        new = {prefix + k: leaf_text(v) for k, v in doc.items()}
        ops = [Delete(f"{self.view.root}/{rel}") for rel in self.view.leaves if rel.startswith(prefix)
               and rel not in new]
        ops += [Put(f"{self.view.root}/{rel}", text.encode("utf-8")) for rel, text in new.items()]
        if not new:
            # A token with every setting at its default still needs a leaf to exist.
            ops.append(Put(f"{self.view.root}/{prefix}status", b"Accepted"))
            new[prefix + "status"] = "Accepted"
        created = not self.view.exists("token", id_tag)
        await self.front.ctx.store.txn([], ops)
        for op in ops:
            self.view.put_local(op.key[len(self.view.root) + 1:], new.get(op.key[len(self.view.root) + 1:]))
        log.info("front/manual: token {what}", what="added" if created else "changed")
        return Reply(201 if created else 200, self.view.token(id_tag))

    # -- sessions --

    def _filters(self, request) -> tuple[list[dict], Optional[int]]:
        args = {k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
                for k, vs in request.args.items()}
        unknown = set(args) - {"charger", "from", "to", "limit", "after"}
        if unknown:
            raise ApiError(400, f"{sorted(unknown)[0]}: not a filter (filters: charger, from, to, limit, after)")
        one = {k: v[-1] for k, v in args.items()}
        charger = one.get("charger") or None
        if charger is not None:
            self._charger(charger)
        bounds = {}
        for name in ("from", "to"):
            if one.get(name):
                try:
                    bounds[name] = parse_time(one[name])
                except ValueError:
                    raise ApiError(400, f"{name}: {one[name]!r} is not an ISO 8601 time "
                                        "(e.g. 2026-01-31 or 2026-01-31T12:00:00Z)") from None
        limit = None
        if one.get("limit"):
            if not one["limit"].isdigit() or not 1 <= int(one["limit"]) <= 10000:
                raise ApiError(400, f"limit: {one['limit']!r} is not a number from 1 to 10000")
            limit = int(one["limit"])
        rows = self.view.sessions(charger, bounds.get("from"), bounds.get("to"))
        after = one.get("after")
        if after:
            ids = [r["id"] for r in rows]
            if after not in ids:
                raise ApiError(400, f"after: no session {after!r} among the ones these filters select")
            rows = rows[ids.index(after) + 1:]
        return rows, limit

    def sessions(self, request) -> Reply:
        rows, limit = self._filters(request)
        limit = limit or 100
        page = rows[:limit]
        headers = {}
        if len(rows) > limit:
            headers[b"X-Next-After"] = page[-1]["id"].encode("utf-8", "replace")
        return Reply(200, page, headers=headers)

    def sessions_csv(self, request) -> Reply:
        rows, limit = self._filters(request)
        if limit:
            rows = rows[:limit]
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow(SESSION_COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in SESSION_COLUMNS])
        name = f"sessions-{self.view.name}.csv"
        return Reply(200, out.getvalue().encode("utf-8"), "text/csv; charset=utf-8",
                     headers={b"Content-Disposition": f'attachment; filename="{name}"'.encode("ascii", "replace")})


def _same(a: str, b: str) -> bool:
    import hmac
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
