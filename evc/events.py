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
