"""One charge point's OCPP 1.6J websocket at the central system: frames in and out, robust to bad input.

asyncio lives here (websockets, the `ocpp` library); the charger on the other side of `handler` is Twisted code and
sees Deferreds only. What a connection does:

- Reads every frame, checks its shape itself (the `ocpp` library would log and drop most malformed frames, or crash
  its read loop on some) and answers every CALL it can: a CALLRESULT, or a CALLERROR naming what is wrong. A frame
  it cannot answer (not JSON and no message id to be found, a CALLRESULT for a CALL that is not waiting) is logged and
  dropped. Nothing a charge point sends closes the connection, except a frame above the websocket's hard limit
  (`max_frame_bytes` x HARD_LIMIT_FACTOR), which websockets closes with 1009 to protect memory.
- Incoming CALLs are handled one at a time in arrival order (OCPP-J: one CALL in flight per direction) by a task of
  their own, so replies to EVC's own CALLs are read while a slow CALL (an upstream authorization) is handled.
- Payloads are validated with the `ocpp` library's v16 JSON schemas (compiled once, evc.ocpp.validate), and schema
  errors are mapped to CALLERROR codes as the library maps them (type -> TypeConstraintViolation, required -> ProtocolError, most others ->
  FormatViolation). An action that OCPP 1.6 does not define -> NotImplemented; a 1.6 action that a charge point does
  not send (or that EVC does not handle) -> NotSupported.
- Outgoing CALLs: EVC's camelCase payload is checked against the schema and sent as it is; the reply is awaited for
  `call_timeout_s`, never less (replies would go out of step, DESIGN §8), and checked against its schema too. They go out one at a time, in order,
  except that charging limits (priority) overtake ordinary CALLs that wait. Only the reply whose id the pending call
  waits for is passed to it; anything else (a late reply after a timeout) is logged and dropped, so the next call
  is not confused by it.
- Keepalive: a websocket ping every `ping_interval_s`; no pong within `ping_timeout_s` drops the connection. Every
  frame and pong tells the handler the charge point is alive (`ocpp_seen`).

The handler (evc.charger.ocpp.OcppCharger) provides:
    ocpp_call(action, payload) -> dict | Deferred[dict]   raise an ocpp.exceptions.OCPPError for a CALLERROR
    ocpp_after(action, payload, result)                   after the CALLRESULT was sent (start follow-up CALLs here)
    ocpp_seen(connection)                                 anything arrived
    ocpp_disconnected(connection)                         the connection ended
"""
from __future__ import annotations

import asyncio
import decimal
import heapq
import json
import re
import uuid
from typing import Any

from ocpp.charge_point import remove_nones
from ocpp.exceptions import (
    FormatViolationError, GenericError, InternalError, NotImplementedError as OcppNotImplemented,
    NotSupportedError, OCPPError, PropertyConstraintViolationError,
)
from ocpp import messages as ocpp_messages
from ocpp.messages import Call, CallError, CallResult
from ocpp.v16.enums import Action
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from websockets.exceptions import ConnectionClosed

from evc.ocpp.bridge import from_deferred, to_deferred
from evc.ocpp.validate import check as check_payload

log = Logger(namespace="evc.ocpp.central")

OCPP_VERSION = "1.6"
SUBPROTOCOL = "ocpp1.6"

# OCPP 1.6 messages by direction (Core, FirmwareManagement, LocalAuthListManagement, SmartCharging, RemoteTrigger).
CP_TO_CS = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "Heartbeat", "MeterValues", "StartTransaction",
    "StatusNotification", "StopTransaction", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
})
CS_TO_CP = frozenset({
    "ChangeAvailability", "ChangeConfiguration", "ClearCache", "DataTransfer", "GetConfiguration",
    "RemoteStartTransaction", "RemoteStopTransaction", "Reset", "UnlockConnector", "SetChargingProfile",
    "ClearChargingProfile", "GetCompositeSchedule", "TriggerMessage", "SendLocalList", "GetLocalListVersion",
    "GetDiagnostics", "UpdateFirmware", "ReserveNow", "CancelReservation",
})
V16_ACTIONS = frozenset(a.value for a in Action)

