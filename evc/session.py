"""Charging sessions: one lifecycle for every charger type, kept in data/sessions/ and announced on ctx.events.

A session is one car's visit to one charger:

    plugged -> authorized -> charging <-> suspended -> ended

It opens when a car is plugged in (or on an authorization that arrives while a car is plugged), is authorized by a
token (RFID, a front, the local list) or by the charger itself (`authorize_on_plug`, or a car found charging: the
device let it charge, so it was authorized), charges and pauses as control and the car decide, and ends when the car
leaves (EVDisconnected), when someone stops it (Local, Remote, DeAuthorized, ...) or when EVC finds after a restart
that the charger lost its energy counter (PowerLoss).

Ownership: the charger type owns its tracker, because only the charger knows its status, its energy counter and its
authorizations. A charger type does (EVCC_manual, ocpp, ...):

    self.sessions = SessionTracker(ctx)                 # in __init__, with the charger's own Context
    self.sessions.start()                               # in startService (reads data/sessions/current)
    self.sessions.update(status, meter_Wh)              # on every poll / status change (meter_Wh None if unknown)
    self.sessions.authorized(id_tag)                    # when a token was accepted (None: free charging)
    self.sessions.end("Local")                          # stop without unplugging (deauthorize, front stop, ...)
    self.sessions.may_charge                            # part of wants_current()
    return self.sessions.stop()                         # in stopService (flushes the last write)

Persistence (etcd, not leased: data/ outlives EVC): one JSON leaf per session at `data/sessions/<id>` and the open
session's id at `data/sessions/current`, written together in one transaction so a crash never leaves one without the
other. Writes happen on every state change and, while the energy counter moves, at most every `save_interval_s`;
a failed write is retried with backoff and never blocks the charger. Session ids are time-ordered (UTC, ms) with a
random suffix, so ids of different EVC runs never collide and sort by start time.

Restart: `start()` reads `current`. The first status from the charger that says something about the car decides:
a car still plugged continues the same session; no car ends it as EVDisconnected with the last meter value EVC knew
(and the time it was last seen); an energy counter below the last known value means the device lost power (its
counter restarted), so the old session ends as PowerLoss and, if a car is plugged, a new one starts.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import datetime, timezone
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger

from evc.charger.base import ChargerStatus
from evc.store.interface import Delete, Put

log = Logger(namespace="evc.session")

STATES = ("plugged", "authorized", "charging", "suspended", "ended")
OPEN_STATES = STATES[:-1]
AUTHORIZED_STATES = ("authorized", "charging", "suspended")

# OCPP 1.6 StopTransaction reasons (2.0.1 maps onto them), so fronts pass them upstream as they are.
REASONS = ("EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other", "PowerLoss", "Reboot", "Remote",
           "SoftReset", "UnlockCommand", "DeAuthorized")

# Below this a current is noise from the measurement, not a car drawing power (A).
CHARGING_THRESHOLD_A = 1.0
# A meter that went back by more than this is a counter that restarted (a reset, a replaced meter, a reboot that lost
# the count), not rounding (Wh). Smaller steps back are rounding and are ignored.
METER_BACKWARDS_TOLERANCE_Wh = 0.5


def iso_utc(seconds: float) -> str:
    """Clock seconds (epoch) as ISO 8601 UTC with ms, e.g. 2025-03-01T12:00:00.000Z."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Session:
    """One session as stored in `data/sessions/<id>` and published on ("session", charger).

    Times are ISO 8601 UTC. Every reading belongs to this session: `meter_start_Wh` is the counter at its start (an
    OCPP transaction's meterStart; for other chargers their meter's first reading in the session), `meter_last_Wh`
    the newest one, `meter_stop_Wh` the one at its end. `energy_Wh` is meter_last_Wh - meter_start_Wh (None until
    both are known). `stop_time` and `reason` are set when the session ends. `updated_time` is when EVC last saw the
    car at this charger. `transaction_id`: the OCPP transaction of the session (None for other charger types).

    A counter that went backwards during the session (a reset, a replaced meter, a reboot that lost the count) sets
    `meter_reset` and adds the reading before and the one after the jump to `meter_resets` ([before_Wh, after_Wh]
    pairs). `energy_Wh` is then the sum of what was measured on each side of every jump (never negative): a lower
    bound, since what was drawn between the two readings around a jump is unknown; such a session is not for billing
    as it stands.
    """
    id: str
    charger: str
    state: str
    start_time: str
    id_tag: Optional[str] = None
    authorized_time: Optional[str] = None
    meter_start_Wh: Optional[float] = None
    meter_last_Wh: Optional[float] = None
    meter_stop_Wh: Optional[float] = None
    energy_Wh: Optional[float] = None
    stop_time: Optional[str] = None
    reason: Optional[str] = None
    updated_time: Optional[str] = None
    transaction_id: Optional[int] = None
    meter_reset: bool = False
    meter_resets: tuple = ()

    @property
    def open(self) -> bool:
        return self.state != "ended"

    @property
    def authorized(self) -> bool:
        return self.state in AUTHORIZED_STATES

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Session":
        doc = json.loads(raw)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in fields}
        values["meter_resets"] = tuple(tuple(pair) for pair in values.get("meter_resets") or ())
        return cls(**values)


