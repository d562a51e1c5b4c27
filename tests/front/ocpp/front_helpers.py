"""Helpers for front/ocpp's tests: the upstream test backend as a process, a fake charger with a real SessionTracker,
and a front built on a store the way the supervisor would."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer
from zope.interface import implementer

from evc.charger.base import ChargerStatus, ICharger
from evc.etcdserver import free_port
from evc.events import EventBus
from evc.instance import Context
from evc.front.ocpp import OcppFront, OcppFrontConfig
from evc.front.ocpp.link import CallFailed, LinkDown
from evc.session import SessionTracker
from evc.testing import wait_for

UPSTREAM = str(Path(__file__).with_name("upstream.py"))
ROOT = "/evc/t"


class State:
    """A state sink that keeps the newest value per path."""

    def __init__(self):
        self.values: dict = {}

    def set(self, path, value, deadband=None):
        self.values[path] = value

    def update(self, values, deadband=None):
        self.values.update(values)

    def delete(self, path):
        self.values.pop(path, None)


class Upstream:
    """tests/front/ocpp/upstream.py as a child process on a fixed port (so a restart comes back at the same URL)."""

    def __init__(self, tmp_path, *, behave=None, tls=None, password=None, port=None):
        self.record_path = tmp_path / f"upstream-{id(self)}.jsonl"
        self.port = port or free_port()
        self.behave = behave or {}
        self.tls = tls
        self.password = password
        self.proc = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ocpp"

    def spawn(self, **behave):
        """Start the process; returns the record length before it (wait for "listening" after it)."""
        self.runs += 1
        args = [sys.executable, UPSTREAM, "--port", str(self.port), "--record", str(self.record_path),
                "--behave", json.dumps({**self.behave, **behave}), "--tx-base", str(self.runs * 1000)]
        if self.tls:
            args += ["--tls", *self.tls]
        if self.password:
            args += ["--password", self.password]
        before = len(self.lines())
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return before

    def _up(self, before) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"upstream exited: {self.proc.stderr.read().decode()[-2000:]}")
        return any(r.get("kind") == "listening" for r in self.lines()[before:])

    async def start(self, **behave):
        before = self.spawn(**behave)
        await wait_for(lambda: self._up(before), 15, "the upstream backend listening")
        return self

    def start_blocking(self, timeout_s=15.0, **behave):
        """For fixtures outside the reactor: poll (with a deadline) until it listens."""
        before = self.spawn(**behave)
        deadline = time.monotonic() + timeout_s
        while not self._up(before):
            if time.monotonic() > deadline:
                raise TimeoutError("the upstream backend did not start")
            time.sleep(0.02)
        return self

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def send(self, **cmd):
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def lines(self) -> list[dict]:
        if not self.record_path.exists():
            return []
        out = []
        for line in self.record_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass            # a line being written
        return out

    def calls(self, action=None, cp=None, answer=None) -> list[dict]:
        return [r for r in self.lines() if r.get("kind") == "call" and (action is None or r["action"] == action)
                and (cp is None or r["cp"] == cp) and (answer is None or r.get("answer") == answer)]

    def results(self, action=None) -> list[dict]:
        return [r for r in self.lines() if r.get("kind") == "result" and (action is None or r["action"] == action)]

    async def call(self, cp, action, timeout_s=10, **payload) -> dict:
        before = len(self.results(action))
        self.send(cmd="call", cp=cp, action=action, payload=payload)
        await wait_for(lambda: len(self.results(action)) > before, timeout_s, f"the answer to {action}")
        return self.results(action)[before]


@dataclasses.dataclass(frozen=True)
class FakeChargerConfig:
    A_max: float = 16
    phases: int = 3
    phase_map: tuple = ("L1", "L2", "L3")
    priority: int = 0


@implementer(ICharger)
class FakeCharger:
    """A charger whose car the test moves by hand, with a real SessionTracker (sessions in the store, events)."""

    def __init__(self, ctx, can_authorize=True, meter_Wh=1000.0):
        self.ctx = ctx
        self.config = FakeChargerConfig()
        self.status = ChargerStatus(vehicle="none", online=True, actual_A=(0.0, 0.0, 0.0),
                                    updated=ctx.clock.seconds())
        self.sessions = SessionTracker(ctx, retry_s=0.1)
        self.meter_Wh = meter_Wh
        self.tag = None
        self._subs = []
        if can_authorize:
            self.authorize = self._authorize

    def start(self):
        return self.sessions.start()

    def stop(self):
        return self.sessions.stop()

    def wants_current(self):
        return self.status.vehicle in ("plugged", "charging") and self.sessions.may_charge

    def apply(self, current_A):
        self.set(setpoint_A=current_A)
        return defer.succeed(current_A)

    def subscribe(self, callback):
        self._subs.append(callback)
        return lambda: self._subs.remove(callback) if callback in self._subs else None

    def set(self, **changes):
        self.status = dataclasses.replace(self.status, updated=self.ctx.clock.seconds(), **changes)
        self.sessions.update(self.status, self.meter_Wh)
        for cb in list(self._subs):
            cb(self.status)

    def _authorize(self, id_tag):
        self.tag = id_tag
        self.sessions.authorized(id_tag)

    def deauthorize(self):
        self.tag = None

    # a car's life
    def plug(self):
        self.set(vehicle="plugged")

    def charge(self, current_A=16.0, energy_Wh=0.0):
        self.meter_Wh += energy_Wh
        self.set(vehicle="charging", setpoint_A=current_A, actual_A=(current_A,) * 3)

    def unplug(self):
        self.set(vehicle="none", setpoint_A=0, actual_A=(0.0, 0.0, 0.0))


class FakeLink:
    """Stands in for evc.front.ocpp.link.Link: records calls; the test answers them."""

    def __init__(self, state="accepted"):
        self.state = state
        self.calls: list[tuple[str, dict, defer.Deferred]] = []
        self.reconnects: list[str] = []
        self.heartbeat_s = None

    @property
    def accepted(self):
        return self.state == "accepted"

    def start(self):
        pass

    def stop(self):
        return defer.succeed(None)

    def call(self, action, payload):
        if not self.accepted:
            return defer.fail(LinkDown("not connected"))
        d = defer.Deferred()
        self.calls.append((action, payload, d))
        return d

    def reconnect(self, why):
        self.reconnects.append(why)

    def set_heartbeat(self, s):
        self.heartbeat_s = s

    def boot_now(self):
        pass

    def heartbeat_now(self):
        return self.call("Heartbeat", {})

    # test side
    def pending(self, action=None):
        return [(a, p, d) for a, p, d in self.calls if not d.called and (action is None or a == action)]

    def answer(self, action, result=None):
        a, p, d = self.pending(action)[0]
        d.callback(result if result is not None else {})
        return p

    def fail(self, action, code="InternalError"):
        a, p, d = self.pending(action)[0]
        d.errback(CallFailed(action, code))
        return p

    def answer_all_status(self):
        while self.pending("StatusNotification"):
            self.answer("StatusNotification")


class Site:
    """A store, an event bus and chargers; builds front/ocpp instances the way the supervisor would."""

    def __init__(self, store, reactor, root=ROOT):
        self.store = store
        self.reactor = reactor
        self.root = root
        self.events = EventBus()
        self.chargers: dict = {}
        self.tokens: dict = {}
        self.controls: dict = {}
        self.fronts: dict = {}
        self.state = State()

    def ctx(self, kind, name, state=None):
        return Context(kind=kind, name=name, clock=self.reactor, state=state or State(), resolve=self.resolve,
                       store=self.store, root=self.root, reactor=self.reactor, events=self.events, find=self.find)

    def find(self, kind):
        return {"charger": self.chargers, "token": self.tokens, "control": self.controls,
                "front": self.fronts}.get(kind, {})

    def resolve(self, kind, name):
        return self.find(kind)[name]

    async def charger(self, name, **kw) -> FakeCharger:
        c = FakeCharger(self.ctx("charger", name), **kw)
        await c.start()
        self.chargers[name] = c
        self.events.publish(("instance", "charger", name), ("started", c))
        return c

    def front(self, name="up", **config) -> OcppFront:
        config.setdefault("reconnect_min_s", 0.05)
        config.setdefault("reconnect_max_s", 0.3)
        front = OcppFront(self.ctx("front", name, self.state), OcppFrontConfig(**config))
        self.fronts[name] = front
        front.startService()
        return front

    async def stop_front(self, name="up"):
        front = self.fronts.pop(name)
        await front.stopService()


async def booted(front, charger="s1", timeout_s=10):
    await wait_for(lambda: charger in front.bridged and front.bridged[charger].link.accepted, timeout_s,
                   f"{charger} booted upstream")
    return front.bridged[charger]


def env_without_proxy():
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
