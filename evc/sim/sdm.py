"""Simulated Eastron meters (SDM630 v2, SDM120, SDM72D-M v1/v2) answering FC04 like the real ones.

    sim = SimSdm630(unit=1, clock=reactor)          # clock: energy follows power over time
    sim.set(V=230, A=(16, 16, 0))                   # W follows V × A × PF unless W is given
    sim.set(W=(3000, 0, 0), energy_Wh=12_345_000, noise=0.002)

Like the meter (shared/reference/modbus-meters.md): float32 values high word first; a read must start on an
even address and have an even count, at most 80 registers, else exception 02. Addresses between the
documented values read as 0.0 unless `strict=True`, where a read that touches an undocumented register
answers 02 (the tolerance of real meters for such gaps is unverified, so tests run both ways).
`python -m evc.sim.sdm --port 5020` serves one on Modbus TCP.
"""
from __future__ import annotations

import math
import random
import struct
import sys
from typing import Sequence

from twisted.internet.interfaces import IReactorTime

from evc.bus import codec
from evc.sim.modbus import ILLEGAL_ADDRESS, SimDevice, SimModbusError, listen_tcp

MAX_REGISTERS = 80            # 40 parameters per request
MAP_END = 0x0200              # past the last register of the Eastron maps


def _phase_map(quantity: str, base: int, phases: int) -> dict[int, tuple[str, int]]:
    return {base + 2 * i: (quantity, i) for i in range(phases)}


def _eastron_map(phases: int, per_phase_import: bool) -> dict[int, tuple[str, int]]:
    m: dict[int, tuple[str, int]] = {}
    for quantity, base in (("V", 0x00), ("A", 0x06), ("W", 0x0C), ("VA", 0x12), ("var", 0x18), ("PF", 0x1E)):
        m.update(_phase_map(quantity, base, phases))
    if phases == 3:
        m.update({0x0034: ("W_total", 0), 0x0038: ("VA_total", 0), 0x003C: ("var_total", 0),
                  0x003E: ("PF_total", 0)})
    m.update({0x0046: ("Hz", 0), 0x0048: ("import_kWh", 0), 0x004A: ("export_kWh", 0),
              0x0156: ("total_kWh", 0)})
    if per_phase_import:
        m.update(_phase_map("import_kWh_phase", 0x015A, 3))
    return m


class SimSdm(SimDevice):
    """The common Eastron behaviour; subclasses give the model's register map and phase count."""

    MODEL = "SDM"
    PHASES = 3
    FLOATS: dict[int, tuple[str, int]] = {}
    ALWAYS_STRICT = False

    def __init__(self, unit: int = 1, *, clock: IReactorTime | None = None, strict: bool = False,
                 noise: float = 0.0, seed: int | None = None):
        super().__init__(unit)
        self.strict = strict or self.ALWAYS_STRICT
        self.noise = noise
        self._clock = clock
        self._rng = random.Random(seed)
        self._last_s = clock.seconds() if clock is not None else None
        n = self.PHASES
        self.V: list[float] = [230.0] * n
        self.A: list[float] = [0.0] * n
        self.PF: list[float] = [1.0] * n
        self.W: list[float] = [0.0] * n
        self.frequency_Hz = 50.0
        self.import_Wh = 0.0
        self.export_Wh = 0.0
        self.import_phase_Wh = [0.0] * n
        # settings (holding registers), float32 like the meter: 0x0014 Modbus address, 0x001C baud code
        self.holding_registers = {0x0014: 0, 0x0015: 0, 0x001C: 0, 0x001D: 0}
        self._set_holding_float(0x0014, float(unit))
        self._set_holding_float(0x001C, 2.0)

    # --- values ---

    def set(self, V=None, A=None, W=None, PF=None, frequency_Hz=None, energy_Wh=None, export_Wh=None,
            noise=None) -> None:
        """Change what the meter measures. V, A, W, PF: one number for every phase or one per phase.
        Without W, power follows V × A × PF; with W (and no PF), PF follows."""
        self._integrate()
        if V is not None:
            self.V = self._phases(V)
        if A is not None:
            self.A = self._phases(A)
        if PF is not None:
            self.PF = self._phases(PF)
        if W is not None:
            self.W = self._phases(W)
            if PF is None:
                self.PF = [max(-1.0, min(1.0, w / (v * a))) if v * a else 1.0
                           for w, v, a in zip(self.W, self.V, self.A)]
        elif V is not None or A is not None or PF is not None:
            self.W = [v * a * pf for v, a, pf in zip(self.V, self.A, self.PF)]
        if frequency_Hz is not None:
            self.frequency_Hz = float(frequency_Hz)
        if energy_Wh is not None:
            self.import_Wh = float(energy_Wh)
            self.import_phase_Wh = [self.import_Wh / self.PHASES] * self.PHASES
        if export_Wh is not None:
            self.export_Wh = float(export_Wh)
        if noise is not None:
            self.noise = float(noise)

    def _phases(self, value) -> list[float]:
        if isinstance(value, (int, float)):
            return [float(value)] * self.PHASES
        values = [float(v) for v in value]
        if len(values) < self.PHASES:
            raise ValueError(f"{self.MODEL} needs {self.PHASES} phase values, got {len(values)}")
        return values[:self.PHASES]

    def _integrate(self) -> None:
        """Energy registers count what the power was since the last look, as a real meter does."""
        if self._clock is None:
            return
        now = self._clock.seconds()
        dt_h = max(0.0, now - self._last_s) / 3600.0
        self._last_s = now
        for i, w in enumerate(self.W):
            if w > 0:
                self.import_Wh += w * dt_h
                self.import_phase_Wh[i] += w * dt_h
            else:
                self.export_Wh -= w * dt_h

    def _noisy(self, value: float) -> float:
        if not self.noise:
            return value
        return value * (1.0 + self._rng.uniform(-self.noise, self.noise))

    def quantity(self, name: str, phase: int) -> float:
        """The value a float register shows now."""
        if name in ("V", "A", "W"):
            return self._noisy(getattr(self, name)[phase])
        if name == "PF":
            return self.PF[phase]
        if name == "VA":
            return self._noisy(self.V[phase] * abs(self.A[phase]))
        if name == "var":
            va = self.V[phase] * abs(self.A[phase])
            return math.sqrt(max(0.0, va * va - self.W[phase] ** 2))
        if name == "W_total":
            return self._noisy(sum(self.W))
        if name == "VA_total":
            return sum(v * abs(a) for v, a in zip(self.V, self.A))
        if name == "var_total":
            return sum(self.quantity("var", i) for i in range(self.PHASES))
        if name == "PF_total":
            va = self.quantity("VA_total", 0)
            return sum(self.W) / va if va else 1.0
        if name == "Hz":
            return self.frequency_Hz
        if name == "import_kWh":
            return self.import_Wh / 1000.0
        if name == "export_kWh":
            return self.export_Wh / 1000.0
        if name == "total_kWh":
            return (self.import_Wh + self.export_Wh) / 1000.0
        if name == "import_kWh_phase":
            return self.import_phase_Wh[phase] / 1000.0
        raise KeyError(name)

    # --- registers ---

    def check_read(self, address: int, count: int) -> None:
        # the meter's own rules: whole floats only, at most 40 of them
        if address % 2 or count % 2 or not 2 <= count <= MAX_REGISTERS or address + count > MAP_END:
            raise SimModbusError(ILLEGAL_ADDRESS)
        if self.strict and any(a not in self.FLOATS for a in range(address, address + count, 2)):
            raise SimModbusError(ILLEGAL_ADDRESS)

    def read_input(self, address: int, count: int) -> list[int]:
        self.check_read(address, count)
        self._integrate()
        out: list[int] = []
        for a in range(address, address + count, 2):
            entry = self.FLOATS.get(a)
            out.extend(codec.float32_to_registers(self.quantity(*entry) if entry else 0.0))
        return out

    def read_holding(self, address: int, count: int) -> list[int]:
        if address % 2 or count % 2 or not 2 <= count <= MAX_REGISTERS:
            raise SimModbusError(ILLEGAL_ADDRESS)
        return self._read(self.holding_registers, address, count)

    def _set_holding_float(self, address: int, value: float) -> None:
        self.holding_registers[address], self.holding_registers[address + 1] = codec.float32_to_registers(value)


