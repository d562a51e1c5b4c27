"""token/<idTag>: one entry of the site's local authorization list (the instance's name is the id tag).

evc.auth.local_lookup reads these instances' configs (ctx.find("token")) to answer an id tag presented anywhere on
the site; OCPP chargers also get them as their local list (SendLocalList, see evc.charger.ocpp). A token changes
live: the supervisor restarts the instance, and ("instance", "token", <idTag>) events tell the chargers.

Config: `status` (Accepted, Blocked, Expired), optional `expiry` (ISO 8601; after it the tag answers Expired),
`chargers` ("*" or a list of charger names: elsewhere the tag is Invalid), `owner` (free text for people),
`parent_id_tag` (OCPP's group id: tags sharing a parent may stop each other's transactions).
"""
from __future__ import annotations

import dataclasses
import datetime

from twisted.logger import Logger

from evc.errors import ConfigError
from evc.instance import Instance
from evc.registry import TOKENS

log = Logger(namespace="evc.token.token")

STATUSES = ("Accepted", "Blocked", "Expired")


def parse_expiry(text: str) -> datetime.datetime:
    """ISO 8601 (a date alone means its midnight UTC; no offset means UTC) -> aware datetime; ValueError if not."""
    when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """schema/token/token.json describes every field."""
    status: str = "Accepted"
    expiry: str | None = None
    chargers: object = "*"
    owner: str | None = None
    parent_id_tag: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ConfigError(f"config/status: {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.expiry is not None:
            try:
                parse_expiry(self.expiry)
            except ValueError:
                raise ConfigError(f"config/expiry: {self.expiry!r} is not an ISO 8601 date and time "
                                  "(e.g. 2026-12-31T23:59:59Z)") from None
        if self.chargers != "*":
            if isinstance(self.chargers, str) or not all(isinstance(c, str) and c for c in self.chargers):
                raise ConfigError('config/chargers: "*" or a list of charger names')
            object.__setattr__(self, "chargers", tuple(self.chargers))


@TOKENS.register("token")
class Token(Instance):
    """A token of the local list. It does nothing on its own: its config is what authorization reads."""

    Config = TokenConfig

    @property
    def id_tag(self) -> str:
        return self.ctx.name

    def startService(self) -> None:
        super().startService()
        # state/status is the supervisor's (running | error); whether the expiry has passed is the useful extra.
        if self.config.expiry is not None:
            expired = parse_expiry(self.config.expiry).timestamp() <= self.ctx.clock.seconds()
            self.ctx.state.set("expired", expired)


__all__ = ["Token", "TokenConfig", "parse_expiry"]
