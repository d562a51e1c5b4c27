"""Modbus TCP block reads per second (SDM630, FC04 0x0000 × 76): EVC's Twisted client vs pymodbus's own.

Both clients read from the same simulator, which runs in its own process (`python -m evc.sim.sdm`), one
request in flight at a time (as on a meter bus). Each client runs in a fresh process of its own, in
alternating rounds; the table shows each client's best and median round and the ratios EVC / pymodbus
(target >= 1.0).

    .venv/bin/python benchmarks/modbus_reads.py [--reads 3000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UNIT, ADDRESS, COUNT = 1, 0x0000, 76


def run_evc(port: int, reads: int, warmup: int) -> dict:
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import defer, reactor

    from evc.bus.tcp import ModbusTcpClient

    result: dict = {}

    async def main():
        client = ModbusTcpClient(reactor, reactor, "127.0.0.1", port, timeout_s=1.0)
        client.start()
        for _ in range(warmup):
            await client.read_input_registers(UNIT, ADDRESS, COUNT)
        t0 = time.perf_counter()
        for _ in range(reads):
            regs = await client.read_input_registers(UNIT, ADDRESS, COUNT)
            assert len(regs) == COUNT
        result["seconds"] = time.perf_counter() - t0
        await client.stop()

    def done(outcome):
        if isinstance(outcome, Exception) or hasattr(outcome, "getTraceback"):
            result["error"] = str(outcome)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main()).addBoth(done))
    reactor.run()
    return result


def run_pymodbus(port: int, reads: int, warmup: int) -> dict:
    import asyncio

    from pymodbus.client import AsyncModbusTcpClient

    async def main():
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        await client.connect()
        for _ in range(warmup):
            await client.read_input_registers(ADDRESS, count=COUNT, device_id=UNIT)
        t0 = time.perf_counter()
        for _ in range(reads):
            rr = await client.read_input_registers(ADDRESS, count=COUNT, device_id=UNIT)
            assert not rr.isError() and len(rr.registers) == COUNT
        seconds = time.perf_counter() - t0
        client.close()
        return {"seconds": seconds}

    return asyncio.run(main())


def start_simulator() -> tuple[subprocess.Popen, int]:
    sim = subprocess.Popen([sys.executable, "-m", "evc.sim.sdm", "--port", "0", "--A", "10,11,12"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = sim.stdout.readline()       # "SDM630 simulator on 127.0.0.1:PORT unit(s) 1"
    if not line:
        sim.kill()
        raise SystemExit("the simulator did not start")
    port = int(line.split()[3].rsplit(":", 1)[1])
    return sim, port


def measure(client: str, port: int, reads: int, warmup: int) -> float:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--client", client, "--port", str(port),
                          "--reads", str(reads), "--warmup", str(warmup)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit(f"{client} run failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise SystemExit(f"{client} run failed: {result['error']}")
    return reads / result["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=["evc", "pymodbus"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)

    if args.client:                    # one measurement, in this fresh process
        run = run_evc if args.client == "evc" else run_pymodbus
        print(json.dumps(run(args.port, args.reads, args.warmup)))
        return 0

    sim, port = start_simulator()
    try:
        rates: dict[str, list[float]] = {"evc": [], "pymodbus": []}
        for _ in range(args.rounds):
            for client in ("pymodbus", "evc"):
                rates[client].append(measure(client, port, args.reads, args.warmup))
    finally:
        sim.terminate()
        sim.wait(10)

    best = {c: max(r) for c, r in rates.items()}
    median = {c: statistics.median(r) for c, r in rates.items()}
    print(f"Modbus TCP block reads (FC04 0x0000 x {COUNT}), {args.reads} sequential reads per round, "
          f"{args.rounds} alternating rounds, simulator in its own process")
    print(f"{'client':<32} {'best/s':>8} {'median/s':>9}  rounds (reads/s)")
    labels = {"evc": "EVC ModbusTcpClient (Twisted)", "pymodbus": "pymodbus AsyncModbusTcpClient"}
    for c in ("evc", "pymodbus"):
        print(f"{labels[c]:<32} {best[c]:>8.0f} {median[c]:>9.0f}  {', '.join(f'{r:.0f}' for r in rates[c])}")
    print(f"ratio EVC / pymodbus: best {best['evc'] / best['pymodbus']:.2f}, "
          f"median {median['evc'] / median['pymodbus']:.2f} (target >= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
