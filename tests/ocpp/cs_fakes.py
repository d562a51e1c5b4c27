"""In-memory stand-ins for clock-driven tests of charger/ocpp: a connection, a server and a state sink."""
from __future__ import annotations

import dataclasses

from twisted.internet import defer, task
from twisted.python.failure import Failure

from evc.charger.ocpp import OcppCharger, OcppChargerConfig
from evc.errors import ConfigError
from evc.events import EventBus
from evc.instance import Context
from evc.store.memory import MemoryStore

ROOT = "/evc/t"
T0 = 1_780_000_000.0


class FakeState:
    """A state sink that keeps the newest value of every path."""

    def __init__(self):
        self.values: dict = {}

    def set(self, path, value, deadband=None):
        self.values[path] = value

    def update(self, values, deadband=None):
        for k, v in values.items():
            self.set(k, v)

    def delete(self, path):
        self.values.pop(path, None)


class FakeConn:
    """A CentralConnection stand-in: every call() is recorded and answered by the test (or by `auto`)."""

    def __init__(self, auto: dict | None = None):
        self.calls: list[tuple[str, dict, defer.Deferred]] = []
        self.priorities: list[bool] = []
        self.auto = dict(auto or {})
        self.closed = False
        self.close_reason = ""

    def call(self, action, payload, priority=False):
        d = defer.Deferred()
        self.calls.append((action, payload, d))
        self.priorities.append(priority)
        if action in self.auto:
            answer = self.auto[action]
            answer = answer(payload) if callable(answer) else answer
            if isinstance(answer, Exception):
                d.errback(answer)
            else:
                d.callback(answer)
        return d

    def close(self, code=1000, reason=""):
        self.closed = True
        self.close_reason = reason
        return defer.succeed(None)

    def pending(self, action=None):
        return [(a, p, d) for a, p, d in self.calls if not d.called and (action is None or a == action)]

    def sent(self, action):
        return [p for a, p, _ in self.calls if a == action]

    def answer(self, action, result):
        """Answer the oldest pending call of `action`; returns its payload."""
        for a, p, d in self.calls:
            if a == action and not d.called:
                if isinstance(result, Exception):
                    d.errback(result)
                else:
                    d.callback(result)
                return p
        raise AssertionError(f"no pending {action}; calls: {[a for a, _, _ in self.calls]}")


@dataclasses.dataclass
class FakeServerConfig:
    heartbeat_interval_s: int = 300
    security_profile: int = 0


class FakeServer:
    def __init__(self):
        self.config = FakeServerConfig()
        self.registered: dict = {}
        self.next_id = 0
        self.allocations = 0
        self.hold: defer.Deferred | None = None     # set to make allocations wait

    def register(self, cp_id, charger):
        self.registered[cp_id] = charger
        return lambda: self.registered.pop(cp_id, None)

    def allocate_transaction_id(self):
        self.allocations += 1
        self.next_id += 1
        value = self.next_id
        if self.hold is not None:
            d = defer.Deferred()
            self.hold.addCallback(lambda _: d.callback(value))
            return d
        return defer.succeed(value)


def token(status="Accepted", expiry=None, chargers="*", parent_id_tag=None):
    from evc.token.token import TokenConfig
    return type("T", (), {"config": TokenConfig(status=status, expiry=expiry, chargers=chargers,
                                                parent_id_tag=parent_id_tag)})()


class Rig:
    """One charger/ocpp instance on a task.Clock with a fake server, an in-memory store and a token list."""

    def __init__(self, store=None, clock=None, server=None, tokens=None, fronts=None, meters=None, **config):
        self.clock = clock or task.Clock()
        if clock is None:
            self.clock.advance(T0)
        self.store = store if store is not None else MemoryStore(clock=self.clock)
        self.server = server or FakeServer()
        self.events = EventBus()
        self.state = FakeState()
        self.tokens = tokens if tokens is not None else {}
        self.fronts = fronts if fronts is not None else {}
        settings = {"server": "cs", "A_max": 16, "mode": "ON", "meter_interval_s": 0, "local_list": False}
        settings.update(config)
        self.config = OcppChargerConfig(**settings)

        def resolve(kind, name):
            if kind == "server":
                return self.server
            if kind == "meter" and name in (meters or {}):
                return meters[name]
            raise ConfigError(f"{kind} {name!r} is not running")

        def find(kind):
            return {"token": self.tokens, "front": self.fronts}.get(kind, {})

        self.ctx = Context(kind="charger", name="cp1", clock=self.clock, state=self.state, resolve=resolve,
                           store=self.store, root=ROOT, events=self.events, find=find)
        self.charger = OcppCharger(self.ctx, self.config)
        self.charger.startService()
        self.conn: FakeConn | None = None

    def connect(self, auto: dict | None = None, boot: bool = True) -> FakeConn:
        self.conn = FakeConn(auto)
        self.charger.ocpp_connected(self.conn)
        if boot:
            self.boot()
        return self.conn

    def disconnect(self) -> None:
        self.charger.ocpp_disconnected(self.conn)

    def handle(self, action: str, payload: dict):
        """Deliver a CALL from the charge point; the CALLRESULT payload (after the follow-up hook)."""
        d = defer.maybeDeferred(self.charger.ocpp_call, action, payload)
        result = self.result(d)
        self.charger.ocpp_after(action, payload, result)
        return result

    def boot(self):
        return self.handle("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M",
                                                "firmwareVersion": "9"})

    @staticmethod
    def result(d: defer.Deferred):
        results = []
        d.addBoth(results.append)
        assert results, "the Deferred has not fired"
        r = results[0]
        if isinstance(r, Failure):
            r.raiseException()
        return r

    def leaf(self, path: str):
        kvs = self.store.range(f"{ROOT}/charger/cp1/{path}").result.kvs
        return kvs[0].value.decode() if kvs else None

    def stop(self):
        return self.charger.stopService()
