"""OCPP central system under load: EVC's server/ocpp against a bare ocpp + websockets CS, 100 and 1,000 chargers.

For each N, in the same run and on loopback only:
- bare: benchmarks/ocpp_bare_cs.py, its own process;
- evc:  `twistd -n evc` on a throwaway etcd (evc/etcdserver.py) with one server/ocpp and N charger/ocpp instances
        (cp_id = the charger's name, meter_interval_s 0 and local_list false, so after the base profile the
        connection carries the same Boot/Heartbeat/MeterValues traffic as the bare one).
The load generator (benchmarks/ocpp_loadgen.py) runs as a separate process: it connects N chargers and boots them,
holds them while this script reads the server's RSS, then sends Heartbeat/MeterValues at --rate CALLs/s for
--rate-s seconds, then back to back for --saturate-s seconds.

Table: time to connect all, connect p99, boot p99, round trips at the fixed rate (p50/p99), saturated throughput,
server RSS per connection ((RSS held - RSS before) / N), connections still held at the end; then EVC/bare ratios.
Targets: 1,000 chargers held; EVC throughput >= 0.7 x bare; p99 < 100 ms at 500 msgs/s.

    .venv/bin/python benchmarks/ocpp_load.py [--counts 100,1000] [--sides bare,evc] [--rate 500]
        [--rate-s 10] [--saturate-s 10] [--rounds 3] [--json out.json]
On a shared or busy machine use --rounds 3: each measurement is repeated, bare and EVC interleaved, and the
median round (by saturated throughput) is shown; server CPU per CALL is the figure least moved by neighbours.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from evc.etcdserver import EtcdServer, free_port  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TXN_OPS = 100                     # etcd 3.4 allows 128 operations per transaction by default


def raise_open_files_limit() -> int:
    """Children inherit it: the servers and the load generator each hold N sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(cond, timeout_s: float, what: str, proc: subprocess.Popen | None = None, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        result = cond()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s} s")
        time.sleep(poll_s)


# -- etcd over its JSON gateway (blocking; this script is not on a reactor) --------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def etcd_put_many(url: str, kv: dict[str, str]) -> None:
    items = list(kv.items())
    for i in range(0, len(items), TXN_OPS):
        ops = [{"requestPut": {"key": _b64(k), "value": _b64(v)}} for k, v in items[i:i + TXN_OPS]]
        etcd_post(url, "/v3/kv/txn", {"success": ops})


def etcd_keys(url: str, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    r = etcd_post(url, "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end), "keys_only": True})
    return [base64.b64decode(kv["key"]).decode() for kv in r.get("kvs", [])]


def etcd_get(url: str, key: str) -> str | None:
    r = etcd_post(url, "/v3/kv/range", {"key": _b64(key)})
    kvs = r.get("kvs")
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


# -- the two servers -----------------------------------------------------------------------------------------

class BareServer:
    name = "bare"

    def __init__(self, n: int, workdir: str):
        self.n = n
        self.log = open(os.path.join(workdir, f"bare-{n}.log"), "wb")

    def start(self) -> str:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ocpp_bare_cs.py"), "--port", "0"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the bare CS did not start")
        return f"ws://127.0.0.1:{json.loads(line)['port']}/ocpp"

    def stop(self) -> None:
        _terminate(self.proc)
        self.log.close()


class EvcServer:
    """`twistd -n evc` with one server/ocpp and N charger/ocpp instances in a fresh root of a shared etcd."""
    name = "evc"

    def __init__(self, n: int, workdir: str, etcd: EtcdServer, prefix: str, startup_timeout_s: float,
                 site_defaults: bool = False, paced: bool = True, setup_concurrency: int | None = None):
        self.n, self.workdir, self.etcd, self.prefix = n, workdir, etcd, prefix
        self.paced = paced                     # False: server/ocpp's setup_concurrency 0 (the code before pacing)
        self.setup_concurrency = setup_concurrency     # else server/ocpp's setup_concurrency (None: its default)
        self.site_defaults = site_defaults     # a site as configured out of the box (meter values, local list)
        self.root = f"/bench/ocpp-{n}-{int(time.time() * 1000)}"
        self.startup_timeout_s = startup_timeout_s
        self.log_path = os.path.join(workdir, f"evc-{n}.log")

    def start(self) -> str:
        port = free_port()
        kv = {f"{self.root}/server/cs/type": "ocpp", f"{self.root}/server/cs/config/listen": f"127.0.0.1:{port}"}
        if not self.paced:
            kv[f"{self.root}/server/cs/config/setup_concurrency"] = "0"
        elif self.setup_concurrency is not None:
            kv[f"{self.root}/server/cs/config/setup_concurrency"] = str(self.setup_concurrency)
        for i in range(1, self.n + 1):
            base = f"{self.root}/charger/{self.prefix}{i:04d}"
            kv.update({f"{base}/type": "ocpp", f"{base}/config/server": "cs", f"{base}/config/A_max": "32"})
            if not self.site_defaults:
                kv.update({f"{base}/config/meter_interval_s": "0", f"{base}/config/local_list": "false"})
        etcd_put_many(self.etcd.url, kv)
        self.log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("EVC_ROOT", "EVC_ETCD_URL")}
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "evc", "--etcd", self.etcd.url, "--root", self.root],
                                     cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        listening_key = f"{self.root}/server/cs/state/listening"
        wait_until(lambda: etcd_get(self.etcd.url, listening_key), self.startup_timeout_s,
                   f"EVC's server/ocpp listening (see {self.log_path})", self.proc)

        def chargers_up():
            keys = etcd_keys(self.etcd.url, f"{self.root}/charger/")
            return sum(1 for k in keys if k.endswith("/state/connection")) >= self.n
        wait_until(chargers_up, self.startup_timeout_s, f"{self.n} charger/ocpp instances started", self.proc, 0.5)
        return f"ws://127.0.0.1:{port}/ocpp"

    def stop(self) -> None:
        _terminate(self.proc)
        self.log.close()


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- one measurement ------------------------------------------------------------------------------------------

