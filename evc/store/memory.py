"""An in-memory IStore with etcd's semantics (revisions, leases, txn, compaction) for unit tests."""
from __future__ import annotations

import bisect
from typing import Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from evc.errors import StoreError, StoreUnavailable
from evc.store.interface import Compare, Delete, Event, IStore, IWatch, KeyValue, Put, RangeResult, TxnResult

log = Logger(namespace="evc.store.memory")

_TARGETS = ("value", "version", "create", "mod", "lease")
_RESULTS = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}


class _Lease:
    def __init__(self, lease_id: int, ttl: int):
        self.id = lease_id
        self.ttl = ttl
        self.keys: set[str] = set()
        self.timer = None


class _Server:
    """What an etcd server holds; MemoryStore objects are its clients (see MemoryStore.peer())."""

    def __init__(self, clock):
        self.clock = clock
        self.revision = 1  # etcd starts a fresh cluster at revision 1
        self.compacted = 0
        self.kvs: dict[str, KeyValue] = {}
        self.history: list[Event] = []
        self.history_revs: list[int] = []
        self.leases: dict[int, _Lease] = {}
        self.next_lease = 7_000_000_000_000_000_001  # large, like etcd's, so nobody relies on small ids
        self.watches: list[_MemoryWatch] = []
        self._draining = False

    # -- writes: each call is one revision ---------------------------------------------------------

    def apply(self, ops: Sequence[Put | Delete]) -> int:
        """Apply checked writes (see check_ops) at one new revision (none if nothing changed); returns #deleted."""
        rev = self.revision + 1
        events: list[Event] = []
        deleted = 0
        for op in ops:
            if isinstance(op, Put):
                old = self.kvs.get(op.key)
                if old is not None and old.lease and old.lease in self.leases:
                    self.leases[old.lease].keys.discard(op.key)
                self.kvs[op.key] = KeyValue(op.key, op.value, mod_revision=rev,
                                            create_revision=old.create_revision if old else rev,
                                            version=old.version + 1 if old else 1, lease=op.lease)
                if op.lease:
                    self.leases[op.lease].keys.add(op.key)
                events.append(Event("put", op.key, op.value, rev))
            else:
                for key in self.matching(op.key, op.prefix):
                    old = self.kvs.pop(key)
                    if old.lease and old.lease in self.leases:
                        self.leases[old.lease].keys.discard(key)
                    events.append(Event("delete", key, None, rev))
                    deleted += 1
        if events:
            self.revision = rev
            self.history.extend(events)
            self.history_revs.extend(e.revision for e in events)
            self.kick()
        return deleted

    def matching(self, key: str, prefix: bool) -> list[str]:
        if prefix:
            return sorted(k for k in self.kvs if k.startswith(key))
        return [key] if key in self.kvs else []

    def check_ops(self, ops: Sequence[Put | Delete]) -> None:
        seen: set[str] = set()
        for op in ops:
            if not isinstance(op, (Put, Delete)):
                raise TypeError(f"txn operations must be Put or Delete, not {type(op).__name__}")
            if isinstance(op, Put) and not isinstance(op.value, bytes):
                raise TypeError(f"the value for {op.key!r} must be bytes, not {type(op.value).__name__}")
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise StoreError("etcdserver: requested lease not found")
            if not (isinstance(op, Delete) and op.prefix):
                if op.key in seen:
                    raise StoreError("etcdserver: duplicate key given in txn request")
                seen.add(op.key)

    def compare(self, c: Compare) -> bool:
        kv = self.kvs.get(c.key)
        if c.target == "value":
            if kv is None:
                return False  # as in etcd: a missing key's value never compares
            actual: bytes | int = kv.value
        else:
            kv = kv or KeyValue(c.key, b"")
            actual = {"version": kv.version, "create": kv.create_revision, "mod": kv.mod_revision,
                      "lease": kv.lease}[c.target]
        return _RESULTS[c.result](actual, c.value)

    # -- leases ------------------------------------------------------------------------------------

    def arm(self, lease: _Lease) -> None:
        if self.clock is None:
            return  # without a clock, leases live until revoked
        if lease.timer is not None and lease.timer.active():
            lease.timer.cancel()
        lease.timer = self.clock.callLater(lease.ttl, self.revoke, lease.id)

    def revoke(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.timer is not None and lease.timer.active():
            lease.timer.cancel()
        self.apply([Delete(k) for k in sorted(lease.keys) if k in self.kvs and self.kvs[k].lease == lease_id])

    # -- watches -----------------------------------------------------------------------------------

    def events_since(self, revision: int, prefix: str) -> list[Event]:
        start = bisect.bisect_right(self.history_revs, revision)
        return [e for e in self.history[start:] if e.key.startswith(prefix)]

    def kick(self) -> None:
        """Bring every watch up to date, in order, even when a callback writes (re-entrancy)."""
        if self._draining:
            return
        self._draining = True
        try:
            progress = True
            while progress:
                progress = False
                for w in list(self.watches):
                    progress = w.sync() or progress
        finally:
            self._draining = False


@implementer(IWatch)
class _MemoryWatch:
    def __init__(self, store: "MemoryStore", prefix: str, callback: Callable[[list[Event]], None]):
        self._store = store
        self._prefix = prefix
        self._callback = callback
        self.revision = 0
        self._mirror: dict[str, int] = {}
        self._started = False
        self._stopped = False
        self.ready = defer.Deferred(canceller=lambda d: self.stop())

    def stop(self) -> None:
        self._stopped = True
        server = self._store._server
        if self in server.watches:
            server.watches.remove(self)
        self._store._watches.discard(self)

    def _deliver(self, events: list[Event]) -> None:
        try:
            self._callback(events)
        except Exception:
            log.failure("watch callback for {prefix} failed", prefix=self._prefix)

    def sync(self) -> bool:
        """Deliver what this watch has not seen; True when it delivered something."""
        server = self._store._server
        if self._stopped or not self._store.available:
            return False
        if not self._started or self.revision < server.compacted:
            # First read, or we were away while the history was compacted: read and diff, as etcd forces.
            current = {k: kv for k, kv in server.kvs.items() if k.startswith(self._prefix)}
            if not self._started:
                events = [Event("put", k, current[k].value, current[k].mod_revision) for k in sorted(current)]
            else:
                changed = sorted((kv for k, kv in current.items() if self._mirror.get(k) != kv.mod_revision),
                                 key=lambda kv: (kv.mod_revision, kv.key))
                events = [Event("put", kv.key, kv.value, kv.mod_revision) for kv in changed]
                events += [Event("delete", k, None, server.revision) for k in sorted(self._mirror)
                           if k not in current]
            self._mirror = {k: kv.mod_revision for k, kv in current.items()}
            self.revision = server.revision
            first = not self._started
            self._started = True
            if first or events:
                self._deliver(events)
            if first and not self.ready.called:
                self.ready.callback(self)
            return bool(events)
        events = server.events_since(self.revision, self._prefix)
        if not events:
            return False
        for e in events:
            if e.type == "put":
                self._mirror[e.key] = e.revision
            else:
                self._mirror.pop(e.key, None)
        self.revision = events[-1].revision
        self._deliver(events)
        return True


@implementer(IStore)
class MemoryStore:
    """IStore in memory, with etcd's semantics, for unit tests.

    Every Deferred it returns has already fired; watch callbacks run synchronously, in revision order,
    before the write that caused them returns. With a `clock` (e.g. task.Clock) leases expire after their
    TTL; without one they live until revoked. Test helpers: `available = False` makes every call fail
    with StoreUnavailable and pauses watches (they catch up, or re-read if compacted, when it is set back
    to True); `compact(revision)`; `peer()` is a second client of the same data with its own `available`.
    """

    def __init__(self, clock=None, *, _server: _Server | None = None):
        self._server = _server or _Server(clock)
        self._available = True
        self._closed = False
        self._watches: set[_MemoryWatch] = set()

    def __repr__(self) -> str:
        return f"<MemoryStore at revision {self._server.revision}>"

    # -- test helpers ------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        self._available = bool(value)
        if self._available:
            self._server.kick()

    @property
    def revision(self) -> int:
        """The server's current revision."""
        return self._server.revision

    def peer(self) -> "MemoryStore":
        """Another client of the same data (e.g. `etcdctl`, or a second EVC process)."""
        return MemoryStore(_server=self._server)

    def compact(self, revision: int) -> None:
        """Forget the history up to `revision`, as `etcdctl compact` does."""
        server = self._server
        if revision > server.revision:
            raise StoreError(f"etcdserver: mvcc: required revision is a future revision ({revision} > "
                             f"{server.revision})")
        if revision <= server.compacted:
            raise StoreError("etcdserver: mvcc: required revision has been compacted")
        cut = bisect.bisect_right(server.history_revs, revision)
        del server.history[:cut]
        del server.history_revs[:cut]
        server.compacted = revision

    # -- IStore ------------------------------------------------------------------------------------

    def _call(self, fn, *args) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError("the memory store is closed"))
        if not self._available:
            return defer.fail(StoreUnavailable("the memory store is set unavailable"))
        try:
            return defer.succeed(fn(*args))
        except Exception as e:
            return defer.fail(e)

    def range(self, key: str, prefix: bool = False) -> defer.Deferred:
        server = self._server
        return self._call(lambda: RangeResult(server.revision,
                                              tuple(server.kvs[k] for k in server.matching(key, prefix))))

    def put(self, key: str, value: bytes, lease: int = 0) -> defer.Deferred:
        def do():
            self._server.check_ops([Put(key, value, lease)])
            self._server.apply([Put(key, value, lease)])
            return self._server.revision
        return self._call(do)

    def delete(self, key: str, prefix: bool = False) -> defer.Deferred:
        return self._call(lambda: self._server.apply([Delete(key, prefix)]))

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> defer.Deferred:
        def do():
            for c in compare:
                if c.target not in _TARGETS:
                    raise ValueError(f"compare target {c.target!r} is not one of {sorted(_TARGETS)}")
                if c.result not in _RESULTS:
                    raise ValueError(f"compare result {c.result!r} is not one of {sorted(_RESULTS)}")
                want = bytes if c.target == "value" else int
                if not isinstance(c.value, want) or isinstance(c.value, bool):
                    raise TypeError(f"compare on the {c.target} of {c.key!r} needs {want.__name__}, "
                                    f"not {type(c.value).__name__}")
            self._server.check_ops(success)
            self._server.check_ops(failure)
            ok = all(self._server.compare(c) for c in compare)
            self._server.apply(success if ok else failure)
            return TxnResult(ok, self._server.revision)
        return self._call(do)

    def grant(self, ttl: int) -> defer.Deferred:
        def do():
            server = self._server
            lease = _Lease(server.next_lease, int(ttl))
            server.next_lease += 1
            server.leases[lease.id] = lease
            server.arm(lease)
            return lease.id
        return self._call(do)

    def keepalive(self, lease: int) -> defer.Deferred:
        def do():
            found = self._server.leases.get(lease)
            if found is None:
                return 0
            self._server.arm(found)
            return found.ttl
        return self._call(do)

    def revoke(self, lease: int) -> defer.Deferred:
        return self._call(self._server.revoke, lease)

    def watch_prefix(self, prefix: str, callback: Callable[[list[Event]], None]) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError("the memory store is closed"))
        w = _MemoryWatch(self, prefix, callback)
        self._watches.add(w)
        self._server.watches.append(w)
        # While unavailable, the first read waits (as against an etcd that is down) and kick() does it later.
        self._server.kick()
        return w.ready

    def close(self) -> defer.Deferred:
        self._closed = True
        for w in list(self._watches):
            w.stop()
        return defer.succeed(None)


__all__ = ["MemoryStore"]
