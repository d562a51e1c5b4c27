"""What every reader type shares: its config, the card -> charger rules, feedback, and the serial link's state.

A type feeds sightings of a card's UID (`uid_seen`, and `uid_gone` when a poll finds the field empty) and the bytes
its decoder dropped (`dropped`). One card held in the field is one presentation (evc.reader.presence). A
presentation is handled, one at a time, by these rules:

1. The card's own session is open and authorized at one of the reader's chargers (same id tag, compared
   case-insensitively): that session is stopped (the charger's deauthorize(), as a front's stop does). Answer
   "Stopped".
2. Else, a charger of the reader waits for authorization (its session is open in state "plugged"): the card is
   authorized for it through the site's one path (evc.auth.authorize: fronts that authorize upstream, then the local
   token list) and, if accepted, the charger is authorized (its authorize(id_tag), as a front's start does). When
   several wait, the car plugged last is the one whose driver is at the reader.
3. Else the card is checked against the reader's chargers in order; the first that accepts it has it held for
   `hold_s`: the next car plugged at any of the reader's chargers within that time is authorized with it (checked
   again for that charger).

Feedback: `state/last_card` {id_tag, time, answer, charger} (answer: Accepted, Blocked, Expired, Invalid,
ConcurrentTx, Stopped, or Failed when the charger did not take the authorization), `state/held` while a card is held,
`state/cards` (presentations), `state/counters/<reason>` (bytes or frames the decoder dropped, see
evc.reader.framing.Dropped). Types with outputs (beeper, lights) override `signal(answer)`; none of today's types
drives one over its protocol (docs/readers.md says why per type). The id tag is in state, never in the log.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.logger import Logger

from evc import auth
from evc.errors import ConfigError
from evc.reader.framing import Dropped
from evc.reader.link import SerialLink
from evc.reader.presence import Presence
from evc.reader.uid import UID_FORMATS, id_tag, same_tag
from evc.session import iso_utc
from evc.instance import Instance

log = Logger(namespace="evc.reader")

REFUSALS = ("Blocked", "Expired", "Invalid", "ConcurrentTx")


def check_reader_config(cfg) -> None:
    """The settings every reader type shares; errors name the leaf."""
    if cfg.charger is not None and cfg.chargers is not None:
        raise ConfigError("config/chargers: give charger (one name) or chargers (a list or \"*\"), not both")
    if cfg.charger is None and cfg.chargers is None:
        raise ConfigError("config/charger: name the charger this reader serves (or chargers: a list or \"*\")")
    if cfg.chargers is not None and cfg.chargers != "*":
        if isinstance(cfg.chargers, str) or not all(isinstance(c, str) and c for c in cfg.chargers):
            raise ConfigError('config/chargers: "*" or a list of charger names')
        object.__setattr__(cfg, "chargers", tuple(cfg.chargers))
    if cfg.uid_format not in UID_FORMATS:
        raise ConfigError(f"config/uid_format: {cfg.uid_format!r} is not one of {', '.join(UID_FORMATS)}")
    if cfg.hold_s < 0:
        raise ConfigError(f"config/hold_s: {cfg.hold_s} is negative")


def check_serial_config(cfg) -> None:
    from evc.bus.tcp import parse_host_port
    if not cfg.local and not cfg.remote:
        raise ConfigError("config/local: give local (a tty path), remote (host:port of a serial-over-TCP tunnel) "
                          "or both")
    if cfg.remote:
        try:
            parse_host_port(cfg.remote)
        except ValueError as e:
            raise ConfigError(f"config/remote: {e}") from None
    if cfg.baud <= 0:
        raise ConfigError(f"config/baud: {cfg.baud} is not a baud rate")
    check_reader_config(cfg)


@dataclasses.dataclass(frozen=True)
class SerialReaderConfig:
    """The settings of the serial reader types (schema/reader/<type>.json describes each)."""
    local: str | None = None
    remote: str | None = None
    baud: int = 9600
    uid_format: str = "hex"
    charger: str | None = None
    chargers: Any = None
    hold_s: float = 60.0
    type: str | None = None

    def __post_init__(self):
        check_serial_config(self)


class ReaderBase(Instance):
    """See the module docstring. Subclasses set `absent_s` (how long without a sighting a card counts as gone)."""

    absent_s: ClassVar[float] = 0.5
    # The same card again this soon after its last sighting is the same presentation (a reader that lost the card
    # for a moment, a link that blinked): never a stop right after a start.
    lockout_s: ClassVar[float] = 2.0

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.presence = Presence(ctx.clock, self.absent_s, self._new_card)
        self.counters: dict[str, int] = {}
        self.cards = 0
        self.last_card: dict | None = None
        self.held: tuple[str, float] | None = None        # (id_tag, until clock seconds)
        self._hold_timer = None
        self._lock = defer.DeferredLock()
        self._unsubscribe = None
        # id tag (upper case) -> clock seconds of its newest sighting, for the lock-out; per card, so that a card
        # presented from the page meanwhile (present()) does not cut short the lock-out of the card at the device.
        self._seen_at: dict[str, float] = {}
        self.handled: list[defer.Deferred] = []           # the newest presentations' handling (tests wait on them)

    # -- what the types call --

    def uid_gone(self) -> None:
        """A poll found no card in the field."""
        self.presence.gone()

    def dropped(self, item: Dropped) -> None:
        self.counters[item.reason] = self.counters.get(item.reason, 0) + item.n
        self.ctx.state.set(f"counters/{item.reason}", self.counters[item.reason])
        log.debug("{reader}: dropped {n} bytes ({reason})", reader=self.ctx.key, n=item.n, reason=item.reason)

    def tag_of(self, uid: bytes) -> str:
        """The id tag of a UID in this reader's uid_format."""
        return id_tag(uid, self.config.uid_format)

    def signal(self, answer: str) -> None:
        """Show the answer on the device's own outputs (beeper, lights, display). None by default."""

    # -- presentations --

    def _new_card(self, uid: bytes) -> defer.Deferred | None:
        tag, now = self.tag_of(uid), self.ctx.clock.seconds()
        last = self._seen_at.get(tag.upper())
        self._saw(tag, now)
        if last is not None and now - last < self.lockout_s:
            self.dropped(Dropped("repeats", 1))
            return None
        return self.present_tag(tag)

    def _saw(self, tag: str, now: float) -> None:
        self._seen_at = {t: s for t, s in self._seen_at.items() if now - s < self.lockout_s}
        self._seen_at[tag.upper()] = now

    def present(self, uid: bytes) -> defer.Deferred | None:
        """One presentation of the card `uid` (raw UID bytes) that did not come from the device: the page's "present a
        card" (front/manual's present_cards). It is one sighting followed by the card's absence, through the same
        presence, lock-out and rules as a card the device reads: the id tag in this reader's uid_format, the same card
        again within `lockout_s` is a repeat (counted, None), a card held at the device meanwhile stays where it is.
        Returns the presentation's handling (its answer is then in `last_card`), or None when it was a repeat."""
        if not uid:
            raise ValueError("an empty UID is no card")
        return self.presence.once(bytes(uid))

    def uid_seen(self, uid: bytes) -> None:
        """A sighting of the card `uid` (raw UID bytes as the card gives them)."""
        if uid == self.presence.current:
            self._saw(self.tag_of(uid), self.ctx.clock.seconds())
        self.presence.seen(uid)

    def present_tag(self, tag: str) -> defer.Deferred:
        """Handle one presentation of the card whose id tag is `tag` (the rules of the module docstring)."""
        self.cards += 1
        self.ctx.state.set("cards", self.cards)
        d = self._lock.run(lambda: defer.ensureDeferred(self._handle(tag)))
        d.addErrback(lambda f: log.failure("{reader}: a card presentation failed", f, reader=self.ctx.key))
        self.handled = [x for x in self.handled if not x.called][-8:] + [d]
        return d

    def served(self) -> list[tuple[str, Any]]:
        """The running chargers this reader serves, in config order ("*": by name)."""
        cfg = self.config
        selection = [cfg.charger] if cfg.charger is not None else cfg.chargers
        if selection == "*":
            return sorted(self.ctx.find("charger").items())
        found = []
        for name in selection:
            try:
                found.append((name, self.ctx.resolve("charger", name)))
            except ConfigError:
                log.warn("{reader}: charger {charger} is not running", reader=self.ctx.key, charger=name)
        return found

    @staticmethod
    def _session(charger):
        sessions = getattr(charger, "sessions", None)
        return getattr(sessions, "session", None)

    async def _handle(self, tag: str) -> None:
        chargers = self.served()
        for name, ch in chargers:
            s = self._session(ch)
            if s is not None and s.authorized and same_tag(s.id_tag, tag) and callable(getattr(ch, "deauthorize",
                                                                                               None)):
                log.info("{reader}: the card of the session at charger {charger}: stopping it", reader=self.ctx.key,
                         charger=name)
                self._clear_hold()
                try:
                    await defer.maybeDeferred(ch.deauthorize)
                except Exception as e:
                    log.warn("{reader}: stopping charger {charger} failed: {error}", reader=self.ctx.key,
                             charger=name, error=str(e))
                    self._answer(tag, "Failed", name)
                    return
                self._answer(tag, "Stopped", name)
                return
        waiting = [(self._session(ch).start_time, i, name, ch) for i, (name, ch) in enumerate(chargers)
                   if self._waits(ch)]
        if waiting:
            waiting.sort(key=lambda w: (w[0], -w[1]), reverse=True)
            _, _, name, ch = waiting[0]
            await self._authorize_at(tag, name, ch)
            return
        answer = "Invalid"
        for name, ch in chargers:
            result = await auth.authorize(self.ctx, tag, name)
            if result.accepted:
                self._hold(tag)
                self._answer(tag, "Accepted", None)
                return
            answer = result.status if answer == "Invalid" else answer
        self._answer(tag, answer, None)

    def _waits(self, ch) -> bool:
        s = self._session(ch)
        return s is not None and s.state == "plugged" and callable(getattr(ch, "authorize", None))

    async def _authorize_at(self, tag: str, name: str, ch) -> None:
        result = await auth.authorize(self.ctx, tag, name)
        if not result.accepted:
            log.info("{reader}: card refused at charger {charger} ({status})", reader=self.ctx.key, charger=name,
                     status=result.status)
            self._answer(tag, result.status, name)
            return
        self._clear_hold()
        try:
            await defer.maybeDeferred(ch.authorize, tag)
        except Exception as e:
            log.warn("{reader}: charger {charger} did not take the authorization: {error}", reader=self.ctx.key,
                     charger=name, error=str(e))
            self._answer(tag, "Failed", name)
            return
        log.info("{reader}: card accepted: charger {charger} authorized", reader=self.ctx.key, charger=name)
        self._answer(tag, "Accepted", name)

    def _answer(self, tag: str, answer: str, charger: str | None) -> None:
        card = {"id_tag": tag, "time": iso_utc(self.ctx.clock.seconds()), "answer": answer, "charger": charger}
        if charger is None and self.held is not None and self.held[0] == tag:
            card["held_until"] = iso_utc(self.held[1])
        self.last_card = card
        self.ctx.state.set("last_card", card)
        if self.ctx.events is not None:
            self.ctx.events.publish(("reader", self.ctx.name), card)
        try:
            self.signal(answer)
        except Exception:
            log.failure("{reader}: signalling the answer failed", reader=self.ctx.key)

    # -- a card held for the next car --

    def _hold(self, tag: str) -> None:
        self._clear_hold()
        if self.config.hold_s <= 0:
            return
        until = self.ctx.clock.seconds() + self.config.hold_s
        self.held = (tag, until)
        self._hold_timer = self.ctx.clock.callLater(self.config.hold_s, self._hold_expired)
        self.ctx.state.set("held", {"id_tag": tag, "until": iso_utc(until)})
        log.info("{reader}: card held for {hold_s} s for the next car plugged", reader=self.ctx.key,
                 hold_s=self.config.hold_s)

    def _hold_expired(self) -> None:
        self._hold_timer = None
        log.info("{reader}: no car was plugged: the held card lapsed", reader=self.ctx.key)
        self._clear_hold()

    def _clear_hold(self) -> None:
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None
        if self.held is not None:
            self.held = None
            self.ctx.state.delete("held")

    def _on_session(self, topic: tuple, session) -> None:
        if self.held is None or len(topic) < 2 or getattr(session, "state", None) != "plugged":
            return
        name = topic[1]
        if not any(n == name for n, _ in self.served()):
            return
        # Not inside the charger's own session update: the authorization changes that session again.
        self.ctx.clock.callLater(0, self._use_hold, name)

    def _use_hold(self, name: str) -> None:
        if self.held is None or not self.running:
            return
        tag = self.held[0]
        ch = dict(self.served()).get(name)
        if ch is None or not self._waits(ch):
            return
        self._clear_hold()
        d = self._lock.run(lambda: defer.ensureDeferred(self._authorize_at(tag, name, ch)))
        d.addErrback(lambda f: log.failure("{reader}: authorizing a held card failed", f, reader=self.ctx.key))
        self.handled = [x for x in self.handled if not x.called][-8:] + [d]

    # -- service --

    def startService(self) -> None:
        super().startService()
        self.ctx.state.set("cards", self.cards)
        if self.ctx.events is not None:
            self._unsubscribe = self.ctx.events.subscribe(("session",), self._on_session)

    def stopService(self):
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.presence.stop()
        self._clear_hold()
        return None


class SerialReader(ReaderBase):
    """A reader on its own serial line (local tty or remote tunnel). Subclasses give `make_driver()`: a fresh
    protocol driver per connection (see evc.reader.link)."""

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.link: SerialLink | None = None

    def make_driver(self):
        raise NotImplementedError

    def startService(self) -> None:
        if self.ctx.reactor is None:
            raise ConfigError(f"reader/{self.type_name} needs a reactor to open its tty or tunnel")
        super().startService()
        cfg = self.config
        self.link = SerialLink(self.ctx.reactor, self.ctx.clock, cfg.local, cfg.remote, cfg.baud,
                               self.make_driver, self._link_state, name=self.ctx.key)
        self.link.start()

    def stopService(self):
        super().stopService()
        return self.link.stop() if self.link is not None else None

    def _link_state(self, up: bool, via: str, why: str | None) -> None:
        state = self.ctx.state
        state.update({"link": "up" if up else "down", "via": via})
        if up:
            state.delete("error")
        else:
            state.set("error", why)
            self.presence.gone()
