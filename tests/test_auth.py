"""Authorization order: an upstream front first where it covers the charger, else the local token list."""
import dataclasses
import datetime

import pytest
from twisted.internet import defer, task
from zope.interface import implementer

from evc.auth import AuthResult, IAuthorizer, authorize, local_lookup

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class TokCfg:
    status: str = "Accepted"
    expiry: str | None = None
    chargers: object = "*"


class Tok:
    def __init__(self, **kw):
        self.config = TokCfg(**kw)


TOKENS = {"AA": Tok(), "BB": Tok(status="Blocked"), "OLD": Tok(expiry="2026-01-01T00:00:00Z"),
          "S1ONLY": Tok(chargers=["s1"])}


@pytest.mark.parametrize("tag, charger, status", [
    ("AA", "s1", "Accepted"), ("BB", "s1", "Blocked"), ("OLD", "s1", "Expired"), ("ZZ", "s1", "Invalid"),
    ("S1ONLY", "s1", "Accepted"), ("S1ONLY", "s2", "Invalid"),
])
def test_local_token_list(tag, charger, status):
    assert local_lookup(TOKENS, tag, charger, NOW).status == status


@implementer(IAuthorizer)
class Upstream:
    name = "front/backend"

    def __init__(self, answer, covered=("s1",)):
        self.answer, self.covered, self.asked = answer, covered, []

    def covers(self, charger):
        return charger in self.covered

    def authorize(self, id_tag, charger):
        self.asked.append((id_tag, charger))
        return defer.succeed(self.answer)


class Ctx:
    def __init__(self, fronts):
        self.clock = task.Clock()
        self._fronts = fronts

    def find(self, kind):
        return {"front": self._fronts, "token": TOKENS}[kind]



def _sync(coro):
    d = defer.ensureDeferred(coro)
    out = []
    d.addBoth(out.append)
    return out[0]


def test_an_upstream_front_that_covers_the_charger_answers_first():
    up = Upstream(AuthResult("Blocked", source="front/backend"))
    assert _sync(authorize(Ctx({"backend": up}), "AA", "s1", NOW)).status == "Blocked"
    assert up.asked == [("AA", "s1")]


def test_a_front_that_cannot_decide_falls_back_to_the_token_list():
    up = Upstream(None)
    r = _sync(authorize(Ctx({"backend": up}), "AA", "s1", NOW))
    assert r.status == "Accepted" and r.source == "local"


def test_a_front_that_does_not_cover_the_charger_is_not_asked():
    up = Upstream(AuthResult("Blocked"), covered=())
    assert _sync(authorize(Ctx({"backend": up}), "AA", "s1", NOW)).status == "Accepted"
    assert up.asked == []
