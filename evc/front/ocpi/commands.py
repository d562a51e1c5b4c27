"""Commands from the eMSP (the CPO's Commands receiver): answered at once, their outcome POSTed to response_url.

- START_SESSION: the token is authorized at the EVSE (given, or the only one / the first available) through the
  charger's own authorize(): ACCEPTED at once for a known Location and EVSE, then the CommandResult: ACCEPTED once
  the charger took the authorization, EVSE_OCCUPIED (a session is authorized there already), EVSE_INOPERATIVE (off,
  faulted, offline, not running), REJECTED (the charger refused), TIMEOUT (no outcome within command_timeout_s).
  A second START_SESSION for an EVSE whose first is still being done is REJECTED.
- STOP_SESSION: a session of this eMSP that is open: ACCEPTED, the charger's deauthorize(), then ACCEPTED or FAILED;
  any other id: UNKNOWN_SESSION.
- UNLOCK_CONNECTOR: EVC's chargers have no cable lock EVC can drive: NOT_SUPPORTED (REJECTED for an unknown EVSE).
- RESERVE_NOW, CANCEL_RESERVATION: NOT_SUPPORTED.
CommandResults go through the durable queue like every other push. 2.1.1 reports the outcome as a CommandResponse
(ACCEPTED, REJECTED, TIMEOUT; EVSE_OCCUPIED and EVSE_INOPERATIVE become REJECTED).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from evc.front.ocpi.server import valid

log = Logger(namespace="evc.front.ocpi")

BODY = {"START_SESSION": "StartSession", "STOP_SESSION": "StopSession", "RESERVE_NOW": "ReserveNow",
        "CANCEL_RESERVATION": "CancelReservation", "UNLOCK_CONNECTOR": "UnlockConnector"}
# How long a started session's token stays expected at the charger (the car may be plugged in after the command).
CLAIM_S = 120.0
RESULT_211 = {"ACCEPTED": "ACCEPTED", "REJECTED": "REJECTED", "TIMEOUT": "TIMEOUT", "EVSE_OCCUPIED": "REJECTED",
              "EVSE_INOPERATIVE": "REJECTED", "FAILED": "REJECTED", "NOT_SUPPORTED": "NOT_SUPPORTED"}


@dataclasses.dataclass
class Pending:
    command: str
    charger: str
    id_tag: Optional[str]
    response_url: str
    version: str
    timer: Any = None
    done: bool = False
    settled: bool = False


class Commands:
    def __init__(self, front):
        self.front = front
        self.ctx = front.ctx
        self.pending: dict[str, Pending] = {}          # charger -> its START_SESSION being done

    def stop(self) -> None:
        for p in self.pending.values():
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
        self.pending = {}

    def expects(self, charger: str, id_tag: str) -> bool:
        p = self.pending.get(charger)
        return p is not None and p.id_tag is not None and p.id_tag.upper() == id_tag.upper()

    def _answer(self, result: str, version: str, message: str = "") -> dict:
        doc: dict[str, Any] = {"result": result}
        if version != "2.1.1":
            doc["timeout"] = self.front.config.command_timeout_s
        if message:
            doc["message"] = [{"language": "en", "text": message[:512]}]
        return doc

    async def receive(self, command: str, body: Any, version: str) -> dict:
        doc = valid(BODY[command], body, version)
        front = self.front
        if command in ("RESERVE_NOW", "CANCEL_RESERVATION"):
            return self._answer("NOT_SUPPORTED", version, "EVC does not take reservations")
        if command == "UNLOCK_CONNECTOR":
            if doc["location_id"] != front.config.location["id"] or doc["evse_uid"] not in front.covered() \
                    or doc["connector_id"] != "1":
                return self._answer("REJECTED", version, "unknown location, EVSE or connector")
            return self._answer("NOT_SUPPORTED", version, "this charger has no cable lock EVC can open")
        if command == "STOP_SESSION":
            return self._stop(doc, version)
        return self._start(doc, version)

    def _start(self, doc: dict, version: str) -> dict:
        front = self.front
        if doc["location_id"] != front.config.location["id"]:
            return self._answer("REJECTED", version, f"unknown location {doc['location_id']!r}")
        covered = front.covered()
        charger = doc.get("evse_uid")
        if charger is not None and charger not in covered:
            return self._answer("REJECTED", version, f"unknown EVSE {charger!r}")
        if charger is None:
            free = [n for n in sorted(covered) if front.evse_status_of(n) == "AVAILABLE"]
            charger = (free or sorted(covered) or [None])[0]
            if charger is None:
                return self._answer("REJECTED", version, "no EVSE at this location")
        token = doc["token"]
        id_tag = token["uid"][:20]           # an OCPP idTag, as every charger type takes it
        p = Pending("START_SESSION", charger, id_tag, doc["response_url"], version)
        status = front.evse_status_of(charger)
        inst = front.charger(charger)
        session = front.open_session(charger)
        if status in ("INOPERATIVE", "OUTOFORDER", "UNKNOWN") or inst is None:
            self._result(p, "EVSE_INOPERATIVE", f"EVSE {charger} is {status.lower()}")
            return self._answer("ACCEPTED", version)
        if session is not None and session.authorized:
            self._result(p, "EVSE_OCCUPIED", f"EVSE {charger} is in use")
            return self._answer("ACCEPTED", version)
        if charger in self.pending:
            return self._answer("REJECTED", version, "a START_SESSION for this EVSE is being done")
        authorize = getattr(inst, "authorize", None)
        if not callable(authorize):
            return self._answer("REJECTED", version, f"EVSE {charger} cannot be started remotely")
        self.pending[charger] = p
        front.roaming_authorized(charger, id_tag, token, "COMMAND", doc.get("authorization_reference"))
        p.timer = self.ctx.clock.callLater(front.config.command_timeout_s, self._timeout, p)

        def ok(_):
            self._finish(p, "ACCEPTED", "")

        def failed(f):
            log.info("{front}: START_SESSION at {charger} refused by the charger: {error}", front=self.ctx.key,
                     charger=charger, error=f.getErrorMessage())
            self._finish(p, "REJECTED", f.getErrorMessage()[:200])

        # The answer goes out first; the charger acts after it (it may answer at once, in the very call).
        self.ctx.clock.callLater(0, lambda: defer.maybeDeferred(authorize, id_tag).addCallbacks(ok, failed))
        log.info("{front}: START_SESSION from the eMSP at {charger}", front=self.ctx.key, charger=charger)
        return self._answer("ACCEPTED", version)

    def _timeout(self, p: Pending) -> None:
        p.timer = None
        self._finish(p, "TIMEOUT", "the charger did not answer in time")

    def _finish(self, p: Pending, result: str, message: str) -> None:
        if p.done:
            return
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        p.timer = None
        if result == "ACCEPTED" and not p.settled:
            # The charger took the authorization; the car may come later: its token stays expected a while.
            p.timer = self.ctx.clock.callLater(CLAIM_S, self._forget, p)
        else:
            self._forget(p)
        self._result(p, result, message)

    def _forget(self, p: Pending) -> None:
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        p.timer = None
        if self.pending.get(p.charger) is p:
            del self.pending[p.charger]
            if not p.settled:
                self.front.roaming_withdrawn(p.charger, p.id_tag)

    def session_settled(self, charger: str) -> None:
        """The session the START_SESSION at `charger` asked for is authorized: its token is not expected any more."""
        p = self.pending.get(charger)
        if p is None:
            return
        p.settled = True
        if p.done:
            self._forget(p)

    def _result(self, p: Pending, result: str, message: str) -> None:
        p.done = True
        if p.version == "2.1.1":
            body: dict[str, Any] = {"result": RESULT_211.get(result, "REJECTED")}
        else:
            body = {"result": result}
        if message:
            body["message"] = [{"language": "en", "text": message[:512]}]
        self.front.push_checked("POST", "commands", "CommandResult", body, url=p.response_url,
                                what=f"CommandResult {result} of {p.command} at {p.charger}", version=p.version)

    def _stop(self, doc: dict, version: str) -> dict:
        front = self.front
        sid = doc["session_id"]
        rec = front.roaming.get(sid)
        s = front.session_of(sid)
        if rec is None or s is None or not s.open:
            return self._answer("UNKNOWN_SESSION", version, f"no open session {sid!r} of this eMSP")
        if rec.get("stopping"):
            return self._answer("REJECTED", version, "this session is being stopped")
        inst = front.charger(s.charger)
        deauthorize = getattr(inst, "deauthorize", None)
        if not callable(deauthorize):
            return self._answer("REJECTED", version, f"EVSE {s.charger} cannot be stopped remotely")
        rec["stopping"] = True
        p = Pending("STOP_SESSION", s.charger, None, doc["response_url"], version)

        def run():
            tracker = getattr(inst, "sessions", None)
            if tracker is not None and getattr(tracker, "session", None) is not None:
                tracker.end("Remote")
            return deauthorize()

        d = defer.maybeDeferred(run)
        d.addCallbacks(lambda _: self._result(p, "ACCEPTED", ""),
                       lambda f: self._result(p, "FAILED", f.getErrorMessage()[:200]))
        log.info("{front}: STOP_SESSION from the eMSP for session {id}", front=self.ctx.key, id=sid)
        return self._answer("ACCEPTED", version)


__all__ = ["Commands"]
