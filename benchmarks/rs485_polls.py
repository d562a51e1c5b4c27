"""EVSE polls per second (FC03 1000 x 8) through conn/rs485 on one simulated RS485 bus with wire timing.

For each baud rate the simulated bus (`python -m evc.sim.site --baud B`, a process of its own, as a real bus is
another piece of hardware) serves one EVSE-DIN board over a pty and over a ser2net-style TCP tunnel. Two masters
poll it back to back for `--seconds` each:

- `bare`: a Twisted protocol that writes the next request the moment the previous 21-byte reply is in. It breaks
  the t3.5 rule (the simulated line holds the early request back until the silence is over), so it shows what
  the simulator, the pty and the TCP hop can carry at all;
- `t3.5` (the baseline): the same minimal master, but it waits t3.5 (or gap_ms) after each reply with a reactor
  timer, as a Modbus RTU master must: the best any compliant master on this reactor can do;
- `conn`: EVC's conn/rs485 (the ModbusBus scheduler, RTU framing, timeouts, counters, state) with `gap_ms` 0 by
  default, so its pause after a reply is the t3.5 silence and nothing more.

The limit is the wire time of one transaction (reference modbus-meters.md §5): 8 request bytes + 21 reply bytes
at 10 bits per character, t3.5 after the request and max(t3.5, gap) after the reply. Target: conn >= 90 % of it.
The ratio conn/t3.5 is the scheduler's own cost; what separates t3.5 from the limit is the platform (the
reactor's timers wake on whole milliseconds, and every transaction crosses two processes and a pty or socket).

    .venv/bin/python benchmarks/rs485_polls.py [--seconds 2] [--bauds 9600,19200,38400] [--gap-ms 0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

UNIT, ADDRESS, COUNT = 1, 1000, 8
REQUEST_BYTES, REPLY_BYTES = 8, 5 + 2 * COUNT


def limit_per_s(baud: int, gap_ms: float) -> tuple[float, float]:
    """(transaction time in s, polls/s) the wire allows at `baud` (8N1) with `gap_ms` after each reply."""
    from evc.sim.rs485 import WireTiming
    t = WireTiming(baud)
    period_s = t.bytes_s(REQUEST_BYTES + REPLY_BYTES) + t.t35_s + max(t.t35_s, gap_ms / 1000.0)
    return period_s, 1.0 / period_s


def start_sim(baud: int, tmpdir: str) -> tuple[subprocess.Popen, dict]:
    link = os.path.join(tmpdir, f"rs485-{baud}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "evc.sim.site", "--evses", "1", "--cars", "0", "--baud", str(baud),
         "--tty-link", link, "--tcp-port", "0", "--meter-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the simulator did not start")
    return proc, json.loads(line)["buses"]["bus1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring window per row")
    parser.add_argument("--bauds", default="9600,19200,38400")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="the conn's gap_ms (0: t3.5 only)")
    args = parser.parse_args()
    bauds = [int(b) for b in args.bauds.split(",")]

    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import defer, reactor, task
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol
    from twisted.internet.serialport import SerialPort

    from evc.bus import codec
    from evc.conn.rs485 import Rs485Conn, line_timing
    from evc.instance import Context

    request = codec.RtuFraming().encode(codec.read_holding(UNIT, ADDRESS, COUNT))

    class NullState:
        def set(self, path, value, deadband=None):
            pass

        def update(self, values, deadband=None):
            pass

        def delete(self, path):
            pass

    class Bare(Protocol):
        """Writes the request again as soon as a whole reply is in; counts replies after `start()`."""

        def __init__(self, gap_s: float = 0.0):
            self.buf = b""
            self.count = 0
            self.running = False
            self.gap_s = gap_s

        def connectionMade(self):
            self.transport.write(request)

        def dataReceived(self, data):
            self.buf += data
            while len(self.buf) >= REPLY_BYTES:
                self.buf = self.buf[REPLY_BYTES:]
                self.count += 1
                if self.running:
                    if self.gap_s:
                        reactor.callLater(self.gap_s, self.transport.write, request)
                    else:
                        self.transport.write(request)

    async def measure_bare(bus: dict, path: str, gap_s: float = 0.0) -> float:
        proto = Bare(gap_s)
        proto.running = True
        if path == "pty":
            port = SerialPort(proto, bus["tty"], reactor, baudrate=bus["baud"])
        else:
            host, port_no = bus["tcp"].split(":")
            await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port_no)), proto)
            port = proto.transport
        await task.deferLater(reactor, 0.2, lambda: None)       # warm-up
        n0, t0 = proto.count, time.perf_counter()
        await task.deferLater(reactor, args.seconds, lambda: None)
        rate = (proto.count - n0) / (time.perf_counter() - t0)
        proto.running = False
        port.loseConnection()
        await task.deferLater(reactor, 0.1, lambda: None)       # let the last reply drain
        return rate

    async def measure_conn(bus: dict, path: str) -> tuple[float, dict]:
        config = {"baud": bus["baud"], "gap_ms": args.gap_ms, "timeout_ms": 300}
        if path == "pty":
            config["local"] = bus["tty"]
        else:
            config["remote"] = bus["tcp"]
        ctx = Context(kind="conn", name=f"bench-{path}", clock=reactor, state=NullState(),
                      resolve=lambda k, n: None, reactor=reactor)
        conn = Rs485Conn(ctx, Rs485Conn.Config(**config))
        conn.startService()
        for _ in range(10):                                       # warm-up (and the tunnel's connect)
            await conn.read_holding_registers(UNIT, ADDRESS, COUNT)
        n, t0 = 0, time.perf_counter()
        deadline = t0 + args.seconds
        while time.perf_counter() < deadline:
            await conn.read_holding_registers(UNIT, ADDRESS, COUNT)
            n += 1
        rate = n / (time.perf_counter() - t0)
        counters = conn.counters(UNIT)
        await defer.maybeDeferred(conn.stopService)
        return rate, counters

    rows = []

    async def run():
        with tempfile.TemporaryDirectory(prefix="evc-bench-") as tmpdir:
            for baud in bauds:
                proc, bus = start_sim(baud, tmpdir)
                try:
                    period_s, limit = limit_per_s(baud, args.gap_ms)
                    for path in ("pty", "tunnel"):
                        bare = await measure_bare(bus, path)
                        compliant = await measure_bare(bus, path, max(line_timing(baud)[1], args.gap_ms / 1000))
                        conn, counters = await measure_conn(bus, path)
                        rows.append((baud, path, period_s, limit, bare, compliant, conn, counters))
                finally:
                    proc.terminate()
                    proc.wait()

    failure = []
    d = defer.Deferred.fromCoroutine(run())
    d.addErrback(failure.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failure:
        failure[0].raiseException()

    print(f"EVSE polls (FC03 {ADDRESS} x {COUNT}) per second on one simulated RS485 bus, 8N1, conn gap_ms "
          f"{args.gap_ms:g} (t3.5 at least), {args.seconds:g} s per row")
    print()
    header = (f"{'baud':>6} {'path':>7} {'cycle ms':>8} {'limit/s':>8} {'bare/s':>8} {'t3.5/s':>8} {'conn/s':>8} "
              f"{'conn/limit':>10} {'conn/t3.5':>9} {'errors':>7}")
    print(header)
    print("-" * len(header))
    worst = 1.0
    for baud, path, period_s, limit, bare, compliant, conn, c in rows:
        errors = c["timeouts"] + c["bad_frames"] + c["exceptions"]
        worst = min(worst, conn / limit)
        print(f"{baud:>6} {path:>7} {period_s * 1000:>8.2f} {limit:>8.1f} {bare:>8.1f} {compliant:>8.1f} "
              f"{conn:>8.1f} {conn / limit:>10.1%} {conn / compliant:>9.1%} {errors:>7}")
    print()
    print(f"worst conn/limit: {worst:.1%} (target >= 90 %)")


if __name__ == "__main__":
    main()
