"""Test rig for EVC's central system: a site under the real Supervisor, and charge points that are not EVC's.

`LibChargePoint` is a charge point written directly with the `ocpp` library's v16 ChargePoint on a websockets client
(not evc.sim): it boots, reports, starts and stops transactions and records what the central system sends it.
`RawClient` speaks frames by hand, for malformed input. Tests are asyncio coroutines run on the reactor's loop
(`asyncio_test`): everything here waits on conditions with deadlines, never on fixed sleeps.
"""
from __future__ import annotations

import asyncio
import functools
import json
import uuid

import websockets
from ocpp.exceptions import NotSupportedError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from twisted.internet import defer, reactor

from evc.ocpp.bridge import from_deferred, to_deferred
from evc.ocpp.cs_auth import basic_auth_header
from evc.state import StateWriter
from evc.store.memory import MemoryStore
from evc.supervisor import Supervisor

ROOT = "/evc/t"
TEST_TIMEOUT_S = 30


def asyncio_test(fn):
    """Run an `async def` test as an asyncio task on the reactor's loop (pytest-twisted waits for the Deferred)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return to_deferred(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S), reactor)
    return run


async def until(condition, what: str, timeout_s: float = 5.0):
    """Poll `condition` until truthy (returns it); AssertionError naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait(d):
    """Await a Deferred from asyncio code."""
    return await from_deferred(d, reactor)


class Site:
    """A Supervisor with an in-memory store (or a given one) on the running reactor."""

    def __init__(self, store=None, root: str = ROOT):
        self.root = root
        self.store = store or MemoryStore(clock=reactor)
        self.state = StateWriter(self.store, root, reactor, tick_s=0.02)
        self.sup = Supervisor(self.store, root, self.state, reactor, reactor=reactor)
        self.started = False

    def put(self, key: str, value) -> defer.Deferred:
        text = value if isinstance(value, str) else json.dumps(value)
        return self.store.put(f"{self.root}/{key}", text.encode())

    def delete(self, key: str) -> defer.Deferred:
        return self.store.delete(f"{self.root}/{key}", prefix=True)

    def configure(self, kind: str, name: str, type_name: str | None, **config) -> list[defer.Deferred]:
        ds = []
        if type_name is not None:
            ds.append(self.put(f"{kind}/{name}/type", type_name))
        for key, value in config.items():
            ds.append(self.put(f"{kind}/{name}/config/{key}", value))
        return ds

    def server(self, name: str = "cs", **config):
        settings = {"listen": "127.0.0.1:0", "ping_interval_s": 0.5, "ping_timeout_s": 2, "call_timeout_s": 2}
        settings.update(config)
        return self.configure("server", name, "ocpp", **settings)

    def charger(self, name: str, **config):
        settings = {"server": "cs", "A_max": 16, "mode": "ON", "meter_interval_s": 0}
        settings.update(config)
        return self.configure("charger", name, "ocpp", **settings)

    def token(self, tag: str, **config):
        return self.configure("token", tag, None, **(config or {"status": "Accepted"}))

    async def start(self):
        self.state.startService()
        self.sup.startService()
        self.started = True
        await wait(self.sup.ready)

    async def settled(self):
        await wait(self.sup.settled())

    def instance(self, kind: str, name: str):
        running = self.sup.instances.get((kind, name))
        return running.service if running else None

    def leaf(self, key: str):
        result = self.store.range(f"{self.root}/{key}")
        if isinstance(result, defer.Deferred):
            result = result.result if result.called else None
        kvs = result.kvs if result is not None else ()
        return kvs[0].value.decode() if kvs else None

    async def aleaf(self, key: str):
        result = await wait(self.store.range(f"{self.root}/{key}"))
        return result.kvs[0].value.decode() if result.kvs else None

    def url(self, cp_id: str, server: str = "cs", scheme: str = "ws", path: str = "/ocpp") -> str:
        port = self.instance("server", server).port
        return f"{scheme}://127.0.0.1:{port}{path}/{cp_id}"

    async def stop(self):
        if not self.started:
            return
        self.started = False
        await wait(defer.maybeDeferred(self.sup.stopService))
        await wait(defer.maybeDeferred(self.state.stopService))


