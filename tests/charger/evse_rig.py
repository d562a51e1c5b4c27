"""A charger/EVCC_manual on an in-memory RTU bus to a simulated EVSE, all on one task.Clock."""
from __future__ import annotations

from twisted.internet import task

from evc.bus import codec
from evc.charger.evcc_manual import EvccManual
from evc.events import EventBus
from evc.sim.car import SimCar
from evc.sim.evse import SimEvse
from evc.sim.rs485 import SimRs485Bus

from rs485_helpers import make_ctx, memory_rtu_bus


class Spy:
    """Wraps a device: records every request (function, address, count or values) and can swallow writes."""

    def __init__(self, device):
        self.device = device
        self.unit = device.unit
        self.requests: list[tuple] = []
        self.drop_writes = 0          # the next N write frames get no reply and are not applied (lost on the wire)

    def handle(self, request):
        fc = request.function_code
        if fc in (codec.FC_WRITE_MULTIPLE, codec.FC_WRITE_SINGLE):
            self.requests.append((fc, request.address, tuple(request.registers)))
            if self.drop_writes:
                self.drop_writes -= 1
                return None
        else:
            self.requests.append((fc, request.address, request.count))
        return self.device.handle(request)

    def writes_to(self, address):
        return [r[2] for r in self.requests if r[0] in (codec.FC_WRITE_MULTIPLE, codec.FC_WRITE_SINGLE)
                and r[1] == address]

    def reads_of(self, address, count):
        return sum(1 for r in self.requests if r[0] == codec.FC_READ_HOLDING and r[1:] == (address, count))


class Rig:
    """One EVSE at unit 1 behind an RTU bus, its charger, a car; `run()` advances time and checks the invariant
    that the charger never reports less than the board holds (control must never under-count)."""

    def __init__(self, evse=None, meter_instance=None, check_invariant=True, **config):
        self.clock = task.Clock()
        self.evse = evse or SimEvse("s1", unit=1, clock=self.clock)
        self.spy = Spy(self.evse)
        self.sim = SimRs485Bus(self.clock, [self.spy], turnaround_s=0.002)
        self.bus = memory_rtu_bus(self.clock, self.sim, gap_s=0.01, timeout_s=0.1)
        self.events = EventBus()
        self.published: list = []
        self.events.subscribe(("charger",), lambda topic, e: self.published.append((topic, e)))
        self.auth_events: list = []
        self.events.subscribe(("authorization",), lambda topic, e: self.auth_events.append((topic, e)))
        refs = {("conn", "c1"): self.bus}
        if meter_instance is not None:
            refs[("meter", "m1")] = meter_instance
        self.ctx = make_ctx(clock=self.clock, refs=refs, events=self.events)
        cfg = {"conn": "c1", "A_max": 32, "mode": "ON", "interval_s": 0.5}
        cfg.update(config)
        self.charger = EvccManual(self.ctx, EvccManual.Config(**cfg))
        self.statuses: list = []
        self.seen: list = []              # (status, what the board held when it was published)
        self.charger.subscribe(self.statuses.append)
        self.charger.subscribe(lambda s: self.seen.append((s, self.evse.set_current_A)))
        self.check_invariant = check_invariant
        self.car = SimCar("car", max_current_A=32)
        self._outcomes: dict = {}

    @property
    def state(self) -> dict:
        return self.ctx.state.values

    @property
    def status(self):
        return self.charger.status

    def start(self, run_s: float = 1.0) -> "Rig":
        self.charger.startService()
        self.run(run_s)
        return self

    def run(self, seconds: float, step_s: float = 0.005) -> None:
        for _ in range(int(round(seconds / step_s))):
            self.clock.advance(step_s)
            if self.check_invariant and self.status.updated is not None:
                assert self.status.setpoint_A >= self.evse.set_current_A, (
                    f"status says {self.status.setpoint_A} A while the EVSE holds {self.evse.set_current_A} A")

    def run_until(self, condition, timeout_s: float = 10.0, what: str = "condition") -> None:
        waited = 0.0
        while not condition():
            if waited >= timeout_s:
                raise AssertionError(f"{what} did not happen within {timeout_s} s of clock time")
            self.run(0.05)
            waited += 0.05

    def apply(self, current_A):
        """charger.apply(), its outcome kept for `outcome()` (a failure is an expected result here, not an
        unhandled error)."""
        d = self.charger.apply(current_A)
        self._outcomes[id(d)] = box = []
        d.addBoth(lambda r: box.append(r.value if hasattr(r, "trap") else r))
        return d

    def outcome(self, d):
        """What `d` (from `apply()`) fired with: the accepted amps or the exception; fails if it has not fired."""
        box = self._outcomes[id(d)]
        assert box, "the Deferred has not fired"
        return box[0]
