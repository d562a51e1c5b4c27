"""Core benchmarks: config change -> running, cold start of 500 meters, etcd writes of 100 noisy meters.

Runs against a throwaway etcd and in-process SDM630 simulators; prints one table, each row with a baseline
measured in the same run and the ratio. Usage: .venv/bin/python benchmarks/core.py [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from twisted.internet import asyncioreactor

asyncioreactor.install()
from twisted.internet import defer, reactor, task  # noqa: E402

from evc.etcdserver import EtcdServer  # noqa: E402
from evc.sim.modbus import listen_tcp  # noqa: E402
from evc.sim.sdm import SimSdm630  # noqa: E402
from evc.state import StateWriter  # noqa: E402
from evc.store import Put  # noqa: E402
from evc.store.etcd import EtcdStore  # noqa: E402
from evc.supervisor import Supervisor  # noqa: E402
from evc.testing import wait_for  # noqa: E402

UNITS_PER_PORT = 100


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Site:
    """N simulated meters (100 units per listening port) and their config in etcd."""

    def __init__(self, n, noise=0.0):
        self.sims, self.ports = [], []
        for start in range(0, n, UNITS_PER_PORT):
            devs = [SimSdm630(unit=u + 1, noise=noise, seed=start + u) for u in range(min(UNITS_PER_PORT, n - start))]
            for d in devs:
                d.set(V=230, A=(10, 8, 6), energy_Wh=1000)
            self.sims.extend(devs)
            self.ports.append(listen_tcp(reactor, devs, 0))

    def config(self, root, interval_s=1.0):
        kv = {}
        for i, _ in enumerate(self.sims):
            port = self.ports[i // UNITS_PER_PORT].getHost().port
            base = f"{root}/meter/m{i}"
            kv.update({f"{base}/type": "SDM630", f"{base}/config/bus": f"127.0.0.1:{port}",
                       f"{base}/config/bus_addr": str(i % UNITS_PER_PORT + 1),
                       f"{base}/config/interval_s": str(interval_s)})
        return kv

    def close(self):
        for p in self.ports:
            p.stopListening()


async def load(store, kv):
    items = [Put(k, v.encode()) for k, v in kv.items()]
    for i in range(0, len(items), 128):
        await store.txn((), items[i:i + 128])


async def start_evc(store, root, writer_cls=StateWriter):
    writer = writer_cls(store, root, reactor, tick_s=0.5)
    sup = Supervisor(store, root, writer, reactor, reactor)
    writer.startService()
    sup.startService()
    return writer, sup


async def stop_evc(writer, sup):
    await sup.stopService()
    await writer.stopService()


async def watch_latency(store, root, n):
    """Baseline: put -> watch event delivered, on the same etcd, no EVC in between."""
    got = {}
    w = await store.watch_prefix(f"{root}/probe/", lambda evs: [got.setdefault(e.key, time.perf_counter())
                                                                 for e in evs])
    out = []
    for i in range(n):
        key = f"{root}/probe/k{i}"
        t0 = time.perf_counter()
        await store.put(key, b"1")
        await wait_for(lambda: key in got, 5, "watch event")
        out.append(got[key] - t0)
    w.stop()
    return out


async def bench_config_change(store, n_instances, n_changes):
    root = "/bench/change"
    site = Site(n_instances)
    await load(store, site.config(root))
    writer, sup = await start_evc(store, root)
    await wait_for(lambda: len(sup.instances) == n_instances, 30, "all instances running")
    started = {}
    sup.events.subscribe(("instance", "meter"),
                         lambda topic, ev: ev[0] == "started" and started.setdefault(topic[2], time.perf_counter()))
    lat = []
    for i in range(n_changes):
        name = f"m{(i * 7) % n_instances}"
        started.pop(name, None)
        t0 = time.perf_counter()
        await store.put(f"{root}/meter/{name}/config/interval_s", f"{1.0 + (i + 1) / 1000:.3f}".encode())
        await wait_for(lambda: name in started, 5, f"{name} restarted", poll_s=0.001)
        lat.append(started[name] - t0)
        assert abs(sup.instances[("meter", name)].spec.config.interval_s - (1.0 + (i + 1) / 1000)) < 1e-9
    base = await watch_latency(store, root, n_changes)
    await stop_evc(writer, sup)
    site.close()
    return lat, base


async def bench_cold_start(store, n):
    root = "/bench/cold"
    site = Site(n)
    await load(store, site.config(root))
    t0 = time.perf_counter()
    r = await store.range(root + "/", prefix=True)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    writer, sup = await start_evc(store, root)
    await sup.ready
    t_running = time.perf_counter() - t0
    meters = [r.service for r in sup.instances.values()]
    await wait_for(lambda: all(not m.reading.stale for m in meters), 30, "first reading of every meter")
    t_read_all = time.perf_counter() - t0
    await stop_evc(writer, sup)
    site.close()
    return t_read, t_running, t_read_all, len(r.kvs)


class EveryReadingWriter(StateWriter):
    """The baseline: every reading written (no deadbands, no skipping unchanged values)."""

    def set(self, key, value, deadband=None):
        from evc.tree import leaf_text
        self._pending[key] = leaf_text(value)


async def bench_writes(store, n, seconds):
    out = {}
    for label, cls in (("deadband", StateWriter), ("every reading", EveryReadingWriter)):
        root = f"/bench/writes-{label.replace(' ', '-')}"
        site = Site(n, noise=0.002)    # realistic noise: 0.2 % on V, A, W
        await load(store, site.config(root, interval_s=1.0))
        writer, sup = await start_evc(store, root, cls)
        await wait_for(lambda: len(sup.instances) == n, 30, "running")
        await task.deferLater(reactor, 3, lambda: None)       # settle: first readings written
        w0, t0, tx0 = writer.writes, time.perf_counter(), writer.txns
        await task.deferLater(reactor, seconds, lambda: None)  # a measuring window, not a wait for a result
        dt = time.perf_counter() - t0
        out[label] = ((writer.writes - w0) / dt, (writer.txns - tx0) / dt)
        await stop_evc(writer, sup)
        site.close()
    return out


async def main(quick):
    rows = []
    with EtcdServer() as etcd:
        store = EtcdStore(etcd.url, reactor)
        n_inst, n_changes = (200, 50) if quick else (200, 200)
        lat, base = await bench_config_change(store, n_inst, n_changes)
        rows.append(("config change -> running, p50 (200 instances)", f"{pct(lat, 50) * 1e3:.1f} ms",
                     f"put->watch {pct(base, 50) * 1e3:.1f} ms", pct(lat, 50) / pct(base, 50), "-"))
        rows.append(("config change -> running, p99 (200 instances)", f"{pct(lat, 99) * 1e3:.1f} ms",
                     f"put->watch {pct(base, 99) * 1e3:.1f} ms", pct(lat, 99) / pct(base, 99),
                     "p99 < 50 ms: " + ("met" if pct(lat, 99) < 0.05 else "MISSED")))
        n_cold = 500
        t_read, t_running, t_first, nkeys = await bench_cold_start(store, n_cold)
        rows.append((f"cold start, {n_cold} meters: all running", f"{t_running * 1e3:.0f} ms",
                     f"range of {nkeys} keys {t_read * 1e3:.0f} ms", t_running / t_read,
                     "< 3 s: " + ("met" if t_running < 3 else "MISSED")))
        rows.append((f"cold start, {n_cold} meters: all read once", f"{t_first * 1e3:.0f} ms", "", None,
                     "< 3 s: " + ("met" if t_first < 3 else "MISSED")))
        w = await bench_writes(store, 100, 10 if quick else 30)
        rows.append(("etcd leaf writes/s, 100 meters @1 Hz, 0.2 % noise", f"{w['deadband'][0]:.0f}/s",
                     f"every reading {w['every reading'][0]:.0f}/s",
                     w["deadband"][0] / w["every reading"][0], "lower is better"))
        rows.append(("etcd txns/s (same run)", f"{w['deadband'][1]:.1f}/s",
                     f"every reading {w['every reading'][1]:.1f}/s", None, "one txn per tick"))
        await store.close()
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'EVC':>10}  {'baseline (same run)':<26} {'ratio':>7}  target")
    for name, val, base, ratio, target in rows:
        r = f"{ratio:.2f}" if ratio is not None else ""
        print(f"{name:<{width}}  {val:>10}  {base:<26} {r:>7}  {target}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rc = []
    d = defer.ensureDeferred(main(args.quick))
    d.addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), rc.append(1)))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    sys.exit(rc[0] if rc else 0)
