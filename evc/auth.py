"""Authorization of id tags: the local token list (`token/<idTag>`) and fronts that authorize upstream.

Every place a token is presented (an RFID reader, an OCPP charger's Authorize/StartTransaction, a front's
RemoteStart) asks `authorize(ctx, id_tag, charger)`. A front that can ask an upstream backend provides IAuthorizer
and is asked first when it covers the charger; without one (or when it cannot answer: offline) the local token list
answers. Unknown tags are Invalid.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Literal, Optional

from twisted.internet import defer
from zope.interface import Attribute, Interface

Status = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"]


@dataclasses.dataclass(frozen=True)
class AuthResult:
    """OCPP 1.6 IdTagInfo, as EVC uses it everywhere."""
    status: Status
    expiry: Optional[str] = None          # ISO 8601, UTC
    parent_id_tag: Optional[str] = None
    source: str = "local"                 # "local" (token list), "front/<name>" (upstream), "offline-accept", ...

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


class IAuthorizer(Interface):
    """Implemented by fronts that authorize upstream (front/ocpp with `authorize: upstream|local-first`)."""

    name = Attribute("The front's instance key, e.g. 'front/backend'.")

    def covers(charger: str) -> bool:
        """True when this front speaks for `charger`."""

    def authorize(id_tag: str, charger: str):
        """Deferred[AuthResult | None]: None when it cannot decide (e.g. upstream offline and no offline rule)."""


class ITokenList(Interface):
    """The local token list: `token/<idTag>` instances (see evc/token/token.py)."""

    def lookup(id_tag: str, charger: str, now: datetime.datetime) -> AuthResult:
        """The local answer for `id_tag` at `charger`."""


def local_lookup(tokens: dict, id_tag: str, charger: str, now: datetime.datetime) -> AuthResult:
    """Answer from the running token instances ({id_tag: instance with .config}): unknown -> Invalid; a token
    limited to some chargers is Invalid elsewhere; past its expiry -> Expired."""
    tok = tokens.get(id_tag)
    if tok is None:
        return AuthResult("Invalid")
    cfg = tok.config
    chargers = getattr(cfg, "chargers", None)
    if chargers not in (None, "*") and charger not in chargers:
        return AuthResult("Invalid")
    expiry = getattr(cfg, "expiry", None)
    if expiry:
        when = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        if when <= now:
            return AuthResult("Expired", expiry=expiry)
    return AuthResult(getattr(cfg, "status", "Accepted"), expiry=expiry,
                      parent_id_tag=getattr(cfg, "parent_id_tag", None))


async def authorize(ctx, id_tag: str, charger: str, now: datetime.datetime | None = None) -> AuthResult:
    """The site's answer for `id_tag` presented at `charger` (see the module docstring for the order)."""
    now = now or datetime.datetime.fromtimestamp(ctx.clock.seconds(), datetime.timezone.utc)
    for front in ctx.find("front").values():
        if IAuthorizer.providedBy(front) and front.covers(charger):
            result = await defer.maybeDeferred(front.authorize, id_tag, charger)
            if result is not None:
                return result
    return local_lookup(ctx.find("token"), id_tag, charger, now)
