"""One bridged charger's websocket to the upstream CSMS (front/ocpp): connect, boot, heartbeat, reconnect, calls.

EVC is the charge point here. The asyncio side (websockets + the ocpp library's v16 ChargePoint) stays in this module;
`Link` offers Deferreds to charger.py and runs its timers on the injected Twisted clock:

    link = Link(host, settings, clock, reactor)       # host: the BridgedCharger (see `LinkHost`)
    link.start()                                       # connects, then keeps connecting (jittered backoff)
    d = link.call("Authorize", {"idTag": "..."})       # Deferred[dict]: the CALLRESULT payload (camelCase)
    link.stop()                                        # Deferred: closed

Boot (OCPP 1.6 §4.2): after the websocket opens, BootNotification goes first and nothing else is sent until it is
Accepted; Pending and Rejected wait the interval the backend gave (or heartbeat_s) and boot again. A call that fails
raises `CallFailed` (CALLERROR, invalid answer, no answer within response_timeout_s) or `LinkDown` (the connection
closed or was never there): only the first counts as a failure to process for the outbox.

Frames from the backend: CALLs go to `host.handle(action, **payload)` (sync; returns the ocpp call_result object);
malformed frames and unknown actions are answered with a CALLERROR (FormatViolation, ProtocolError, NotImplemented
for an unknown action, NotSupported for a known one EVC does not do) and the connection lives.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import random
import ssl
from datetime import datetime, timezone
from typing import Any, Callable, Optional
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger

from evc.ocpp.bridge import to_deferred

log = Logger(namespace="evc.front.ocpp")

# The ocpp library logs every frame (id tags included) at INFO and bad frames with their content: EVC logs what
# matters itself, without tokens, so the library's own logger goes nowhere.
_wire_log = logging.getLogger("evc.front.ocpp.wire")
_wire_log.addHandler(logging.NullHandler())
_wire_log.propagate = False

STATES = ("offline", "connecting", "booting", "pending", "rejected", "accepted", "stopped")


class LinkDown(Exception):
    """The websocket is not open (or closed while the call waited): nothing was processed, try again later."""


class CallFailed(Exception):
    """The backend answered with a CALLERROR, an answer that does not fit the schema, or not at all in time."""

    def __init__(self, action: str, code: str, description: str = ""):
        super().__init__(f"{action}: {code}{': ' + description if description else ''}")
        self.action = action
        self.code = code
        self.description = description


@dataclasses.dataclass(frozen=True)
class LinkSettings:
    url: str                              # the backend's URL, without the identity
    identity: str
    password: Optional[str] = None
    ca_file: Optional[str] = None
    vendor: str = "EVC"
    model: str = "EVC"
    serial: Optional[str] = None
    heartbeat_s: float = 300.0
    ping_interval_s: float = 30.0
    response_timeout_s: float = 30.0
    open_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/" + quote(self.identity, safe="")


class LinkHost:
    """What a Link calls on its owner (charger.BridgedCharger implements it)."""

    def link_state(self, state: str, why: str = "") -> None:
        """The link changed state (one of STATES)."""

    def booted(self) -> None:
        """BootNotification was Accepted: send status, start draining the outbox."""

    def handle(self, action: str, **payload) -> Any:
        """A CALL from the backend: return the ocpp.v16.call_result object to answer with."""

    def after(self, action: str, **payload) -> None:
        """Runs after the answer to `action` went out (TriggerMessage sends what was asked for here)."""

    def handled_actions(self) -> tuple[str, ...]:
        """The CALLs `handle` answers."""


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the backend's certificate and host name: against `ca_file` if given, else the system's CAs."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def describe_connect_error(e: BaseException) -> str:
    """A sentence for state/log: why the websocket did not open."""
    from websockets.exceptions import InvalidStatus, InvalidHandshake
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the backend's certificate is not trusted ({e.verify_message}); check ca_file"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, InvalidStatus):
        code = e.response.status_code
        if code == 401:
            return "HTTP 401: the backend refused the identity or password"
        if code == 404:
            return "HTTP 404: the backend does not know this URL or identity"
        return f"HTTP {code}: the backend refused the websocket"
    if isinstance(e, InvalidHandshake):
        return f"websocket handshake failed: {e}"
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return "no answer while opening the connection"
    if isinstance(e, OSError):
        return f"cannot connect: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _make_charge_point(link: "Link", identity: str, ws, response_timeout_s: float):
    """The ocpp library's v16 ChargePoint on our websocket, routing CALLs to the link's host."""
    from ocpp.exceptions import OCPPError
    from ocpp.messages import CallError, MessageType, unpack
    from ocpp.v16 import ChargePoint
    from ocpp.v16.enums import Action

    known = {a.value for a in Action}

    class UpstreamChargePoint(ChargePoint):
        async def route_message(self, raw_msg):
            try:
                msg = unpack(raw_msg)
            except OCPPError as e:
                await self._refuse(_frame_id(raw_msg), e.code, f"malformed frame: {e.description}",
                                   e.details.get("cause") if isinstance(e.details, dict) else None)
                return
            if msg.message_type_id == MessageType.Call:
                if not isinstance(msg.action, str) or not isinstance(msg.unique_id, str):
                    await self._refuse(_frame_id(raw_msg), "FormatViolation", "the action and the message id must be"
                                       " strings")
                    return
                if msg.action not in self.route_map:
                    # OCPP-J 1.6 table 7: an unknown action is NotImplemented, a known one EVC does not do is
                    # NotSupported (the library has it the other way round).
                    code = "NotSupported" if msg.action in known else "NotImplemented"
                    link.host.refused(msg.action, code)
                    await self._send(CallError(msg.unique_id, code, f"{msg.action} is not supported here"
                                               if code == "NotSupported" else f"unknown action {msg.action}",
                                               {}).to_json())
                    return
                try:
                    await self._handle_call(msg)
                except OCPPError as e:
                    link.host.refused(msg.action, e.code)
                    await self._send(msg.create_call_error(e).to_json())
                except Exception as e:           # never let one frame end the connection
                    log.failure("{charger}: handling {action} failed", charger=link.host_name, action=msg.action)
                    await self._send(CallError(msg.unique_id, "InternalError", str(e)[:200], {}).to_json())
                return
            self._response_queue.put_nowait(msg)

        async def _refuse(self, unique_id: str, code: str, description: str, cause: str | None = None):
            log.warn("{charger}: backend sent a bad frame ({code}: {why}); answered with a CALLERROR",
                     charger=link.host_name, code=code, why=cause or description)
            link.host.refused("frame", code)
            await self._send(CallError(unique_id, code, description[:200], {}).to_json())

    cp = UpstreamChargePoint(identity, ws, response_timeout=response_timeout_s, logger=_wire_log)
    cp.route_map = {action: {"_on_action": _handler(link, action), "_after_action": _after(link, action)}
                    for action in link.host.handled_actions()}
    return cp


def _handler(link: "Link", action: str) -> Callable:
    def on_action(**payload):
        return link.host.handle(action, **payload)
    return on_action


def _after(link: "Link", action: str) -> Callable:
    def after_action(**payload):
        return link.host.after(action, **payload)
    return after_action


def _frame_id(raw) -> str:
    """The message id of a frame that could not be understood, when it has one (else "-1")."""
    try:
        doc = json.loads(raw)
        if isinstance(doc, list) and len(doc) > 1 and isinstance(doc[1], str):
            return doc[1][:36]
    except (ValueError, TypeError):
        pass
    return "-1"


class Link:
    """See the module docstring. `rng` jitters the reconnect delays (tests pass a seeded one)."""

    def __init__(self, host, settings: LinkSettings, clock, reactor=None, rng: random.Random | None = None,
                 host_name: str = ""):
        self.host = host
        self.settings = settings
        self.clock = clock
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.host_name = host_name or settings.identity
        self.state = "offline"
        self.heartbeat_s = settings.heartbeat_s
        self.connects = 0              # websockets opened (tests, state)
        self.last_error = ""
        self._ws = None
        self._cp = None
        self._reader: defer.Deferred | None = None
        self._connecting: defer.Deferred | None = None
        self._calls: set[defer.Deferred] = set()
        self._timer = None             # reconnect or re-boot
        self._heartbeat = None
        self._failures = 0
        self._running = False
        self._closed_d: defer.Deferred | None = None

    @property
    def accepted(self) -> bool:
        return self.state == "accepted"

    # -- lifecycle --

    def start(self) -> None:
        self._running = True
        self._connect()

    def stop(self) -> defer.Deferred:
        """Close the websocket and stop reconnecting; fires when closed."""
        self._running = False
        self._cancel_timers()
        if self._connecting is not None:
            self._connecting.cancel()
        ws, reader = self._ws, self._reader
        self._set_state("stopped")
        if ws is None:
            return defer.succeed(None)
        d = to_deferred(ws.close(), self.reactor)
        d.addErrback(lambda f: None)
        if reader is not None:
            done = defer.Deferred()
            reader.addBoth(lambda _: done.callback(None) if not done.called else None)
            return defer.DeferredList([d, done]).addCallback(lambda _: None)
        return d

    def reconnect(self, why: str) -> None:
        """Close the connection and open a new one (Reset from the backend, a changed setting)."""
        log.info("{charger}: reconnecting to the backend: {why}", charger=self.host_name, why=why)
        if self._ws is not None:
            to_deferred(self._ws.close(), self.reactor).addErrback(lambda f: None)
        else:
            self._cancel_timers()
            self._connect()

    def set_heartbeat(self, seconds: float) -> None:
        self.heartbeat_s = seconds
        if self.accepted:
            self._arm_heartbeat()

    # -- calls --

    def call(self, action: str, payload: dict) -> defer.Deferred:
        """Send a CALL (camelCase payload); Deferred[dict] of the CALLRESULT payload (camelCase). Fails with LinkDown
        when not booted (BootNotification itself excepted) or the connection drops, CallFailed otherwise."""
        if self._cp is None or (not self.accepted and action != "BootNotification"):
            return defer.fail(LinkDown(f"{action}: not connected to the backend ({self.state})"))
        d = to_deferred(self._call(self._cp, action, payload), self.reactor)
        self._calls.add(d)

        def done(result):
            self._calls.discard(d)
            return result

        def translate(failure):
            if failure.check(defer.CancelledError):
                raise LinkDown(f"{action}: the connection closed before the answer")
            return failure

        return d.addBoth(done).addErrback(translate)

    async def _call(self, cp, action: str, payload: dict) -> dict:
        from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case, serialize_as_dict, remove_nones
        from ocpp.exceptions import OCPPError
        from ocpp.v16 import call as v16call
        req = getattr(v16call, action)(**camel_to_snake_case(payload))
        try:
            result = await cp.call(req, suppress=False)
        except OCPPError as e:
            raise CallFailed(action, getattr(e, "code", type(e).__name__), e.description or "") from None
        except asyncio.TimeoutError:
            raise CallFailed(action, "Timeout", f"no answer within {self.settings.response_timeout_s:g} s") from None
        except Exception as e:
            if _is_connection_closed(e):
                raise LinkDown(f"{action}: the connection closed") from None
            raise
        return snake_to_camel_case(remove_nones(serialize_as_dict(result)))

    # -- connecting --

    def _connect(self) -> None:
        self._timer = None
        if not self._running:
            return
        self._set_state("connecting")
        self._connecting = to_deferred(self._open(), self.reactor)
        self._connecting.addCallbacks(self._opened, self._open_failed)

    async def _open(self):
        from websockets.asyncio.client import connect
        s = self.settings
        headers = {}
        if s.password:
            token = base64.b64encode(f"{s.identity}:{s.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        kwargs: dict[str, Any] = {}
        if s.endpoint.startswith("wss://"):
            kwargs["ssl"] = ssl_context(s.ca_file)
        ping = s.ping_interval_s or None
        # A missed pong closes the connection, and websockets then waits close_timeout for the backend to agree:
        # one ping interval is enough for a backend that is alive (10 s, websockets' default, at most).
        close_s = min(10.0, ping) if ping else 10.0
        return await connect(s.endpoint, subprotocols=["ocpp1.6"], additional_headers=headers,
                             open_timeout=s.open_timeout_s, ping_interval=ping, ping_timeout=ping,
                             close_timeout=close_s, proxy=None, **kwargs)

    def _opened(self, ws) -> None:
        self._connecting = None
        if not self._running:
            to_deferred(ws.close(), self.reactor).addErrback(lambda f: None)
            return
        if ws.subprotocol != "ocpp1.6":
            # OCPP-J §3.1.2: a backend that did not agree on ocpp1.6 must not be spoken to.
            to_deferred(ws.close(), self.reactor).addErrback(lambda f: None)
            self._open_failed_why("the backend did not agree to the ocpp1.6 subprotocol")
            return
        self.connects += 1
        self._ws = ws
        self._cp = _make_charge_point(self, self.settings.identity, ws, self.settings.response_timeout_s)
        self._reader = to_deferred(self._cp.start(), self.reactor)
        self._reader.addBoth(self._closed)
        log.info("{charger}: connected to {url}", charger=self.host_name, url=self.settings.endpoint)
        self._boot()

    def _open_failed(self, failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError) or not self._running:
            return
        self._open_failed_why(describe_connect_error(failure.value))

    def _open_failed_why(self, why: str) -> None:
        self.last_error = why
        self._set_state("offline", why)
        delay = self._backoff_s()
        log.warn("{charger}: backend not reachable ({why}); next try in {delay_s:.1f} s", charger=self.host_name,
                 why=why, delay_s=delay)
        self._timer = self.clock.callLater(delay, self._connect)

    def _backoff_s(self) -> float:
        s = self.settings
        base = min(s.reconnect_max_s, s.reconnect_min_s * (2 ** min(self._failures, 30)))
        self._failures += 1
        # Full jitter between half and all of the step: 100 chargers that lost one backend do not return together.
        return base * (0.5 + 0.5 * self.rng.random())

    def _closed(self, result) -> None:
        code = ""
        ws = self._ws
        if ws is not None and getattr(ws, "close_code", None) is not None:
            code = f" (close code {ws.close_code})"
        self._ws = self._cp = self._reader = None
        self._cancel_timers()
        for d in list(self._calls):
            d.cancel()
        self._calls.clear()
        if not self._running:
            return
        why = f"connection closed{code}"
        if not _is_connection_closed(getattr(result, "value", None)) and hasattr(result, "value"):
            why = f"connection failed: {result.getErrorMessage()}"
        self.last_error = why
        self._set_state("offline", why)
        delay = self._backoff_s()
        log.warn("{charger}: {why}; reconnecting in {delay_s:.1f} s", charger=self.host_name, why=why, delay_s=delay)
        self._timer = self.clock.callLater(delay, self._connect)

    # -- boot and heartbeat --

    def _boot(self) -> None:
        self._timer = None
        if self._cp is None:
            return
        if self.state not in ("pending", "rejected"):
            self._set_state("booting")
        s = self.settings
        payload = {"chargePointVendor": s.vendor[:20], "chargePointModel": s.model[:20]}
        if s.serial:
            payload["chargePointSerialNumber"] = s.serial[:25]
        self.call("BootNotification", payload).addCallbacks(self._booted, self._boot_failed)

    def _booted(self, result: dict) -> None:
        status, interval = result.get("status"), int(result.get("interval") or 0)
        if status == "Accepted":
            self._failures = 0
            self.last_error = ""
            if interval > 0:
                self.heartbeat_s = interval
            self._set_state("accepted")
            log.info("{charger}: BootNotification accepted (heartbeat every {heartbeat_s} s)", charger=self.host_name,
                     heartbeat_s=self.heartbeat_s)
            self._arm_heartbeat()
            self.host.booted()
            return
        wait = interval if interval > 0 else self.settings.heartbeat_s
        state = "pending" if status == "Pending" else "rejected"
        self._set_state(state, f"BootNotification {status}")
        log.warn("{charger}: BootNotification {status}; booting again in {wait_s} s", charger=self.host_name,
                 status=status, wait_s=wait)
        self._timer = self.clock.callLater(wait, self._boot)

    def _boot_failed(self, failure) -> None:
        if failure.check(LinkDown) or self._cp is None:
            return                  # the reconnect boots again
        why = failure.getErrorMessage()
        self.last_error = f"BootNotification failed: {why}"
        wait = self._backoff_s()
        log.warn("{charger}: BootNotification failed ({why}); again in {wait_s:.1f} s", charger=self.host_name,
                 why=why, wait_s=wait)
        self._timer = self.clock.callLater(wait, self._boot)

    def _arm_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        if self.heartbeat_s and self.heartbeat_s > 0:
            self._heartbeat = self.clock.callLater(self.heartbeat_s, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if not self.accepted:
            return
        self.call("Heartbeat", {}).addErrback(
            lambda f: log.info("{charger}: Heartbeat not answered: {why}", charger=self.host_name,
                               why=f.getErrorMessage()))
        self._arm_heartbeat()

    def heartbeat_now(self) -> defer.Deferred:
        return self.call("Heartbeat", {})

    def boot_now(self) -> None:
        """TriggerMessage BootNotification: boot again on this connection."""
        if self._cp is not None:
            self._cancel_timers()
            self._boot()

    # -- helpers --

    def _cancel_timers(self) -> None:
        for name in ("_timer", "_heartbeat"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _set_state(self, state: str, why: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        self.host.link_state(state, why)


def _is_connection_closed(e) -> bool:
    try:
        from websockets.exceptions import ConnectionClosed
    except ImportError:            # pragma: no cover
        return False
    return isinstance(e, ConnectionClosed)


__all__ = ["Link", "LinkSettings", "LinkHost", "LinkDown", "CallFailed", "ssl_context", "describe_connect_error"]
