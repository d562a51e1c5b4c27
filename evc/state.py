"""The state writer: coalesced, deadbanded state leaves flushed in one etcd transaction per tick, under a lease."""
from __future__ import annotations

from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from evc.errors import StoreError
from evc.store import Delete, Put
from evc.tree import leaf_text

# etcd refuses a txn with more operations than --max-txn-ops (128 by default): larger flushes are split.
MAX_TXN_OPS = 128


class StateWriter(service.Service):
    """Collects state from every instance and writes it to `<root>/<kind>/<name>/state/...`.

    set() only updates a dict: it never blocks a device or the control loop, whatever etcd does. Every `tick_s` the
    pending leaves (newest value per key wins) go out in one txn attached to EVC's lease, so all state vanishes when EVC
    dies. If the lease is lost (etcd was down longer than its TTL), a new one is granted and every leaf is written again.
    """
    log = Logger()

    def __init__(self, store, root: str, clock: IReactorTime, tick_s: float = 0.5, ttl_s: int = 10, events=None):
        self.store = store
        self.events = events   # an EventBus: ("store",) "lost" when a flush fails, "ok" when writes resume
        self.root = root.rstrip("/")
        self.clock = clock
        self.tick_s = tick_s
        self.ttl_s = ttl_s
        self.lease = 0
        self._pending: dict[str, str | None] = {}     # key -> text, or None to delete
        self._reference: dict[str, Any] = {}           # key -> last accepted value (deadband reference)
        self._written: dict[str, str] = {}             # key -> text as it is in etcd (for a rewrite after lease loss)
        self._pending_prefix_deletes: set[str] = set()
        self._computed: dict[str, Callable[[], Any]] = {}   # key -> what computes its value at the next flush
        self._flushing: defer.Deferred | None = None
        self._loop: task.LoopingCall | None = None
        self._keepalive: task.LoopingCall | None = None
        self._failing = False
        self.writes = 0        # leaves written (for benchmarks and status)
        self.txns = 0

    # -- the API instances use (through `scope`) --

    def scope(self, kind: str, name: str) -> "ScopedState":
        return ScopedState(self, f"{self.root}/{kind}/{name}/state/")

    def set(self, key: str, value: Any, deadband: float | None = None) -> None:
        if deadband is not None and _is_number(value):
            ref = self._reference.get(key)
            if _is_number(ref) and abs(value - ref) <= deadband:
                return
        text = leaf_text(value)
        current = self._pending[key] if key in self._pending else self._written.get(key)
        self._reference[key] = value
        if text == current:
            return
        self._pending[key] = text

    def set_computed(self, key: str, compute: Callable[[], Any]) -> None:
        """Like set(key, compute()), but compute() runs once, when the next flush starts: a leaf that is a summary
        of many things (the list of connected charge points) costs one computation per tick however often it
        changes (a thousand chargers reconnecting at once), not one per change."""
        self._computed[key] = compute

    def delete(self, key: str) -> None:
        self._computed.pop(key, None)
        self._reference.pop(key, None)
        if key in self._written or key in self._pending:
            self._pending[key] = None

    def delete_prefix(self, prefix: str) -> None:
        """Forget every leaf under `prefix` and delete it from etcd (an instance was removed)."""
        for d in (self._pending, self._reference, self._written, self._computed):
            for k in [k for k in d if k.startswith(prefix)]:
                del d[k]
        self._pending_prefix_deletes.add(prefix)

    # -- service --

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.tick_s, now=False)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._loop and self._loop.running:
            self._loop.stop()
        if self._keepalive and self._keepalive.running:
            self._keepalive.stop()
        if self._flushing is not None:
            yield self._flushing
        if self.lease:
            try:
                yield self.store.revoke(self.lease)
            except Exception as e:  # etcd may be gone: the lease then expires on its own
                self.log.info("state lease not revoked ({error}); it expires in {ttl_s}s", error=e, ttl_s=self.ttl_s)
            self.lease = 0

    # -- flushing --

    def flush(self) -> defer.Deferred:
        """Write what is pending; at most one flush runs at a time (a tick that finds one running skips)."""
        if self._flushing is not None:
            return defer.succeed(None)
        self._compute()
        if not (self._pending or self._pending_prefix_deletes):
            return defer.succeed(None)
        self._flushing = d = defer.ensureDeferred(self._flush())
        d.addBoth(self._flushed)
        return d

    def _compute(self) -> None:
        computed, self._computed = self._computed, {}
        for key, compute in computed.items():
            try:
                value = compute()
            except Exception:
                self.log.failure("state {key} could not be computed", key=key)
                continue
            self.set(key, value)

    def _flushed(self, result):
        self._flushing = None
        return None

    async def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        prefixes, self._pending_prefix_deletes = self._pending_prefix_deletes, set()
        try:
            if not self.lease:
                await self._grant()
            # etcd refuses a txn that touches one key twice, so prefix deletes go first, in a txn of their own.
            if prefixes:
                await self.store.txn((), [Delete(p, prefix=True) for p in sorted(prefixes)])
                self.txns += 1
                prefixes = set()
            ops = [Put(k, v.encode(), self.lease) if v is not None else Delete(k) for k, v in batch.items()]
            for i in range(0, len(ops), MAX_TXN_OPS):
                await self.store.txn((), ops[i:i + MAX_TXN_OPS])
                self.txns += 1
        except Exception as e:
            # Put the batch back under anything newer that arrived meanwhile; the next tick retries.
            for k, v in batch.items():
                self._pending.setdefault(k, v)
            self._pending_prefix_deletes |= prefixes
            if not self._failing:
                self.log.warn("state not written to etcd ({error}); keeping {n} leaves and retrying",
                              error=_brief(e), n=len(self._pending))
                if self.events is not None:
                    self.events.publish(("store",), "lost")
            self._failing = True
            if isinstance(e, StoreError) and "lease" in str(e).lower():
                self._lease_lost()
            return
        if self._failing:
            self.log.info("state writes to etcd resumed")
            if self.events is not None:
                self.events.publish(("store",), "ok")
        self._failing = False
        for k, v in batch.items():
            if v is None:
                self._written.pop(k, None)
            else:
                self._written[k] = v
        self.writes += len(batch)

    async def _grant(self) -> None:
        self.lease = await self.store.grant(self.ttl_s)
        if self._keepalive is None:
            self._keepalive = task.LoopingCall(self._keep)
            self._keepalive.clock = self.clock
            self._keepalive.start(max(self.ttl_s / 3.0, 0.1), now=False)

    def _keep(self):
        if not self.lease:
            return None
        d = self.store.keepalive(self.lease)

        def ok(ttl):
            if not ttl:
                self._lease_lost()

        d.addCallbacks(ok, lambda f: None)  # unreachable etcd: the flush loop reports it
        return d

    def _lease_lost(self) -> None:
        self.log.warn("state lease {lease} expired; granting a new one and writing all state again", lease=self.lease)
        self.lease = 0
        for k, v in self._written.items():
            self._pending.setdefault(k, v)
        self._written.clear()


class ScopedState:
    """One instance's view of the state writer: paths are relative to `<kind>/<name>/state/`."""

    def __init__(self, writer: StateWriter, prefix: str):
        self._writer = writer
        self.prefix = prefix

    def set(self, path: str, value: Any, deadband: float | None = None) -> None:
        self._writer.set(self.prefix + path, value, deadband)

    def update(self, values: dict[str, Any], deadband: float | None = None) -> None:
        for path, value in values.items():
            self._writer.set(self.prefix + path, value, deadband)

    def set_computed(self, path: str, compute: Callable[[], Any]) -> None:
        self._writer.set_computed(self.prefix + path, compute)

    def delete(self, path: str) -> None:
        self._writer.delete(self.prefix + path)

    def clear(self) -> None:
        self._writer.delete_prefix(self.prefix)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _brief(e: Exception) -> str:
    return str(e) or type(e).__name__