def measure(server, n: int, args) -> dict:
    url = server.start()
    gen = None
    try:
        pid = server.proc.pid
        time.sleep(0.5)            # let start-up allocations settle before the "before" RSS (not a result wait)
        rss_before = rss_kB(pid)
        gen = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "ocpp_loadgen.py"), "--url", url, "--count", str(n),
             "--prefix", args.prefix, "--rate", str(args.rate), "--rate-s", str(args.rate_s),
             "--saturate-s", str(args.saturate_s), "--pause"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        event = json.loads(gen.stdout.readline() or "{}")
        if event.get("event") != "connected":
            gen.kill()
            raise RuntimeError(f"the load generator failed before connecting (exit {gen.wait()})")
        rss_held = rss_kB(pid)
        cpu_before = cpu_s(pid)
        gen.stdin.write("go\n")
        gen.stdin.flush()
        try:
            out, _ = gen.communicate(timeout=args.rate_s + args.saturate_s + 120)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the load generator did not finish in time") from None
        result = json.loads(out.strip().splitlines()[-1])
        result["cpu_s"] = round(cpu_s(pid) - cpu_before, 2)
        result["rss_before_kB"] = rss_before
        result["rss_held_kB"] = rss_held
        result["rss_per_conn_kB"] = round((rss_held - rss_before) / max(1, event["connected"]), 1)
        result["server_alive"] = server.proc.poll() is None
        return result
    finally:
        if gen is not None and gen.poll() is None:
            gen.kill()
            gen.wait()
        server.stop()


# -- report -----------------------------------------------------------------------------------------------------