class LibChargePoint(ChargePoint):
    """A charge point made with the ocpp library. Answers are configurable; everything received is recorded."""

    def __init__(self, cp_id, ws, **kwargs):
        super().__init__(cp_id, ws, response_timeout=kwargs.pop("response_timeout", 5))
        self.profiles: list[tuple[int, dict]] = []
        self.profile_answer = "Accepted"      # or Rejected, NotSupported, or "callerror"
        self.local_lists: list[dict] = []
        self.list_version = 0
        self.configuration: list[tuple[str, str]] = []
        self.triggers: list[str] = []
        self.received: list[tuple[str, dict]] = []
        self.connector_status = "Available"
        self.config_keys = {"SupportedFeatureProfiles": "Core,SmartCharging,LocalAuthListManagement,RemoteTrigger",
                            "LocalAuthListEnabled": "true", "LocalAuthListMaxLength": "100",
                            "SendLocalListMaxLength": "50"}

    async def boot(self, vendor="LibVendor", model="LibModel", firmware="1.2.3"):
        return await self.call(call.BootNotification(charge_point_vendor=vendor, charge_point_model=model,
                                                     firmware_version=firmware))

    async def status(self, status: str, connector: int = 1, error_code: str = "NoError"):
        self.connector_status = status
        return await self.call(call.StatusNotification(connector_id=connector, error_code=error_code,
                                                       status=status))

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id, cs_charging_profiles):
        self.profiles.append((connector_id, cs_charging_profiles))
        if self.profile_answer == "callerror":
            raise NotSupportedError(description="smart charging is not supported")
        return call_result.SetChargingProfile(status=self.profile_answer)

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message, connector_id=None):
        self.triggers.append(requested_message)
        return call_result.TriggerMessage(status="Accepted")

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message, connector_id=None):
        if requested_message == "StatusNotification":
            await self.status(self.connector_status, connector_id or 1)

    @on(Action.change_configuration)
    def on_change_configuration(self, key, value):
        self.configuration.append((key, value))
        return call_result.ChangeConfiguration(status="Accepted")

    @on(Action.get_configuration)
    def on_get_configuration(self, key=None):
        keys = key or list(self.config_keys)
        known = [{"key": k, "readonly": True, "value": self.config_keys[k]} for k in keys if k in self.config_keys]
        unknown = [k for k in keys if k not in self.config_keys]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.send_local_list)
    def on_send_local_list(self, list_version, update_type, local_authorization_list=None):
        self.local_lists.append({"version": list_version, "type": update_type,
                                 "list": local_authorization_list or []})
        self.list_version = list_version
        return call_result.SendLocalList(status="Accepted")

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self):
        return call_result.GetLocalListVersion(list_version=self.list_version)

    def _record(self, action, **payload):
        self.received.append((action, payload))

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag, connector_id=None, charging_profile=None):
        self._record("RemoteStartTransaction", id_tag=id_tag, connector_id=connector_id)
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id):
        self._record("RemoteStopTransaction", transaction_id=transaction_id)
        return call_result.RemoteStopTransaction(status="Accepted")

    @on(Action.change_availability)
    def on_change_availability(self, connector_id, type):
        self._record("ChangeAvailability", connector_id=connector_id, type=type)
        return call_result.ChangeAvailability(status="Accepted")

    @on(Action.reset)
    def on_reset(self, type):
        self._record("Reset", type=type)
        return call_result.Reset(status="Accepted")

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id):
        self._record("UnlockConnector", connector_id=connector_id)
        return call_result.UnlockConnector(status="Unlocked")

    @on(Action.clear_cache)
    def on_clear_cache(self):
        self._record("ClearCache")
        return call_result.ClearCache(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear_profile(self, **kwargs):
        self._record("ClearChargingProfile", **kwargs)
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_composite(self, connector_id, duration, charging_rate_unit=None):
        self._record("GetCompositeSchedule", connector_id=connector_id, duration=duration)
        return call_result.GetCompositeSchedule(
            status="Accepted", connector_id=connector_id, schedule_start="2026-01-01T00:00:00Z",
            charging_schedule={"chargingRateUnit": "A", "duration": duration,
                               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.5}]})

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id, message_id=None, data=None):
        self._record("DataTransfer", vendor_id=vendor_id, message_id=message_id, data=data)
        return call_result.DataTransfer(status="Accepted", data="pong")


def _quiet_task(task: asyncio.Task) -> None:
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def open_ws(url: str, cp_id: str | None = None, password: str | None = None,
                  subprotocols=("ocpp1.6",), ssl=None, user: str | None = None):
    headers = None
    if password is not None:
        headers = {"Authorization": basic_auth_header(user if user is not None else cp_id, password)}
    return await websockets.connect(url, subprotocols=list(subprotocols) if subprotocols else None,
                                    additional_headers=headers, ssl=ssl, open_timeout=5, close_timeout=1)


async def connect_cp(url: str, cp_id: str, cls=LibChargePoint, **kwargs) -> LibChargePoint:
    ws = await open_ws(url, cp_id, **kwargs)
    cp = cls(cp_id, ws)
    cp.task = asyncio.ensure_future(cp.start())
    _quiet_task(cp.task)
    return cp


async def close_cp(cp) -> None:
    await cp._connection.close()
    cp.task.cancel()


class RawClient:
    """A websocket client that writes and reads OCPP frames by hand."""

    def __init__(self, ws):
        self.ws = ws
        self.calls_in: list[list] = []

    @classmethod
    async def open(cls, url: str, cp_id: str, **kwargs) -> "RawClient":
        return cls(await open_ws(url, cp_id, **kwargs))

    async def send(self, frame) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout_s: float = 5.0, answer_calls: bool = False):
        """The next reply (CALLRESULT/CALLERROR) as a list; CALLs of the central system are kept in calls_in
        (and answered with an empty CALLERROR-free result when answer_calls)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - loop.time()))
            msg = json.loads(raw)
            if msg[0] == 2:
                self.calls_in.append(msg)
                continue
            return msg

    async def call(self, action: str, payload: dict, uid: str | None = None, timeout_s: float = 5.0):
        uid = uid or str(uuid.uuid4())
        await self.send([2, uid, action, payload])
        reply = await self.recv(timeout_s)
        assert reply[1] == uid, f"reply {reply} is not for {uid}"
        return reply

    async def close(self) -> None:
        await self.ws.close()
