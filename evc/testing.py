"""Helpers for tests and benchmarks that run on a real reactor: wait for a condition with a deadline, never a sleep."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from twisted.internet import task


async def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition",
                   reactor=None, poll_s: float = 0.02) -> Any:
    """Poll `condition` (a function, or an async function) until it returns something truthy; return that.
    Fails with AssertionError naming `what` after `timeout_s`."""
    if reactor is None:
        from twisted.internet import reactor
    deadline = reactor.seconds() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await task.deferLater(reactor, poll_s, lambda: None)
