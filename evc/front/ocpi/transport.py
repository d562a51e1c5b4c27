"""OCPI transport: the envelope, status codes, the token header, request ids, routing headers, pagination, and
an HTTP client on treq whose every failure says what kind it is (unreachable, timeout, HTTP error, garbage, an OCPI
error status).

Version differences: 2.2.1 sends `Authorization: Token <base64(token)>`, 2.1.1 the raw token; inbound both forms are
accepted whatever the version. 2.2.1 adds `X-Request-ID` / `X-Correlation-ID` (EVC sends them in both versions and
echoes them in every answer) and, on the function modules only, `OCPI-from/to-country-code` / `-party-id`.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import urllib.parse
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

# -- status codes --

SUCCESS = 1000
CLIENT_ERROR = 2000
INVALID_PARAMETERS = 2001
NOT_ENOUGH_INFORMATION = 2002
UNKNOWN_LOCATION = 2003
UNKNOWN_TOKEN = 2004
SERVER_ERROR = 3000
UNABLE_TO_USE_CLIENT_API = 3001
UNSUPPORTED_VERSION = 3002
NO_MATCHING_ENDPOINTS = 3003

MESSAGES = {SUCCESS: "Success", CLIENT_ERROR: "Generic client error", INVALID_PARAMETERS: "Invalid or missing parameters",
            NOT_ENOUGH_INFORMATION: "Not enough information", UNKNOWN_LOCATION: "Unknown Location",
            UNKNOWN_TOKEN: "Unknown Token", SERVER_ERROR: "Generic server error",
            UNABLE_TO_USE_CLIENT_API: "Unable to use the client's API",
            UNSUPPORTED_VERSION: "Unsupported version", NO_MATCHING_ENDPOINTS: "No matching endpoints or expected "
                                                                               "endpoints missing between parties"}

MAX_BODY = 1024 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 100


def ocpi_time(seconds: float) -> str:
    """Clock seconds as an OCPI DateTime (UTC, seconds, Z)."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """An OCPI DateTime (Z optional: UTC is assumed) as epoch seconds; ValueError when it is not one."""
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?$", text) \
        if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not an OCPI DateTime")
    zone = "+00:00" if m[3] in (None, "Z") else m[3]
    return datetime.fromisoformat(m[1] + (m[2][:7] if m[2] else "") + zone).timestamp()


def envelope(data: Any = None, status_code: int = SUCCESS, message: Optional[str] = None, *,
             now_s: float) -> dict:
    doc: dict[str, Any] = {}
    if data is not None:
        doc["data"] = data
    doc["status_code"] = status_code
    doc["status_message"] = message or MESSAGES.get(status_code, "")
    doc["timestamp"] = ocpi_time(now_s)
    return doc


# -- the token header --

def token_header(token: str, version: str) -> str:
    if version == "2.1.1":
        return f"Token {token}"
    return "Token " + base64.b64encode(token.encode("utf-8")).decode("ascii")


def tokens_in(header: Optional[str]) -> list[str]:
    """The credentials token(s) an Authorization header may carry: the text as sent and, when it is valid base64 of
    printable text, what it decodes to (2.2.1 sends base64, 2.1.1 and some 2.2 peers the raw token)."""
    if not header:
        return []
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "token" or not value:
        return []
    found = [value]
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        decoded = ""
    if decoded and decoded.isprintable() and decoded != value:
        found.append(decoded)
    return found


# -- headers --

@dataclasses.dataclass(frozen=True)
class Party:
    country_code: str
    party_id: str

    def __str__(self) -> str:
        return f"{self.country_code}*{self.party_id}"


def request_headers(token: str, version: str, *, request_id: Optional[str] = None,
                    correlation_id: Optional[str] = None, from_party: Optional[Party] = None,
                    to_party: Optional[Party] = None) -> dict[str, str]:
    """The headers of a request EVC makes. Routing headers only when both parties are given (function modules)."""
    h = {"Authorization": token_header(token, version), "X-Request-ID": request_id or str(uuid.uuid4()),
         "X-Correlation-ID": correlation_id or str(uuid.uuid4())}
    if version != "2.1.1" and from_party is not None and to_party is not None:
        h.update({"OCPI-from-country-code": from_party.country_code, "OCPI-from-party-id": from_party.party_id,
                  "OCPI-to-country-code": to_party.country_code, "OCPI-to-party-id": to_party.party_id})
    return h


# -- pagination --

@dataclasses.dataclass(frozen=True)
class Page:
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    date_from: Optional[float] = None     # inclusive, on last_updated
    date_to: Optional[float] = None       # exclusive


class BadRequest(Exception):
    """A request EVC refuses: HTTP status + OCPI status code + a sentence."""

    def __init__(self, http_code: int, status_code: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.http_code = http_code
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}


def parse_page(args: dict[str, str], max_limit: int = MAX_LIMIT) -> Page:
    """offset, limit, date_from, date_to from a query ({name: value}); BadRequest 2001 naming a bad one. A limit
    above `max_limit` is lowered to it (the answer's X-Limit says so)."""
    def integer(name: str, default: int) -> int:
        text = args.get(name)
        if text in (None, ""):
            return default
        if not text.isdigit():
            raise BadRequest(400, INVALID_PARAMETERS, f"{name}: {text!r} is not a non-negative integer")
        return int(text)

    def when(name: str) -> Optional[float]:
        text = args.get(name)
        if text in (None, ""):
            return None
        try:
            return parse_time(text)
        except ValueError:
            raise BadRequest(400, INVALID_PARAMETERS, f"{name}: {text!r} is not an OCPI DateTime") from None

    limit = integer("limit", min(DEFAULT_LIMIT, max_limit))
    return Page(integer("offset", 0), max(0, min(limit, max_limit)), when("date_from"), when("date_to"))


def paginate(items: list[dict], page: Page, base_url: str, query: dict[str, str]) -> tuple[list[dict], dict]:
    """The page of `items` (sorted by last_updated, filtered by the dates) and its headers: X-Total-Count (after the
    date filter), X-Limit, and Link rel="next" when more follow (the same query with the next offset)."""
    def inside(item: dict) -> bool:
        try:
            t = parse_time(item.get("last_updated", ""))
        except ValueError:
            return True
        return (page.date_from is None or t >= page.date_from) and (page.date_to is None or t < page.date_to)

    selected = sorted((i for i in items if inside(i)), key=lambda i: (i.get("last_updated", ""), i.get("id", "")))
    chunk = selected[page.offset:page.offset + page.limit]
    headers = {"X-Total-Count": str(len(selected)), "X-Limit": str(page.limit)}
    if page.offset + page.limit < len(selected) and page.limit > 0:
        q = dict(query)
        q["offset"] = str(page.offset + page.limit)
        q["limit"] = str(page.limit)
        headers["Link"] = f'<{base_url}?{urllib.parse.urlencode(q)}>; rel="next"'
    return chunk, headers


def next_link(link_header: Optional[str]) -> Optional[str]:
    """The rel="next" URL of a Link header, or None."""
    if not link_header:
        return None
    for part in link_header.split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if m:
            return m.group(1)
    return None


# -- the client --

class OcpiError(Exception):
    """A request that did not succeed. `kind`: unreachable, timeout, http (status >= 400), garbage (no JSON
    envelope), status (an envelope whose status_code is not 1xxx). `retry`: worth sending again later (the peer may
    recover: unreachable, timeout, 5xx, 408, 429, garbage, 3xxx)."""

    def __init__(self, kind: str, message: str, *, http_code: Optional[int] = None,
                 status_code: Optional[int] = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.http_code = http_code
        self.status_code = status_code

    @property
    def retry(self) -> bool:
        if self.kind in ("unreachable", "timeout", "garbage"):
            return True
        if self.kind == "http":
            return self.http_code is not None and (self.http_code >= 500 or self.http_code in (408, 429))
        return self.status_code is not None and self.status_code >= 3000


@dataclasses.dataclass
class Response:
    http_code: int
    headers: dict[str, str]       # lower-case names
    doc: dict                     # the envelope
    request_id: str

    @property
    def data(self) -> Any:
        return self.doc.get("data")

    @property
    def status_code(self) -> int:
        return self.doc.get("status_code")


class Client:
    """HTTP requests to the eMSP through treq on `reactor`; deadlines on `clock`. Never logs a token."""

    def __init__(self, reactor, clock: IReactorTime, timeout_s: float = 10.0):
        self.reactor = reactor
        self.clock = clock
        self.timeout_s = timeout_s
        self._http = None

    @property
    def http(self):
        if self._http is None:
            import treq.client
            from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

            class QuietFactory(_HTTP11ClientFactory):
                noisy = False          # no "Starting factory" line per request

            class QuietPool(HTTPConnectionPool):
                _factory = QuietFactory

            pool = QuietPool(self.reactor, persistent=False)
            self._http = treq.client.HTTPClient(Agent(self.reactor, pool=pool, connectTimeout=self.timeout_s))
        return self._http

    async def request(self, method: str, url: str, *, token: str, version: str, body: Any = None,
                      from_party: Optional[Party] = None, to_party: Optional[Party] = None,
                      correlation_id: Optional[str] = None, timeout_s: Optional[float] = None,
                      allow_status: tuple = ()) -> Response:
        """Send one request; the envelope of a success (HTTP 2xx, status_code 1xxx, or one of `allow_status`), else
        OcpiError. `body` is JSON-encoded."""
        headers = request_headers(token, version, correlation_id=correlation_id, from_party=from_party,
                                  to_party=to_party)
        rid = headers["X-Request-ID"]
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        wait_s = self.timeout_s if timeout_s is None else timeout_s

        async def send():
            r = await self.http.request(method, url, data=data, headers={k: [v] for k, v in headers.items()})
            content = await r.content()
            return r, content

        d = defer.ensureDeferred(send())
        expired = []

        def expire():
            expired.append(True)
            d.cancel()

        timer = self.clock.callLater(wait_s, expire)
        try:
            r, content = await d
        except Exception as e:    # connection refused, reset, DNS, TLS; or cancelled by the deadline
            if expired:
                raise OcpiError("timeout", f"{method} {_safe(url)}: no answer within {wait_s:g} s") from None
            raise OcpiError("unreachable", f"{method} {_safe(url)}: {type(e).__name__}: {_short(e)}") from None
        finally:
            if timer.active():
                timer.cancel()
        hdrs = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                for k, v in r.headers.getAllRawHeaders()}
        doc = None
        try:
            doc = json.loads(content.decode("utf-8")) if content else None
        except (UnicodeDecodeError, ValueError):
            doc = None
        if r.code >= 400:
            msg = doc.get("status_message") if isinstance(doc, dict) else None
            raise OcpiError("http", f"{method} {_safe(url)}: HTTP {r.code}" + (f" ({msg})" if msg else ""),
                            http_code=r.code, status_code=doc.get("status_code") if isinstance(doc, dict) else None)
        if not isinstance(doc, dict) or not isinstance(doc.get("status_code"), int) \
                or isinstance(doc.get("status_code"), bool):
            raise OcpiError("garbage", f"{method} {_safe(url)}: HTTP {r.code} without an OCPI envelope",
                            http_code=r.code)
        code = doc["status_code"]
        if not 1000 <= code < 2000 and code not in allow_status:
            raise OcpiError("status", f"{method} {_safe(url)}: status {code} "
                                      f"({str(doc.get('status_message') or MESSAGES.get(code, ''))[:200]})",
                            http_code=r.code, status_code=code)
        return Response(r.code, hdrs, doc, rid)

    async def get_all(self, url: str, *, token: str, version: str, max_pages: int = 1000, **kw) -> list:
        """Every item of a paginated list, following Link rel="next"."""
        items: list = []
        for _ in range(max_pages):
            r = await self.request("GET", url, token=token, version=version, **kw)
            if not isinstance(r.data, list):
                raise OcpiError("garbage", f"GET {_safe(url)}: data is not a list")
            items.extend(r.data)
            url = next_link(r.headers.get("link"))
            if url is None:
                return items
        raise OcpiError("garbage", f"GET {_safe(url)}: more than {max_pages} pages")


def _safe(url: str) -> str:
    """A URL for a log line: without its query (a peer could put a secret there)."""
    return url.split("?", 1)[0]


def _short(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text[:200]


__all__ = ["Client", "OcpiError", "Response", "BadRequest", "Page", "Party", "envelope", "token_header",
           "tokens_in", "request_headers", "parse_page", "paginate", "next_link", "ocpi_time", "parse_time"]