COLUMNS = [
    ("held", "held", lambda r: f"{r['held']}/{r['count']}"),
    ("connect all s", "connect_all_s", lambda r: f"{r['connect_all_s']:.2f}"),
    ("connect p99 ms", None, lambda r: _fmt(r["connect_ms"]["p99"])),
    ("boot p99 ms", None, lambda r: _fmt(r["boot_ms"]["p99"])),
    ("rate msgs/s", None, lambda r: _fmt(r.get("rate", {}).get("msgs_per_s"))),
    ("rate p50 ms", None, lambda r: _fmt(r.get("rate", {}).get("rtt_ms", {}).get("p50"))),
    ("rate p99 ms", None, lambda r: _fmt(r.get("rate", {}).get("rtt_ms", {}).get("p99"))),
    ("sat msgs/s", None, lambda r: _fmt(r.get("saturate", {}).get("msgs_per_s"))),
    ("sat p99 ms", None, lambda r: _fmt(r.get("saturate", {}).get("rtt_ms", {}).get("p99"))),
    ("CPU us/msg", None, lambda r: _fmt(round(_cpu_us(r)) if _cpu_us(r) else None)),
    ("RSS/conn kB", None, lambda r: _fmt(r["rss_per_conn_kB"])),
    ("errors", None, lambda r: str(r["failure_count"] + r.get("rate", {}).get("errors", 0)
                                   + r.get("saturate", {}).get("errors", 0))),
]


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def print_table(results: dict, counts: list[int], sides: list[str], args) -> None:
    header = ["N", "CS"] + [c[0] for c in COLUMNS]
    rows = []
    for n in counts:
        for side in sides:
            r = results.get((n, side))
            if r is None:
                continue
            if "error" in r:
                rows.append([str(n), side, f"not measured: {r['error']}"])
            else:
                rows.append([str(n), side] + [c[2](r) for c in COLUMNS])
    widths = [max(len(h), *(len(row[i]) for row in rows if i < len(row) and len(row) > 3)) if rows else len(h)
              for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        if len(row) == 3:
            print("  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]), row[2]]))
        else:
            print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    print()
    for n in counts:
        evc, bare = results.get((n, "evc")), results.get((n, "bare"))
        if not evc or not bare or "error" in evc or "error" in bare:
            continue
        sat = _ratio(evc.get("saturate", {}).get("msgs_per_s"), bare.get("saturate", {}).get("msgs_per_s"))
        p99 = _ratio(_get(evc, "rate", "rtt_ms", "p99"), _get(bare, "rate", "rtt_ms", "p99"))
        rss = _ratio(evc["rss_per_conn_kB"], bare["rss_per_conn_kB"])
        con = _ratio(evc["connect_all_s"], bare["connect_all_s"])
        cpu = _ratio(_cpu_us(evc), _cpu_us(bare))
        print(f"N={n}: EVC/bare  throughput {sat}  (target >= 0.70)   p99 at {args.rate:.0f}/s {p99}   "
              f"CPU/msg {cpu}   RSS/conn {rss}   connect-all time {con}")
    for n in counts:
        evc = results.get((n, "evc"))
        if evc and "error" not in evc:
            p99 = evc.get("rate", {}).get("rtt_ms", {}).get("p99")
            verdict = "ok" if p99 is not None and p99 < 100 else "MISSED"
            print(f"N={n}: EVC p99 at {args.rate:.0f} msgs/s = {_fmt(p99)} ms (target < 100 ms: {verdict}); "
                  f"held {evc['held']}/{n}")


def _get(result: dict, *path):
    for key in path:
        result = (result or {}).get(key)
    return result


def _cpu_us(r: dict) -> float | None:
    """Server CPU time per CALL over the rate and saturated phases, in microseconds."""
    n = (_get(r, "rate", "rtt_ms", "n") or 0) + (_get(r, "saturate", "rtt_ms", "n") or 0)
    return r["cpu_s"] / n * 1e6 if n else None


def _ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.2f}"


def _median_round(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    good.sort(key=lambda r: _get(r, "saturate", "msgs_per_s") or 0)
    return good[(len(good) - 1) // 2]


# -- the reconnect storm, measured by an independent load generator (ocpp-rpc, strict mode) --------------------

RPC_DIR = os.path.join(HERE, "ocpp_rpc")
NODE = os.environ.get("NODE", "node")


def rpc_loadgen_ready() -> str | None:
    """None when benchmarks/ocpp_rpc is installed (`make bench` runs npm ci there), else why not."""
    if not os.path.isdir(os.path.join(RPC_DIR, "node_modules", "ocpp-rpc")):
        return f"the ocpp-rpc load generator is not installed: run `npm ci` in {RPC_DIR} (make bench does)"
    try:
        subprocess.run([NODE, "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return f"node ({NODE}) is not available to run the ocpp-rpc load generator"
    return None


def measure_storm(server, n: int, args) -> dict:
    """All N chargers connect at --connect-rate per s, then each sends --msg-rate CALLs/s for --duration-s."""
    url = server.start()
    try:
        pid = server.proc.pid
        time.sleep(0.5)            # let start-up work settle (not a result wait)
        cpu_before = cpu_s(pid)
        gen = subprocess.run(
            [NODE, os.path.join(RPC_DIR, "loadgen.js"), "--url", url, "--count", str(n), "--prefix", args.prefix,
             "--connect-rate", str(args.connect_rate), "--msg-rate", str(args.msg_rate),
             "--duration-s", str(args.duration_s), "--call-timeout-ms", str(int(args.call_timeout_s * 1000))],
            cwd=RPC_DIR, capture_output=True, text=True, timeout=args.duration_s + args.call_timeout_s + 120)
        if gen.returncode != 0 or not gen.stdout.strip():
            raise RuntimeError(f"the ocpp-rpc load generator failed ({gen.returncode}): {gen.stderr.strip()[-300:]}")
        result = json.loads(gen.stdout.strip().splitlines()[-1])
        result["cpu_s"] = round(cpu_s(pid) - cpu_before, 2)
        result["server_alive"] = server.proc.poll() is None
        result["loadgen_notes"] = gen.stderr.strip().splitlines()[:5]
        return result
    finally:
        server.stop()


STORM_COLUMNS = [
    ("booted", lambda r: f"{r['booted']}/{r['count']}"),
    ("open p50", lambda r: _fmt(r["open_ms"]["p50"])),
    ("open p99", lambda r: _fmt(r["open_ms"]["p99"])),
    ("boot p50", lambda r: _fmt(r["boot_ms"]["p50"])),
    ("boot p99", lambda r: _fmt(r["boot_ms"]["p99"])),
    ("RT p50", lambda r: _fmt(r["rt_ms"]["p50"])),
    ("RT p99", lambda r: _fmt(r["rt_ms"]["p99"])),
    ("RT max", lambda r: _fmt(r["rt_ms"]["max"])),
    ("steady p99", lambda r: _fmt(r["rt_steady_ms"]["p99"])),
    ("CALLs", lambda r: str(r["rt_ms"]["n"])),
    ("timeouts", lambda r: str(r["timeouts"] + r["connect_failures"])),
    ("errors", lambda r: str(r["call_errors"] + r["strict_failures"] + r["closed_early"])),
    ("CPU s", lambda r: _fmt(r["cpu_s"])),
]


def print_storm_table(rounds: dict, counts: list[int], sides: list[str], args) -> None:
    """Every round, bare and EVC side by side, then the EVC/bare ratios per round and the goal's verdict."""
    header = ["N", "round", "CS"] + [c[0] for c in STORM_COLUMNS]
    rows = []
    for n in counts:
        for i in range(args.rounds):
            for side in sides:
                runs = rounds.get((n, side), [])
                if i >= len(runs):
                    continue
                r = runs[i]
                rows.append([str(n), str(i + 1), side] + (
                    [f"not measured: {r['error']}"] if "error" in r else [c[1](r) for c in STORM_COLUMNS]))
    full = [row for row in rows if len(row) > 4]
    widths = [max([len(h)] + [len(row[i]) for row in full]) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)) + "   (ms; open = websocket open, "
          "boot = BootNotification, during the ramp)")
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)) if len(row) > 4 else "  ".join(row))
    print()
    for n in counts:
        for side in [s for s in sides if s != "bare"]:
            for i, (evc, bare) in enumerate(zip(rounds.get((n, side), []), rounds.get((n, "bare"), []))):
                if "error" in evc or "error" in bare:
                    continue
                p99 = _ratio(evc["rt_ms"]["p99"], bare["rt_ms"]["p99"])
                ok = (evc["rt_ms"]["p99"] <= 2 * bare["rt_ms"]["p99"] and evc["rt_ms"]["max"] < 150
                      and evc["open_ms"]["p50"] < 20 and evc["timeouts"] + evc["connect_failures"] == 0
                      and evc["booted"] == n)
                print(f"N={n} round {i + 1}: {side}/bare  RT p99 {p99} (goal <= 2)   RT max "
                      f"{_ratio(evc['rt_ms']['max'], bare['rt_ms']['max'])}   open p50 "
                      f"{_ratio(evc['open_ms']['p50'], bare['open_ms']['p50'])}   boot p50 "
                      f"{_ratio(evc['boot_ms']['p50'], bare['boot_ms']['p50'])}   CPU "
                      f"{_ratio(evc['cpu_s'], bare['cpu_s'])}   goal (p99 <= 2x bare, max < 150 ms, open p50 < 20 ms, "
                      f"no timeouts): {'met' if ok else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loadgen", default="ocpp-rpc", choices=["ocpp-rpc", "python"],
                        help="ocpp-rpc: the reconnect storm measured by benchmarks/ocpp_rpc (node); "
                             "python: benchmarks/ocpp_loadgen.py (fixed rate, then saturated)")
    parser.add_argument("--connect-rate", type=float, default=200.0, help="ocpp-rpc: websockets opened per s")
    parser.add_argument("--msg-rate", type=float, default=1.0, help="ocpp-rpc: CALLs per s per charger")
    parser.add_argument("--duration-s", type=float, default=30.0, help="ocpp-rpc: from the first connect to the end")
    parser.add_argument("--call-timeout-s", type=float, default=10.0, help="ocpp-rpc: a CALL unanswered is a timeout")
    parser.add_argument("--counts", default=None, help="charger counts, comma-separated "
                        "(default 1000 with ocpp-rpc, 100,1000 with python)")
    parser.add_argument("--sides", default="bare,evc", help="which central systems: bare, evc, evc-unpaced (EVC with "
                        "server/ocpp's setup_concurrency 0: the set-ups of a storm not paced)")
    parser.add_argument("--setup-concurrency", type=int, help="server/ocpp's setup_concurrency for the evc side")
    parser.add_argument("--rate", type=float, default=500.0, help="CALLs/s of the fixed-rate phase")
    parser.add_argument("--rate-s", type=float, default=10.0)
    parser.add_argument("--saturate-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every measurement; the table shows each one's median round by throughput")
    parser.add_argument("--prefix", default="lg")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0, help="EVC start-up with N chargers")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    storm = args.loadgen == "ocpp-rpc"
    if args.counts is None:
        args.counts = "1000" if storm else "100,1000"
    counts = [int(x) for x in args.counts.split(",") if x]
    if storm and (why := rpc_loadgen_ready()):
        parser.error(why)
    sides = [s for s in args.sides.split(",") if s]
    if set(sides) - {"bare", "evc", "evc-unpaced"}:
        parser.error("--sides takes bare, evc and/or evc-unpaced")
    limit = raise_open_files_limit()
    if max(counts) * 2 + 100 > limit:
        parser.error(f"{max(counts)} chargers need more open files than the limit {limit}")

    workdir = tempfile.mkdtemp(prefix="evc-ocpp-bench-")
    etcd = EtcdServer().start() if {"evc", "evc-unpaced"} & set(sides) else None
    rounds: dict = {}
    try:
        for r in range(args.rounds):
            for n in counts:
                for side in sides:
                    print(f"... round {r + 1}: {side} CS, {n} chargers", file=sys.stderr, flush=True)
                    server = BareServer(n, workdir) if side == "bare" else EvcServer(
                        n, workdir, etcd, args.prefix, args.startup_timeout_s, site_defaults=storm,
                        paced=side != "evc-unpaced", setup_concurrency=args.setup_concurrency)
                    try:
                        outcome = measure_storm(server, n, args) if storm else measure(server, n, args)
                    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
                        outcome = {"error": str(e)}
                        print(f"    {side} with {n} chargers not measured: {e}", file=sys.stderr, flush=True)
                    rounds.setdefault((n, side), []).append(outcome)
    finally:
        if etcd is not None:
            etcd.cleanup()
    if storm:
        load = os.getloadavg()
        print(f"OCPP central system under a reconnect storm, loopback, {os.cpu_count()} CPUs (load average before the "
              f"table {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}); ocpp-rpc load generator (strict mode, node, its "
              f"own process): N chargers connecting at {args.connect_rate:.0f}/s, each then sending "
              f"{args.msg_rate:g} CALL/s until {args.duration_s:.0f} s; EVC with the default charger/ocpp config "
              f"(meter values, local list); {args.rounds} round(s), bare and EVC interleaved")
        print_storm_table(rounds, counts, sides, args)
        print(f"(logs in {workdir})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({f"{side}-{n}": runs for (n, side), runs in rounds.items()}, f, indent=1)
        return 0 if all("error" not in r for runs in rounds.values() for r in runs) else 1
    results = {key: _median_round(runs) for key, runs in rounds.items()}
    print(f"OCPP central system, loopback, {os.cpu_count()} CPUs; load generator in its own process; "
          f"fixed rate {args.rate:.0f} CALLs/s for {args.rate_s:.0f} s, then saturated for {args.saturate_s:.0f} s; "
          f"{args.rounds} round(s), median shown")
    print_table(results, counts, sides, args)
    print(f"(logs in {workdir})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{side}-{n}": runs for (n, side), runs in rounds.items()}, f, indent=1)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
