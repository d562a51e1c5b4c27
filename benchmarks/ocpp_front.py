"""front/ocpp: 100 bridged chargers toward one backend; outbox throughput, latency and outage drain.

The site: 100 chargers, each with a car charging in an open transaction, bridged by one front/ocpp (one websocket per
charger) to a backend on loopback; the outbox lives in a throwaway etcd, as in production. The backend is a bare
websocket server in its own process that answers every CALL at once without validating it, so what is measured is
EVC (the ocpp library on both ends of EVC's calls, the etcd writes, the websockets), not a backend.

Cars arrive spread over one sample interval (MeterValues are sampled from each transaction's start, so they are
spread too). Time is compressed for the steady part: the front and the chargers run on a clock `--factor` times faster than real
time (MeterValueSampleInterval stays 10 s on that clock), so 100 chargers x 1 per 10 s = 10 messages/s become
10 x factor per real second. Latencies are real time.

Rows (each with a baseline measured in the same run on the same connections):
- steady MeterValues, 100 chargers every 10 s (x factor): messages/s delivered and outbox latency p50/p99 (queued ->
  CALLRESULT, which includes the etcd write before sending and the removal after). Baseline: the same messages sent
  straight on the link (no outbox): round trip p50/p99.
- 1-hour outage backlog (360 MeterValues per charger, 36,000 messages, queued and written to etcd while the backend
  is down): time from the backend's return to the last message delivered, and the rate (= the sustained capacity).
  Baseline: the same 36,000 messages sent straight on the links, without the outbox.

    .venv/bin/python benchmarks/ocpp_front.py [--chargers 100] [--factor 20] [--hours 1] [--steady-s 10]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)
sys.path.insert(0, os.path.join(ROOT_DIR, "tests", "front", "ocpp"))


def serve_backend(port: int) -> None:
    """The bare backend (run in its own process): answers every CALL at once."""
    from websockets.asyncio.server import serve
    counter = {"tx": 0}
    now = "2026-01-01T00:00:00Z"

    async def handler(ws):
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] != 2:
                continue
            action = msg[2]
            if action == "BootNotification":
                payload = {"status": "Accepted", "currentTime": now, "interval": 300}
            elif action == "StartTransaction":
                counter["tx"] += 1
                payload = {"transactionId": counter["tx"], "idTagInfo": {"status": "Accepted"}}
            elif action == "Heartbeat":
                payload = {"currentTime": now}
            elif action == "Authorize":
                payload = {"idTagInfo": {"status": "Accepted"}}
            else:
                payload = {}
            await ws.send(json.dumps([3, msg[1], payload]))

    async def main():
        async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"]):
            print("READY", flush=True)
            await asyncio.Future()

    asyncio.run(main())


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--serve-backend":
    serve_backend(int(sys.argv[2]))
    sys.exit(0)

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()
from twisted.internet import defer, reactor, task  # noqa: E402

from evc.etcdserver import EtcdServer, free_port  # noqa: E402
from evc.instance import Context  # noqa: E402
from evc.front.ocpp import OcppFront, OcppFrontConfig  # noqa: E402
from evc.store.etcd import EtcdStore  # noqa: E402
from evc.store.interface import Put  # noqa: E402
from evc.testing import wait_for  # noqa: E402
from front_helpers import FakeCharger, Site  # noqa: E402


class ScaledClock:
    """IReactorTime running `factor` times faster than the reactor."""

    def __init__(self, reactor, factor: float):
        self.reactor = reactor
        self.factor = factor
        self._r0 = reactor.seconds()
        self._t0 = time.time()

    def seconds(self) -> float:
        return self._t0 + (self.reactor.seconds() - self._r0) * self.factor

    def callLater(self, delay, f, *args, **kw):
        return self.reactor.callLater(max(0.0, delay) / self.factor, f, *args, **kw)

    def getDelayedCalls(self):
        return self.reactor.getDelayedCalls()


class ScaledSite(Site):
    def __init__(self, store, reactor, clock, root):
        super().__init__(store, reactor, root)
        self.clock = clock

    def ctx(self, kind, name, state=None):
        return Context(kind=kind, name=name, clock=self.clock, state=state or self.state, resolve=self.resolve,
                       store=self.store, root=self.root, reactor=self.reactor, events=self.events, find=self.find)


class NullState:
    def set(self, path, value, deadband=None):
        pass

    def update(self, values, deadband=None):
        pass

    def delete(self, path):
        pass


class Backend:
    def __init__(self):
        self.port = free_port()
        self.proc = None

    async def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-backend", str(self.port)],
                                     stdout=subprocess.PIPE)
        # Reading one line blocks a few hundred ms at most: done in a thread so the reactor keeps running.
        line = await defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.to_thread(self.proc.stdout.readline)))
        assert line.strip() == b"READY", line

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def run(n_chargers: int, factor: float, hours: float, steady_s: float):
    rows = []
    with EtcdServer() as etcd:
        store = EtcdStore(etcd.url, reactor)
        backend = Backend()
        await backend.start()
        clock = ScaledClock(reactor, factor)
        site = ScaledSite(store, reactor, clock, "/bench/ocpp")
        site.state = NullState()
        chargers = []
        for i in range(n_chargers):
            c = FakeCharger(site.ctx("charger", f"c{i:03d}"))
            await c.start()
            site.chargers[c.ctx.name] = c
            chargers.append(c)
        config = OcppFrontConfig(url=f"ws://127.0.0.1:{backend.port}/ocpp", meter_value_sample_interval_s=10,
                                 heartbeat_s=0, ping_interval_s=0, reconnect_min_s=0.5 * factor,
                                 reconnect_max_s=1.0 * factor)
        front = OcppFront(site.ctx("front", "up"), config)
        site.fronts["up"] = front
        front.startService()
        bridged = list(front.bridged.values())
        await wait_for(lambda: all(b.link.accepted for b in bridged), 60, "every charger booted")
        def arrive(c):
            c.plug()
            c.authorize("BENCH")
            c.charge(16.0, energy_Wh=1)

        # Cars arrive spread over one sample interval (their transactions start apart, as on a real site).
        for i, c in enumerate(chargers):
            clock.callLater(10.0 * i / n_chargers, arrive, c)
        await wait_for(lambda: all(b.records and all(r["transaction_id"] for r in b.records.values())
                                   for b in bridged), 60, "every transaction started")

        # -- steady: MeterValues every 10 s (compressed), through the outbox --
        for b in bridged:
            b.delivered.clear()
        r0 = reactor.seconds()
        await task.deferLater(reactor, steady_s, lambda: None)        # a measuring window, not a wait for a result
        span = reactor.seconds() - r0
        lat = [s / factor for b in bridged for a, s in b.delivered if a == "MeterValues"]
        rate = len(lat) / span
        offered = n_chargers / 10 * factor

        # -- baseline: the same load sent straight on the links --
        for b in bridged:
            b.keys["MeterValueSampleInterval"] = 0
            b._arm_sampler()
        await wait_for(lambda: all(not len(b.outbox) and not b._sending for b in bridged), 30, "outboxes empty")
        direct: list[float] = []

        def send_direct(b):
            t0 = reactor.seconds()
            payload = {"connectorId": 1, "transactionId": next(iter(b.records.values()))["transaction_id"],
                       "meterValue": [b._sample("Sample.Periodic")]}
            b.link.call("MeterValues", payload).addCallback(lambda _: direct.append(reactor.seconds() - t0))

        loops = [task.LoopingCall(send_direct, b) for b in bridged]
        for i, loop in enumerate(loops):
            loop.clock = clock
            clock.callLater(10.0 * i / n_chargers, loop.start, 10.0, now=True)
        r0 = reactor.seconds()
        await task.deferLater(reactor, steady_s, lambda: None)
        span_direct = reactor.seconds() - r0
        for loop in loops:
            if loop.running:
                loop.stop()
        await task.deferLater(reactor, 0.5, lambda: None)              # let the last round trips land
        rows.append((f"steady MeterValues, {n_chargers} chargers / 10 s x{factor:g}: delivered",
                     f"{rate:.0f}/s", f"offered {offered:.0f}/s; direct {len(direct) / span_direct:.0f}/s",
                     rate / offered, "keeps up" if rate > 0.95 * offered else "FALLS BEHIND"))
        rows.append(("  outbox latency p50 (queued -> CALLRESULT)", f"{pct(lat, 50) * 1e3:.1f} ms",
                     f"direct round trip {pct(direct, 50) * 1e3:.1f} ms", pct(lat, 50) / pct(direct, 50), ""))
        rows.append(("  outbox latency p99", f"{pct(lat, 99) * 1e3:.1f} ms",
                     f"direct round trip {pct(direct, 99) * 1e3:.1f} ms", pct(lat, 99) / pct(direct, 99), ""))
        # What the persistence costs at least: one etcd transaction, alone, on the same etcd.
        txn = []
        for i in range(200):
            t0 = reactor.seconds()
            await store.txn((), [Put(f"/bench/probe/{i % 10}", b"x" * 300)])
            txn.append(reactor.seconds() - t0)
        rows.append(("  (one etcd txn alone, p50 / p99)", f"{pct(txn, 50) * 1e3:.1f} ms",
                     f"p99 {pct(txn, 99) * 1e3:.1f} ms", None, "the floor of the outbox latency"))

        # -- a one-hour outage: the backlog is queued (and written) while the backend is down --
        backend.stop()
        await wait_for(lambda: not any(b.link.accepted for b in bridged), 30, "every link down")
        per_charger = int(hours * 3600 / 10)
        t_queue = reactor.seconds()
        for b in bridged:
            for _ in range(per_charger):
                b._sample_tick()
        await wait_for(lambda: all(not b.outbox.unwritten for b in bridged), 300, "the backlog written to etcd")
        t_queue = reactor.seconds() - t_queue
        total = per_charger * n_chargers
        for b in bridged:
            b.delivered.clear()
        await backend.start()
        t0 = reactor.seconds()
        await wait_for(lambda: all(not len(b.outbox) for b in bridged), 1800, "the backlog delivered", poll_s=0.1)
        drain = reactor.seconds() - t0

        # -- baseline: the same number of messages sent straight on the links, one at a time per charger --
        async def straight(b):
            tx = next(iter(b.records.values()))["transaction_id"]
            payload = {"connectorId": 1, "transactionId": tx, "meterValue": [b._sample("Sample.Periodic")]}
            for _ in range(per_charger):
                await b.link.call("MeterValues", payload)

        t1 = reactor.seconds()
        await defer.gatherResults([defer.ensureDeferred(straight(b)) for b in bridged])
        direct_drain = reactor.seconds() - t1
        rows.append((f"{hours:g} h outage backlog: {total} messages queued to etcd", f"{t_queue:.1f} s",
                     "", None, f"{total / t_queue:.0f} appends/s"))
        rows.append((f"{hours:g} h outage backlog: drained after reconnect", f"{drain:.1f} s",
                     f"direct {direct_drain:.1f} s", drain / direct_drain, "incl. reconnect + boot"))
        rows.append(("  sustained delivery rate while draining", f"{total / drain:.0f}/s",
                     f"direct {total / direct_drain:.0f}/s", (total / drain) / (total / direct_drain), ""))
        await front.stopService()
        for c in chargers:
            await c.stop()
        backend.stop()
        await store.close()
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'EVC':>10}  {'baseline (same run)':<34} {'ratio':>6}  note")
    for name, val, base, ratio, note in rows:
        r = f"{ratio:.2f}" if ratio is not None else ""
        print(f"{name:<{width}}  {val:>10}  {base:<34} {r:>6}  {note}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=100)
    ap.add_argument("--factor", type=float, default=20.0, help="time compression of the steady part")
    ap.add_argument("--hours", type=float, default=1.0, help="length of the simulated outage")
    ap.add_argument("--steady-s", type=float, default=10.0, help="real seconds of each steady window")
    args = ap.parse_args()
    rc = []
    d = defer.ensureDeferred(run(args.chargers, args.factor, args.hours, args.steady_s))
    d.addErrback(lambda f: (f.printTraceback(), rc.append(1)))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    sys.exit(rc[0] if rc else 0)
