"""One card held in the field is one presentation: sightings are debounced by the card's absence."""
from __future__ import annotations

from typing import Any, Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Presence:
    """Turns a stream of sightings into presentations.

    `seen(uid)` on every sighting (an RDM6300 frame, a PN532 poll that found the card, a line); `on_new(uid)` runs
    when a card arrives that is not the one already in the field. The card counts as gone after `absent_s` without a
    sighting, or at once on `gone()` (a poll that found no card). A different card is a new presentation at once.
    """

    def __init__(self, clock: IReactorTime, absent_s: float, on_new: Callable[[Hashable], None]):
        self.clock = clock
        self.absent_s = absent_s
        self.on_new = on_new
        self.current: Hashable | None = None
        self._timer: IDelayedCall | None = None

    def seen(self, uid: Hashable) -> None:
        new = uid != self.current
        self.current = uid
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.absent_s)
        else:
            self._timer = self.clock.callLater(self.absent_s, self.gone)
        if new:
            self.on_new(uid)

    def once(self, uid: Hashable) -> Any:
        """One sighting of `uid` followed at once by its absence: a card held out and taken away again (a
        presentation that comes from elsewhere than the device, e.g. the page). What `seen(uid); gone()` does, except
        that a card held in the field at the device stays there: it does not count again on its next sighting.
        The same card while it is in the field is that presentation, nothing new. Returns what on_new returned, or
        None."""
        if uid == self.current:
            return None
        return self.on_new(uid)

    def gone(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.current = None

    stop = gone
