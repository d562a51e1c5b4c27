"""What every meter offers the rest of EVC: the Reading model and the IMeter interface."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from zope.interface import Attribute, Interface

Phases = tuple[Optional[float], Optional[float], Optional[float]]
NO_PHASES: Phases = (None, None, None)


@dataclasses.dataclass(frozen=True)
class Reading:
    """One meter reading. None marks what the meter model does not measure (or has not measured yet).

    `updated` is the clock time (seconds) of the last good poll; `stale` is True until the first good poll
    and whenever no good poll arrived for the meter's `stale_s`: then the values are the last known ones
    and must not be trusted for increasing any current.
    """
    V: Phases = NO_PHASES
    A: Phases = NO_PHASES
    W: Phases = NO_PHASES
    W_total: float | None = None
    energy_Wh: float | None = None
    frequency_Hz: float | None = None
    updated: float | None = None
    stale: bool = True


class IMeter(Interface):
    """A meter as the control loop and the fronts see it."""

    reading = Attribute("The newest Reading (all None and stale until the first good poll).")

    def subscribe(callback: Callable[[Reading], None]) -> Callable[[], None]:
        """Call `callback(reading)` after every good poll and whenever `stale` flips; returns unsubscribe()."""
