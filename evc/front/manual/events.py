"""Server-sent events for front/manual: `GET /api/v1/events` streams every change of the site as it happens.

A stream starts with one `site` event (the whole site, as GET /api/v1/site), then carries `charger`, `meter`,
`control`, `session`, `reader` and `error` events whose data are the API's objects. Changes are coalesced per
`tick_s`: a charger whose setpoint and current move together is one event. A comment line every `keepalive_s`
keeps proxies from closing the stream and finds clients that went away; a client that goes away is dropped at once
(request.notifyFinish), and one that stops reading is dropped once `max_buffer_bytes` wait for it.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from twisted.logger import Logger

log = Logger(namespace="evc.front.manual")


def frame(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode("utf-8")


class Stream:
    def __init__(self, request, login):
        self.request = request
        self.login = login
        self.open = True

    def write(self, data: bytes) -> bool:
        if not self.open:
            return False
        try:
            self.request.write(data)
        except Exception:            # the connection went away between two checks
            self.open = False
        return self.open


class EventHub:
    """The open streams and the changes waiting for the next tick. `build(kind, ident)` -> (event name, object)."""

    keepalive_s = 15.0
    max_buffer_bytes = 4 * 1024 * 1024

    def __init__(self, clock, build: Callable[[str, Any], tuple[str, Any] | None], tick_s: float = 0.1):
        self.clock = clock
        self.build = build
        self.tick_s = tick_s
        self.streams: list[Stream] = []
        self._pending: set = set()
        self._call = None
        self._keepalive = None
        self.on_count: Callable[[int], None] = lambda n: None

    def start(self) -> None:
        self._keepalive = self.clock.callLater(self.keepalive_s, self._ping)

    def stop(self) -> None:
        for call in (self._call, self._keepalive):
            if call is not None and call.active():
                call.cancel()
        self._call = self._keepalive = None
        for s in list(self.streams):
            self.close(s)

    def add(self, request, login, first: bytes) -> Stream:
        s = Stream(request, login)
        self.streams.append(s)
        request.notifyFinish().addBoth(lambda _: self._gone(s))
        s.write(b"retry: 2000\n\n" + first)
        self.on_count(len(self.streams))
        return s

    def _gone(self, s: Stream) -> None:
        s.open = False
        if s in self.streams:
            self.streams.remove(s)
            self.on_count(len(self.streams))

    def close(self, s: Stream) -> None:
        """End a stream from this side (logout, the front stopping)."""
        if s.open:
            s.open = False
            try:
                s.request.finish()
            except Exception:
                pass
        self._gone(s)

    def close_login(self, token: str) -> None:
        for s in [s for s in self.streams if s.login.token == token]:
            self.close(s)

    def changed(self, idents: set) -> None:
        if not idents:
            return
        self._pending |= idents
        if self._call is None or not self._call.active():
            self._call = self.clock.callLater(self.tick_s, self._flush)

    def _flush(self) -> None:
        self._call = None
        pending, self._pending = self._pending, set()
        if not self.streams:
            return
        order = {"control": 0, "meter": 1, "charger": 2, "session": 3, "reader": 4, "error": 5}
        data = b""
        for kind, ident in sorted(pending, key=lambda p: (order.get(p[0], 9), str(p[1]))):
            try:
                built = self.build(kind, ident)
            except Exception:
                log.failure("front/manual: building the {kind} event for {ident} failed", kind=kind, ident=ident)
                continue
            if built is not None:
                data += frame(*built)
        if data:
            self._send(data)

    def _send(self, data: bytes) -> None:
        for s in list(self.streams):
            transport = getattr(getattr(s.request, "channel", None), "transport", None)
            buffered = _buffered(transport)
            if buffered > self.max_buffer_bytes:
                log.warn("front/manual: a live stream that stopped reading was closed ({n} bytes waiting)",
                         n=buffered)
                self.close(s)
                if transport is not None:
                    transport.abortConnection()
                continue
            if not s.write(data):
                self._gone(s)

    def _ping(self) -> None:
        self._keepalive = self.clock.callLater(self.keepalive_s, self._ping)
        self._send(b": keepalive\n\n")


def _buffered(transport) -> int:
    """Bytes a TCP transport holds that the peer has not taken yet (0 when it cannot tell)."""
    try:
        return len(transport.dataBuffer) + sum(len(x) for x in transport._tempDataBuffer)
    except AttributeError:
        return 0