class SessionTracker:
    """Turns one charger's status changes and authorizations into sessions (see the module docstring).

    `ctx` is the charger's Context (its name, clock, store, events and data/ keys). `authorize_on_plug`: the charger
    needs no token (free charging): every session is authorized, with id_tag None, as soon as the car is plugged.
    `connection_timeout_s`: how long an authorization given before the car is plugged waits for it.
    """

    def __init__(self, ctx, *, authorize_on_plug: bool = False, connection_timeout_s: float = 60.0,
                 save_interval_s: float = 60.0, retry_s: float = 1.0, retry_max_s: float = 30.0):
        self.ctx = ctx
        self.clock = ctx.clock
        self.authorize_on_plug = authorize_on_plug
        self.connection_timeout_s = connection_timeout_s
        self.save_interval_s = save_interval_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.session: Session | None = None        # the open session, or None
        self.last: Session | None = None           # the newest session, open or ended
        self.loaded = False                        # data/sessions/current was read (or there is no store)
        self._restored = False                     # the open session came from the store: the first report decides
        self._vehicle = "unknown"                  # the car as the newest useful status said
        self._meter_Wh: float | None = None
        self._early: tuple[ChargerStatus, float | None] | None = None  # newest update before loading finished
        self._stopped_while_plugged = False        # ended by a person: no new session until unplug or a new token
        self._pending_tag: tuple[str | None, float] | None = None      # (id_tag, clock time) given before plug-in
        self._last_id = ""
        self._saved_s = -1e18
        self._dirty: dict[str, bytes | None] = {}
        self._writing: defer.Deferred | None = None
        self._retry_call = None
        self._retry_delay_s = retry_s
        self._load_call = None
        self._running = False

    # -- lifecycle of the tracker itself --

    def start(self) -> defer.Deferred:
        """Read data/sessions/current (retrying until the store answers); fires once loaded."""
        self._running = True
        self._loaded_d = defer.Deferred()
        if self.ctx.store is None:
            self._loaded()
        else:
            self._load()
        return self._loaded_d

    def stop(self) -> defer.Deferred:
        """Stop retrying; fires when the write in flight (if any) is done. Pending data stays for the next start."""
        self._running = False
        for call in (self._retry_call, self._load_call):
            if call is not None and call.active():
                call.cancel()
        self._retry_call = self._load_call = None
        if self._dirty and self._writing is None and self.ctx.store is not None:
            self._flush()      # one last attempt: a session that just ended should not wait for the next run
        if self._writing is not None:
            d = defer.Deferred()
            self._writing.addBoth(lambda _: d.callback(None))
            return d
        return defer.succeed(None)

    def _load(self) -> None:
        self._load_call = None
        d = self.ctx.store.range(self.ctx.data_key("sessions/current"))

        def got_current(result):
            if not result.kvs:
                return None
            sid = result.kvs[0].value.decode().strip().strip('"')
            return self.ctx.store.range(self.ctx.data_key(f"sessions/{sid}")).addCallback(
                lambda r: Session.from_json(r.kvs[0].value) if r.kvs else sid)

        def got_session(found):
            if isinstance(found, str):      # `current` names a session that is not stored: forget the pointer
                log.warn("{charger}: data/sessions/current names {id}, which is not stored; ignoring it",
                         charger=self.ctx.name, id=found)
                self._dirty[self.ctx.data_key("sessions/current")] = None
            elif found is not None and found.open:
                self.session = self.last = found
                self._restored = True
                self._last_id = found.id
                self._meter_Wh = found.meter_last_Wh
                log.info("{charger}: session {id} was open when EVC stopped; the charger's next report decides "
                         "whether it continues", charger=self.ctx.name, id=found.id)
            self._loaded()

        def failed(f):
            if not self._running:
                return None
            log.warn("{charger}: sessions not read from the store ({error}); retrying in {delay_s} s",
                     charger=self.ctx.name, error=f.getErrorMessage(), delay_s=self._retry_delay_s)
            self._load_call = self.clock.callLater(self._retry_delay_s, self._load)
            self._retry_delay_s = min(self._retry_delay_s * 2, self.retry_max_s)
            return None

        d.addCallback(got_current).addCallbacks(got_session, failed)

    def _loaded(self) -> None:
        self.loaded = True
        self._retry_delay_s = self.retry_s
        early, self._early = self._early, None
        if early is not None:
            self.update(*early)
        self._flush()
        if not self._loaded_d.called:
            self._loaded_d.callback(self.session)

    # -- what the charger calls --

    @property
    def may_charge(self) -> bool:
        """An authorized session is open: the charger may offer current (mode permitting)."""
        return self.session is not None and self.session.authorized

    def update(self, status: ChargerStatus, meter_Wh: float | None = None) -> None:
        """Feed the charger's newest status and energy counter (Wh, None if unknown); call it on every poll."""
        if not self.loaded:
            self._early = (status, meter_Wh)
            return
        vehicle = status.vehicle if status.online else "unknown"
        if vehicle == "unknown":
            # The device does not answer: nothing is known about the car, so nothing changes.
            return
        now = self.clock.seconds()
        if self._restored:
            self._restored = False
            if self._resume(vehicle, meter_Wh, now):
                return
        # Only this report's reading counts: a value left from an earlier report (a stale meter now) could belong to
        # an earlier session, so a session opened now waits for a reading of its own.
        self._meter_Wh = meter_Wh
        self._vehicle = vehicle
        s = self.session

        if vehicle == "none":
            self._stopped_while_plugged = False
            if s is not None:
                self._end("EVDisconnected", now)
            return
        if s is None:
            if self._stopped_while_plugged:
                return
            self._open(now)
            s = self.session
        if vehicle == "charging" and self._drawing(status):
            state = "charging"
        elif vehicle == "charging" or vehicle == "plugged" or vehicle == "fault":
            state = "suspended" if s.state in ("charging", "suspended") else s.state
        else:
            state = s.state
        if state == "charging" and not s.authorized:
            # The device lets the car charge without EVC's authorization (free mode): record that it happened.
            self._authorize(None, now)
            s = self.session
        self._set(state, now, meter_moved=meter_Wh is not None)

    def authorized(self, id_tag: str | None) -> None:
        """A token was accepted for this charger (id_tag None: authorized without a token).

        With a car plugged, its session becomes authorized (a session ended by a person while the car stayed plugged
        is followed by a new one). Without a car, the authorization waits `connection_timeout_s` for one.
        """
        now = self.clock.seconds()
        s = self.session
        if s is None and self._vehicle in ("plugged", "charging", "fault"):
            self._stopped_while_plugged = False
            self._open(now)
            s = self.session
        if s is None:
            self._pending_tag = (id_tag, now)
            return
        if s.authorized:
            return
        self._authorize(id_tag, now)
        self._set("authorized", now)

    def transaction_started(self, transaction_id: int, meter_start_Wh: float, id_tag: str | None,
                            accepted: bool) -> None:
        """A charger with transactions (OCPP) started one: the session is that transaction, metered from its own
        `meter_start_Wh` (whatever was read before it, e.g. between plug-in and start, is not part of it).

        The open session takes the transaction (one is opened if none is: the transaction says a car is there); a
        session that already has another transaction ends first ("Other": the charge point started a new one without
        stopping the old, e.g. its StopTransaction was lost), so no reading of one transaction is billed to another.
        `accepted`: the id tag was accepted, so the session is authorized.
        """
        now = self.clock.seconds()
        s = self.session
        if s is not None and s.transaction_id is not None and s.transaction_id != transaction_id:
            log.warn("{charger}: transaction {new} started while transaction {old} was open: session {id} ends",
                     charger=self.ctx.name, new=transaction_id, old=s.transaction_id, id=s.id)
            self._end("Other", now)
            s = None
        self._meter_Wh = float(meter_start_Wh)
        if self._vehicle in ("none", "unknown"):
            self._vehicle = "plugged"
        if s is None:
            self._stopped_while_plugged = False
            self._open(now)
        self.session = self.last = dataclasses.replace(
            self.session, transaction_id=transaction_id, meter_start_Wh=self._meter_Wh, meter_last_Wh=self._meter_Wh,
            meter_stop_Wh=None, energy_Wh=0.0, meter_reset=False, meter_resets=(), updated_time=iso_utc(now))
        state = self.session.state
        if accepted and not self.session.authorized:
            self._authorize(id_tag, now)
            state = "authorized"
        self._set(state, now, force=True)

    def transaction_stopped(self, transaction_id: int, meter_stop_Wh: float, reason: str) -> None:
        """The charger stopped transaction `transaction_id` at `meter_stop_Wh` (OCPP StopTransaction): its session
        ends with that reading. When the session already ended (a front stopped it first, then the charge point
        sent its StopTransaction), the record takes `meter_stop_Wh` as its last reading, so the whole transaction is
        in it; that correction is stored, not announced again."""
        s = self.session
        if s is not None and s.transaction_id in (transaction_id, None):
            self.end(reason, meter_stop_Wh)
            return
        last = self.last
        if s is None and last is not None and not last.open and last.transaction_id == transaction_id:
            self._meter_Wh = float(meter_stop_Wh)
            amended = self._with_meter(last, self.clock.seconds())
            amended = dataclasses.replace(amended, meter_stop_Wh=amended.meter_last_Wh, updated_time=last.updated_time)
            if amended != last:
                self.last = amended
                log.info("{charger}: session {id}: final reading {meter_Wh} Wh from the charger's stop",
                         charger=self.ctx.name, id=last.id, meter_Wh=meter_stop_Wh)
                self._write_state(amended)
                self._queue(amended, current=False)

    def end(self, reason: str = "Local", meter_stop_Wh: float | None = None) -> None:
        """End the open session without the car leaving (a stop button, a front, a deauthorized token, an OCPP
        StopTransaction). `meter_stop_Wh`: the counter at the end, when the charger reports it (OCPP meterStop)."""
        if reason not in REASONS:
            raise ValueError(f"session end reason {reason!r} is not one of {', '.join(REASONS)}")
        self._pending_tag = None
        if self.session is None:
            return
        if meter_stop_Wh is not None:
            self._meter_Wh = float(meter_stop_Wh)
        self._stopped_while_plugged = self._vehicle != "none"
        self._end(reason, self.clock.seconds())

    # -- transitions --

    def _drawing(self, status: ChargerStatus) -> bool:
        known = [a for a in status.actual_A if a is not None]
        # Without a measurement, the device's own "charging" is the best evidence.
        return not known or max(known) >= CHARGING_THRESHOLD_A

    def _resume(self, vehicle: str, meter_Wh: float | None, now: float) -> bool:
        """The first report after a restart with an open stored session; True when it handled the update."""
        s = self.session
        last = s.meter_last_Wh
        if meter_Wh is not None and last is not None and meter_Wh < last - METER_BACKWARDS_TOLERANCE_Wh:
            log.info("{charger}: energy counter went back from {last_Wh} to {meter_Wh} Wh while EVC was away: "
                     "ending session {id} as PowerLoss", charger=self.ctx.name, last_Wh=last, meter_Wh=meter_Wh,
                     id=s.id)
            self._end("PowerLoss", now, at=s.updated_time)
            return False            # go on: a car still plugged starts a new session
        if vehicle == "none":
            log.info("{charger}: the car left while EVC was away: ending session {id}", charger=self.ctx.name, id=s.id)
            self._vehicle = "none"
            self._end("EVDisconnected", now, at=s.updated_time)
            return True
        log.info("{charger}: car still plugged: session {id} continues", charger=self.ctx.name, id=s.id)
        self._publish(s)
        return False

    def _new_id(self, now: float) -> str:
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{int(now * 1000) % 1000:03d}Z"
        sid = f"{stamp}-{secrets.token_hex(3)}"
        if sid <= self._last_id:
            # Two sessions in one millisecond (or a clock that went back): keep ids increasing.
            sid = self._last_id + "-" + secrets.token_hex(2)
        self._last_id = sid
        return sid

    def _open(self, now: float) -> None:
        self.session = self.last = Session(
            id=self._new_id(now), charger=self.ctx.name, state="plugged", start_time=iso_utc(now),
            meter_start_Wh=self._meter_Wh, meter_last_Wh=self._meter_Wh, energy_Wh=0.0 if self._meter_Wh is not None
            else None, updated_time=iso_utc(now))
        log.info("{charger}: car plugged, session {id} started", charger=self.ctx.name, id=self.session.id)
        pending, self._pending_tag = self._pending_tag, None
        if pending is not None and now - pending[1] <= self.connection_timeout_s:
            self._authorize(pending[0], now)
            self.session = dataclasses.replace(self.session, state="authorized")
        elif self.authorize_on_plug:
            self._authorize(None, now)
            self.session = dataclasses.replace(self.session, state="authorized")
        self._commit(self.session, current=True)

    def _authorize(self, id_tag: str | None, now: float) -> None:
        self.session = self.last = dataclasses.replace(self.session, id_tag=id_tag, authorized_time=iso_utc(now))
        log.info("{charger}: session {id} authorized", charger=self.ctx.name, id=self.session.id)

    def _with_meter(self, s: Session, now: float) -> Session:
        """`s` with the newest reading (self._meter_Wh, None: none in this report) taken in."""
        reading = self._meter_Wh
        start, last, resets = s.meter_start_Wh, s.meter_last_Wh, s.meter_resets
        if reading is not None:
            if start is None or last is None:
                start = start if start is not None else reading
                last = reading
            elif reading < last - METER_BACKWARDS_TOLERANCE_Wh:
                log.warn("{charger}: session {id}: the energy counter went back from {last_Wh} to {meter_Wh} Wh "
                         "(reset or replaced): flagged meter_reset", charger=self.ctx.name, id=s.id, last_Wh=last,
                         meter_Wh=reading)
                resets = resets + ((last, reading),)
                last = reading
            elif reading > last:
                last = reading
        return dataclasses.replace(s, meter_start_Wh=start, meter_last_Wh=last, energy_Wh=session_energy_Wh(
            start, last, resets), meter_reset=bool(resets), meter_resets=resets, updated_time=iso_utc(now))

    def _set(self, state: str, now: float, meter_moved: bool = False, force: bool = False) -> None:
        old = self.session
        new = self._with_meter(dataclasses.replace(old, state=state), now)
        self.session = self.last = new
        self._write_state(new)
        if force or state != old.state or old.authorized_time != new.authorized_time:
            log.info("{charger}: session {id} {state}", charger=self.ctx.name, id=new.id, state=state)
            self._commit(new, current=True)
        elif meter_moved and new.meter_last_Wh != old.meter_last_Wh and now - self._saved_s >= self.save_interval_s:
            # Only the counter moved: saved now and then so a restart knows a recent value; not announced.
            self._queue(new, current=True)

    def _end(self, reason: str, now: float, at: str | None = None) -> None:
        s = self._with_meter(self.session, now)
        if at is not None:
            s = dataclasses.replace(s, updated_time=at)
        s = dataclasses.replace(s, state="ended", reason=reason, stop_time=at or iso_utc(now),
                                meter_stop_Wh=s.meter_last_Wh)
        self.session = None
        self.last = s
        log.info("{charger}: session {id} ended ({reason}), {energy_Wh} Wh", charger=self.ctx.name, id=s.id,
                 reason=reason, energy_Wh=s.energy_Wh)
        self._commit(s, current=False)

    # -- persistence and events --

    def _commit(self, s: Session, current: bool) -> None:
        self._queue(s, current)
        self._publish(s)

    def _write_state(self, s: Session) -> None:
        """The newest session at a glance in state/session/ (`evc status`), the same for every charger type; its
        full record is data/sessions/<id>."""
        state = self.ctx.state
        if state is None:
            return
        state.update({"session/id": s.id, "session/state": s.state, "session/start_time": s.start_time})
        optional = {"session/energy_Wh": round(s.energy_Wh) if s.energy_Wh is not None else None,
                    "session/stop_time": s.stop_time,
                    "session/reason": s.reason, "session/meter_reset": True if s.meter_reset else None}
        for key, value in optional.items():
            if value is None:
                state.delete(key)
            elif key == "session/energy_Wh":
                state.set(key, value, deadband=1.0)
            else:
                state.set(key, value)

    def _publish(self, s: Session) -> None:
        self._write_state(s)
        if self.ctx.events is not None:
            self.ctx.events.publish(("session", self.ctx.name), s)

    def _queue(self, s: Session, current: bool) -> None:
        self._saved_s = self.clock.seconds()
        self._dirty[self.ctx.data_key(f"sessions/{s.id}")] = s.to_json()
        cur = self.ctx.data_key("sessions/current")
        if current:
            self._dirty[cur] = s.id.encode()
        elif self._dirty.get(cur) in (None, s.id.encode()):
            self._dirty[cur] = None
        self._flush()

    def _flush(self) -> None:
        if self.ctx.store is None or not self.loaded or self._writing is not None or not self._dirty:
            return
        if self._retry_call is not None and self._retry_call.active():
            return
        batch, self._dirty = self._dirty, {}
        ops = [Put(k, v) if v is not None else Delete(k) for k, v in sorted(batch.items())]
        self._writing = d = self.ctx.store.txn((), ops)

        def ok(_):
            self._writing = None
            self._retry_delay_s = self.retry_s
            self._flush()

        def failed(f):
            self._writing = None
            for k, v in batch.items():
                self._dirty.setdefault(k, v)     # anything newer that arrived meanwhile wins
            log.warn("{charger}: session data not written ({error}); retrying in {delay_s} s",
                     charger=self.ctx.name, error=f.getErrorMessage(), delay_s=self._retry_delay_s)
            if self._running:
                self._retry_call = self.clock.callLater(self._retry_delay_s, self._retry)
                self._retry_delay_s = min(self._retry_delay_s * 2, self.retry_max_s)

        d.addCallbacks(ok, failed)

    def _retry(self) -> None:
        self._retry_call = None
        self._flush()


def session_energy_Wh(start_Wh: float | None, last_Wh: float | None, resets=()) -> float | None:
    """The energy of a session from its start and newest readings: last - start, or, when the counter jumped back
    (`resets`: [before_Wh, after_Wh] pairs in order), the sum of what was measured between the jumps, never negative."""
    if start_Wh is None or last_Wh is None:
        return None
    total, since = 0.0, start_Wh
    for before, after in resets:
        total += max(0.0, before - since)
        since = after
    total += max(0.0, last_Wh - since)
    return round(total, 3)


__all__ = ["Session", "SessionTracker", "REASONS", "STATES", "iso_utc", "session_energy_Wh"]
