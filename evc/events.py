"""In-process events between instances (DESIGN §2: etcd is not used for communication)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()


class EventBus:
    """Topic-based publish/subscribe. Topics are tuples, e.g. ("session", "s1") or ("instance", "charger").

    A subscriber to a prefix of a topic gets every event under it: subscribing to ("session",) hears every
    charger's session events. Delivery is synchronous; a failing subscriber is logged and never stops the others.
    """

    def __init__(self):
        self._subs: dict[tuple, list[Callable[..., None]]] = defaultdict(list)

    def subscribe(self, topic: tuple, callback: Callable[..., None]) -> Callable[[], None]:
        self._subs[topic].append(callback)

        def unsubscribe() -> None:
            try:
                self._subs[topic].remove(callback)
            except ValueError:
                pass

        return unsubscribe

    def publish(self, topic: tuple, event: Any) -> None:
        for i in range(len(topic) + 1):
            for cb in list(self._subs.get(topic[:i], ())):
                try:
                    cb(topic, event)
                except Exception:
                    log.failure("event subscriber failed on {topic}", topic=topic)


class Subscribers:
    """The callbacks one instance hands its values to (a meter's readings, a charger's status).

    `add(callback)` returns unsubscribe() (calling it twice is harmless). `notify(value)` calls every callback in
    the order they were added; one that raises is logged and never keeps the value from the others. A callback may
    unsubscribe (itself or another) while being notified: a notification goes to the callbacks present when it began.
    """

    def __init__(self, owner: str = "", what: str = "subscriber"):
        self.owner = owner          # for the log line: "meter/m1: a subscriber failed"
        self.what = what
        self._callbacks: list[Callable[[Any], None]] = []

    def add(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            try:
                self._callbacks.remove(callback)
            except ValueError:
                pass

        return unsubscribe

    def notify(self, value: Any) -> None:
        for callback in list(self._callbacks):
            try:
                callback(value)
            except Exception:
                log.failure("{owner}: a {what} failed", owner=self.owner, what=self.what)

    def __len__(self) -> int:
        return len(self._callbacks)
