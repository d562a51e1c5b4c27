"""The one bridge between asyncio (ocpp, websockets) and Twisted: coroutines/futures <-> Deferreds.

EVC runs on Twisted's asyncio reactor, so both worlds share one event loop (DESIGN §1, §8):
- `to_deferred(coro)`: run a coroutine or future as an asyncio task; a Deferred fires with its result.
- `await from_deferred(d)` inside asyncio code: wait for a Deferred.
- `loop(reactor)`: the reactor's own asyncio loop (use it to schedule before the reactor runs).
Never await an asyncio future directly inside a Twisted coroutine (Deferred.fromCoroutine): wrap it with to_deferred.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable

from twisted.internet import defer


def loop(reactor=None) -> asyncio.AbstractEventLoop:
    """The asyncio loop the reactor runs on (Twisted's asyncio reactor keeps it as `_asyncioEventloop`)."""
    if reactor is None:
        from twisted.internet import reactor
    try:
        return reactor._asyncioEventloop
    except AttributeError:
        raise RuntimeError("EVC's OCPP parts need Twisted's asyncio reactor (twistd --reactor=asyncio)") from None


def to_deferred(aw: Awaitable[Any], reactor=None) -> defer.Deferred:
    """Run `aw` (a coroutine or asyncio future) on the reactor's loop; cancelling the Deferred cancels the task."""
    fut = asyncio.ensure_future(aw, loop=loop(reactor))
    d = defer.Deferred.fromFuture(fut)

    def twisted_cancel(failure):
        # Twisted callers trap defer.CancelledError; asyncio's is a different class.
        failure.trap(asyncio.CancelledError)
        raise defer.CancelledError()

    return d.addErrback(twisted_cancel)


async def from_deferred(d: defer.Deferred, reactor=None) -> Any:
    """Inside asyncio code: wait for a Deferred's result (its failure raises)."""
    return await d.asFuture(loop(reactor))
