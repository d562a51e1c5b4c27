"""EVC's own OCPI endpoints (twisted.web): versions, version details, credentials, and the CPO's interfaces.

    GET  /ocpi/versions                                     the versions EVC offers (up to config `version`)
    GET  /ocpi/<v>                                          the endpoints of version v
    *    /ocpi/<v>/credentials                              GET, POST (register), PUT (rotate), DELETE
    GET  /ocpi/<v>/locations[/<location>[/<evse>[/<connector>]]]   paginated list, or one object
    GET  /ocpi/<v>/sessions | cdrs | tariffs                paginated lists (the eMSP may pull)
    GET|PUT|PATCH /ocpi/<v>/tokens/<cc>/<party>/<uid>[?type=RFID]  the eMSP's tokens (stored in data/tokens/)
    POST /ocpi/<v>/commands/<START_SESSION|STOP_SESSION|UNLOCK_CONNECTOR|RESERVE_NOW|CANCEL_RESERVATION>

Every answer is an OCPI envelope and echoes X-Request-ID / X-Correlation-ID (made up when the request had none);
function modules of 2.2.1 also answer with OCPI-from/to headers. A missing or unknown token is HTTP 401 and
changes nothing; the incoming TOKEN_A opens versions, details and credentials only. A body that is not JSON, or an
object that breaks its module's rules, is HTTP 400 with status_code 2001 and changes nothing.
"""
from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from evc.front.ocpi import objects
from evc.front.ocpi.transport import (BadRequest, INVALID_PARAMETERS, MAX_BODY, SERVER_ERROR, envelope, tokens_in)

log = Logger(namespace="evc.front.ocpi")

FUNCTION_MODULES = ("locations", "sessions", "cdrs", "tariffs", "tokens", "commands")


class Reply:
    def __init__(self, data: Any = None, http_code: int = 200, status_code: int = 1000,
                 message: Optional[str] = None, headers: Optional[dict] = None):
        self.data = data
        self.http_code = http_code
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}


