"""Tokens of front/ocpi: the eMSP's tokens (pushed to EVC, kept in data/tokens/) and real-time authorization.

The site has one authorization path (evc/auth.py): every token presented at a charger or a reader is first offered
to the fronts that provide IAuthorizer, then to the local token list. front/ocpi answers, for the chargers it
covers:
- a token a START_SESSION of this eMSP is waiting for at that charger: Accepted (the command already authorized it);
- a token of the site's own list: not this front's business (None: the list answers);
- a token the eMSP pushed, by its `whitelist`: ALWAYS and ALLOWED are answered from the stored token (`valid`),
  without asking; ALLOWED_OFFLINE asks the eMSP and falls back to the stored token when it cannot answer within
  `authorize_timeout_s`; NEVER asks and refuses when it cannot answer;
- any other token is asked of the eMSP (POST tokens/<uid>/authorize with the Location and the EVSE); unknown there
  (404) or no answer: None, so the local list answers (Invalid for a card it does not know).
A token the eMSP allows becomes a roaming authorization at that charger: the session it starts belongs to the eMSP
(its Session and CDR go there and nowhere else).
"""
from __future__ import annotations

import json
import urllib.parse
from typing import Any, Optional

from twisted.logger import Logger

from evc.auth import AuthResult, local_lookup
from evc.front.ocpi import objects
from evc.front.ocpi.transport import BadRequest, INVALID_PARAMETERS, OcpiError, ocpi_time
from evc.store.interface import Put

log = Logger(namespace="evc.front.ocpi")

ALLOWED_TO_OCPP = {"ALLOWED": "Accepted", "BLOCKED": "Blocked", "EXPIRED": "Expired", "NO_CREDIT": "Invalid",
                   "NOT_ALLOWED": "Invalid"}


class TokenStore:
    """The eMSP's tokens by (country_code, party_id, uid, type), kept in memory and in data/tokens/."""

    def __init__(self, front):
        self.front = front
        self.ctx = front.ctx
        self.tokens: dict[tuple, dict] = {}

    def _key(self, cc, pid, uid, token_type) -> str:
        q = lambda s: urllib.parse.quote(str(s), safe="")   # noqa: E731
        return self.ctx.data_key(f"tokens/{q(cc.upper())}/{q(pid.upper())}/{q(uid)}/{q(token_type)}")

    async def load(self) -> None:
        r = await self.ctx.store.range(self.ctx.data_key("tokens/"), prefix=True)
        for kv in r.kvs:
            try:
                doc = json.loads(kv.value)
                cc, pid, uid, typ = (urllib.parse.unquote(p) for p in kv.key.rsplit("/", 4)[1:])
                self.tokens[(cc, pid, uid.upper(), typ)] = doc
            except (ValueError, TypeError):
                log.warn("{front}: unreadable token at {key} ignored", front=self.ctx.key, key=kv.key)

    def get(self, cc: str, pid: str, uid: str, token_type: str = "RFID") -> Optional[dict]:
        return self.tokens.get((cc.upper(), pid.upper(), uid.upper(), token_type))

    def find(self, uid: str) -> Optional[dict]:
        """A stored token with this uid (any party; RFID first)."""
        matches = [(k, v) for k, v in self.tokens.items() if k[2] == uid.upper()]
        matches.sort(key=lambda kv: kv[0][3] != "RFID")
        return matches[0][1] if matches else None

    def check_ids(self, doc: dict, cc: str, pid: str, uid: str, version: str) -> None:
        if doc["uid"].upper() != uid.upper():
            raise BadRequest(400, INVALID_PARAMETERS, f"uid: {doc['uid']!r} is not the uid in the URL")
        if version != "2.1.1" and (doc["country_code"].upper() != cc.upper() or doc["party_id"].upper()
                                   != pid.upper()):
            raise BadRequest(400, INVALID_PARAMETERS, "country_code / party_id differ from the URL's")

    async def put(self, doc: dict, cc: str, pid: str, uid: str, version: str) -> None:
        typ = doc.get("type", "RFID")
        await self._store(cc, pid, uid, typ, {**doc, "_version": version})

    async def patch(self, doc: dict, cc: str, pid: str, uid: str, typ: str, version: str) -> None:
        old = self.get(cc, pid, uid, typ) or {}
        new = {**old, **{k: v for k, v in doc.items() if v is not None}}
        errors = objects.errors_of("Token", {k: v for k, v in new.items() if not k.startswith("_")}, version)
        if errors:
            raise BadRequest(400, INVALID_PARAMETERS, f"the token would not be valid after this PATCH: {errors[0]}")
        await self._store(cc, pid, uid, typ, new)

    async def _store(self, cc, pid, uid, typ, doc) -> None:
        await self.ctx.store.txn((), [Put(self._key(cc, pid, uid, typ), json.dumps(doc, sort_keys=True).encode())])
        self.tokens[(cc.upper(), pid.upper(), uid.upper(), typ)] = doc
        log.info("{front}: the eMSP stored a token ({whitelist}, valid {valid})", front=self.ctx.key,
                 whitelist=doc.get("whitelist"), valid=doc.get("valid"))


