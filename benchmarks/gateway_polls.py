"""Meter polls per second through one shared connection to a Modbus TCP gateway with eight SDM630s behind it.

The gateway is `evc.sim.modbus.SimGateway` (one TCP connection; the serial side timed by its baud rate) on
loopback, in this process. Two masters poll the eight units round-robin for `--seconds` each:

- `bare` (the baseline): a minimal Twisted protocol that sends the next block read (FC04 0x0000 x 76) `gap_ms`
  after each reply, one unit after the other: the best a master keeping the gap can do here;
- `evc`: eight EVC meter instances (meter/SDM630 with `bus`) sharing the gateway through evc.bus.gateway, with
  `interval_s` short enough that the bus is always busy.

The limit is the serial side's time per transaction: 8 request bytes + 157 reply bytes at 10 bits per character,
the simulator's turnaround, and the gap. The ratio evc/bare is the cost of the shared scheduler and the meters.

    .venv/bin/python benchmarks/gateway_polls.py [--seconds 3] [--bauds 9600,38400,115200] [--gap-ms 100]
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

UNITS = range(1, 9)
COUNT = 76
REQUEST_BYTES, REPLY_BYTES = 8, 5 + 2 * COUNT
TURNAROUND_S = 0.002


def limit_per_s(baud: int, gap_ms: float) -> float:
    return 1.0 / ((REQUEST_BYTES + REPLY_BYTES) * 10 / baud + TURNAROUND_S + gap_ms / 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--bauds", default="9600,38400,115200")
    ap.add_argument("--gap-ms", type=float, default=100.0)
    args = ap.parse_args()

    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import defer, reactor, task
    from twisted.internet.protocol import ClientCreator, Protocol

    from evc.bus import codec
    from evc.bus.gateway import GATEWAYS
    from evc.instance import Context
    from evc.meter.sdm630 import Sdm630
    from evc.sim.modbus import SimGateway
    from evc.sim.sdm import SimSdm630
    from evc.testing import RecordingState

    gap_s = args.gap_ms / 1000.0

    def serve(baud):
        gw = SimGateway(reactor, [SimSdm630(u) for u in UNITS], baud=baud, turnaround_s=TURNAROUND_S)
        return gw, gw.listen(reactor)

    class Bare(Protocol):
        def __init__(self):
            self.framing, self.buf, self.n, self.tid, self.running = codec.TcpFraming(), bytearray(), 0, 0, True

        def connectionMade(self):
            self.send()

        def send(self):
            if not self.running:
                return
            self.tid = self.tid % 0xFFFF + 1
            pdu = codec.read_input(UNITS[self.tid % len(UNITS)], 0, COUNT)
            pdu.transaction_id = self.tid
            self.transport.write(self.framing.encode(pdu))

        def dataReceived(self, data):
            self.buf += data
            used, pdu = self.framing.decode(self.buf)
            if used:
                del self.buf[:used]
                self.n += 1
                reactor.callLater(gap_s, self.send)

    async def measure_bare(baud):
        gw, port = serve(baud)
        proto = await ClientCreator(reactor, Bare).connectTCP("127.0.0.1", port.getHost().port)
        await task.deferLater(reactor, args.seconds, lambda: None)
        proto.running = False
        proto.transport.loseConnection()
        await port.stopListening()
        return proto.n / args.seconds, gw

    async def measure_evc(baud):
        gw, port = serve(baud)
        address = f"127.0.0.1:{port.getHost().port}"
        meters = []
        for u in UNITS:
            ctx = Context(kind="meter", name=f"m{u}", clock=reactor, state=RecordingState(),
                          resolve=lambda kind, ref: None, reactor=reactor)
            meter = Sdm630(ctx, Sdm630.Config(bus=address, bus_addr=u, interval_s=0.1, timeout_ms=2000,
                                              gap_ms=int(args.gap_ms)))
            meter.startService()
            meters.append(meter)
        shared = GATEWAYS.get(reactor, address)
        await task.deferLater(reactor, 1.0, lambda: None)          # warm up: connect, first round
        start = shared.counters()["ok"]
        await task.deferLater(reactor, args.seconds, lambda: None)
        n = shared.counters()["ok"] - start
        for meter in meters:
            await meter.stopService()
        await port.stopListening()
        return n / args.seconds, gw

    async def run():
        rows = []
        for baud in [int(b) for b in args.bauds.split(",")]:
            bare, _ = await measure_bare(baud)
            evc, gw = await measure_evc(baud)
            rows.append((baud, limit_per_s(baud, args.gap_ms), bare, evc, gw.stats))
        return rows

    result = {}

    def go():
        d = defer.ensureDeferred(run())
        d.addBoth(lambda r: result.setdefault("rows", r))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    rows = result["rows"]
    if not isinstance(rows, list):
        rows.raiseException()
    print(f"SDM630 block reads (FC04 0x0000 x {COUNT}) per second, 8 units behind one SimGateway, gap_ms "
          f"{args.gap_ms:g}, {args.seconds:g} s each")
    print()
    header = f"{'baud':>6} {'limit/s':>8} {'bare/s':>8} {'evc/s':>8} {'evc/bare':>9} {'evc/limit':>9} " \
             f"{'conns':>5} {'overlaps':>8}"
    print(header)
    print("-" * len(header))
    for baud, limit, bare, evc, stats in rows:
        print(f"{baud:>6} {limit:>8.1f} {bare:>8.1f} {evc:>8.1f} {evc / bare:>9.1%} {evc / limit:>9.1%} "
              f"{stats['connections']:>5} {stats['overlaps']:>8}")


if __name__ == "__main__":
    main()
