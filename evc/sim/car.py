"""A simulated electric car: plugs into a simulated EVSE and draws up to the offered current on its phases.

The car follows the IEC 61851 pilot as a real one does: plugged in it is in state B (EV present); it asks to
charge (state C, or D when it needs ventilation) while its battery is not full and it is willing to; it draws
current only while the EVSE's relay is on, and then min(offered current, its own maximum, its taper near
full). A full battery opens the request again, so the EVSE falls back to state B.

Time is injected: call `step(dt_s)`, or `run(clock, interval_s)` to step on a `LoopingCall`.
"""
from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

NO_DRAW_A = (0.0, 0.0, 0.0)


class SimCar:
    """One car. `soc` is the state of charge as a fraction 0..1; the battery holds `capacity_Wh` when full.

    Below `taper_start_soc` the car draws its `max_current_A`; above it the limit falls linearly towards 0 A at
    full, never below `taper_floor_A`, so the last percent still gets done.
    """

    def __init__(self, name: str = "car", *, phases: int = 3, max_current_A: float = 16.0,
                 capacity_Wh: float = 60_000.0, soc: float = 0.5, taper_start_soc: float = 0.8,
                 taper_floor_A: float = 1.0, voltage_V: float = 230.0, efficiency: float = 1.0,
                 needs_ventilation: bool = False):
        if phases not in (1, 2, 3):
            raise ValueError(f"car {name}: phases must be 1, 2 or 3, not {phases}")
        if not 0.0 <= soc <= 1.0:
            raise ValueError(f"car {name}: soc is a fraction 0..1, not {soc}")
        self.name = name
        self.phases = phases
        self.max_current_A = float(max_current_A)
        self.capacity_Wh = float(capacity_Wh)
        self.energy_Wh = soc * self.capacity_Wh
        self.taper_start_soc = taper_start_soc
        self.taper_floor_A = taper_floor_A
        self.voltage_V = voltage_V
        self.efficiency = efficiency
        self.needs_ventilation = needs_ventilation
        # The driver (or the car's own timer) may hold off charging while plugged in: state B, no request.
        self.charge_enabled = True
        self.evse = None
        self.session_Wh = 0.0
        self._loop: task.LoopingCall | None = None
        self._last_step_at: float | None = None

    # -- plug ------------------------------------------------------------------------------------------

    def plug(self, evse) -> None:
        """Plug into `evse` (a SimEvse); the session counter starts at 0 Wh."""
        if self.evse is evse:
            return
        if self.evse is not None:
            self.unplug()
        evse.attach_car(self)
        self.evse = evse
        self.session_Wh = 0.0
        log.info("{car} plugged into {evse}", car=self.name, evse=evse.name)

    def unplug(self) -> None:
        if self.evse is None:
            return
        evse, self.evse = self.evse, None
        evse.detach_car(self)
        log.info("{car} unplugged from {evse} after {session_Wh:.0f} Wh", car=self.name, evse=evse.name,
                 session_Wh=self.session_Wh)

    @property
    def plugged(self) -> bool:
        return self.evse is not None

    # -- battery ---------------------------------------------------------------------------------------

    @property
    def soc(self) -> float:
        return self.energy_Wh / self.capacity_Wh

    @soc.setter
    def soc(self, value: float) -> None:
        self.energy_Wh = min(1.0, max(0.0, value)) * self.capacity_Wh

    @property
    def full(self) -> bool:
        return self.energy_Wh >= self.capacity_Wh

    @property
    def wants_charge(self) -> bool:
        """Whether the car closes S2 (asks for power): plugged in, willing, and not full."""
        return self.plugged and self.charge_enabled and not self.full

    def taper_limit_A(self) -> float:
        """What the battery accepts now, before the EVSE's offer is taken into account."""
        if self.full:
            return 0.0
        soc = self.soc
        if soc <= self.taper_start_soc:
            return self.max_current_A
        fraction = (1.0 - soc) / (1.0 - self.taper_start_soc)
        return max(self.taper_floor_A, self.max_current_A * fraction)

    # -- draw ------------------------------------------------------------------------------------------

    @property
    def active_phases(self) -> int:
        """Phases the car draws on: its own, but no more than the charger is wired for."""
        if self.evse is None:
            return 0
        return min(self.phases, self.evse.phases)

    @property
    def current_A(self) -> float:
        """Current on each active phase right now."""
        if self.evse is None or not self.wants_charge or not self.evse.relay_on:
            return 0.0
        return min(self.evse.offered_A, self.max_current_A, self.taper_limit_A())

    @property
    def draw_A(self) -> tuple[float, float, float]:
        """Per-phase current on the charger's conductors L1, L2, L3 (a 1-phase car draws on L1)."""
        current = self.current_A
        if current <= 0.0:
            return NO_DRAW_A
        n = self.active_phases
        return tuple(current if i < n else 0.0 for i in range(3))

    @property
    def power_W(self) -> float:
        return sum(self.draw_A) * self.voltage_V

    def step(self, dt_s: float) -> None:
        """Charge for `dt_s` seconds at the current draw."""
        if dt_s <= 0:
            return
        power_W = self.power_W
        if power_W <= 0.0:
            return
        was_full = self.full
        stored_Wh = min(self.capacity_Wh - self.energy_Wh, power_W * self.efficiency * dt_s / 3600.0)
        self.energy_Wh += stored_Wh
        self.session_Wh += power_W * dt_s / 3600.0
        if self.full and not was_full:
            log.info("{car} is full after {session_Wh:.0f} Wh", car=self.name, session_Wh=self.session_Wh)

    # -- time ------------------------------------------------------------------------------------------

    def run(self, clock, interval_s: float = 1.0) -> task.LoopingCall:
        """Step every `interval_s` on `clock`, by the time that really passed on it."""
        self.stop()
        self._last_step_at = clock.seconds()

        def tick():
            now = clock.seconds()
            self.step(now - self._last_step_at)
            self._last_step_at = now

        self._loop = task.LoopingCall(tick)
        self._loop.clock = clock
        self._loop.start(interval_s, now=False)
        return self._loop

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