# Frames above max_frame_bytes get a CALLERROR and the connection lives; above this multiple websockets closes it.
HARD_LIMIT_FACTOR = 4
# A charge point should wait for each reply (OCPP-J 4.1.1); one that floods CALLs gets GenericError beyond this.
MAX_QUEUED_CALLS = 8
MAX_ID_LENGTH = 36
# The message id at the start of a frame, when the frame as a whole cannot be parsed (bad JSON, too large).
_HEAD_ID = re.compile(r'^\s*\[\s*2\s*,\s*"((?:[^"\\]|\\.){1,36})"')
# Received error codes, in every spelling the 1.6 text, its errata and the library use, mapped to the library's.
_ERROR_SPELLINGS = {"FormationViolation": "FormatViolation",
                    "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}
_KNOWN_ERROR_CODES = {cls.code for cls in OCPPError.__subclasses__()}

# The library validates payloads in asyncio's thread pool by default. jsonschema is pure Python and holds the GIL,
# so a thread gains nothing, and each CALL then costs a thread hand-off plus up to a GIL switch interval (5 ms) of
# waiting for the reactor: under a thousand chargers' traffic that made the loop stall. Validate inline instead (this
# is the library's own switch; evc.ocpp.validate calls its validate_payload for the payloads it refuses).
ocpp_messages.ASYNC_VALIDATION = False


class NotConnected(Exception):
    """The charge point is not connected (or the connection ended while a CALL waited for its reply)."""


class CallTimeout(Exception):
    """No reply to a CALL within call_timeout_s."""


class OcppCallError(Exception):
    """The charge point answered a CALL with a CALLERROR (or with a reply that breaks the schema)."""

    def __init__(self, code: str, description: str = "", details: Any = None):
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details or {}


class CentralConnection:
    """One accepted websocket of charge point `cp_id`; `run()` is the websockets handler's body."""

    def __init__(self, ws, cp_id: str, handler, *, reactor=None, call_timeout_s: float = 30.0,
                 max_frame_bytes: int = 65536, ping_interval_s: float | None = 5.0, ping_timeout_s: float = 10.0):
        self.ws = ws
        self.cp_id = cp_id
        self.handler = handler
        self.reactor = reactor
        self.call_timeout_s = call_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.closed = False
        self.close_reason = ""
        self.frames_in = 0
        # The id of the CALL whose reply _call() waits for, set before the frame goes out (a quick charge point may
        # answer before websockets' send() returns), and where that reply arrives.
        self._awaiting: str | None = None
        self._replies: asyncio.Queue = asyncio.Queue()
        self._calls_in: asyncio.Queue = asyncio.Queue()
        self._pending: set[asyncio.Task] = set()
        self._outbox: list = []                  # heap of (priority, seq, action, payload, future)
        self._seq = 0
        self._sender: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def peer(self) -> str:
        try:
            host, port = self.ws.remote_address[:2]
            return f"{host}:{port}"
        except Exception:
            return "?"

    # --- the connection's life ---

    async def run(self) -> None:
        """Serve the connection until it closes; then tell the handler."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._serve_calls())]
        if self.ping_interval_s:
            self._tasks.append(loop.create_task(self._keepalive()))
        try:
            async for raw in self.ws:
                self.frames_in += 1
                self._seen()
                try:
                    self._on_frame(raw)
                except Exception:
                    log.failure("{cp_id}: a frame could not be handled", cp_id=self.cp_id)
        except ConnectionClosed:
            pass
        finally:
            self._ended()

    def _ended(self) -> None:
        if self.closed:
            return
        self.closed = True
        code, reason = self.ws.close_code, self.ws.close_reason
        self.close_reason = self.close_reason or (f"{code} {reason}".strip() if code is not None else "lost")
        for task in self._tasks:
            task.cancel()
        for task in list(self._pending):
            task.cancel()
        if self._sender is not None:
            self._sender.cancel()
        self._fail_outbox()
        try:
            self.handler.ocpp_disconnected(self)
        except Exception:
            log.failure("{cp_id}: disconnect handler failed", cp_id=self.cp_id)

    def close(self, code: int = 1000, reason: str = "") -> defer.Deferred:
        """Close the websocket (a newer connection of the same charge point, EVC stopping)."""
        self.close_reason = self.close_reason or reason
        return to_deferred(self.ws.close(code, reason), self.reactor)

    def _seen(self) -> None:
        try:
            self.handler.ocpp_seen(self)
        except Exception:
            log.failure("{cp_id}: seen handler failed", cp_id=self.cp_id)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            try:
                pong = await self.ws.ping()
                # A websocket ping, not an OCPP CALL: its own deadline is the only one it has.
                await asyncio.wait_for(pong, self.ping_timeout_s)
            except asyncio.TimeoutError:
                log.warn("{cp_id}: no pong within {timeout_s} s: dropping the connection", cp_id=self.cp_id,
                         timeout_s=self.ping_timeout_s)
                self.close_reason = f"no pong within {self.ping_timeout_s:g} s"
                transport = getattr(self.ws, "transport", None)
                if transport is not None:
                    transport.abort()       # a dead peer would never finish a close handshake
                return
            except ConnectionClosed:
                return
            self._seen()

    # --- frames in ---

    def _on_frame(self, raw) -> None:
        if isinstance(raw, (bytes, bytearray)):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                log.warn("{cp_id}: a binary frame that is not UTF-8 was dropped (OCPP-J frames are text)",
                         cp_id=self.cp_id)
                return
        size = len(raw.encode("utf-8"))
        if size > self.max_frame_bytes:
            self._refuse_unparsed(raw, GenericError(
                description=f"frame of {size} bytes is larger than the {self.max_frame_bytes} bytes accepted"))
            return
        try:
            msg = json.loads(raw)
        except ValueError as e:
            self._refuse_unparsed(raw, FormatViolationError(description=f"not valid JSON: {e}"))
            return
        if not isinstance(msg, list) or not msg:
            # Not the frame's content: it may carry an id tag, and id tags are never logged.
            log.warn("{cp_id}: dropped a frame of {size} bytes that is not a JSON array [type, id, ...]",
                     cp_id=self.cp_id, size=size)
            return
        kind = msg[0]
        uid = msg[1] if len(msg) > 1 and isinstance(msg[1], str) else None
        if kind == 2 and not isinstance(kind, bool):
            self._on_call(msg, uid)
        elif kind in (3, 4) and not isinstance(kind, bool):
            self._on_reply(msg, uid)
        elif uid is not None:
            self._reply_error(uid, PropertyConstraintViolationError(
                description=f"MessageTypeId {kind!r} is not 2 (CALL), 3 (CALLRESULT) or 4 (CALLERROR)"))
        else:
            log.warn("{cp_id}: dropped a frame with MessageTypeId {kind!r} and no message id", cp_id=self.cp_id,
                     kind=kind)

    def _refuse_unparsed(self, raw: str, error: OCPPError) -> None:
        m = _HEAD_ID.match(raw[:200])
        if m is None:
            log.warn("{cp_id}: dropped a frame that cannot be answered (no message id found): {why}",
                     cp_id=self.cp_id, why=error.description)
            return
        try:
            uid = json.loads(f'"{m.group(1)}"')
        except ValueError:
            uid = m.group(1)
        self._reply_error(uid, error)

    def _on_call(self, msg: list, uid: str | None) -> None:
        if len(msg) != 4 or uid is None or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            why = ("a CALL is [2, \"<id>\", \"<Action>\", {<payload>}]; got "
                   f"{len(msg)} element(s) with types {[type(x).__name__ for x in msg[1:]]}")
            if uid is None:
                log.warn("{cp_id}: dropped a malformed CALL without a message id: {why}", cp_id=self.cp_id, why=why)
                return
            self._reply_error(uid, FormatViolationError(description=why))
            return
        if len(uid) > MAX_ID_LENGTH:
            # The limit is the sender's to keep; answering with the id as given is the useful thing to do.
            log.info("{cp_id}: message id longer than {n} characters", cp_id=self.cp_id, n=MAX_ID_LENGTH)
        if self._calls_in.qsize() >= MAX_QUEUED_CALLS:
            self._reply_error(uid, GenericError(
                description=f"{MAX_QUEUED_CALLS} CALLs are waiting: send one CALL at a time (OCPP-J 4.1.1)"))
            return
        self._calls_in.put_nowait(Call(uid, msg[2], msg[3]))

    def _on_reply(self, msg: list, uid: str | None) -> None:
        kind = msg[0]
        if kind == 3:
            ok = len(msg) == 3 and uid is not None and isinstance(msg[2], dict)
        else:
            ok = len(msg) in (4, 5) and uid is not None and isinstance(msg[2], str) and isinstance(msg[3], str)
        if not ok:
            log.warn("{cp_id}: dropped a malformed {what} (a reply is never answered)", cp_id=self.cp_id,
                     what="CALLRESULT" if kind == 3 else "CALLERROR")
            return
        if uid != self._awaiting:
            log.warn("{cp_id}: {what} for unknown message id {id} ignored (no CALL of EVC waits for it)",
                     cp_id=self.cp_id, what="CALLRESULT" if kind == 3 else "CALLERROR", id=uid[:40])
            return
        if kind == 3:
            self._replies.put_nowait(CallResult(uid, msg[2]))
            return
        code = _ERROR_SPELLINGS.get(msg[2], msg[2])
        description = msg[3]
        if code not in _KNOWN_ERROR_CODES:
            description = f"{msg[2]}: {description}"
            code = "GenericError"
        details = msg[4] if len(msg) == 5 and isinstance(msg[4], dict) else {}
        self._replies.put_nowait(CallError(uid, code, description, details))

    # --- CALLs in ---

    async def _serve_calls(self) -> None:
        while True:
            msg = await self._calls_in.get()
            try:
                await self._handle_call(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.failure("{cp_id}: handling {action} failed", cp_id=self.cp_id, action=msg.action)

    async def _handle_call(self, msg: Call) -> None:
        action = msg.action
        try:
            if action not in V16_ACTIONS:
                raise OcppNotImplemented(description=f"{action!r} is not an OCPP 1.6 action")
            if action not in CP_TO_CS:
                raise NotSupportedError(description=f"{action} is not a message a central system accepts")
            await check_payload(msg)
            # Shielded: a connection that drops while a CALL is handled (a StartTransaction that allocated its id)
            # must not cut the handler off half-way; its answer is simply not sent, the charge point resends.
            d = defer.maybeDeferred(self.handler.ocpp_call, action, msg.payload)
            done: list = []
            d.addBoth(lambda r: (done.append(r), r)[1])
            if done:
                # Answered at once (Heartbeat, MeterValues): no round of futures through the loop, which a loaded
                # loop makes every CALL pay in latency.
                d.addErrback(lambda f: None)
                if isinstance(done[0], Failure):
                    done[0].raiseException()
                result = done[0]
            else:
                result = await asyncio.shield(from_deferred(d, self.reactor))
            response = msg.create_call_result(result)
            try:
                await check_payload(response)
            except OCPPError as e:
                log.error("{cp_id}: EVC's own reply to {action} breaks the schema: {error}", cp_id=self.cp_id,
                          action=action, error=e.description)
                raise InternalError(description=f"the central system failed to answer {action}") from None
        except asyncio.CancelledError:
            raise
        except OCPPError as e:
            log.info("{cp_id}: {action} answered with CALLERROR {code}: {description}", cp_id=self.cp_id,
                     action=action[:40], code=e.code, description=e.description)
            # The library puts the whole offending message into details; the cause is what the sender needs.
            cause = e.details.get("cause") if isinstance(e.details, dict) else None
            reply = CallError(msg.unique_id, e.code, e.description or "",
                              {"cause": cause} if isinstance(cause, str) else {})
            await self._send(reply.to_json())
            return
        except Exception:
            log.failure("{cp_id}: handling {action} failed", cp_id=self.cp_id, action=action)
            await self._send(msg.create_call_error(InternalError(
                description=f"the central system failed to handle {action}")).to_json())
            return
        await self._send(response.to_json())
        try:
            self.handler.ocpp_after(action, msg.payload, result)
        except Exception:
            log.failure("{cp_id}: follow-up of {action} failed", cp_id=self.cp_id, action=action)

    def _reply_error(self, uid: str, error: OCPPError) -> None:
        log.info("{cp_id}: CALLERROR {code} for message {id}: {description}", cp_id=self.cp_id, code=error.code,
                 id=uid[:40], description=error.description)
        frame = CallError(uid, error.code, error.description, error.details).to_json()
        task = asyncio.get_running_loop().create_task(self._send(frame))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, frame: str) -> None:
        try:
            await self.ws.send(frame)
        except ConnectionClosed:
            pass

    # --- CALLs out ---

    def call(self, action: str, payload: dict | None = None, priority: bool = False) -> defer.Deferred:
        """Send a CALL (payload in OCPP's camelCase); Deferred[dict] with the CALLRESULT's payload. Fails with
        OcppCallError (a CALLERROR), CallTimeout or NotConnected.

        CALLs go out one at a time (OCPP-J 4.1.1), in order, except that `priority` ones (charging profiles that
        limit the charge point) go before any waiting ordinary one: a lowered limit never queues behind a long
        local list or a charge point that is slow to answer a configuration request."""
        if action not in CS_TO_CP:
            return defer.fail(ValueError(f"{action} is not a message a central system sends"))
        if self.closed:
            return defer.fail(NotConnected(f"{self.cp_id} is not connected"))
        loop = _loop(self.reactor)
        fut = loop.create_future()
        self._seq += 1
        heapq.heappush(self._outbox, (0 if priority else 1, self._seq, action, payload or {}, fut))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_calls())
        return to_deferred(fut, self.reactor)

    async def _send_calls(self) -> None:
        while self._outbox:
            _, _, action, payload, fut = heapq.heappop(self._outbox)
            if fut.done():          # cancelled while waiting
                continue
            try:
                result = await self._call(action, payload)
            except asyncio.CancelledError:
                if not fut.done():
                    fut.set_exception(NotConnected(f"{self.cp_id}: the connection ended before the reply to "
                                                   f"{action}"))
                raise
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
            else:
                if not fut.done():
                    fut.set_result(result)

    def _fail_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for *_, action, _, fut in outbox:
            if not fut.done():
                fut.set_exception(NotConnected(f"{self.cp_id}: the connection ended before {action} was sent"))

    async def _call(self, action: str, payload: dict) -> dict:
        # The frame is built from EVC's camelCase payload as it is: the library's call() would turn it into its
        # dataclasses and back, twice (a fifth of the loop in a reconnect storm). Both the request (EVC's own: a bug
        # never reaches a charge point) and the reply (the charge point's) are checked against the OCPP schemas.
        uid = str(uuid.uuid4())
        request = Call(uid, action, remove_nones(payload))
        try:
            await check_payload(request)
        except OCPPError as e:
            log.error("{cp_id}: EVC's own {action} breaks the schema: {error}", cp_id=self.cp_id, action=action,
                      error=e.description or e.details)
            raise OcppCallError(e.code, e.description, e.details) from None
        queue = self._replies
        while not queue.empty():            # a reply that came as an earlier CALL timed out
            queue.get_nowait()
        self._awaiting = uid           # calls run one at a time (_send_calls): no other call waits meanwhile
        try:
            await self.ws.send(request.to_json())
            response = await asyncio.wait_for(queue.get(), self.call_timeout_s)
        except asyncio.CancelledError:
            if self.closed:
                raise NotConnected(f"{self.cp_id}: the connection ended before the reply to {action}") from None
            raise
        except asyncio.TimeoutError:
            raise CallTimeout(f"{self.cp_id}: no reply to {action} within {self.call_timeout_s:g} s") from None
        except ConnectionClosed:
            raise NotConnected(f"{self.cp_id}: the connection ended while sending {action}") from None
        finally:
            self._awaiting = None
        if isinstance(response, CallError):
            raise OcppCallError(response.error_code, response.error_description, response.error_details)
        response.action = action
        try:
            await check_payload(response)
        except OCPPError as e:
            raise OcppCallError(e.code, e.description, e.details) from None
        return _plain(response.payload)


def _plain(value):
    """The library parses some replies' numbers (GetCompositeSchedule limits) as Decimal: plain floats outside."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _loop(reactor):
    from evc.ocpp.bridge import loop
    return loop(reactor)
