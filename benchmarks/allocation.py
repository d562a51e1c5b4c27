"""Benchmark: allocate() for 10, 100 and 1,000 chargers against a naive equal split measured in the same run.

Run: .venv/bin/python benchmarks/allocation.py [--repeats N]
The target (DESIGN §4, control brief) is 1,000 chargers in under 10 ms. The baseline is what a
controller without phases, priorities or hysteresis would do: one share for every wanting car.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evc.control import PHASES, ChargerInput, Inputs, MeterReading, SiteLimits, allocate  # noqa: E402

TARGET_MS = 10.0
NOW_S = 10_000.0


def make_site(n: int, per_car_A: float, seed: int = 1) -> Inputs:
    """n chargers (1/3 single-phase, rotated phase maps, 4 priorities, 80% wanting) on a site with
    per_car_A of limit per charger: 8 A leaves most cars between 6 A and their max, 4 A forces pauses."""
    rng = random.Random(seed)
    chargers = []
    for i in range(n):
        phases = rng.choice([1, 3, 3])
        setpoint = rng.choice([0, 6, 10, 16])
        chargers.append(ChargerInput(
            name=f"c{i}", wants=rng.random() < 0.8, priority=rng.randint(0, 3), phases=phases,
            phase_map=tuple(rng.sample(PHASES, 3)), A_max=rng.choice([16, 32]), setpoint_A=setpoint,
            draw_A=(float(setpoint),) * phases, switched_s=rng.choice([None, NOW_S - 30, NOW_S - 900]),
        ))
    measured = {p: 5.0 + sum(c.setpoint_A for c in chargers if p in c.grid_phases) for p in PHASES}
    limits = SiteLimits(A_max=max(16.0, n * per_car_A))
    return Inputs(NOW_S, limits, MeterReading("grid", measured, updated_s=NOW_S - 1), chargers)


def naive_equal_split(inp: Inputs) -> dict[str, int]:
    """Baseline: the tightest phase's room split equally among wanting cars, no phases or priorities."""
    room = min(inp.limits.A_max[p] - inp.meter.current_A[p] for p in PHASES)
    room += sum(c.setpoint_A for c in inp.chargers)
    wanting = [c for c in inp.chargers if c.wants]
    share = room / len(wanting) if wanting else 0.0
    out = {}
    for c in inp.chargers:
        a = min(math.floor(share), int(c.A_max)) if c.wants else 0
        out[c.name] = a if a >= 6 else 0
    return out


def median_ms(fn, arg, repeats: int) -> float:
    fn(arg)     # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=51)
    args = parser.parse_args()
    print(f"allocate() median of {args.repeats} runs; baseline: naive equal split (no phases/priorities)")
    header = f"{'chargers':>8} {'site':>10} {'allocate ms':>12} {'naive ms':>9} {'x naive':>8} {'% of 10 ms':>11}"
    print(header)
    print("-" * len(header))
    worst_1000 = 0.0
    for n in (10, 100, 1000):
        for label, per_car_A in (("roomy", 8.0), ("contended", 4.0)):
            inp = make_site(n, per_car_A)
            ours = median_ms(allocate, inp, args.repeats)
            naive = median_ms(naive_equal_split, inp, args.repeats)
            if n == 1000:
                worst_1000 = max(worst_1000, ours)
            print(f"{n:>8} {label:>10} {ours:>12.3f} {naive:>9.3f} {ours / naive:>8.1f} "
                  f"{100 * ours / TARGET_MS:>10.0f}%")
    verdict = "within" if worst_1000 < TARGET_MS else "OVER"
    print(f"\n1,000 chargers: {worst_1000:.2f} ms, {verdict} the {TARGET_MS:g} ms target "
          f"({worst_1000 / TARGET_MS:.2f} x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
