"""The ICharger interface: what control (evc.control) and the fronts see of any charger type."""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Optional

from zope.interface import Attribute, Interface

from evc.errors import ConfigError

Vehicle = Literal["none", "plugged", "charging", "fault", "unknown"]


@dataclasses.dataclass(frozen=True)
class ChargerStatus:
    """A charger's live status.

    `online` False means the device stopped answering: its draw is then unknown and control must count the worst case
    (the last setpoint it may still apply), never zero. `actual_A` is the measured current per charger phase, in the
    order of `phase_map` (from the charger's meter, or its own measurement), None where unknown; `actual_s` says when it was measured, so
    that control can pair it with the grid meter's reading of the same moment.
    """
    vehicle: Vehicle = "unknown"
    online: bool = False
    setpoint_A: float = 0.0                  # what EVC last got the device to accept (0 = paused)
    offered_A: Optional[float] = None        # what the EVSE advertises on the pilot (may be lower: cable limit)
    actual_A: tuple[Optional[float], ...] = ()
    limit_A: Optional[float] = None          # the device's own ceiling right now (cable/PP limit), None = unknown
    fault: str = ""                          # a sentence when vehicle == "fault" or the device reports an error
    updated: Optional[float] = None          # clock seconds of the last good poll
    actual_s: Optional[float] = None         # clock seconds when actual_A was measured (None: as `updated`)


class ICharger(Interface):
    """A charger as control and the fronts see it. Config fields of every charger type include `A_max`, `phases`
    (1 or 3), `phase_map` (the grid phase of each charger phase, e.g. ["L2"] or ["L1","L2","L3"]), `priority`
    (higher wins), `mode` (OFF never charges; ON charges when a car is plugged and, where auth is needed, authorized)
    and optionally `meter`."""

    status = Attribute("The newest ChargerStatus.")

    def wants_current() -> bool:
        """True when control should give this charger current: mode allows it, a car is plugged and authorized and
        has not finished."""

    def apply(current_A: int):
        """Deferred: set the charging current (0 = pause, else 6 .. A_max, integer amps). Control guarantees the value;
        the charger retries a failed write and reports it, and never leaves the device above the newest value asked."""

    def subscribe(callback: Callable[[ChargerStatus], None]) -> Callable[[], None]:
        """Call `callback(status)` whenever the status changes (plug, charge, fault, online); returns unsubscribe()."""


GRID_PHASES = ("L1", "L2", "L3")
PHASE_INDEX = {p: i for i, p in enumerate(GRID_PHASES)}   # a grid phase's index in a meter Reading's tuples


def check_common_config(cfg) -> None:
    """The settings every charger type shares (A_max, mode, phases, phase_map), checked the same way everywhere;
    fills in the default phase_map (L1.. for the charger's phases). Errors name the leaf."""
    if not 6 <= cfg.A_max <= 80:
        raise ConfigError(f"config/A_max: {cfg.A_max} is outside 6..80")
    if cfg.mode not in ("OFF", "ON"):
        raise ConfigError(f"config/mode: {cfg.mode!r} is not OFF or ON")
    if cfg.phases not in (1, 3):
        raise ConfigError(f"config/phases: {cfg.phases} is not 1 or 3")
    phase_map = tuple(cfg.phase_map) if cfg.phase_map is not None else GRID_PHASES[:cfg.phases]
    if len(phase_map) != cfg.phases:
        raise ConfigError(f"config/phase_map: {len(phase_map)} entries for {cfg.phases} phase(s)")
    if any(p not in GRID_PHASES for p in phase_map) or len(set(phase_map)) != len(phase_map):
        raise ConfigError(f"config/phase_map: {list(phase_map)} must name distinct phases among L1, L2, L3")
    object.__setattr__(cfg, "phase_map", phase_map)


ACTUAL_DEADBAND_A = 0.05   # measured current: written to state only when it moves more than this


def write_status(state, s: ChargerStatus, phase_map) -> None:
    """A charger's status into its state leaves, the same for every charger type: vehicle, online, setpoint_A,
    offered_A, actual_A/<grid phase> (deadbanded; removed while unknown) and fault (removed when clear)."""
    state.update({"vehicle": s.vehicle, "online": s.online, "setpoint_A": s.setpoint_A})
    if s.offered_A is not None:
        state.set("offered_A", s.offered_A)
    for phase, value in zip(phase_map, s.actual_A):
        if value is None:
            state.delete(f"actual_A/{phase}")
        else:
            state.set(f"actual_A/{phase}", round(value, 2), deadband=ACTUAL_DEADBAND_A)
    if s.fault:
        state.set("fault", s.fault)
    else:
        state.delete("fault")
