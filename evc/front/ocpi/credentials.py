"""The OCPI credentials module of front/ocpi: EVC's registration with one eMSP, in both directions.

What is kept (in `data/credentials`, one JSON leaf, never in state/ and never logged):
    version       the OCPI version in use
    token_b       the token the eMSP uses when it calls EVC (EVC made it)
    token_c       the token EVC uses when it calls the eMSP (the eMSP made it)
    versions_url  the eMSP's versions endpoint
    endpoints     module -> URL of the eMSP's interfaces EVC uses (2.2.1: the role EVC needs from it)
    party         the eMSP's country_code, party_id and name
`data/incoming_token_a` holds a digest of the incoming_token_a that was used, so it opens one registration only.

EVC registers itself (`token_a` + `versions_url` configured, not registered): GET versions, choose the highest
version both support up to `version`, GET its details, make token B, POST EVC's credentials, keep the eMSP's answer
(token C). A failure (unreachable, 401, no common version, a bad answer) goes to state/error and is retried with
backoff. The eMSP may register with EVC instead, with `incoming_token_a`; it may PUT (rotate tokens, switch the
version: its endpoints are read again) and DELETE (unregister). POST while registered and PUT/DELETE while not are
answered 405.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from evc.front.ocpi import objects
from evc.front.ocpi.transport import (BadRequest, INVALID_PARAMETERS, NO_MATCHING_ENDPOINTS, OcpiError, Party,
                                      UNSUPPORTED_VERSION)

log = Logger(namespace="evc.front.ocpi")

# What EVC (a CPO) needs from the eMSP, per module: the eMSP's role in it.
NEEDED = {"credentials": None, "locations": "RECEIVER", "sessions": "RECEIVER", "cdrs": "RECEIVER",
          "tokens": "SENDER", "tariffs": "RECEIVER", "commands": "SENDER"}


@dataclasses.dataclass
class Registered:
    version: str
    token_b: str = dataclasses.field(repr=False)
    token_c: str = dataclasses.field(repr=False)
    versions_url: str
    endpoints: dict
    party: dict

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Registered":
        doc = json.loads(raw)
        return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls)})

    @property
    def emsp(self) -> Party:
        return Party(self.party["country_code"], self.party["party_id"])


class RegistrationFailed(Exception):
    """A registration step that failed, as a sentence for state/error (never with a token in it)."""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def same(a: Optional[str], b: Optional[str]) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def pick_version(offered: Any, newest: str) -> tuple[str, str]:
    """(version, details URL): the highest version in `offered` (the eMSP's versions list) that EVC supports, up to
    `newest`."""
    if not isinstance(offered, list):
        raise RegistrationFailed("the eMSP's versions endpoint did not answer a list of versions")
    ours = [v for v in objects.VERSIONS if _key(v) <= _key(newest)]
    urls = {}
    for i, item in enumerate(offered):
        errors = objects.errors_of("Version", item, "2.2.1")
        if not errors:
            urls[item["version"]] = item["url"]
    for v in sorted(ours, key=_key, reverse=True):
        if v in urls:
            return v, urls[v]
        if v == "2.2.1" and "2.2" in urls:
            return v, urls["2.2"]
    raise RegistrationFailed(f"no OCPI version in common: the eMSP offers {', '.join(sorted(urls)) or 'none'}, "
                             f"EVC supports {', '.join(ours)}")


def _key(v: str) -> tuple:
    return tuple(int(p) for p in v.split("."))


def endpoints_of(details: Any, version: str) -> dict:
    """module -> URL from a VersionDetail, keeping the interfaces EVC needs (see NEEDED); RegistrationFailed when it
    is not a valid VersionDetail or has no credentials endpoint."""
    errors = objects.errors_of("VersionDetail", details, version)
    if errors:
        raise RegistrationFailed(f"the eMSP's version details are not valid OCPI {version}: {errors[0]}")
    found = {}
    for e in details["endpoints"]:
        ident = e["identifier"]
        if ident not in NEEDED:
            continue
        want = NEEDED[ident]
        if version == "2.1.1" or want is None or e.get("role") == want:
            found.setdefault(ident, e["url"])
    if "credentials" not in found:
        raise RegistrationFailed("the eMSP's version details have no credentials endpoint")
    return found


class Registrar:
    """Registration state of one front (see the module docstring). `front` gives config, ctx, client and the
    callbacks `registered()` / `unregistered()`."""

    def __init__(self, front):
        self.front = front
        self.ctx = front.ctx
        self.cfg = front.config
        self.clock = front.ctx.clock
        self.creds: Optional[Registered] = None
        self.pending_token_b: Optional[str] = None      # made for a handshake in progress (accepted on versions)
        self.incoming_used: Optional[str] = None          # digest of the incoming token A that was used
        self.loaded = False
        self._call = None
        self._delay_s = self.cfg.retry_min_s
        self._running = False
        self._busy = False
        self.last_error: Optional[str] = None

    # -- lifecycle --

    async def load(self) -> None:
        r = await self.ctx.store.range(self.ctx.data_key("credentials"))
        if r.kvs:
            try:
                self.creds = Registered.from_json(r.kvs[0].value)
            except (ValueError, KeyError, TypeError) as e:
                log.warn("{front}: data/credentials is unreadable ({error}); registering again",
                         front=self.ctx.key, error=type(e).__name__)
                self.creds = None
        r = await self.ctx.store.range(self.ctx.data_key("incoming_token_a"))
        self.incoming_used = r.kvs[0].value.decode() if r.kvs else None
        self.loaded = True

    def start(self) -> None:
        self._running = True
        self._state()
        if self.creds is None:
            self._schedule(0)

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, delay_s: float) -> None:
        if not self._running or self._busy or (self._call is not None and self._call.active()):
            return
        if not (self.cfg.token_a and self.cfg.versions_url):
            return                   # nothing to register with: wait for the eMSP (incoming_token_a)
        self._call = self.clock.callLater(delay_s, self._attempt)

    def _state(self) -> None:
        st = self.ctx.state
        if self.creds is not None:
            st.update({"registration": "registered", "version": self.creds.version, "emsp": str(self.creds.emsp)})
        else:
            st.set("registration", "failed" if self.last_error else
                   ("registering" if self._busy else "unregistered"))
            st.delete("version")
            st.delete("emsp")
        if self.last_error:
            st.set("error", self.last_error)
        else:
            st.delete("error")

    # -- tokens on EVC's own endpoints --

    def who(self, tokens: list[str]) -> Optional[str]:
        """"peer" (the registered eMSP's token B), "pending" (token B of a handshake in progress), "token_a" (the
        incoming registration token, while unused and nobody is registered), or None."""
        for t in tokens:
            if self.creds is not None and same(t, self.creds.token_b):
                return "peer"
            if same(t, self.pending_token_b):
                return "pending"
            if (self.creds is None and self.cfg.incoming_token_a and same(t, self.cfg.incoming_token_a)
                    and self.incoming_used != digest(self.cfg.incoming_token_a)):
                return "token_a"
        return None

    # -- EVC registers itself --

    def _attempt(self) -> None:
        self._call = None
        if self.creds is not None or not self._running:
            return
        self._busy = True
        self._state()
        d = defer.ensureDeferred(self._register())

        def ok(_):
            self._busy = False
            self.last_error = None
            self._delay_s = self.cfg.retry_min_s
            self._state()

        def failed(f):
            self._busy = False
            self.pending_token_b = None
            why = f.value.args[0] if f.check(RegistrationFailed) else (
                f.value.message if f.check(OcpiError) else f"{type(f.value).__name__}: {f.getErrorMessage()[:200]}")
            self.last_error = f"registration with {_host(self.cfg.versions_url)} failed: {why}; " \
                              f"retrying in {self._delay_s:g} s"
            log.warn("{front}: {error}", front=self.ctx.key, error=self.last_error)
            self._state()
            delay, self._delay_s = self._delay_s, min(self._delay_s * 2, self.cfg.retry_max_s)
            self._schedule(delay)

        d.addCallbacks(ok, failed)

    async def _register(self) -> None:
        client, token_a = self.front.client, self.cfg.token_a
        r = await self._get_versions(self.cfg.versions_url, token_a)
        version, details_url = pick_version(r.data, self.cfg.version)
        r = await client.request("GET", details_url, token=token_a, version=version)
        endpoints = endpoints_of(r.data, version)
        self.pending_token_b = secrets.token_urlsafe(32)
        body = self.front.our_credentials(version, self.pending_token_b)
        r = await client.request("POST", endpoints["credentials"], token=token_a, version=version, body=body)
        theirs = r.data
        errors = objects.errors_of("Credentials", theirs, version)
        if errors:
            raise RegistrationFailed(f"the eMSP answered credentials that are not valid OCPI {version}: {errors[0]}")
        party = _party_of(theirs, version)
        # Its endpoints as token C sees them (they may differ from what token A saw).
        try:
            r = await client.request("GET", details_url, token=theirs["token"], version=version)
            endpoints = endpoints_of(r.data, version)
        except (OcpiError, RegistrationFailed) as e:
            log.info("{front}: the eMSP's details with token C not read ({error}); keeping those read with token A",
                     front=self.ctx.key, error=getattr(e, "message", str(e)))
        creds = Registered(version, self.pending_token_b, theirs["token"], theirs.get("url") or self.cfg.versions_url,
                           endpoints, party)
        await self._save(creds)
        self.pending_token_b = None
        log.info("{front}: registered with {emsp} ({name}), OCPI {version}", front=self.ctx.key,
                 emsp=str(creds.emsp), name=party.get("name", ""), version=version)
        self.front.registered()

    async def _get_versions(self, url: str, token: str):
        """GET the eMSP's versions list. Which token form it wants there is not known before a version is chosen:
        first the form of the configured version, then, when that is refused, the other one."""
        first = self.cfg.version
        try:
            return await self.front.client.request("GET", url, token=token, version=first)
        except OcpiError as e:
            if e.retry and e.kind != "status" or e.kind == "http" and e.http_code not in (401, 403):
                raise
            other = "2.1.1" if first != "2.1.1" else "2.2.1"
            log.info("{front}: the versions endpoint refused the {form} token ({error}); trying the {other} form",
                     front=self.ctx.key, form="raw" if first == "2.1.1" else "base64", error=e.message,
                     other="base64" if other == "2.2.1" else "raw")
            return await self.front.client.request("GET", url, token=token, version=other)

    async def _save(self, creds: Optional[Registered], incoming: Optional[str] = None) -> None:
        from evc.store.interface import Delete, Put
        ops = [Put(self.ctx.data_key("credentials"), creds.to_json()) if creds is not None
               else Delete(self.ctx.data_key("credentials"))]
        if incoming is not None:
            ops.append(Put(self.ctx.data_key("incoming_token_a"), incoming.encode()))
        await self.ctx.store.txn((), ops)
        self.creds = creds
        if incoming is not None:
            self.incoming_used = incoming
        self._state()

    # -- the eMSP's requests to EVC's credentials endpoint --

    def get(self) -> dict:
        return self.front.our_credentials(self.creds.version, self.creds.token_b)

    async def post(self, version: str, body: Any, who: str) -> dict:
        """The eMSP registers (with incoming token A): read its endpoints with its token, answer with token B."""
        if self.creds is not None:
            raise BadRequest(405, 2000, "already registered: PUT to update the credentials, DELETE to unregister",
                             {"Allow": "GET, PUT, DELETE"})
        if who != "token_a":
            raise BadRequest(401, 2000, "register with the registration token (TOKEN_A)")
        return await self._accept(version, body, incoming=digest(self.cfg.incoming_token_a))

    async def put(self, version: str, body: Any) -> dict:
        if self.creds is None:
            raise BadRequest(405, 2000, "not registered: POST to register", {"Allow": "POST"})
        return await self._accept(version, body)

    async def delete(self) -> None:
        if self.creds is None:
            raise BadRequest(405, 2000, "not registered", {"Allow": "POST"})
        await self._save(None)
        log.info("{front}: the eMSP unregistered", front=self.ctx.key)
        self.front.unregistered()

    async def _accept(self, version: str, body: Any, incoming: Optional[str] = None) -> dict:
        errors = objects.errors_of("Credentials", body, version)
        if errors:
            raise BadRequest(400, INVALID_PARAMETERS, f"not valid OCPI {version} credentials: {errors[0]}")
        client = self.front.client
        try:
            r = await client.request("GET", body["url"], token=body["token"], version=version)
            offered = r.data
            chosen, details_url = pick_version(offered, version)
            if chosen != version:
                raise RegistrationFailed(f"version {version} is not among the eMSP's versions")
            r = await client.request("GET", details_url, token=body["token"], version=version)
            endpoints = endpoints_of(r.data, version)
        except RegistrationFailed as e:
            raise BadRequest(400, UNSUPPORTED_VERSION if "version" in str(e) else NO_MATCHING_ENDPOINTS,
                             str(e)) from None
        except OcpiError as e:
            raise BadRequest(400, 3001, f"EVC cannot use the eMSP's API: {e.message}") from None
        token_b = secrets.token_urlsafe(32)
        creds = Registered(version, token_b, body["token"], body["url"], endpoints, _party_of(body, version))
        await self._save(creds, incoming)
        self.last_error = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._state()
        log.info("{front}: {emsp} registered with EVC, OCPI {version}", front=self.ctx.key, emsp=str(creds.emsp),
                 version=version)
        self.front.registered()
        return self.front.our_credentials(version, token_b)


def _party_of(creds: dict, version: str) -> dict:
    if version == "2.1.1":
        return {"country_code": creds["country_code"].upper(), "party_id": creds["party_id"].upper(),
                "name": creds["business_details"]["name"]}
    roles = creds["roles"]
    role = next((r for r in roles if r["role"] == "EMSP"), roles[0])
    return {"country_code": role["country_code"].upper(), "party_id": role["party_id"].upper(),
            "name": role["business_details"]["name"]}


def _host(url: Optional[str]) -> str:
    if not url:
        return "the eMSP"
    return url.split("://", 1)[-1].split("/", 1)[0]


__all__ = ["Registrar", "Registered", "RegistrationFailed", "pick_version", "endpoints_of"]
