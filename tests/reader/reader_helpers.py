"""Unit-test helpers for readers: a Context on a task.Clock with fake chargers and tokens, a reader wired in memory."""
from __future__ import annotations

import dataclasses
import types

from twisted.internet import defer, task

from evc.errors import ConfigError
from evc.events import EventBus
from evc.instance import Context
from evc.session import Session, iso_utc
from evc.testing import RecordingState
from evc.token.token import TokenConfig


class FakeSessions:
    def __init__(self):
        self.session: Session | None = None


class FakeCharger:
    """A charger as a reader sees it: sessions.session, authorize(id_tag), deauthorize(); publishes sessions."""

    def __init__(self, name: str, ctx_events: EventBus, clock):
        self.name = name
        self.events = ctx_events
        self.clock = clock
        self.sessions = FakeSessions()
        self.authorized_with: list[str] = []
        self.deauthorized = 0

    def plug(self) -> None:
        self.sessions.session = Session(id=f"{self.name}-{len(self.authorized_with)}", charger=self.name,
                                        state="plugged", start_time=iso_utc(self.clock.seconds()))
        self.events.publish(("session", self.name), self.sessions.session)

    def authorize(self, id_tag: str) -> None:
        self.authorized_with.append(id_tag)
        s = self.sessions.session
        if s is not None:
            self.sessions.session = dataclasses.replace(s, state="authorized", id_tag=id_tag)
            self.events.publish(("session", self.name), self.sessions.session)

    def deauthorize(self) -> None:
        self.deauthorized += 1
        s = self.sessions.session
        if s is not None:
            self.sessions.session = None
            self.events.publish(("session", self.name), dataclasses.replace(s, state="ended", reason="DeAuthorized"))


def token(status="Accepted", **kw):
    return types.SimpleNamespace(config=TokenConfig(status=status, **kw))


class Site:
    """Chargers and tokens for one reader's Context, all on one task.Clock (starting at a fixed epoch)."""

    def __init__(self, chargers=("s1",), tokens=None):
        self.clock = task.Clock()
        self.clock.advance(1_780_000_000)
        self.events = EventBus()
        self.chargers = {n: FakeCharger(n, self.events, self.clock) for n in chargers}
        self.tokens = dict(tokens or {"CARD1": token(), "6F007B3972": token(), "1C78F2BF": token(),
                                      "BLOCKED1": token("Blocked")})
        self.refs: dict = {}              # (kind, name) -> instance, e.g. ("conn", "c1") -> a bus

    def ctx(self, name="r1", reactor=None) -> Context:
        def resolve(kind, n):
            if (kind, n) in self.refs:
                return self.refs[(kind, n)]
            if kind == "charger" and n in self.chargers:
                return self.chargers[n]
            raise ConfigError(f"{kind} {n!r} is not running")

        def find(kind):
            return {"charger": dict(self.chargers), "token": dict(self.tokens)}.get(kind, {})
        return Context(kind="reader", name=name, clock=self.clock, state=RecordingState(), resolve=resolve,
                       reactor=reactor, events=self.events, find=find)


def wire(reader, sim_line):
    """Connect a reader's protocol driver to a simulator's SimSerialLine in memory; returns the driver."""
    driver = reader.make_driver()
    host_write = sim_line.attach(driver.data)
    driver.connected(host_write)
    return driver


def settle(d: defer.Deferred | None = None):
    return d