class Root(resource.Resource):
    """Every path; one leaf resource that routes by path (nothing can reach the file system)."""
    isLeaf = True

    def __init__(self, front):
        super().__init__()
        self.front = front

    def render(self, request):
        rid = _header(request, b"x-request-id") or str(uuid.uuid4())
        cid = _header(request, b"x-correlation-id") or str(uuid.uuid4())
        d = defer.ensureDeferred(self.front.api.handle(request))
        d.addErrback(self._crashed, request)
        d.addCallback(self._send, request, rid, cid)
        return server.NOT_DONE_YET

    def _crashed(self, f, request):
        if f.check(BadRequest):
            e = f.value
            return Reply(None, e.http_code, e.status_code, e.message, e.headers)
        log.failure("{front}: {method} {path} failed", f, front=self.front.ctx.key,
                    method=request.method.decode("ascii", "replace"), path=request.path.decode("ascii", "replace"))
        return Reply(None, 500, SERVER_ERROR, "internal error; EVC's log says more")

    def _send(self, reply: Reply, request, rid: str, cid: str) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(reply.http_code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Request-ID", rid.encode("latin-1", "replace"))
        request.setHeader(b"X-Correlation-ID", cid.encode("latin-1", "replace"))
        for name, value in reply.headers.items():
            request.setHeader(name.encode("latin-1"), str(value).encode("latin-1", "replace"))
        body = json.dumps(envelope(reply.data, reply.status_code, reply.message,
                                   now_s=self.front.ctx.clock.seconds()), separators=(",", ":")).encode("utf-8")
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()


def _header(request, name: bytes) -> Optional[str]:
    v = request.getHeader(name)
    return v.decode("latin-1") if v is not None else None


def read_body(request) -> Any:
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BadRequest(413, INVALID_PARAMETERS, f"the body is over {MAX_BODY} bytes")
    request.content.seek(0)
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise BadRequest(413, INVALID_PARAMETERS, f"the body is over {MAX_BODY} bytes")
    if not data.strip():
        raise BadRequest(400, INVALID_PARAMETERS, "the request needs a JSON body")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(400, INVALID_PARAMETERS, f"the body is not valid JSON ({e})") from None


def valid(name: str, doc: Any, version: str, partial: bool = False) -> Any:
    errors = objects.errors_of(name, doc, version, partial)
    if errors:
        raise BadRequest(400, INVALID_PARAMETERS, f"not a valid OCPI {version} {name}: " + "; ".join(errors[:3]))
    return doc


def only(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise BadRequest(405, 2000, f"method {method} is not allowed here (allowed: {', '.join(allowed)})",
                         {"Allow": ", ".join(allowed)})


class Api:
    """Routing and authentication; the front does the work."""

    def __init__(self, front):
        self.front = front

    async def handle(self, request) -> Reply:
        front = self.front
        raw = request.path.decode("ascii", errors="replace")
        try:
            segments = [urllib.parse.unquote(s, errors="strict") for s in raw.strip("/").split("/")]
        except UnicodeDecodeError:
            raise BadRequest(404, 2000, "no such endpoint") from None
        method = request.method.decode("ascii", errors="replace")
        if segments[:1] != ["ocpi"] or len(segments) < 2:
            raise BadRequest(404, 2000, f"no OCPI endpoint at {raw} (EVC's versions are at /ocpi/versions)")
        who = front.registrar.who(tokens_in(_header(request, b"authorization")))
        if who is None:
            front.count("unauthorized")
            raise BadRequest(401, 2000, "a missing or unknown token (Authorization: Token ...)")
        if segments[1] == "versions" and len(segments) == 2:
            only(method, "GET")
            return Reply(front.versions())
        version = segments[1]
        if version not in front.offered_versions():
            raise BadRequest(404, 3002, f"EVC does not offer OCPI version {version}")
        if len(segments) == 2:
            only(method, "GET")
            return Reply(front.details(version))
        module, rest = segments[2], segments[3:]
        if module == "credentials" and not rest:
            return await self.credentials(request, method, version, who)
        if module not in FUNCTION_MODULES:
            raise BadRequest(404, 2000, f"no module {module!r} in EVC's OCPI {version}")
        if who != "peer":
            front.count("unauthorized")
            raise BadRequest(401, 2000, "this token may only be used for the credentials handshake")
        creds = front.registrar.creds
        if creds.version != version:
            raise BadRequest(404, 3002, f"registered for OCPI {creds.version}, not {version}")
        args = {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}
        reply = await getattr(self, module)(request, method, version, rest, args)
        if version != "2.1.1":
            reply.headers.update(front.routing_headers())
        return reply

    async def credentials(self, request, method: str, version: str, who: str) -> Reply:
        reg = self.front.registrar
        if method == "GET":
            if who != "peer":
                raise BadRequest(401, 2000, "not registered with this token")
            return Reply(reg.get())
        if method == "POST":
            return Reply(await reg.post(version, read_body(request), who))
        if method == "PUT":
            if who != "peer":
                if reg.creds is None:
                    raise BadRequest(405, 2000, "not registered: POST to register", {"Allow": "POST"})
                raise BadRequest(401, 2000, "not registered with this token")
            return Reply(await reg.put(version, read_body(request)))
        if method == "DELETE":
            if who != "peer":
                if reg.creds is None:
                    raise BadRequest(405, 2000, "not registered", {"Allow": "POST"})
                raise BadRequest(401, 2000, "not registered with this token")
            await reg.delete()
            return Reply()
        only(method, "GET", "POST", "PUT", "DELETE")

    async def locations(self, request, method, version, rest, args) -> Reply:
        only(method, "GET")
        front = self.front
        if not rest:
            data, headers = front.location_page(version, args, _base_url(front, request))
            return Reply(data, headers=headers)
        if len(rest) > 3:
            raise BadRequest(404, 2000, "no such endpoint")
        obj = front.location_object(version, *rest)
        if obj is None:
            raise BadRequest(404, 2003, f"unknown location, EVSE or connector {'/'.join(rest)!r}")
        return Reply(obj)

    async def sessions(self, request, method, version, rest, args) -> Reply:
        only(method, "GET")
        if rest:
            raise BadRequest(404, 2000, "no such endpoint (the sessions list is at .../sessions)")
        data, headers = self.front.list_page("sessions", version, args, _base_url(self.front, request))
        return Reply(data, headers=headers)

    async def cdrs(self, request, method, version, rest, args) -> Reply:
        only(method, "GET")
        front = self.front
        if rest:
            raise BadRequest(404, 2000, "no such endpoint (the CDR list is at .../cdrs)")
        data, headers = front.list_page("cdrs", version, args, _base_url(front, request))
        return Reply(data, headers=headers)

    async def tariffs(self, request, method, version, rest, args) -> Reply:
        only(method, "GET")
        data, headers = self.front.list_page("tariffs", version, args, _base_url(self.front, request))
        return Reply(data, headers=headers)

    async def tokens(self, request, method, version, rest, args) -> Reply:
        if len(rest) != 3:
            raise BadRequest(404, 2000, "tokens are at .../tokens/<country_code>/<party_id>/<uid>")
        cc, pid, uid = rest
        token_type = args.get("type", "RFID")
        front = self.front
        if method == "GET":
            tok = front.tokens.get(cc, pid, uid, token_type)
            if tok is None:
                raise BadRequest(404, 2004, "unknown token")
            return Reply(tok)
        if method == "PUT":
            doc = valid("Token", read_body(request), version)
            front.tokens.check_ids(doc, cc, pid, uid, version)
            await front.tokens.put(doc, cc, pid, uid, version)
            return Reply()
        if method == "PATCH":
            doc = valid("Token", read_body(request), version, partial=True)
            if front.tokens.get(cc, pid, uid, token_type) is None:
                raise BadRequest(404, 2004, "unknown token: PUT it first")
            await front.tokens.patch(doc, cc, pid, uid, token_type, version)
            return Reply()
        only(method, "GET", "PUT", "PATCH")

    async def commands(self, request, method, version, rest, args) -> Reply:
        only(method, "POST")
        if len(rest) != 1 or rest[0] not in objects.COMMANDS[version]:
            raise BadRequest(404, 2000, f"no command {'/'.join(rest)!r} in OCPI {version}")
        return Reply(await self.front.commands.receive(rest[0], read_body(request), version))


def _base_url(front, request) -> str:
    return front.config.public_url.rstrip("/") + request.path.decode("ascii", "replace")


__all__ = ["Root", "Api", "Reply", "valid", "read_body"]
