"""Benchmark: front/manual's GET /api/v1/site and its live stream, for sites of 10, 100 and 500 chargers.

Run: .venv/bin/python benchmarks/web_api.py [--requests N] [--streams N]
The front runs on an in-memory store on the real reactor, over real HTTP on loopback. Baseline, measured in the same
run: a twisted.web resource that returns the same JSON bytes precomputed (what HTTP and the client cost alone), so the
ratio is what building the site from the mirrored tree costs on top. The stream: one charger's setpoint written to
the store, until every one of N open streams has its event (the store's watch, the tick of 0.1 s, the fan-out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()

import treq  # noqa: E402
from twisted.internet import defer, protocol, reactor, task  # noqa: E402
from twisted.web import resource, server  # noqa: E402

from evc.events import EventBus  # noqa: E402
from evc.front.manual import ManualFront  # noqa: E402
from evc.instance import Context  # noqa: E402
from evc.store.memory import MemoryStore  # noqa: E402
from evc.testing import RecordingState  # noqa: E402

ROOT = "/evc/bench"


def fill(store: MemoryStore, n: int) -> None:
    leaves = {"meter/grid/type": "SDM630", "meter/grid/config/bus": "127.0.0.1:1", "meter/grid/config/bus_addr": "1",
              "control/c/type": "builtin", "control/c/config/meter": "grid", "control/c/config/A_max": "400"}
    for p in ("L1", "L2", "L3"):
        leaves[f"meter/grid/state/A/{p}"] = "123.4"
    for i in range(n):
        c = f"charger/c{i}"
        leaves.update({f"{c}/type": "EVCC_manual", f"{c}/config/conn": "bus", f"{c}/config/conn_port": str(i % 247 + 1),
                       f"{c}/config/mode": "ON", f"{c}/state/online": "true", f"{c}/state/vehicle": "charging",
                       f"{c}/state/setpoint_A": "10.0", f"{c}/data/sessions/current": f"S{i}",
                       f"{c}/data/sessions/S{i}": '{"id": "S%d", "state": "charging", "start_time": '
                                                  '"2026-01-01T00:00:00.000Z", "energy_Wh": 1234}' % i,
                       f"control/c/state/allocations/c{i}/reason": "share of the site"})
        for p in ("L1", "L2", "L3"):
            leaves[f"{c}/state/actual_A/{p}"] = "9.9"
    for k, v in leaves.items():
        store.put(f"{ROOT}/{k}", v.encode())


async def timed_gets(url: str, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await treq.get(url, persistent=False)
        await r.content()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


class Counter(protocol.Protocol):
    def __init__(self, seen: list, marker: bytes):
        self.seen, self.marker, self.buf, self.hit = seen, marker, b"", False

    def dataReceived(self, data):
        self.buf += data
        if not self.hit and self.marker in self.buf:
            self.hit = True
            self.seen.append(time.perf_counter())


async def stream_latency(front, store: MemoryStore, base: str, n_streams: int) -> float:
    seen: list = []
    readers = []
    for _ in range(n_streams):
        r = await treq.get(base + "/api/v1/events", unbuffered=True, persistent=False)
        c = Counter(seen, b'"setpoint_A":7.0')
        r.deliverBody(c)
        readers.append(c)
    while len(front.hub.streams) < n_streams:
        await task.deferLater(reactor, 0.01, lambda: None)
    t0 = time.perf_counter()
    store.put(f"{ROOT}/charger/c0/state/setpoint_A", b"7.0")
    while len(seen) < n_streams:
        await task.deferLater(reactor, 0.005, lambda: None)
    for c in readers:
        c.transport._producer.abortConnection()
    return (max(seen) - t0) * 1000


class Fixed(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes):
        super().__init__()
        self.body = body

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return self.body


async def run(args) -> None:
    rows = []
    for n in (10, 100, 500):
        store = MemoryStore(clock=reactor)
        fill(store, n)
        ctx = Context(kind="front", name="local", clock=reactor, state=RecordingState(), resolve=lambda k, nm: None,
                      store=store, root=ROOT, reactor=reactor, events=EventBus())
        front = ManualFront(ctx, ManualFront.Config(listen="127.0.0.1:0"))
        front.startService()
        while front._watch is None:
            await task.deferLater(reactor, 0.01, lambda: None)
        base = f"http://{front.listening}"
        body = (await (await treq.get(base + "/api/v1/site", persistent=False)).content())
        fixed = reactor.listenTCP(0, server.Site(Fixed(body)), interface="127.0.0.1")
        site_ms = await timed_gets(base + "/api/v1/site", args.requests)
        base_ms = await timed_gets(f"http://127.0.0.1:{fixed.getHost().port}/", args.requests)
        ev_ms = await stream_latency(front, store, base, args.streams)
        rows.append((n, len(body), site_ms, base_ms, ev_ms))
        await fixed.stopListening()
        await front.stopService()
    print(f"{'chargers':>8} {'site bytes':>10} {'GET /site ms':>13} {'baseline ms':>12} {'ratio':>6} "
          f"{'event to ' + str(args.streams) + ' streams ms':>24}")
    for n, size, site_ms, base_ms, ev_ms in rows:
        print(f"{n:>8} {size:>10} {site_ms:>13.2f} {base_ms:>12.2f} {site_ms / base_ms:>6.1f} {ev_ms:>24.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--streams", type=int, default=20)
    args = p.parse_args()
    d = defer.ensureDeferred(run(args))
    d.addErrback(lambda f: (f.printTraceback(), None))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    main()
