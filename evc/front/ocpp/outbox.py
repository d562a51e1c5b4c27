"""A durable FIFO of OCPP transaction messages for one charge point, kept in the store (etcd) under data/.

front/ocpp queues StartTransaction, StopTransaction and sampled MeterValues here (OCPP 1.6 §3.7 / 4.x: transaction
messages must reach the backend in order, and must survive an outage). One key per message:

    <root>/front/<name>/data/outbox/<charger>/<seq>     {"action": ..., "payload": {...}, "session": ..., "queued": ...}

`seq` is zero-padded so etcd's key order is the queue's order. The rules that make it durable:
- A message is written to the store before it may be sent (`head()` only offers persisted entries).
- It is removed only after the backend's CALLRESULT (`remove()`), in one transaction together with whatever that
  answer changed (the session -> transactionId mapping), so a crash never loses the answer without the message.
  The sender may send the next message before a removal is written; removals are written in queue order, so what
  a crash can leave behind is always an in-order run of already-accepted messages at the head of the queue (resent,
  in order, after the restart), never a gap.
- Writes go out one transaction at a time, in the order they were asked for, batched; a failed write is retried
  with backoff and never drops anything (new messages wait behind it, in memory, in order).
The sender (evc/front/ocpp/charger.py) decides what to send when; this module only keeps the queue.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from evc.store.interface import Delete, Put

log = Logger(namespace="evc.front.ocpp.outbox")

SEQ_DIGITS = 12
# etcd refuses transactions with more than --max-txn-ops (128 by default) operations.
MAX_TXN_OPS = 100
ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues")


@dataclasses.dataclass(eq=False)
class Entry:
    """One queued message. `payload` is the OCPP payload (camelCase) as it will go out, except the transactionId of
    StopTransaction and MeterValues, which the sender resolves from `session` at send time."""
    seq: int
    action: str
    payload: dict
    session: Optional[str] = None
    queued: Optional[str] = None          # ISO 8601 UTC: when it was queued
    queued_s: Optional[float] = None      # clock seconds (in memory only: latency measurements)
    persisted: bool = False
    attempts: int = 0                     # sends answered by a failure to process (CALLERROR, bad or no answer)

    def to_json(self) -> bytes:
        return json.dumps({"action": self.action, "payload": self.payload, "session": self.session,
                           "queued": self.queued}, sort_keys=True, separators=(",", ":")).encode()


class Writer:
    """Writes the data/ of one or more outboxes to the store: one transaction at a time, in the order asked, batched
    (front/ocpp shares one among all its chargers, so a hundred chargers make a few transactions, not hundreds).
    A failed write is retried with backoff (`retry_s` doubling up to `retry_max_s`), keeping everything in order."""

    def __init__(self, store, clock: IReactorTime, *, retry_s: float = 0.5, retry_max_s: float = 30.0,
                 label: str = "outbox"):
        self.store = store
        self.clock = clock
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.label = label
        self.txns = 0                    # transactions written (benchmarks)
        self._ops: list[tuple[list, Optional[Entry], Optional[defer.Deferred], Any]] = []
        self._writing = False
        self._retry_call = None
        self._delay_s = retry_s
        self._running = True
        self._stopped_d: defer.Deferred | None = None

    def enqueue(self, ops: list, entry: Entry | None, d: defer.Deferred | None, owner) -> None:
        owner.unwritten += 1
        self._ops.append((ops, entry, d, owner))
        self._flush()

    def stop(self) -> defer.Deferred:
        """Stop writing; fires when the write in flight is done. What is not written yet is dropped (see
        Outbox.stop)."""
        self._running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._writing:
            d = defer.Deferred()
            self._stopped_d = d
            return d
        return defer.succeed(None)

    def _flush(self) -> None:
        if self._writing or not self._ops or not self._running:
            return
        if self._retry_call is not None and self._retry_call.active():
            return
        batch, n = [], 0
        while self._ops and (not batch or n + len(self._ops[0][0]) <= MAX_TXN_OPS):
            item = self._ops.pop(0)
            batch.append(item)
            n += len(item[0])
        ops = _coalesce([op for item in batch for op in item[0]])
        self._writing = True
        self.txns += 1
        d = self.store.txn((), ops)
        d.addCallbacks(self._written, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _written(self, _, batch) -> None:
        self._writing = False
        self._delay_s = self.retry_s
        owners = []
        for _ops, entry, d, owner in batch:
            owner.unwritten -= 1
            if entry is not None:
                entry.persisted = True
            if d is not None:
                d.callback(None)
            if owner not in owners:
                owners.append(owner)
        self._fire_stopped()
        self._flush()
        # Also after removals: a sender that bounds how many removals may be unwritten goes on.
        for owner in owners:
            owner.on_ready()

    def _failed(self, failure, batch) -> None:
        self._writing = False
        self._ops[:0] = batch           # back at the front, in order
        self._fire_stopped()
        if not self._running:
            return
        log.warn("{outbox}: store write failed ({error}); {n} writes wait, retrying in {delay_s} s",
                 outbox=self.label, error=failure.getErrorMessage(), n=len(self._ops), delay_s=self._delay_s)
        self._retry_call = self.clock.callLater(self._delay_s, self._retry)
        self._delay_s = min(self._delay_s * 2, self.retry_max_s)

    def _fire_stopped(self) -> None:
        d, self._stopped_d = self._stopped_d, None
        if d is not None:
            d.callback(None)

    def _retry(self) -> None:
        self._retry_call = None
        self._flush()


class Outbox:
    """The queue of one charge point (see the module docstring).

    `on_ready()` is called whenever the head may have become sendable (a write landed). `writer`: shared with other
    outboxes (front/ocpp passes one per front); without one the outbox has its own, with `retry_s`..`retry_max_s`
    backoff for store writes that fail.
    """

    def __init__(self, store, prefix: str, clock: IReactorTime, *, on_ready: Callable[[], None] = lambda: None,
                 writer: Writer | None = None, retry_s: float = 0.5, retry_max_s: float = 30.0, label: str = "",
                 actions: Sequence[str] = ACTIONS):
        self.store = store
        self.actions = tuple(actions)      # what may be queued (front/ocpi queues its HTTP pushes here too)
        self.prefix = prefix.rstrip("/")
        self.clock = clock
        self.on_ready = on_ready
        self.label = label or self.prefix
        self._own_writer = writer is None
        self.writer = writer or Writer(store, clock, retry_s=retry_s, retry_max_s=retry_max_s, label=self.label)
        self.entries: list[Entry] = []
        self.next_seq = 1
        self.loaded = False
        self.unwritten = 0             # writes of this outbox not in the store yet (messages, removals, mappings)

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, seq: int) -> str:
        return f"{self.prefix}/{seq:0{SEQ_DIGITS}d}"

    # -- loading --

    def load(self) -> defer.Deferred:
        """Read the persisted queue; fires with the number of messages found. Unreadable entries are logged and
        removed (they could never be sent). Call it once, before the first append()."""
        d = self.store.range(self.prefix + "/", prefix=True)

        def got(result):
            found: list[Entry] = []
            for kv in result.kvs:
                tail = kv.key[len(self.prefix) + 1:]
                try:
                    seq = int(tail)
                    doc = json.loads(kv.value)
                    if doc["action"] not in self.actions or not isinstance(doc["payload"], dict):
                        raise ValueError(f"action {doc.get('action')!r} is not one of {', '.join(self.actions)}")
                    entry = Entry(seq, doc["action"], doc["payload"], doc.get("session"), doc.get("queued"),
                                  persisted=True)
                except (ValueError, KeyError, TypeError) as e:
                    log.warn("{outbox}: dropping unreadable queued message {key}: {error}", outbox=self.label,
                             key=kv.key, error=str(e))
                    self.writer.enqueue([Delete(kv.key)], None, None, self)
                    continue
                found.append(entry)
            found.sort(key=lambda e: e.seq)
            if found:
                self.next_seq = found[-1].seq + 1
            self.entries = found
            self.loaded = True
            if found:
                self.on_ready()
            return len(found)

        return d.addCallback(got)

    # -- the queue --

    def append(self, action: str, payload: dict, session: str | None = None, *, queued: str | None = None,
               also: Sequence[Put | Delete] = ()) -> Entry:
        """Queue a message (written to the store with `also` in one transaction). Returns the entry at once; it
        becomes sendable (head()) once written."""
        if not self.loaded:
            raise RuntimeError(f"{self.label}: append() before load() finished would reuse a stored number")
        if action not in self.actions:
            what = "a transaction message" if self.actions == ACTIONS else "a message of this queue"
            raise ValueError(f"{action} is not {what} ({', '.join(self.actions)})")
        entry = Entry(self.next_seq, action, payload, session, queued, queued_s=self.clock.seconds())
        self.next_seq += 1
        self.entries.append(entry)
        self.writer.enqueue([Put(self.key(entry.seq), entry.to_json()), *also], entry, None, self)
        return entry

    def head(self) -> Entry | None:
        """The oldest message, when it is in the store (else None: nothing may be sent yet)."""
        if self.entries and self.entries[0].persisted:
            return self.entries[0]
        return None

    def remove(self, entry: Entry, also: Sequence[Put | Delete] = ()) -> defer.Deferred:
        """Take `entry` off the queue (its CALLRESULT arrived, or it was given up); fires once the store has it."""
        if entry in self.entries:
            self.entries.remove(entry)
        d = defer.Deferred()
        self.writer.enqueue([Delete(self.key(entry.seq)), *also], None, d, self)
        return d

    def write(self, ops: Sequence[Put | Delete]) -> defer.Deferred:
        """Other data/ writes that must stay in order with the queue's (fires once written)."""
        d = defer.Deferred()
        self.writer.enqueue(list(ops), None, d, self)
        return d

    def stop(self) -> defer.Deferred:
        """Stop (its own writer: fires when the write in flight is done). Unwritten messages are lost only if EVC
        stops while the store is unreachable; they were never sent, and charger.py re-creates the transaction
        messages from the sessions on the next start."""
        self.on_ready = lambda: None
        return self.writer.stop() if self._own_writer else defer.succeed(None)


def _coalesce(ops: list) -> list:
    """etcd refuses a txn that names one key twice: keep the last operation per key, in first-seen order."""
    last: dict[str, Any] = {}
    for op in ops:
        last[op.key] = op
    if len(last) == len(ops):
        return ops
    seen, out = set(), []
    for op in ops:
        if op.key not in seen:
            seen.add(op.key)
            out.append(last[op.key])
    return out


__all__ = ["Outbox", "Writer", "Entry", "ACTIONS"]
