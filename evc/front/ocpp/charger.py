"""One charger bridged to the upstream CSMS by front/ocpp: sessions -> transactions, status, meter values, commands.

Each covered charger is its own OCPP 1.6 charge point upstream (one connector, id 1), with its own websocket
(link.Link) and its own durable outbox (outbox.Outbox). What goes where:
- Sessions (("session", charger) events from the charger's SessionTracker) become StartTransaction when authorized
  and StopTransaction when ended; while a transaction is open, MeterValues are sampled every
  MeterValueSampleInterval. These three go through the outbox, in order, retried per TransactionMessageAttempts /
  TransactionMessageRetryInterval. The session -> transactionId mapping is kept at data/transactions/<session id>;
  StopTransaction and MeterValues get their transactionId when they are sent (the backend may assign it long after
  they were queued).
- The charger's status (ChargerStatus + session) becomes StatusNotification, sent at once when connected (not queued:
  the newest status is sent again after every boot).
- Authorize, RemoteStart/Stop, ChangeAvailability, Reset, UnlockConnector, TriggerMessage, Get/ChangeConfiguration,
  DataTransfer, Set/ClearChargingProfile, GetCompositeSchedule and ClearCache are answered here. Charging profiles
  never reach the charger: they become a cap, published on ("cap", charger) as (front key, amps or None), which
  control merges into its allocation.
"""
from __future__ import annotations

import json
import math
from collections import deque
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from evc.auth import AuthResult
from evc.charger.base import ChargerStatus
from evc.meter.base import IMeter
from evc.front.ocpp import profiles as profiles_mod
from evc.front.ocpp.link import CallFailed, Link, LinkDown, LinkSettings
from evc.front.ocpp.profiles import Tx, parse_profile, parse_time
from evc.front.ocpp.outbox import Outbox
from evc.session import REASONS, Session, SessionTracker, iso_utc
from evc.store.interface import Delete, Put

log = Logger(namespace="evc.front.ocpp")

PHASES = ("L1", "L2", "L3")
AUTHORIZED = ("authorized", "charging", "suspended")

# GetConfiguration / ChangeConfiguration keys the backend may change (per charger; kept in data/configuration/).
WRITABLE_KEYS = {
    "HeartbeatInterval": ("heartbeat_s", 0),
    "MeterValueSampleInterval": ("meter_value_sample_interval_s", 0),
    "TransactionMessageAttempts": ("transaction_message_attempts", 1),
    "TransactionMessageRetryInterval": ("transaction_message_retry_interval_s", 0),
}
HANDLED = ("RemoteStartTransaction", "RemoteStopTransaction", "ChangeAvailability", "Reset", "UnlockConnector",
           "TriggerMessage", "GetConfiguration", "ChangeConfiguration", "DataTransfer", "SetChargingProfile",
           "ClearChargingProfile", "GetCompositeSchedule", "ClearCache")
TRIGGERABLE = ("BootNotification", "Heartbeat", "MeterValues", "StatusNotification")
# Accepted messages whose removal from the outbox may be unwritten while the next ones go out: what a crash could
# make EVC send a second time (see docs/front-ocpp.md, "exactly once").
MAX_UNWRITTEN_REMOVALS = 32
# The charge point's MeterValues relayed per session, remembered to drop one it sends again (a lost CALLRESULT).
RELAYED_MEMORY = 64


def ocpp_status(status: Optional[ChargerStatus], session: Optional[Session], plugged_after_end: bool,
                inoperative: bool) -> tuple[str, str, str]:
    """(status, errorCode, info) of connector 1 for StatusNotification, from what EVC knows of the charger.

    `session` is the open session (None if none); `plugged_after_end`: a session ended while the car stays plugged.
    """
    if status is None:
        return "Unavailable", "NoError", "charger not running in EVC"
    if not status.online:
        return "Faulted", "OtherError", "the charger does not answer EVC"
    if status.vehicle == "fault":
        return "Faulted", "OtherError", (status.fault or "charger fault")[:50]
    if inoperative:
        return "Unavailable", "NoError", ""
    if status.vehicle == "none":
        return "Available", "NoError", ""
    if status.vehicle == "unknown":
        return "Unavailable", "NoError", "car state unknown"
    if session is None:
        return ("Finishing" if plugged_after_end else "Preparing"), "NoError", ""
    if session.state == "plugged":
        return "Preparing", "NoError", ""
    if session.state == "charging":
        return "Charging", "NoError", ""
    # Authorized or suspended: whose choice is it that no energy flows?
    if status.setpoint_A <= 0:
        return "SuspendedEVSE", "NoError", ""
    return "SuspendedEV", "NoError", ""


def _iso_now(clock) -> str:
    return iso_utc(clock.seconds())


def _int_Wh(*values) -> int:
    for v in values:
        if v is not None:
            return int(round(float(v)))
    return 0


