"""The baseline for benchmarks/ocpp_load.py: a bare OCPP 1.6J central system on the ocpp + websockets libraries.

It accepts any charge point id at ws://HOST:PORT/<anything>/<id> (subprotocol ocpp1.6), answers BootNotification
(Accepted), Heartbeat and MeterValues (and, so a real charger does not stall, StatusNotification, Authorize,
Start/StopTransaction) through the ocpp library's v16 ChargePoint with its schema validation, and keeps nothing.
It pings like EVC's server does by default (every 5 s, 10 s timeout) so both carry the same websocket work.

    .venv/bin/python benchmarks/ocpp_bare_cs.py --port 0      # prints {"port": N} once listening; SIGTERM stops it

Run without --port it only says what it is for (so `make bench`, which runs every script here, passes over it).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import signal
import sys
from datetime import datetime, timezone


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (each websocket is a file descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve_forever(host: str, port: int, heartbeat_s: int, ping_interval_s: float, ping_timeout_s: float):
    import websockets
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result
    from ocpp.v16.enums import Action
    from websockets.asyncio.server import serve

    tx_ids = itertools.count(1)

    def now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    class BareCs(ChargePoint):
        @on(Action.boot_notification)
        def on_boot(self, **_):
            return call_result.BootNotification(current_time=now(), interval=heartbeat_s, status="Accepted")

        @on(Action.heartbeat)
        def on_heartbeat(self):
            return call_result.Heartbeat(current_time=now())

        @on(Action.meter_values)
        def on_meter_values(self, **_):
            return call_result.MeterValues()

        @on(Action.status_notification)
        def on_status(self, **_):
            return call_result.StatusNotification()

        @on(Action.authorize)
        def on_authorize(self, **_):
            return call_result.Authorize(id_tag_info={"status": "Accepted"})

        @on(Action.start_transaction)
        def on_start(self, **_):
            return call_result.StartTransaction(transaction_id=next(tx_ids), id_tag_info={"status": "Accepted"})

        @on(Action.stop_transaction)
        def on_stop(self, **_):
            return call_result.StopTransaction()

    async def handler(ws):
        cp = BareCs(ws.request.path.rsplit("/", 1)[-1], ws)
        try:
            await cp.start()
        except websockets.exceptions.ConnectionClosed:
            pass

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler, host, port, subprotocols=["ocpp1.6"], ping_interval=ping_interval_s,
                     ping_timeout=ping_timeout_s, backlog=2048) as server:
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await stop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="port to listen on (0: any free one); without it, only a note")
    parser.add_argument("--heartbeat-s", type=int, default=300, help="interval given in BootNotification")
    parser.add_argument("--ping-interval-s", type=float, default=5.0)
    parser.add_argument("--ping-timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.port is None:
        print("ocpp_bare_cs.py is the baseline server of benchmarks/ocpp_load.py; run that one "
              "(or this one with --port).")
        return 0
    raise_open_files_limit()
    asyncio.run(serve_forever(args.host, args.port, args.heartbeat_s, args.ping_interval_s, args.ping_timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
