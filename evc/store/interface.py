"""The store interface: what EVC needs from etcd, implemented by the v3 gateway client and by an in-memory store."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int = 0
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Event:
    """One change under a watched prefix. `value` is None for a delete."""
    type: Literal["put", "delete"]
    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True)
class RangeResult:
    revision: int                      # the store's revision when the range was read
    kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True)
class Compare:
    """A txn guard: `target` of `key` compared with `value` by `result`."""
    key: str
    target: Literal["value", "version", "create", "mod", "lease"]
    result: Literal["=", "!=", "<", ">"]
    value: bytes | int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


class IWatch(Interface):
    revision = Attribute("The revision of the newest event delivered so far.")

    def stop() -> None:
        """Stop watching; no callback runs after this returns."""


class IStore(Interface):
    """Keys are str (UTF-8 on the wire), values bytes. Every method returns a Deferred.

    Requests that cannot reach the server fail with StoreUnavailable; the caller decides to retry.
    """

    def range(key: str, prefix: bool = False):
        """Deferred[RangeResult]: one key, or every key starting with `key` (sorted by key)."""

    def put(key: str, value: bytes, lease: int = 0):
        """Deferred[int]: the revision of the write."""

    def delete(key: str, prefix: bool = False):
        """Deferred[int]: how many keys were deleted."""

    def txn(compare: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()):
        """Deferred[TxnResult]: atomically run `success` if every compare holds, else `failure`."""

    def grant(ttl: int):
        """Deferred[int]: a new lease id with `ttl` seconds."""

    def keepalive(lease: int):
        """Deferred[int]: the lease's remaining TTL; 0 when the lease no longer exists."""

    def revoke(lease: int):
        """Deferred[None]: revoke the lease; its keys vanish."""

    def watch_prefix(prefix: str, callback: Callable[[list[Event]], None]):
        """Deferred[IWatch]: mirror `prefix` into `callback`.

        The first call of `callback` carries the prefix's whole content as put events (it may be an empty
        list). Later calls carry changes in revision order. The watch survives everything: while the server
        is unreachable it retries with backoff; a lost stream resumes from the last delivered revision + 1;
        a compacted revision re-reads the prefix and delivers the difference (puts for new or changed keys,
        deletes for vanished ones), then watches again from the read's revision + 1. Nothing is missed and
        nothing is delivered twice. The Deferred fires once the first read succeeded.
        """

    def close():
        """Deferred[None]: stop watches and drop connections."""
