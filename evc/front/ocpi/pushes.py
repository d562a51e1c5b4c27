"""Everything front/ocpi pushes to the eMSP, through the durable queue of front/ocpp (evc/front/ocpp/outbox.py).

One FIFO per front under `data/queue/<seq>`: location PUTs and EVSE PATCHes, session PUTs and PATCHes, CDR POSTs
and CommandResults. An entry is written to etcd before it is sent and removed only after the eMSP's success (HTTP
2xx, status 1xxx), so an eMSP outage or an EVC restart loses nothing; entries go out one at a time in queue order
(so in order per object too), and every push carries the object's own id, which makes a resend after a crash
harmless at the eMSP (PUT and PATCH are idempotent, a CDR keeps its id).

An entry's payload: {"module": "locations" | "sessions" | "cdrs" | ..., "path": "/DE/EVC/site1/s1" (after the
module's URL, as the eMSP announced it when the entry is sent), or "url" (a CommandResult's response_url), "body",
"what" (for logs and state)}. A failure the eMSP may recover from (unreachable, timeout, 5xx, garbage, 3xxx) is
retried with backoff, forever; one it will not accept (4xx, 2xxx) is retried `attempts` times, then dropped and
reported (state/last_given_up). Nothing is sent while EVC is not registered.
"""
from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger

from evc.front.ocpi.transport import OcpiError, ocpi_time
from evc.front.ocpp.outbox import Outbox

log = Logger(namespace="evc.front.ocpi")

METHODS = ("PUT", "PATCH", "POST")


class Pusher:
    def __init__(self, front, attempts: int = 3):
        self.front = front
        self.ctx = front.ctx
        self.clock = front.ctx.clock
        self.attempts = attempts
        self.outbox = Outbox(self.ctx.store, self.ctx.data_key("queue"), self.clock, on_ready=self._written,
                             retry_s=front.config.retry_min_s, retry_max_s=front.config.retry_max_s,
                             label=f"{self.ctx.key} queue", actions=METHODS)
        self.sent = 0
        self.given_up = 0
        self._sending = False
        self._retry_call = None
        self._delay_s = front.config.retry_min_s
        self._running = False

    def load(self) -> defer.Deferred:
        """Read the stored queue; fires with the number of pushes found."""
        return self.outbox.load()

    def start(self) -> None:
        self._running = True
        self._state()
        self.pump()

    def stop(self, flush_s: float = 5.0) -> defer.Deferred:
        """Stop sending; what is queued but not in the store yet is written first (for at most `flush_s`: a store
        that is down keeps it from being written, and it would be lost only then)."""
        self._running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self.outbox.unwritten == 0:
            return self.outbox.stop()
        self._flushed = defer.Deferred()
        self._flushed.addTimeout(flush_s, self.clock).addErrback(lambda f: log.warn(
            "{front}: {n} queued pushes not written to the store before the stop", front=self.ctx.key,
            n=self.outbox.unwritten))
        return self._flushed.addCallback(lambda _: self.outbox.stop())

    def _written(self) -> None:
        flushed = getattr(self, "_flushed", None)
        if flushed is not None and not flushed.called and self.outbox.unwritten == 0:
            flushed.callback(None)
        self.pump()

    def push(self, method: str, module: str, body: dict, *, path: str = "", url: str = "", what: str = "",
             also=()) -> None:
        """Queue one push; `also`: store writes that go in the same transaction (what the push means for EVC's
        records, e.g. "the CDR of this session is queued"), so a crash keeps both or neither."""
        payload = {"module": module, "body": body, "what": what or f"{method} {module}{path}"}
        if url:
            payload["url"] = url
        else:
            payload["path"] = path
        self.outbox.append(method, payload, queued=ocpi_time(self.clock.seconds()), also=also)
        self._state()

    def __len__(self) -> int:
        return len(self.outbox)

    def _state(self) -> None:
        self.ctx.state.set("queue", len(self.outbox))

    def pump(self) -> None:
        if not self._running or self._sending or (self._retry_call is not None and self._retry_call.active()):
            return
        creds = self.front.registrar.creds
        entry = self.outbox.head()
        if entry is None or creds is None:
            return
        p = entry.payload
        if "url" in p:
            url = p["url"]
        else:
            base = creds.endpoints.get(p["module"])
            if base is None:
                self._give_up(entry, f"the eMSP has no {p['module']} endpoint")
                return
            # Some eMSPs announce endpoints with a trailing slash and redirect a POST without it.
            url = base.rstrip("/") + p["path"] if p["path"] else base
        self._sending = True
        d = defer.ensureDeferred(self.front.client.request(
            entry.action, url, token=creds.token_c, version=creds.version, body=p["body"],
            from_party=self.front.party, to_party=creds.emsp if "url" not in p else None,
            timeout_s=self.front.config.request_timeout_s))
        d.addCallbacks(self._sent, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))

    def _sent(self, response, entry) -> None:
        self._sending = False
        self._delay_s = self.front.config.retry_min_s
        self.sent += 1
        self.ctx.state.delete("last_push_error")
        self.front.pushed(entry, response)
        self.outbox.remove(entry)
        self._state()
        self.pump()

    def _failed(self, failure, entry) -> None:
        self._sending = False
        if not self._running:
            return
        err = failure.value
        if not isinstance(err, OcpiError):
            log.failure("{front}: pushing {what} failed", failure, front=self.ctx.key, what=entry.payload["what"])
            err = OcpiError("garbage", failure.getErrorMessage())
        self.ctx.state.set("last_push_error", f"{entry.payload['what']}: {err.message}")
        if not err.retry:
            entry.attempts += 1
            if entry.attempts >= self.attempts:
                self._give_up(entry, err.message)
                return
        log.info("{front}: {what} not delivered ({error}); retrying in {delay_s} s", front=self.ctx.key,
                 what=entry.payload["what"], error=err.message, delay_s=self._delay_s)
        self._retry_call = self.clock.callLater(self._delay_s, self._retry)
        self._delay_s = min(self._delay_s * 2, self.front.config.retry_max_s)

    def _retry(self) -> None:
        self._retry_call = None
        self.pump()

    def _give_up(self, entry, why: str) -> None:
        self.given_up += 1
        log.warn("{front}: giving up on {what}: {why}", front=self.ctx.key, what=entry.payload["what"], why=why)
        self.ctx.state.set("last_given_up", f"{entry.payload['what']}: {why}")
        self.outbox.remove(entry)
        self._state()
        self.clock.callLater(0, self.pump)

    def waiting(self, module: Optional[str] = None) -> list:
        return [e for e in self.outbox.entries if module is None or e.payload.get("module") == module]


__all__ = ["Pusher"]
