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


class RecordingState:
    """A state sink for unit tests: applies deadbands and skips unchanged values like evc.state.StateWriter, and
    records what would reach etcd (`writes`: (path, value), with None for a deletion)."""

    def __init__(self):
        self.values: dict = {}
        self.writes: list = []

    def set(self, path, value, deadband=None):
        old = self.values.get(path)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if deadband is not None and number and isinstance(old, (int, float)) and not isinstance(old, bool) \
                and abs(value - old) <= deadband:
            return
        if path in self.values and old == value and type(old) is type(value):
            return
        self.values[path] = value
        self.writes.append((path, value))

    def update(self, values, deadband=None):
        for path, value in values.items():
            self.set(path, value, deadband)

    def set_computed(self, path, compute):
        self.set(path, compute())     # no ticks here: computed at once

    def delete(self, path):
        if path in self.values:
            del self.values[path]
            self.writes.append((path, None))

    def count(self, path):
        """How many writes of a value (deletions not counted) reached `path`."""
        return sum(1 for p, v in self.writes if p == path and v is not None)
