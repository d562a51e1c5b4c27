"""front/ocpp: EVC as an OCPP 1.6J local controller toward an upstream CSMS; every covered charger is a charge point.

What it does (docs/front-ocpp.md explains it for operators):
- one websocket per covered charger to `url` + "/" + identity, reconnecting with jittered exponential backoff,
  BootNotification / Heartbeat / StatusNotification and websocket ping (evc/front/ocpp/link.py);
- StartTransaction, StopTransaction and MeterValues through a durable outbox in etcd, delivered in order after an
  outage or a restart (evc/front/ocpp/outbox.py, evc/front/ocpp/charger.py);
- authorization upstream (IAuthorizer: `evc.auth.authorize` asks this front first for the chargers it covers),
  with an offline rule and a bound on the wait;
- commands from the backend; charging profiles become caps that control merges into its allocation (ICapSource
  and ("cap", charger) events; see evc/control/builtin.py).

State: `<charger>/connection` (offline, connecting, booting, pending, rejected, accepted), `connection_error`,
`status` (the OCPP status last sent), `outbox` (messages waiting), `transaction_id`, `cap_A`, `available`,
`last_action` / `last_action_time` (the newest command from the backend and its answer), `given_up`.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from evc.auth import AuthResult, IAuthorizer, local_lookup
from evc.charger.base import ICharger
from evc.control.builtin import ICapSource
from evc.errors import ConfigError
from evc.instance import Instance, follow_instances, named, select_instances
from evc.front.ocpp.charger import BridgedCharger
from evc.front.ocpp.outbox import Writer
from evc.registry import FRONTS

log = Logger(namespace="evc.front.ocpp")

# A charger instance that stopped is kept bridged this long (its link stays open) in case it is being restarted
# (a config change stops and starts it).
DETACH_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True)
class OcppFrontConfig:
    """schema/front/ocpp.json describes every field."""
    url: str
    chargers: Any = "*"
    identity: str = "{name}"
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    ca_file: Optional[str] = None
    vendor: str = "EVC"
    model: str = "EVC"
    offline_auth: str = "local"
    authorize: str = "upstream"
    authorize_timeout_s: float = 5.0
    heartbeat_s: int = 300
    transaction_message_attempts: int = 3
    transaction_message_retry_interval_s: int = 60
    meter_value_sample_interval_s: int = 60
    ping_interval_s: float = 30.0
    response_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    free_id_tag: str = "EVC"
    type: Optional[str] = None

    def __post_init__(self):
        if not (self.url.startswith("ws://") or self.url.startswith("wss://")):
            raise ConfigError(f"config/url: {self.url!r} must start with ws:// or wss://")
        if self.ca_file and not self.url.startswith("wss://"):
            raise ConfigError("config/ca_file: only used with a wss:// url")
        if self.chargers != "*":
            if isinstance(self.chargers, str) or not all(isinstance(c, str) for c in self.chargers):
                raise ConfigError('config/chargers: "*" or a list of charger names')
            object.__setattr__(self, "chargers", tuple(self.chargers))
        if "{" in self.identity.replace("{name}", ""):
            raise ConfigError("config/identity: the only placeholder is {name} (the charger's name)")
        if "{name}" not in self.identity and (self.chargers == "*" or len(self.chargers) > 1):
            raise ConfigError("config/identity: must contain {name} when the front covers more than one charger "
                              "(each charger is its own charge point upstream)")
        if self.offline_auth not in ("local", "reject", "accept"):
            raise ConfigError(f"config/offline_auth: {self.offline_auth!r} is not local, reject or accept")
        if self.authorize not in ("upstream", "local-first"):
            raise ConfigError(f"config/authorize: {self.authorize!r} is not upstream or local-first")
        if self.transaction_message_attempts < 1:
            raise ConfigError("config/transaction_message_attempts: at least 1")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("config/reconnect_max_s: must be at least reconnect_min_s (> 0)")
        if not 1 <= len(self.free_id_tag) <= 20:
            raise ConfigError("config/free_id_tag: 1 to 20 characters (an OCPP idTag)")

    def covers(self, name: str) -> bool:
        return named(self.chargers, name)


@FRONTS.register("ocpp")
@implementer(IAuthorizer, ICapSource)
class OcppFront(Instance):
    """See the module docstring. `rng` jitters reconnects (tests may replace it before startService)."""
    Config = OcppFrontConfig

    def __init__(self, ctx, config: OcppFrontConfig):
        super().__init__(ctx, config)
        self.bridged: dict[str, BridgedCharger] = {}
        self.rng = random.Random()
        # One writer for every charger's outbox: their writes are batched into few etcd transactions.
        self.writer = Writer(ctx.store, ctx.clock, label=ctx.key) if ctx.store is not None else None
        self._unsubs: list = []
        self._grace: dict[str, Any] = {}

    # -- service --

    def startService(self) -> None:
        if self.ctx.store is None:
            raise ConfigError("type: front/ocpp needs the store for its outbox")
        super().startService()
        for name, inst in sorted(select_instances(self.ctx, "charger", self.config.chargers, log).items()):
            self._add(name, inst)
        self._unsubs.append(follow_instances(self.ctx, "charger", self.config.chargers,
                                             self._charger_started, self._charger_stopped))

    def stopService(self):
        super().stopService()
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        for call in self._grace.values():
            if call.active():
                call.cancel()
        self._grace = {}
        stops = [self._remove(name) for name in list(self.bridged)]
        d = defer.DeferredList(stops)
        if self.writer is not None:
            d.addCallback(lambda _: self.writer.stop())
        return d.addCallback(lambda _: None)

    def _add(self, name: str, inst) -> None:
        if not ICharger.providedBy(inst):
            log.warn("{front}: {charger} is not a charger", front=self.ctx.key, charger=name)
            return
        grace = self._grace.pop(name, None)
        if grace is not None and grace.active():
            grace.cancel()
        bridged = self.bridged.get(name)
        if bridged is not None:
            bridged.attach(inst)
            return
        bridged = BridgedCharger(self, name, inst)
        self.bridged[name] = bridged
        bridged.start()

    def _remove(self, name: str) -> defer.Deferred:
        self._grace.pop(name, None)
        bridged = self.bridged.pop(name, None)
        if bridged is None:
            return defer.succeed(None)
        if bridged.cap_A is not None and self.ctx.events is not None:
            self.ctx.events.publish(("cap", name), (self.ctx.key, None))
        d = bridged.stop()
        for leaf in ("connection", "connection_error", "status", "outbox", "transaction_id", "cap_A", "available",
                     "last_action", "last_action_time", "given_up", "last_given_up"):
            self.ctx.state.delete(f"{name}/{leaf}")
        return d

    def _charger_started(self, name: str, svc) -> None:
        if self.running:
            self._add(name, svc)

    def _charger_stopped(self, name: str, svc) -> None:
        bridged = self.bridged.get(name)
        if not self.running or bridged is None or bridged.charger is not svc:
            return
        bridged.detach()
        bridged._status_changed()
        # Removed for good, or restarted with a new config? Keep the link for a moment to see.
        self._grace[name] = self.ctx.clock.callLater(DETACH_GRACE_S, self._remove, name)

    # -- IAuthorizer --

    def covers(self, charger: str) -> bool:
        return charger in self.bridged

    def authorize(self, id_tag: str, charger: str) -> defer.Deferred:
        bridged = self.bridged.get(charger)
        if bridged is None:
            return defer.succeed(None)
        if self.config.authorize == "local-first":
            import datetime
            now = datetime.datetime.fromtimestamp(self.ctx.clock.seconds(), datetime.timezone.utc)
            local = local_lookup(self.ctx.find("token"), id_tag, charger, now)
            if local.accepted:
                return defer.succeed(local)
        return bridged.authorize(id_tag)

    def offline_answer(self, charger: str, why: str) -> AuthResult | None:
        """What the offline rule says when the backend cannot answer (None: the local token list decides)."""
        rule = self.config.offline_auth
        log.info("{front}: authorization at {charger} without the backend ({why}): offline rule {rule}",
                 front=self.ctx.key, charger=charger, why=why, rule=rule)
        if rule == "accept":
            return AuthResult("Accepted", source="offline-accept")
        if rule == "reject":
            return AuthResult("Invalid", source=f"{self.ctx.key} offline")
        return None

    # -- ICapSource --

    def caps(self) -> dict[str, float]:
        return {name: b.cap_A for name, b in self.bridged.items() if b.cap_A is not None}


__all__ = ["OcppFront", "OcppFrontConfig"]