class BridgedCharger:
    """One covered charger (see the module docstring). Built and started by front.OcppFront."""

    def __init__(self, front, name: str, charger):
        self.front = front
        self.ctx = front.ctx
        self.cfg = front.config
        self.name = name
        self.label = f"{front.ctx.key}/{name}"
        self.clock = self.ctx.clock
        self.charger = None
        self.keys: dict[str, int] = {key: int(getattr(self.cfg, field)) for key, (field, _) in WRITABLE_KEYS.items()}
        self.outbox = Outbox(self.ctx.store, self.ctx.data_key(f"outbox/{name}"), self.clock,
                             on_ready=self._pump, writer=front.writer, label=self.label)
        identity = self.cfg.identity.replace("{name}", name)
        self.link = Link(self, LinkSettings(
            url=self.cfg.url, identity=identity, password=self.cfg.password, ca_file=self.cfg.ca_file,
            vendor=self.cfg.vendor, model=self.cfg.model, serial=name, heartbeat_s=self.cfg.heartbeat_s,
            ping_interval_s=self.cfg.ping_interval_s, response_timeout_s=self.cfg.response_timeout_s,
            reconnect_min_s=self.cfg.reconnect_min_s, reconnect_max_s=self.cfg.reconnect_max_s),
            self.clock, self.ctx.reactor, rng=front.rng, host_name=self.label)
        self.records: dict[str, dict] = {}          # session id -> {"transaction_id", "id_tag", ...}
        self.session: Optional[Session] = None      # the charger's open session
        self.plugged_after_end = False
        self.profiles: list[profiles_mod.Profile] = []
        self.inoperative = False
        self._inoperative_scheduled = False
        self.cap_A: Optional[float] = None
        self.status_sent: Optional[tuple] = None
        self.delivered: deque = deque(maxlen=1000)     # (action, seconds queued -> CALLRESULT), newest: benchmarks
        self.given_up = 0
        self._status_busy = False
        self._sending = False
        self._pumping = False
        self._retry_call = None
        self._cap_call = None
        self._sample_call = None
        self._unsubs: list = []
        self._unsubs_events: list = []
        self._remote: Optional[tuple] = None
        self._trigger: Optional[str] = None
        self._reset: Optional[str] = None
        self._started = False
        self._stopped = False
        self._load_call = None
        self._load_delay_s = 0.5
        self._reconciled = False
        self._reconcile_call = None
        self.backend_interval_s: Optional[int] = None   # MeterValueSampleInterval as the backend set it (if it did)
        self._relayed: dict[str, deque] = {}            # session id -> digests of the meter values relayed
        self._transaction_data: dict[str, list] = {}    # session id -> the charger's StopTransaction transactionData
        self.relayed = 0
        self.relayed_again = 0                          # the same MeterValues sent again by the charge point: dropped
        self.ready = defer.Deferred()            # fires when the stored data is loaded and the link started
        self.attach(charger)

    # -- the charger instance (a config change restarts it: the link stays) --

    def attach(self, charger) -> None:
        self.detach()
        self.charger = charger
        if charger is None:
            return
        self._unsubs.append(charger.subscribe(lambda status: self._status_changed()))
        tracker = self.tracker
        if tracker is not None and tracker.session is not None:
            self.session = tracker.session
        if self._started:
            self._reconciled = False
            self._reconcile()
            self._push_interval()
            self._arm_sampler()
            self._status_changed()

    def detach(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        self.charger = None

    @property
    def relays_own(self) -> bool:
        """The charger reports its own meter values (charger/ocpp): they are relayed, EVC samples nothing."""
        return bool(getattr(self.charger, "own_meter_values", False))

    @property
    def tracker(self) -> Optional[SessionTracker]:
        sessions = getattr(self.charger, "sessions", None)
        return sessions if isinstance(sessions, SessionTracker) else None

    @property
    def status(self) -> Optional[ChargerStatus]:
        return None if self.charger is None else self.charger.status

    # -- lifecycle --

    def start(self) -> defer.Deferred:
        self._load()
        return self.ready

    def _load(self) -> None:
        self._load_call = None
        store, key = self.ctx.store, self.ctx.data_key
        reads = [self.outbox.load() if not self.outbox.loaded else defer.succeed(None),
                 store.range(key("transactions/"), prefix=True),
                 store.range(key(f"configuration/{self.name}/"), prefix=True),
                 store.range(key(f"profiles/{self.name}")),
                 store.range(key(f"availability/{self.name}"))]
        d = defer.gatherResults(reads, consumeErrors=True)
        d.addCallbacks(self._loaded, self._load_failed)

    def _load_failed(self, failure) -> None:
        if self._stopped:
            return
        error = failure.value.subFailure.getErrorMessage() if hasattr(failure.value, "subFailure") else str(failure)
        log.warn("{charger}: stored front data not read ({error}); retrying in {delay_s} s", charger=self.label,
                 error=error, delay_s=self._load_delay_s)
        self._load_call = self.clock.callLater(self._load_delay_s, self._load)
        self._load_delay_s = min(self._load_delay_s * 2, 30.0)

    def _loaded(self, results) -> None:
        if self._stopped:
            return
        _, tx, conf, prof, avail = results
        for kv in tx.kvs:
            try:
                rec = json.loads(kv.value)
                if rec.get("charger") == self.name:
                    self.records[kv.key.rsplit("/", 1)[-1]] = rec
            except ValueError:
                log.warn("{charger}: unreadable transaction record {key} ignored", charger=self.label, key=kv.key)
        for kv in conf.kvs:
            k = kv.key.rsplit("/", 1)[-1]
            if k in WRITABLE_KEYS:
                try:
                    self.keys[k] = int(kv.value)
                except ValueError:
                    continue
                if k == "MeterValueSampleInterval":
                    self.backend_interval_s = self.keys[k]
        if prof.kvs:
            try:
                for item in json.loads(prof.kvs[0].value):
                    self.profiles.append(parse_profile(item["connector_id"], item["profile"], item["installed_s"]))
            except (ValueError, KeyError, TypeError) as e:
                log.warn("{charger}: stored charging profiles unreadable ({error}); none applied",
                         charger=self.label, error=str(e))
        self.inoperative = bool(avail.kvs) and avail.kvs[0].value.decode().strip('"') == "Inoperative"
        self._started = True
        self.link.heartbeat_s = self.keys["HeartbeatInterval"]
        if self.ctx.events is not None:
            self._unsubs_events.append(self.ctx.events.subscribe(("session", self.name), self._on_session))
            self._unsubs_events.append(self.ctx.events.subscribe(("meter_values", self.name),
                                                                 self._on_meter_values))
        self._reconcile()
        self._push_interval()
        self._update_cap()
        self._arm_sampler()
        self._state_all()
        self.link.start()
        self.ready.callback(self)

    def stop(self) -> defer.Deferred:
        self._stopped = True
        for name in ("_load_call", "_retry_call", "_cap_call", "_sample_call", "_reconcile_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        for unsub in self._unsubs_events:
            unsub()
        self._unsubs_events = []
        self.detach()
        return defer.DeferredList([self.link.stop(), self.outbox.stop()]).addCallback(lambda _: None)

    # -- state for people --

    def _state(self, leaf: str, value: Any) -> None:
        """Set a state leaf of this charger; None removes it."""
        if self._stopped:            # once stopped, the front removes this charger's leaves
            return
        if value is None:
            self.ctx.state.delete(f"{self.name}/{leaf}")
        else:
            self.ctx.state.set(f"{self.name}/{leaf}", value)

    def _state_all(self) -> None:
        self._state("connection", self.link.state)
        self._state("outbox", len(self.outbox))
        self._state("cap_A", self.cap_A)
        self._state("available", not self.inoperative)

    def _action(self, action: str, outcome: str) -> None:
        """An upstream action, in state and in the log, with the charger it concerns."""
        log.info("{charger}: backend asked {action}: {outcome}", charger=self.label, action=action, outcome=outcome)
        self._state("last_action", f"{action}: {outcome}")
        self._state("last_action_time", _iso_now(self.clock))

    # -- LinkHost --

    def link_state(self, state: str, why: str = "") -> None:
        self._state("connection", state)
        if state == "accepted":
            self._state("connection_error", None)
        elif why:
            self._state("connection_error", why)      # kept while connecting again: the reason stays visible
        if state != "accepted":
            self.status_sent = None          # sent again after the next boot

    def booted(self) -> None:
        self._send_status(force=True)
        self._pump()

    def handled_actions(self) -> tuple[str, ...]:
        return HANDLED

    def refused(self, action: str, code: str) -> None:
        self._action(action, f"refused with CALLERROR {code}")

    def handle(self, action: str, **kw) -> Any:
        from ocpp.v16 import call_result
        result = getattr(self, f"_on_{action}")(call_result, **kw)
        status = getattr(result, "status", None)
        self._action(action, str(status) if status is not None else "answered")
        return result

    def after(self, action: str, **kw) -> None:
        if action == "RemoteStartTransaction" and self._remote is not None:
            id_tag, self._remote = self._remote, None
            if self.charger is not None:
                # Answered Accepted already (OCPP answers before acting); a refusal that comes later is the charger's
                # to log, and must not end as an unhandled error here.
                self._quietly(self.charger.authorize, id_tag)
        elif action == "RemoteStopTransaction" and self._remote is not None:
            self._remote = None
            self._end_session("Remote")
        elif action == "TriggerMessage" and self._trigger is not None:
            what, self._trigger = self._trigger, None
            self._triggered(what)
        elif action == "Reset" and self._reset is not None:
            kind, self._reset = self._reset, None
            self.link.reconnect(f"{kind} Reset from the backend")

    # -- sessions -> transactions --

    def _on_session(self, topic, s: Session) -> None:
        if not isinstance(s, Session) or self._stopped:
            return
        if s.open:
            self.session = s
            self.plugged_after_end = False
        elif self.session is not None and self.session.id == s.id:
            self.session = None
            self.plugged_after_end = s.reason not in ("EVDisconnected",)
        if s.open and s.authorized and s.id not in self.records:
            self._queue_start(s)
        if not s.open:
            if s.authorized_time and s.id not in self.records:
                self._queue_start(s)      # authorized and ended while this front was not listening
            rec = self.records.get(s.id)
            if rec is not None and not rec.get("stop_queued"):
                self._queue_stop(s)
            self._transaction_ended()
        if self._sample_call is None:
            self._arm_sampler()
        self._update_cap()
        self._status_changed()

    def _reconcile(self) -> None:
        """After a start (or the charger's restart): transactions whose session ended while nobody listened get their
        StopTransaction; an authorized open session without a transaction gets its StartTransaction."""
        self._reconcile_call = None
        if self._reconciled or self._stopped or self.charger is None:
            return
        tracker = self.tracker
        if tracker is None:
            self._reconciled = True      # a charger without sessions has no transactions
            return
        if not tracker.loaded:
            self._reconcile_call = self.clock.callLater(0.5, self._reconcile)
            return
        self._reconciled = True
        current = tracker.session
        self.session = current
        for sid, rec in list(self.records.items()):
            if rec.get("stop_queued") or (current is not None and current.id == sid):
                continue
            self._stop_from_store(sid)
        if current is not None and current.authorized and current.id not in self.records:
            self._queue_start(current)
        self._arm_sampler()

    def _stop_from_store(self, sid: str) -> None:
        rec = self.records[sid]
        rec["stop_queued"] = True        # no second Stop while the read is out
        key = f"{self.ctx.root}/charger/{self.name}/data/sessions/{sid}"

        def got(result):
            s = None
            if result.kvs:
                try:
                    s = Session.from_json(result.kvs[0].value)
                except (ValueError, TypeError):
                    s = None
            if s is None or s.open:
                now = _iso_now(self.clock)
                s = Session(id=sid, charger=self.name, state="ended", start_time=now, id_tag=rec.get("id_tag"),
                            stop_time=now, reason="Other",
                            meter_stop_Wh=(s.meter_last_Wh if s is not None else rec.get("meter_start_Wh")))
            log.info("{charger}: session {id} ended while the front was away; queueing its StopTransaction",
                     charger=self.label, id=sid)
            rec["stop_queued"] = False
            self._queue_stop(s)

        def failed(f):
            rec["stop_queued"] = False
            self._reconciled = False
            if not self._stopped:
                self._reconcile_call = self.clock.callLater(1.0, self._reconcile)

        self.ctx.store.range(key).addCallbacks(got, failed)

    def _record_put(self, sid: str) -> Put:
        return Put(self.ctx.data_key(f"transactions/{sid}"), json.dumps(self.records[sid], sort_keys=True).encode())

    def _queue_start(self, s: Session) -> None:
        id_tag = (s.id_tag or self.cfg.free_id_tag)[:20]
        when = s.authorized_time or s.start_time
        self.records[s.id] = {"charger": self.name, "session": s.id, "transaction_id": None, "id_tag": id_tag,
                              "start_time": when, "meter_start_Wh": s.meter_start_Wh, "stop_queued": False,
                              "given_up": False}
        payload = {"connectorId": 1, "idTag": id_tag, "meterStart": _int_Wh(s.meter_start_Wh), "timestamp": when}
        self.outbox.append("StartTransaction", payload, s.id, queued=_iso_now(self.clock),
                           also=[self._record_put(s.id)])
        log.info("{charger}: StartTransaction queued for session {id}", charger=self.label, id=s.id)
        self._state("outbox", len(self.outbox))
        self._arm_sampler()

    def _queue_stop(self, s: Session) -> None:
        rec = self.records[s.id]
        rec["stop_queued"] = True
        reason = s.reason if s.reason in REASONS else "Other"
        payload = {"meterStop": _int_Wh(s.meter_stop_Wh, s.meter_last_Wh, s.meter_start_Wh, rec.get("meter_start_Wh")),
                   "timestamp": s.stop_time or _iso_now(self.clock), "reason": reason}
        data = self._transaction_data.pop(s.id, None)
        if data:
            payload["transactionData"] = data
        self._relayed.pop(s.id, None)
        if rec.get("id_tag") and rec["id_tag"] != self.cfg.free_id_tag[:20]:
            payload["idTag"] = rec["id_tag"]
        self.outbox.append("StopTransaction", payload, s.id, queued=_iso_now(self.clock),
                           also=[self._record_put(s.id)])
        log.info("{charger}: StopTransaction queued for session {id} ({reason})", charger=self.label, id=s.id,
                 reason=reason)
        self._state("outbox", len(self.outbox))

    def _open_transaction(self) -> Optional[dict]:
        s = self.session
        if s is None or not s.authorized:
            return None
        rec = self.records.get(s.id)
        if rec is None or rec.get("stop_queued") or rec.get("given_up"):
            return None
        return rec

    # -- meter values --

    def _on_meter_values(self, topic, event) -> None:
        """The charger's own MeterValues (charger/ocpp): relayed as they came (every sampled value with its measurand,
        phase, context, unit, format and signed data), one MeterValues upstream for each one of the charge point,
        through the outbox in order with the transaction's messages; the backend's transactionId is set at send."""
        if self._stopped or not isinstance(event, dict):
            return
        values, sid = event.get("meter_value") or [], event.get("session")
        if event.get("kind") == "transaction_data":
            if sid is not None and sid in self.records:
                self._transaction_data.setdefault(sid, []).extend(values)
            return
        if sid is None:
            if event.get("transaction_id") is None and self.link.accepted:
                # Outside a transaction (clock-aligned values, a connector's own report): no transaction message,
                # so not queued; sent as it comes when the backend is there.
                self.link.call("MeterValues", {"connectorId": 1, "meterValue": values}).addErrback(lambda f: None)
            return
        rec = self.records.get(sid)
        if rec is None or rec.get("stop_queued") or rec.get("given_up"):
            return              # not a transaction upstream (not authorized, or ended, or its start given up)
        digest = json.dumps(values, sort_keys=True, separators=(",", ":"))
        seen = self._relayed.setdefault(sid, deque(maxlen=RELAYED_MEMORY))
        if digest in seen:
            self.relayed_again += 1
            log.info("{charger}: the charge point sent the same MeterValues of session {id} again: relayed once",
                     charger=self.label, id=sid)
            return
        seen.append(digest)
        self.relayed += 1
        self.outbox.append("MeterValues", {"connectorId": 1, "meterValue": values}, sid,
                           queued=_iso_now(self.clock))
        self._state("outbox", len(self.outbox))

    def _push_interval(self) -> None:
        """The backend's MeterValueSampleInterval reaches a charger that samples itself (charger/ocpp)."""
        setter = getattr(self.charger, "set_meter_interval", None)
        if self.backend_interval_s is not None and callable(setter):
            self._quietly(setter, self.backend_interval_s)

    def _arm_sampler(self) -> None:
        """Schedule the next MeterValues sample of the open transaction, at its start + k x MeterValueSampleInterval
        (OCPP's sampled values count from the transaction's start; it also spreads the chargers of a site)."""
        if self._sample_call is not None and self._sample_call.active():
            self._sample_call.cancel()
        self._sample_call = None
        interval = self.keys["MeterValueSampleInterval"]
        rec = self._open_transaction()
        if interval <= 0 or self._stopped or rec is None or self.relays_own:
            return                     # armed again when a transaction starts
        now = self.clock.seconds()
        try:
            start_s = parse_time(rec.get("start_time") or "")
        except ValueError:
            start_s = now
        k = max(0, math.floor((now - start_s) / interval)) + 1
        self._sample_call = self.clock.callLater(max(0.0, start_s + k * interval - now), self._sample_tick)

    def _sample_tick(self) -> None:
        self._sample_call = None
        if self._open_transaction() is not None:
            self.outbox.append("MeterValues", {"connectorId": 1, "meterValue": [self._sample("Sample.Periodic")]},
                               self.session.id, queued=_iso_now(self.clock))
            self._state("outbox", len(self.outbox))
        self._arm_sampler()

    def _meter(self):
        meter = getattr(self.charger, "meter", None)
        if IMeter.providedBy(meter):
            return meter
        name = getattr(getattr(self.charger, "config", None), "meter", None)
        if isinstance(name, str):
            meter = self.ctx.find("meter").get(name)
            if IMeter.providedBy(meter):
                return meter
        return None

    def _sample(self, context: str) -> dict:
        values = []
        meter = self._meter()
        reading = meter.reading if meter is not None else None
        energy = reading.energy_Wh if reading is not None and not reading.stale else None
        if energy is None and self.session is not None:
            energy = self.session.meter_last_Wh
        if energy is not None:
            values.append({"value": str(int(round(energy))), "context": context,
                           "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
        if reading is not None and not reading.stale and reading.W_total is not None:
            values.append({"value": f"{reading.W_total:.0f}", "context": context,
                           "measurand": "Power.Active.Import", "unit": "W"})
        status = self.status
        if status is not None and status.online:
            phase_map = tuple(getattr(getattr(self.charger, "config", None), "phase_map", None) or PHASES)
            for phase, a in zip(phase_map, status.actual_A):
                if a is not None:
                    values.append({"value": f"{a:.1f}", "context": context, "measurand": "Current.Import",
                                   "phase": phase, "unit": "A"})
            values.append({"value": f"{status.setpoint_A:.1f}", "context": context,
                           "measurand": "Current.Offered", "unit": "A"})
        return {"timestamp": _iso_now(self.clock), "sampledValue": values}

    # -- the outbox sender --

    def _pump(self) -> None:
        # Re-entered from the outbox's write callbacks (a store that answers at once): the running loop goes on.
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_loop()
        finally:
            self._pumping = False

    def _pump_loop(self) -> None:
        while True:
            if self._sending or self._stopped or not self.link.accepted:
                return
            if self._retry_call is not None and self._retry_call.active():
                return
            if self.outbox.unwritten > MAX_UNWRITTEN_REMOVALS:
                return                 # the outbox's next write calls _pump again
            entry = self.outbox.head()
            if entry is None:
                return
            payload = dict(entry.payload)
            if entry.action in ("StopTransaction", "MeterValues"):
                rec = self.records.get(entry.session or "")
                tx = rec.get("transaction_id") if rec is not None else None
                if tx is None:
                    # A loop, not a recursion: an hour of meter values may follow a start that was given up.
                    self._give_up(entry, "no transactionId: its StartTransaction was not accepted by the backend",
                                  go_on=False)
                    continue
                payload["transactionId"] = tx
            self._sending = True
            d = self.link.call(entry.action, payload)
            d.addCallbacks(self._sent, self._send_failed, callbackArgs=(entry,), errbackArgs=(entry,))
            return

    def _sent(self, result: dict, entry) -> None:
        also: list = []
        if entry.action == "StartTransaction":
            rec = self.records.get(entry.session)
            tx = result.get("transactionId")
            status = (result.get("idTagInfo") or {}).get("status", "Accepted")
            if rec is not None:
                rec["transaction_id"] = tx
                also.append(self._record_put(entry.session))
            if self.session is not None and self.session.id == entry.session:
                self._state("transaction_id", tx)
            log.info("{charger}: StartTransaction accepted: session {id} is transaction {tx} ({status})",
                     charger=self.label, id=entry.session, tx=tx, status=status)
            if status != "Accepted" and self.session is not None and self.session.id == entry.session:
                # StopTransactionOnInvalidId: the backend refused the token after the fact.
                log.warn("{charger}: the backend answered {status} for the token of session {id}: stopping it",
                         charger=self.label, status=status, id=entry.session)
                self._end_session("DeAuthorized")
            self._update_cap()
        elif entry.action == "StopTransaction" and entry.session in self.records:
            self.records.pop(entry.session)
            also.append(Delete(self.ctx.data_key(f"transactions/{entry.session}")))
        if entry.queued_s is not None:
            self.delivered.append((entry.action, self.clock.seconds() - entry.queued_s))
        self.outbox.remove(entry, also)
        self._next()

    def _next(self) -> None:
        # The removal is on its way to the store, in queue order; the next message need not wait for it.
        self._sending = False
        self._state("outbox", len(self.outbox))
        self._pump()

    def _send_failed(self, failure, entry) -> None:
        self._sending = False
        if failure.check(LinkDown):
            return                 # not a failure to process: sent again after the next boot
        if not failure.check(CallFailed):
            log.failure("{charger}: sending {action} failed", failure, charger=self.label, action=entry.action)
        entry.attempts += 1
        attempts = max(1, self.keys["TransactionMessageAttempts"])
        why = failure.getErrorMessage()
        if entry.attempts >= attempts:
            self._give_up(entry, f"{why} ({entry.attempts} of {attempts} attempts)")
            return
        wait = self.keys["TransactionMessageRetryInterval"] * entry.attempts
        log.warn("{charger}: {action} #{seq} not processed by the backend ({why}); attempt {n} of {attempts} in "
                 "{wait_s} s", charger=self.label, action=entry.action, seq=entry.seq, why=why, n=entry.attempts + 1,
                 attempts=attempts, wait_s=wait)
        self._retry_call = self.clock.callLater(wait, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self._pump()

    def _give_up(self, entry, why: str, go_on: bool = True) -> None:
        self.given_up += 1
        also: list = []
        rec = self.records.get(entry.session or "")
        if entry.action == "StartTransaction" and rec is not None:
            rec["given_up"] = True
            also.append(self._record_put(entry.session))
        elif entry.action == "StopTransaction" and rec is not None:
            self.records.pop(entry.session)
            also.append(Delete(self.ctx.data_key(f"transactions/{entry.session}")))
        log.error("{charger}: gave up {action} #{seq} of session {id}: {why}", charger=self.label,
                  action=entry.action, seq=entry.seq, id=entry.session, why=why)
        self._state("given_up", self.given_up)
        self._state("last_given_up", f"{entry.action} #{entry.seq}: {why}")
        self.outbox.remove(entry, also)
        if go_on:
            self._next()
        else:
            self._state("outbox", len(self.outbox))

    # -- status --

    def current_status(self) -> tuple[str, str, str]:
        return ocpp_status(self.status, self.session, self.plugged_after_end, self.inoperative)

    def _status_changed(self) -> None:
        if self._started and not self._stopped:
            self._send_status()

    def _send_status(self, force: bool = False) -> None:
        if not self.link.accepted:
            return
        if force:
            self.status_sent = None
            self.link.call("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "timestamp":
                           _iso_now(self.clock), "status": "Unavailable" if self.inoperative else "Available"}
                           ).addErrback(lambda f: None)
        if self._status_busy:
            return
        now = self.current_status()
        if now == self.status_sent:
            return
        status, code, info = now
        payload = {"connectorId": 1, "status": status, "errorCode": code, "timestamp": _iso_now(self.clock)}
        if info:
            payload["info"] = info
        self._status_busy = True
        self._state("status", status)

        def done(result, ok):
            self._status_busy = False
            if ok:
                self.status_sent = now
                self._send_status()       # it may have changed meanwhile
            return None

        self.link.call("StatusNotification", payload).addCallbacks(done, done, callbackArgs=(True,),
                                                                   errbackArgs=(False,))

    # -- authorization (front.OcppFront.authorize) --

    def authorize(self, id_tag: str) -> defer.Deferred:
        """Deferred[AuthResult | None]: the backend's answer, or the offline rule when it cannot answer in time."""
        source = self.ctx.key
        if len(id_tag) > 20:
            return defer.succeed(AuthResult("Invalid", source=source))
        if not self.link.accepted:
            return defer.succeed(self.front.offline_answer(self.name, f"not connected ({self.link.state})"))
        answer = defer.Deferred()

        def timeout():
            if not answer.called:
                answer.callback(self.front.offline_answer(
                    self.name, f"no answer within {self.cfg.authorize_timeout_s:g} s"))

        timer = self.clock.callLater(self.cfg.authorize_timeout_s, timeout)

        def got(result):
            info = result.get("idTagInfo") or {}
            if timer.active():
                timer.cancel()
            if not answer.called:
                answer.callback(AuthResult(info.get("status", "Invalid"), expiry=info.get("expiryDate"),
                                           parent_id_tag=info.get("parentIdTag"), source=source))

        def failed(f):
            if timer.active():
                timer.cancel()
            if not answer.called:
                # The code only: a backend's error text may repeat the token, which is never logged.
                why = f"Authorize: {f.value.code}" if f.check(CallFailed) else f"Authorize: {type(f.value).__name__}"
                answer.callback(self.front.offline_answer(self.name, why))

        # The call is never cancelled (its answer would arrive out of step): a late answer is ignored.
        self.link.call("Authorize", {"idTag": id_tag}).addCallbacks(got, failed)
        return answer

    # -- caps from charging profiles and availability --

    def _tx(self) -> Optional[Tx]:
        s = self.session
        if s is None or not s.authorized:
            return None
        rec = self.records.get(s.id) or {}
        when = s.authorized_time or s.start_time
        try:
            start_s = parse_time(when)
        except ValueError:
            start_s = self.clock.seconds()
        return Tx(rec.get("transaction_id"), start_s)

    def _update_cap(self) -> None:
        if self._cap_call is not None and self._cap_call.active():
            self._cap_call.cancel()
        self._cap_call = None
        if self._stopped:
            return
        now = self.clock.seconds()
        tx = self._tx()
        cap = profiles_mod.limit_at(self.profiles, now, tx)
        if self.inoperative:
            cap = 0.0
        if cap is not None:
            cap = round(cap, 2)
        if cap != self.cap_A:
            self.cap_A = cap
            log.info("{charger}: upstream cap {cap}", charger=self.label,
                     cap="removed" if cap is None else f"{cap:g} A")
            self._state("cap_A", cap)
            if self.ctx.events is not None:
                self.ctx.events.publish(("cap", self.name), (self.ctx.key, cap))
        nxt = profiles_mod.next_change(self.profiles, now, tx)
        if nxt is not None:
            self._cap_call = self.clock.callLater(max(0.0, nxt - now), self._update_cap)

    def _save_profiles(self) -> None:
        doc = [{"connector_id": p.connector_id, "profile": p.raw, "installed_s": p.installed_s}
               for p in self.profiles]
        self.outbox.write([Put(self.ctx.data_key(f"profiles/{self.name}"), json.dumps(doc).encode())])

    def _transaction_ended(self) -> None:
        self._state("transaction_id", None)
        before = len(self.profiles)
        self.profiles = [p for p in self.profiles if p.purpose != "TxProfile"]
        if len(self.profiles) != before:
            self._save_profiles()
        if self._inoperative_scheduled:
            self._inoperative_scheduled = False
            self._set_available(False)

    def _set_available(self, available: bool) -> None:
        self.inoperative = not available
        key = self.ctx.data_key(f"availability/{self.name}")
        self.outbox.write([Delete(key)] if available else [Put(key, b"Inoperative")])
        self._state("available", available)
        self._update_cap()
        self._status_changed()

    def _end_session(self, reason: str) -> bool:
        """Stop the charger's open session (RemoteStop, a refused token); False when the charger cannot be stopped.

        Only a charger EVC can deauthorize (it then stops offering current) is stopped: ending the session record
        alone would leave a charger that decides by itself (an OCPP charger) charging while EVC reports it stopped.
        """
        deauthorize = getattr(self.charger, "deauthorize", None)
        if not callable(deauthorize):
            log.warn("{charger}: cannot stop the session ({reason}): this charger type cannot be deauthorized",
                     charger=self.label, reason=reason)
            return False
        tracker = self.tracker
        if tracker is not None and tracker.session is not None:
            tracker.end(reason)        # first, so the session ends with this reason, not the charger's own
        self._quietly(deauthorize)
        return True

    def _quietly(self, fn, *args) -> None:
        """Run a charger command whose outcome the backend has been told already; its failure is logged once."""
        d = defer.maybeDeferred(fn, *args)
        d.addErrback(lambda f: log.warn("{charger}: {command} failed after the backend was answered: {error}",
                                        charger=self.label, command=getattr(fn, "__name__", "command"),
                                        error=f.getErrorMessage()))

    # -- commands from the backend: each returns the ocpp call_result --

    def _on_RemoteStartTransaction(self, r, id_tag, connector_id=None, charging_profile=None, **_):
        if not self.link.accepted or connector_id not in (None, 1):
            # OCPP 1.6 §4.2: while the boot is Pending the backend may not start transactions.
            return r.RemoteStartTransaction(status="Rejected")
        st = self.status
        if (st is None or not st.online or st.vehicle == "fault" or self.inoperative
                or not callable(getattr(self.charger, "authorize", None))):
            return r.RemoteStartTransaction(status="Rejected")
        if self.session is not None and self.session.authorized:
            return r.RemoteStartTransaction(status="Rejected")
        if charging_profile is not None:
            try:
                profile = parse_profile(1, charging_profile, self.clock.seconds())
                if profile.purpose != "TxProfile":
                    raise ValueError("the profile in RemoteStartTransaction must be a TxProfile")
            except ValueError as e:
                log.warn("{charger}: RemoteStartTransaction with an unusable profile: {why}", charger=self.label,
                         why=str(e))
                return r.RemoteStartTransaction(status="Rejected")
            self._install(profile)
        self._remote = id_tag
        return r.RemoteStartTransaction(status="Accepted")

    def _on_RemoteStopTransaction(self, r, transaction_id, **_):
        if not self.link.accepted:
            return r.RemoteStopTransaction(status="Rejected")
        rec = self._open_transaction()
        s = self.session
        if rec is None or s is None or rec.get("transaction_id") != transaction_id:
            return r.RemoteStopTransaction(status="Rejected")
        if not callable(getattr(self.charger, "deauthorize", None)):
            return r.RemoteStopTransaction(status="Rejected")
        self._remote = transaction_id
        return r.RemoteStopTransaction(status="Accepted")

    def _on_ChangeAvailability(self, r, connector_id, type, **_):
        if connector_id not in (0, 1):
            return r.ChangeAvailability(status="Rejected")
        want_available = type == "Operative"
        if want_available:
            self._inoperative_scheduled = False
            if self.inoperative:
                self._set_available(True)
            return r.ChangeAvailability(status="Accepted")
        if self.inoperative:
            return r.ChangeAvailability(status="Accepted")
        if self._open_transaction() is not None:
            self._inoperative_scheduled = True      # OCPP: after the transaction ends
            return r.ChangeAvailability(status="Scheduled")
        self._set_available(False)
        return r.ChangeAvailability(status="Accepted")

    def _on_Reset(self, r, type, **_):
        self._reset = type
        return r.Reset(status="Accepted")

    def _on_UnlockConnector(self, r, connector_id, **_):
        # ICharger has no cable lock: EVC cannot unlock anything.
        return r.UnlockConnector(status="NotSupported")

    def _on_TriggerMessage(self, r, requested_message, connector_id=None, **_):
        if requested_message not in TRIGGERABLE:
            return r.TriggerMessage(status="NotImplemented")
        if connector_id not in (None, 0, 1):
            return r.TriggerMessage(status="Rejected")
        self._trigger = requested_message
        return r.TriggerMessage(status="Accepted")

    def _triggered(self, what: str) -> None:
        if what == "BootNotification":
            self.link.boot_now()
        elif what == "Heartbeat":
            self.link.heartbeat_now().addErrback(lambda f: None)
        elif what == "StatusNotification":
            self._send_status(force=True)
        elif what == "MeterValues":
            payload = {"connectorId": 1, "meterValue": [self._sample("Trigger")]}
            rec = self._open_transaction()
            if rec is not None and rec.get("transaction_id") is not None:
                payload["transactionId"] = rec["transaction_id"]
            self.link.call("MeterValues", payload).addErrback(lambda f: None)

    def configuration(self) -> list[dict]:
        keys = [{"key": k, "readonly": False, "value": str(v)} for k, v in self.keys.items()]
        offline = {"local": "true", "accept": "true", "reject": "false"}[self.cfg.offline_auth]
        fixed = {
            "NumberOfConnectors": "1",
            "SupportedFeatureProfiles": "Core,SmartCharging,RemoteTrigger",
            "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,Current.Import,"
                                      "Current.Offered",
            "AuthorizeRemoteTxRequests": "false",
            "LocalAuthorizeOffline": offline,
            "LocalPreAuthorize": "true" if self.cfg.authorize == "local-first" else "false",
            "StopTransactionOnInvalidId": "true",
            "StopTransactionOnEVSideDisconnect": "true",
            "ChargeProfileMaxStackLevel": str(profiles_mod.MAX_STACK_LEVEL),
            "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
            "ChargingScheduleMaxPeriods": str(profiles_mod.MAX_PERIODS),
            "MaxChargingProfilesInstalled": str(profiles_mod.MAX_PROFILES),
            "WebSocketPingInterval": str(int(self.cfg.ping_interval_s)),
        }
        return keys + [{"key": k, "readonly": True, "value": v} for k, v in fixed.items()]

    def _on_GetConfiguration(self, r, key=None, **_):
        every = self.configuration()
        if not key:
            return r.GetConfiguration(configuration_key=every)
        by_key = {c["key"]: c for c in every}
        return r.GetConfiguration(configuration_key=[by_key[k] for k in key if k in by_key] or None,
                                  unknown_key=[k for k in key if k not in by_key] or None)

    def _on_ChangeConfiguration(self, r, key, value, **_):
        if key not in WRITABLE_KEYS:
            readonly = {c["key"] for c in self.configuration()}
            return r.ChangeConfiguration(status="Rejected" if key in readonly else "NotSupported")
        try:
            number = int(str(value).strip())
        except ValueError:
            return r.ChangeConfiguration(status="Rejected")
        if number < WRITABLE_KEYS[key][1] or number > 86400 * 7:
            return r.ChangeConfiguration(status="Rejected")
        self.keys[key] = number
        self.outbox.write([Put(self.ctx.data_key(f"configuration/{self.name}/{key}"), str(number).encode())])
        if key == "HeartbeatInterval":
            self.link.set_heartbeat(number)
        elif key == "MeterValueSampleInterval":
            self.backend_interval_s = number
            self._push_interval()
            self._arm_sampler()
        return r.ChangeConfiguration(status="Accepted")

    def _on_DataTransfer(self, r, vendor_id, **_):
        return r.DataTransfer(status="UnknownVendorId")

    def _on_ClearCache(self, r, **_):
        return r.ClearCache(status="Accepted")     # EVC keeps no authorization cache: nothing to clear

    def _install(self, profile) -> None:
        self.profiles = [p for p in self.profiles if p.id != profile.id and not (
            p.connector_id == profile.connector_id and p.purpose == profile.purpose
            and p.stack_level == profile.stack_level)]
        self.profiles.append(profile)
        self._save_profiles()
        self._update_cap()

    def _on_SetChargingProfile(self, r, connector_id, cs_charging_profiles, **_):
        if connector_id not in (0, 1):
            return r.SetChargingProfile(status="Rejected")
        try:
            profile = parse_profile(connector_id, cs_charging_profiles, self.clock.seconds())
        except ValueError as e:
            log.warn("{charger}: SetChargingProfile rejected: {why}", charger=self.label, why=str(e))
            return r.SetChargingProfile(status="Rejected")
        if profile.purpose == "TxProfile":
            rec = self._open_transaction()
            if rec is None or (profile.transaction_id is not None
                               and profile.transaction_id != rec.get("transaction_id")):
                return r.SetChargingProfile(status="Rejected")
        if len(self.profiles) >= profiles_mod.MAX_PROFILES and all(p.id != profile.id for p in self.profiles):
            return r.SetChargingProfile(status="Rejected")
        self._install(profile)
        return r.SetChargingProfile(status="Accepted")

    def _on_ClearChargingProfile(self, r, id=None, connector_id=None, charging_profile_purpose=None,
                                 stack_level=None, **_):
        def matches(p):
            if id is not None:
                return p.id == id
            return ((connector_id is None or p.connector_id == connector_id)
                    and (charging_profile_purpose is None or p.purpose == charging_profile_purpose)
                    and (stack_level is None or p.stack_level == stack_level))

        keep = [p for p in self.profiles if not matches(p)]
        if len(keep) == len(self.profiles):
            return r.ClearChargingProfile(status="Unknown")
        self.profiles = keep
        self._save_profiles()
        self._update_cap()
        return r.ClearChargingProfile(status="Accepted")

    def allowed_A(self) -> float:
        """What control allows this charger now (its allocation while it charges, else its own maximum)."""
        a_max = float(getattr(getattr(self.charger, "config", None), "A_max", 32) or 32)
        for control in self.ctx.find("control").values():
            allocation = getattr(control, "allocation_A", None)
            wants = False
            try:
                wants = bool(self.charger.wants_current())
            except Exception:
                pass
            if callable(allocation) and wants:
                got = allocation(self.name)
                if got is not None:
                    return min(a_max, float(got))
        return a_max

    def _on_GetCompositeSchedule(self, r, connector_id, duration, charging_rate_unit=None, **_):
        if connector_id not in (0, 1) or duration <= 0:
            return r.GetCompositeSchedule(status="Rejected")
        unit = charging_rate_unit or "A"
        now = float(int(self.clock.seconds()))
        phases = int(getattr(getattr(self.charger, "config", None), "phases", 3) or 3)
        periods = profiles_mod.composite(self.profiles, now, float(duration), self.allowed_A(), self._tx(),
                                         unit, phases)
        if self.inoperative:
            periods = [{"start_period": 0, "limit": 0.0}]
        return r.GetCompositeSchedule(status="Accepted", connector_id=connector_id,
                                      schedule_start=profiles_mod.iso(now),
                                      charging_schedule={"duration": int(duration),
                                                         "start_schedule": profiles_mod.iso(now),
                                                         "charging_rate_unit": unit,
                                                         "charging_schedule_period": periods})


__all__ = ["BridgedCharger", "ocpp_status", "WRITABLE_KEYS", "HANDLED"]