class SimSdm630(SimSdm):
    """SDM630 v2: three phases, per-phase import energy."""
    MODEL = "SDM630"
    PHASES = 3
    FLOATS = _eastron_map(3, per_phase_import=True)


class SimSdm120(SimSdm):
    """SDM120: one phase (V, A, W ... at the L1 addresses), no system totals."""
    MODEL = "SDM120"
    PHASES = 1
    FLOATS = _eastron_map(1, per_phase_import=False)


class SimSdm72(SimSdm):
    """SDM72D-M: version 2 has the SDM630's per-phase values; version 1 only total power and energy."""
    MODEL = "SDM72"
    PHASES = 3
    FLOATS = _eastron_map(3, per_phase_import=False)

    def __init__(self, unit: int = 1, *, version: int = 2, **options):
        if version not in (1, 2):
            raise ValueError("SDM72 version must be 1 or 2")
        self.version = version
        super().__init__(unit, **options)
        if version == 1:
            self.FLOATS = {a: q for a, q in self.FLOATS.items()
                           if q[0] in ("W_total", "import_kWh", "export_kWh", "total_kWh")}
            self.strict = True   # v1 has no voltage registers at all: reading them is an error


MODELS = {"SDM630": SimSdm630, "SDM120": SimSdm120, "SDM72": SimSdm72}


def _floats(text: str) -> float | Sequence[float]:
    parts = [float(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m evc.sim.sdm", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5020, help="TCP port (0: any free port, printed)")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--model", choices=sorted(MODELS), default="SDM630")
    parser.add_argument("--version", type=int, default=2, help="SDM72 only: 1 or 2")
    parser.add_argument("--unit", type=int, action="append", help="unit address (repeat for more meters)")
    parser.add_argument("--V", type=_floats, default=230.0, help="volts, one value or L1,L2,L3")
    parser.add_argument("--A", type=_floats, default=0.0, help="amperes, one value or L1,L2,L3")
    parser.add_argument("--energy-Wh", type=float, default=0.0)
    parser.add_argument("--noise", type=float, default=0.0, help="relative noise on V, A, W (0.002 = 0.2 %%)")
    parser.add_argument("--strict", action="store_true", help="answer 02 to reads across undocumented registers")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    cls = MODELS[args.model]
    extra = {"version": args.version} if cls is SimSdm72 else {}
    devices = []
    for unit in args.unit or [1]:
        sim = cls(unit, clock=reactor, strict=args.strict, noise=args.noise, **extra)
        sim.set(V=args.V, A=args.A, energy_Wh=args.energy_Wh)
        devices.append(sim)
    port = listen_tcp(reactor, devices, args.port, args.interface)
    print(f"{args.model} simulator on {args.interface}:{port.getHost().port} "
          f"unit(s) {','.join(str(d.unit) for d in devices)}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