class Authorizer:
    """front/ocpi's part of the site's authorization path (see the module docstring)."""

    def __init__(self, front):
        self.front = front
        self.ctx = front.ctx
        self.asked = 0            # real-time requests made (tests)

    async def authorize(self, id_tag: str, charger: str) -> Optional[AuthResult]:
        front = self.front
        source = front.ctx.key
        if front.commands.expects(charger, id_tag):
            return AuthResult("Accepted", source=source)
        import datetime
        now = datetime.datetime.fromtimestamp(self.ctx.clock.seconds(), datetime.timezone.utc)
        if local_lookup(self.ctx.find("token"), id_tag, charger, now).status != "Invalid":
            return None               # the site's own token: the list answers
        creds = front.registrar.creds
        stored = front.tokens.find(id_tag)
        whitelist = (stored or {}).get("whitelist")
        if stored is not None and whitelist in ("ALWAYS", "ALLOWED"):
            return self._from_stored(stored, charger, "WHITELIST")
        if creds is None or "tokens" not in creds.endpoints:
            return self._offline(stored, charger, "not registered")
        info = None
        try:
            info = await self._ask(creds, id_tag, (stored or {}).get("type", "RFID"), charger)
        except OcpiError as e:
            if e.kind == "http" and e.http_code == 404:
                log.info("{front}: the eMSP does not know the token presented at {charger}", front=source,
                         charger=charger)
                return None if stored is None else AuthResult("Invalid", source=source)
            return self._offline(stored, charger, e.message)
        if info is None:
            return self._offline(stored, charger, "a bad answer to authorize")
        status = ALLOWED_TO_OCPP.get(info["allowed"], "Invalid")
        log.info("{front}: the eMSP answered {allowed} for a token at {charger}", front=source,
                 allowed=info["allowed"], charger=charger)
        if status == "Accepted":
            token = info.get("token") or stored or {"uid": id_tag, "type": "RFID"}
            front.roaming_authorized(charger, id_tag, token, "AUTH_REQUEST", info.get("authorization_reference"))
        return AuthResult(status, source=source)

    async def _ask(self, creds, id_tag: str, token_type: str, charger: str) -> Optional[dict]:
        front = self.front
        self.asked += 1
        url = (f"{creds.endpoints['tokens'].rstrip('/')}/{urllib.parse.quote(id_tag, safe='')}/authorize"
               f"?type={token_type}")
        body = {"location_id": front.config.location["id"], "evse_uids": [charger]}
        r = await front.client.request("POST", url, token=creds.token_c, version=creds.version, body=body,
                                       from_party=front.party, to_party=creds.emsp,
                                       timeout_s=front.config.authorize_timeout_s)
        data = r.data
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
            data = data[0]        # some eMSPs (extrawest-ocpi) wrap the object in a list; the object is still checked
        errors = objects.errors_of("AuthorizationInfo", data, creds.version)
        if errors:
            log.warn("{front}: the eMSP's AuthorizationInfo is not valid: {error}", front=front.ctx.key,
                     error=errors[0])
            return None
        return data

    def _from_stored(self, stored: dict, charger: str, method: str) -> AuthResult:
        source = self.front.ctx.key
        if stored.get("valid"):
            self.front.roaming_authorized(charger, stored["uid"], stored, method, None)
            return AuthResult("Accepted", source=source)
        return AuthResult("Invalid", source=source)

    def _offline(self, stored: Optional[dict], charger: str, why: str) -> Optional[AuthResult]:
        source = self.front.ctx.key
        whitelist = (stored or {}).get("whitelist")
        log.info("{front}: real-time authorization at {charger} not possible ({why}); whitelist {whitelist}",
                 front=source, charger=charger, why=why, whitelist=whitelist or "none (unknown token)")
        if stored is None:
            return None
        if whitelist == "ALLOWED_OFFLINE":
            return self._from_stored(stored, charger, "WHITELIST")
        return AuthResult("Invalid", source=f"{source} offline")


__all__ = ["TokenStore", "Authorizer", "ocpi_time"]
