"""A small OCPP 1.6J central system for front/ocpp's tests, run as a separate process so tests can kill and restart it.

Not EVC's own central system: written directly on the ocpp library, as a backend someone else wrote would be.

    python upstream.py --port 9000 --record rec.jsonl [--behave '{"boot": "Pending"}'] [--tls CERT KEY]
                       [--password PW] [--tx-base 1000]

Prints "PORT <n>" once listening. Every frame it receives is appended to the record file as one JSON line
({"cp", "kind": "call"|"reply"|"raw", "action", "payload", "answer"}), flushed at once, so a test reads what arrived
even after killing it. Commands arrive on stdin, one JSON object per line:
    {"cmd": "call", "cp": "s1", "action": "RemoteStartTransaction", "payload": {...}}   -> a "result" record
    {"cmd": "raw", "cp": "s1", "frame": "not json"}                                        (send a raw frame)
    {"cmd": "behave", "set": {...}}                                                        (change behaviour)
Behaviour keys: boot (Accepted|Pending|Rejected), boot_interval, heartbeat_interval, callerror ({action: n}: answer
the next n CALLs of that action with a CALLERROR), authorize_delay_s, authorize ({idTag: status}, default Accepted),
start_status (idTagInfo status of StartTransaction), lose_answer ({"StartTransaction": n}: process the next n, then
drop the connection instead of answering).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
from datetime import datetime, timezone
from http import HTTPStatus

from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import serve

BEHAVE: dict = {"boot": "Accepted", "boot_interval": 300, "callerror": {}, "authorize_delay_s": 0, "authorize": {},
                "start_status": "Accepted"}
CONNECTED: dict[str, "Backend"] = {}
RECORD = None
TX = {"next": 1, "seen": {}}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def record(**doc) -> None:
    RECORD.write(json.dumps(doc, default=str) + "\n")
    RECORD.flush()


def maybe_fail(action: str) -> None:
    left = BEHAVE["callerror"].get(action, 0)
    if left:
        BEHAVE["callerror"][action] = left - 1
        raise InternalError(description=f"test backend refuses {action}")


class Backend(ChargePoint):
    async def route_message(self, raw_msg):
        try:
            doc = json.loads(raw_msg)
        except ValueError:
            doc = None
        if isinstance(doc, list) and doc and doc[0] in (3, 4):
            record(cp=self.id, kind="reply", frame=doc)
        await super().route_message(raw_msg)

    def _log(self, action, payload, answer="result"):
        record(cp=self.id, kind="call", action=action, payload=payload, answer=answer)

    @on(Action.boot_notification)
    def on_boot(self, **kw):
        self._log("BootNotification", kw)
        return call_result.BootNotification(current_time=now(), interval=int(BEHAVE["boot_interval"]),
                                            status=BEHAVE["boot"])

    @on(Action.heartbeat)
    def on_heartbeat(self, **kw):
        self._log("Heartbeat", kw)
        return call_result.Heartbeat(current_time=now())

    @on(Action.status_notification)
    def on_status(self, **kw):
        self._log("StatusNotification", kw)
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def authorize(self, id_tag, **kw):
        self._log("Authorize", {"id_tag": id_tag})
        if BEHAVE["authorize_delay_s"]:
            await asyncio.sleep(BEHAVE["authorize_delay_s"])
        return call_result.Authorize(id_tag_info={"status": BEHAVE["authorize"].get(id_tag, "Accepted")})

    @on(Action.start_transaction)
    async def on_start(self, connector_id, id_tag, meter_start, timestamp, **kw):
        payload = {"connector_id": connector_id, "id_tag": id_tag, "meter_start": meter_start, "timestamp": timestamp}
        try:
            maybe_fail("StartTransaction")
        except InternalError:
            self._log("StartTransaction", payload, "error")
            raise
        # A duplicate (the same start resent after a lost answer) gets the same transaction id.
        key = json.dumps([self.id, connector_id, id_tag, meter_start, timestamp])
        if key not in TX["seen"]:
            TX["seen"][key] = TX["next"]
            TX["next"] += 1
        payload["transaction_id"] = TX["seen"][key]
        if BEHAVE.get("lose_answer", {}).get("StartTransaction"):
            # Processed, but the answer never leaves: the connection drops first.
            BEHAVE["lose_answer"]["StartTransaction"] -= 1
            self._log("StartTransaction", payload, "lost")
            await self._connection.close()
            raise ConnectionError("answer lost on purpose")
        self._log("StartTransaction", payload)
        return call_result.StartTransaction(transaction_id=TX["seen"][key],
                                            id_tag_info={"status": BEHAVE["start_status"]})

    @on(Action.stop_transaction)
    def on_stop(self, **kw):
        try:
            maybe_fail("StopTransaction")
        except InternalError:
            self._log("StopTransaction", kw, "error")
            raise
        self._log("StopTransaction", kw)
        return call_result.StopTransaction()

    @on(Action.meter_values)
    def on_meter_values(self, **kw):
        try:
            maybe_fail("MeterValues")
        except InternalError:
            self._log("MeterValues", kw, "error")
            raise
        self._log("MeterValues", kw)
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, **kw):
        self._log("DataTransfer", kw)
        return call_result.DataTransfer(status="Accepted")


async def handler(ws):
    cp_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
    cp = Backend(cp_id, ws, response_timeout=10)
    CONNECTED[cp_id] = cp
    record(cp=cp_id, kind="connected", auth=ws.request.headers.get("Authorization"))
    try:
        await cp.start()
    except Exception as e:
        import traceback
        record(cp=cp_id, kind="disconnected", why=type(e).__name__, trace=traceback.format_exc()[-1500:])
    finally:
        if CONNECTED.get(cp_id) is cp:
            del CONNECTED[cp_id]


def make_auth_check(password: str | None):
    def check(connection, request):
        if password is None:
            return None
        cp_id = request.path.rstrip("/").rsplit("/", 1)[-1]
        want = "Basic " + base64.b64encode(f"{cp_id}:{password}".encode()).decode()
        if request.headers.get("Authorization") != want:
            record(cp=cp_id, kind="refused", why="basic auth")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong identity or password\n")
        return None
    return check


async def commands():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        asyncio.ensure_future(run(cmd))


async def run(cmd):
    if cmd["cmd"] == "behave":
        BEHAVE.update(cmd["set"])
        record(kind="behave", set=cmd["set"])
        return
    cp = CONNECTED.get(cmd["cp"])
    if cp is None:
        record(kind="result", cp=cmd["cp"], action=cmd.get("action"), error="not connected")
        return
    if cmd["cmd"] == "raw":
        await cp._connection.send(cmd["frame"])
        return
    payload = getattr(call, cmd["action"])(**cmd.get("payload", {}))
    try:
        result = await cp.call(payload, suppress=False)
        record(kind="result", cp=cmd["cp"], action=cmd["action"], result=result.__dict__)
    except Exception as e:
        record(kind="result", cp=cmd["cp"], action=cmd["action"], error=f"{type(e).__name__}: {e}")


async def main():
    global RECORD
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--record", required=True)
    p.add_argument("--behave", default="{}")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--password")
    p.add_argument("--tx-base", type=int, default=1)
    args = p.parse_args()
    RECORD = open(args.record, "a")
    BEHAVE.update(json.loads(args.behave))
    TX["next"] = args.tx_base
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*args.tls)
    async with serve(handler, "127.0.0.1", args.port, subprotocols=["ocpp1.6"], ssl=ctx,
                     process_request=make_auth_check(args.password)) as server:
        port = server.sockets[0].getsockname()[1]
        record(kind="listening", port=port)
        print(f"PORT {port}", flush=True)
        await commands()
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
