"""Load generator for OCPP 1.6J central systems: N charge point connections, Boot, then Heartbeat + MeterValues.

Run as its own process by benchmarks/ocpp_load.py (so its work never counts against the server measured):

    .venv/bin/python benchmarks/ocpp_loadgen.py --url ws://127.0.0.1:9000/ocpp --count 1000 [--prefix lg]
        [--rate 500 --rate-s 10] [--saturate-s 10] [--password P] [--pause]

1. connect: opens `count` websockets to <url>/<prefix>NNNN (subprotocol ocpp1.6, `--concurrency` handshakes at a
   time, retrying a refused one until `--connect-deadline-s`), each followed by a BootNotification;
2. with --pause: prints {"event": "connected", ...} and waits for one line on stdin (the caller measures the
   server's memory with every connection held);
3. rate: every charger sends Heartbeat and MeterValues alternately so that all together send `--rate` CALLs/s
   for `--rate-s` seconds (one CALL in flight per connection, as OCPP-J requires);
4. saturate: every charger sends back to back for `--saturate-s` seconds: the server's throughput.
It answers the server's own CALLs (SetChargingProfile, ChangeConfiguration, GetConfiguration ...) as a simple
charge point would. Frames are built by hand (not the ocpp library) to keep the generator light.

Prints one JSON line: connect times, boot round trips, each phase's CALLs/s and p50/p99/max round trip in ms,
errors, how many connections were still open at the end, how many server CALLs it answered.
Run without --url it only says what it is for (so `make bench`, which runs every script here, passes over it).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import sys
import time
from datetime import datetime, timezone


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentiles_ms(samples_s: list[float]) -> dict:
    if not samples_s:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    xs = sorted(samples_s)

    def pick(q):
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)
    return {"n": len(xs), "p50": pick(0.50), "p99": pick(0.99), "max": round(xs[-1] * 1000, 2)}


def stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def meter_values_payload(n: int) -> dict:
    energy = 1000.0 + n * 3.1
    sampled = [{"value": f"{energy:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh",
                "context": "Sample.Periodic"},
               {"value": "11040.0", "measurand": "Power.Active.Import", "unit": "W", "context": "Sample.Periodic"}]
    sampled += [{"value": "16.00", "measurand": "Current.Import", "phase": f"L{i}", "unit": "A",
                 "context": "Sample.Periodic"} for i in (1, 2, 3)]
    return {"connectorId": 1, "meterValue": [{"timestamp": stamp(), "sampledValue": sampled}]}


# What a simple charge point answers to the server's CALLs.
def answer(action: str, payload: dict) -> dict | None:
    if action == "GetConfiguration":
        keys = payload.get("key") or ["SupportedFeatureProfiles"]
        known = [{"key": "SupportedFeatureProfiles", "readonly": True, "value": "Core,SmartCharging,RemoteTrigger"}]
        return {"configurationKey": [k for k in known if k["key"] in keys],
                "unknownKey": [k for k in keys if k != "SupportedFeatureProfiles"]}
    if action == "GetLocalListVersion":
        return {"listVersion": 0}
    if action == "GetCompositeSchedule":
        return {"status": "Rejected"}
    if action == "DataTransfer":
        return {"status": "UnknownVendorId"}
    if action == "UnlockConnector":
        return {"status": "Unlocked"}
    if action in ("SetChargingProfile", "ChangeConfiguration", "ChangeAvailability", "ClearChargingProfile",
                  "RemoteStartTransaction", "RemoteStopTransaction", "Reset", "ClearCache", "TriggerMessage",
                  "SendLocalList"):
        return {"status": "Accepted"}
    return None


class Charger:
    """One connection: a reader task that matches replies and answers the server, and call() for our CALLs."""

    def __init__(self, cp_id: str):
        self.cp_id = cp_id
        self.ws = None
        self.pending: dict[str, asyncio.Future] = {}
        self.next_id = 0
        self.reader: asyncio.Task | None = None
        self.server_calls = 0
        self.closed = False

    async def connect(self, url: str, password: str | None, timeout_s: float):
        import websockets
        headers = None
        if password:
            token = base64.b64encode(f"{self.cp_id}:{password}".encode()).decode()
            headers = {"Authorization": f"Basic {token}"}
        self.ws = await websockets.connect(f"{url}/{self.cp_id}", subprotocols=["ocpp1.6"],
                                           additional_headers=headers, open_timeout=timeout_s,
                                           ping_interval=None, max_queue=None)
        if self.ws.subprotocol != "ocpp1.6":
            await self.ws.close()
            raise ConnectionError(f"{self.cp_id}: the server did not agree to ocpp1.6")
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self):
        import websockets
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] in (3, 4):
                    fut = self.pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg[0] == 2:
                    self.server_calls += 1
                    result = answer(msg[2], msg[3])
                    if result is None:
                        reply = [4, msg[1], "NotSupported", f"{msg[2]} is not supported by the load generator", {}]
                    else:
                        reply = [3, msg[1], result]
                    await self.ws.send(json.dumps(reply))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self.cp_id}: connection closed"))

    async def call(self, action: str, payload: dict, timeout_s: float) -> tuple[float, bool]:
        """Send one CALL, wait for its reply; returns (round trip in s, ok)."""
        self.next_id += 1
        mid = str(self.next_id)
        fut = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        t0 = time.perf_counter()
        await self.ws.send(json.dumps([2, mid, action, payload]))
        try:
            msg = await asyncio.wait_for(fut, timeout_s)
        except (asyncio.TimeoutError, ConnectionError):
            self.pending.pop(mid, None)
            return time.perf_counter() - t0, False
        return time.perf_counter() - t0, msg[0] == 3


async def run(args) -> dict:
    chargers = [Charger(f"{args.prefix}{i:04d}") for i in range(1, args.count + 1)]
    sem = asyncio.Semaphore(args.concurrency)
    connect_s: list[float] = []
    boot_s: list[float] = []
    failures: list[str] = []
    attempts = 0
    deadline = time.monotonic() + args.connect_deadline_s

    async def bring_up(c: Charger):
        nonlocal attempts
        while True:
            async with sem:
                attempts += 1
                t0 = time.perf_counter()
                try:
                    await c.connect(args.url, args.password, args.call_timeout_s)
                except Exception as e:                      # refused, 404 before the server knows the id, ...
                    error = f"{type(e).__name__}: {e}"
                else:
                    connect_s.append(time.perf_counter() - t0)
                    rtt, ok = await c.call("BootNotification", {"chargePointVendor": "EVC-bench",
                                                                "chargePointModel": "loadgen"}, args.call_timeout_s)
                    boot_s.append(rtt)
                    if not ok:
                        failures.append(f"{c.cp_id}: BootNotification failed")
                    return
            if time.monotonic() > deadline:
                failures.append(f"{c.cp_id}: {error}")
                return
            await asyncio.sleep(0.2)       # a refused handshake: try again shortly (bounded by the deadline)

    t_connect = time.perf_counter()
    await asyncio.gather(*(bring_up(c) for c in chargers))
    connect_all_s = time.perf_counter() - t_connect
    up = [c for c in chargers if c.ws is not None and not c.closed]
    result = {
        "count": args.count, "connected": len(up), "connect_attempts": attempts,
        "connect_all_s": round(connect_all_s, 2), "connect_ms": percentiles_ms(connect_s),
        "boot_ms": percentiles_ms(boot_s), "failures": failures[:10], "failure_count": len(failures),
    }
    if args.pause:
        print(json.dumps({"event": "connected", "connected": len(up)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def phase(duration_s: float, rate: float | None) -> dict:
        """Every live charger sends Heartbeat / MeterValues; at `rate` CALLs/s in all, or back to back."""
        rtts: list[float] = []
        errors = 0
        start = time.perf_counter() + 0.05
        end = start + duration_s
        live = [c for c in up if not c.closed]

        async def drive(i: int, c: Charger):
            nonlocal errors
            n = 0
            interval = len(live) / rate if rate else 0.0
            next_t = start + (i / rate if rate else 0.0)
            while True:
                if rate:
                    delay = next_t - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_t += interval
                if time.perf_counter() >= end or c.closed:
                    return
                n += 1
                action, payload = ("Heartbeat", {}) if n % 2 else ("MeterValues", meter_values_payload(n))
                rtt, ok = await c.call(action, payload, args.call_timeout_s)
                if ok:
                    rtts.append(rtt)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(drive(i, c) for i, c in enumerate(live)))
        # Every CALL counted was sent inside the window; replies to the last ones may arrive just after it.
        return {"target_per_s": rate, "seconds": round(time.perf_counter() - t0, 2),
                "msgs_per_s": round(len(rtts) / duration_s, 1), "rtt_ms": percentiles_ms(rtts), "errors": errors}

    if up and args.rate_s > 0:
        result["rate"] = await phase(args.rate_s, args.rate)
    if up and args.saturate_s > 0:
        result["saturate"] = await phase(args.saturate_s, None)
    result["held"] = sum(1 for c in chargers if c.ws is not None and not c.closed)
    result["server_calls"] = sum(c.server_calls for c in chargers)
    await asyncio.gather(*(c.ws.close() for c in chargers if c.ws is not None), return_exceptions=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the central system's endpoint; /<id> is appended")
    parser.add_argument("--count", type=int, default=100, help="charger connections")
    parser.add_argument("--prefix", default="lg", help="charge point ids are <prefix>0001 ...")
    parser.add_argument("--password", help="HTTP basic auth password, the same for every charger")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight at once")
    parser.add_argument("--connect-deadline-s", type=float, default=60.0)
    parser.add_argument("--call-timeout-s", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=500.0, help="CALLs per second, all chargers together")
    parser.add_argument("--rate-s", type=float, default=10.0, help="seconds at --rate (0: skip)")
    parser.add_argument("--saturate-s", type=float, default=10.0, help="seconds back to back (0: skip)")
    parser.add_argument("--pause", action="store_true", help="wait for a stdin line once connected")
    args = parser.parse_args(argv)
    if not args.url:
        print("ocpp_loadgen.py is the load generator of benchmarks/ocpp_load.py; run that one "
              "(or this one with --url).")
        return 0
    raise_open_files_limit()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
