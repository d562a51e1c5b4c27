"""charger/ocpp: a networked charge point speaking OCPP 1.6J to EVC's central system (server/ocpp), as an ICharger.

The charger registers its `cp_id` with its server; the server hands it every accepted websocket of that charge
point (the newest wins) as an evc.ocpp.central.CentralConnection. This module is Twisted code: it answers the
charge point's CALLs (`ocpp_call`, one method `_on_<Action>` per message) and sends its own through Deferreds.

What it answers:
- BootNotification: Accepted, with the server's heartbeat interval; vendor/model/firmware go to state/boot/* and
  data/boot. Heartbeat: the time. StatusNotification: the connector's status and error code (connector 0: the whole
  charge point). MeterValues (and StopTransaction's transactionData): Current.Import per phase, Current.Offered,
  Energy.Active.Import.Register, Power.Active.Import. DataTransfer: UnknownVendorId unless a handler for the vendor
  was added to `data_transfer_handlers` (a front may do so). Diagnostics/FirmwareStatusNotification: state.
- Authorize, StartTransaction, StopTransaction: the id tag goes through evc.auth.authorize (fronts that authorize
  upstream first, then the local token list). StartTransaction gets a transaction id from the server's persistent
  counter; a resent StartTransaction (same connector, idTag, meterStart and timestamp, after a lost reply) gets the
  same id again and opens no second session. The transaction is the session: the charger's SessionTracker is fed
  from StatusNotification, StartTransaction (authorized), MeterValues and StopTransaction (ended with its reason);
  the transaction id and the session id are kept side by side in data/transaction.
- Billing: a session's readings are its own transaction's only: meterStart, the energy register of MeterValues with
  that transactionId (or without one, sampled at or after the transaction's start), the transactionData and the
  meterStop of its StopTransaction. Nothing read before the transaction or for another one counts. A new
  StartTransaction while one is open ends the old session first; a counter that goes back within a transaction is
  flagged in the session (evc.session: meter_reset).

Smart charging (how control's apply() reaches the charge point):
- After the charge point booted (or a few seconds after it connected without a BootNotification: a reconnect), a
  base profile: TxDefaultProfile, id BASE_PROFILE_ID, stack level 0, on the configured connector, `failsafe_A`,
  without end. This is what the charge point falls back to when EVC stops talking to it.
- On apply(A): TxDefaultProfile, id DYNAMIC_PROFILE_ID, stack level 1, limit A with numberPhases = phases, valid
  for CLOCK_SKEW_S + `profile_validity_s` from CLOCK_SKEW_S ago (Absolute schedule with a duration). It is sent again
  every profile_validity_s / 3, so it never expires while EVC runs; if EVC dies it expires and the base applies.
  TxDefaultProfile (not TxProfile) because it is accepted with or without a transaction, so a pause also holds
  between two transactions.
- status.setpoint_A counts what the charge point may be doing: the dynamic limit while valid, else the base; a
  profile in flight counts when higher; before the base was accepted (fresh boot, EVC restart), A_max. While the
  charge point is disconnected, max(dynamic, base): it falls back to the base when the dynamic one runs out.
- A charge point that refuses profiles (SetChargingProfile answered Rejected or NotSupported, or a CALLERROR) is
  reported in state `smart_charging: rejected` and becomes uncontrollable for control: status.online False,
  status.setpoint_A = A_max and status.fault saying why. Control then holds it and reserves A_max on its phases (the
  worst case of a charger it cannot limit). A new connection or BootNotification tries again.

Local authorization list: when the charge point lists LocalAuthListManagement in SupportedFeatureProfiles, EVC
sends the token list (token/<idTag> instances valid at this charger) with SendLocalList: a Full update after each
boot or connection, then a Differential update whenever a token changes. The version and the list last sent are
kept in data/local_list so versions only grow across EVC restarts.

Authorization from fronts (front/ocpp's RemoteStartTransaction and RemoteStopTransaction from a backend):
`authorize(id_tag)` sends RemoteStartTransaction to the charge point and `deauthorize()` RemoteStopTransaction for
the open transaction. Neither touches the session: it follows the StartTransaction / StopTransaction the charge
point then sends, as for a start or stop at the charger itself.

Outgoing messages (for fronts and tools), each a Deferred with the CALLRESULT's payload: remote_start,
remote_stop, change_availability, change_configuration, get_configuration, reset, unlock_connector, clear_cache,
set_charging_profile, clear_charging_profile, get_composite_schedule, trigger_message, send_local_list,
get_local_list_version, data_transfer, and call(action, payload) for anything else.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections import OrderedDict
from typing import Any, Callable

from ocpp.exceptions import NotSupportedError
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from evc.auth import AuthResult, authorize, local_lookup
from evc.charger.base import PHASE_INDEX, ChargerStatus, ICharger, check_common_config, write_status
from evc.errors import ConfigError
from evc.events import Subscribers
from evc.instance import Instance, follow_instances
from evc.meter.base import IMeter, Reading
from evc.ocpp import cs_auth
from evc.ocpp.central import CallTimeout, NotConnected, OcppCallError
from evc.registry import CHARGERS
from evc.session import REASONS, SessionTracker, iso_utc

log = Logger(namespace="evc.charger.ocpp")

IEC_MIN_A = 6

BASE_PROFILE_ID = 1
DYNAMIC_PROFILE_ID = 2
BASE_STACK_LEVEL = 0
DYNAMIC_STACK_LEVEL = 1
# Schedules start this long before EVC's "now" (and dynamic ones last this much longer), so a charge point whose
# clock runs a little behind or ahead still finds the profile in force.
CLOCK_SKEW_S = 60
# OCPP 1.6 IdToken is a CiString20: longer tags cannot be in a charge point's local list.
ID_TAG_MAX = 20

VEHICLE = {"Available": "none", "Preparing": "plugged", "Charging": "charging", "SuspendedEV": "plugged",
           "SuspendedEVSE": "plugged", "Finishing": "plugged", "Reserved": "none", "Unavailable": "none",
           "Faulted": "fault"}
METER_DATA = "Energy.Active.Import.Register,Current.Import,Current.Offered,Power.Active.Import"
METER_DATA_MINIMAL = "Energy.Active.Import.Register,Current.Import"


class SmartChargingRejected(Exception):
    """The charge point refuses charging profiles: EVC cannot limit it."""


class RemoteCommandRejected(Exception):
    """The charge point answered RemoteStartTransaction or RemoteStopTransaction with Rejected."""


@dataclasses.dataclass(frozen=True)
class OcppChargerConfig:
    """schema/charger/ocpp.json describes every field."""
    A_max: float
    server: str | None = None        # None: the site's only server/ocpp (ServerChoice)
    cp_id: str | None = None
    connector: int = 1
    phases: int = 3
    phase_map: tuple[str, ...] | None = None
    priority: int = 0
    mode: str = "OFF"
    meter: str | None = None
    password_hash: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    failsafe_A: float = 6
    profile_validity_s: float = 60
    meter_interval_s: int = 10
    local_list: bool = True
    type: str | None = None

    def __post_init__(self):
        check_common_config(self)
        if self.connector < 1:
            raise ConfigError(f"config/connector: {self.connector} is not a connector number (1, 2, ...)")
        if self.cp_id is not None and (not self.cp_id or "/" in self.cp_id):
            raise ConfigError("config/cp_id: must be non-empty and contain no '/'")
        if self.password_hash is not None:
            problem = cs_auth.check_hash_format(self.password_hash)
            if problem:
                raise ConfigError(f"config/password_hash: {problem}")
        if self.password is not None and not self.password:
            raise ConfigError("config/password: empty")
        if self.failsafe_A != 0 and not IEC_MIN_A <= self.failsafe_A <= self.A_max:
            raise ConfigError(f"config/failsafe_A: {self.failsafe_A} must be 0 or between 6 and A_max "
                              f"({self.A_max:g})")
        if self.profile_validity_s < 10:
            raise ConfigError("config/profile_validity_s: must be at least 10")
        if self.meter_interval_s < 0:
            raise ConfigError("config/meter_interval_s: must be 0 (leave the charge point's setting) or more")


def _iso(seconds: float) -> str:
    return iso_utc(seconds)


def _id_tag_info(result: AuthResult) -> dict:
    info: dict[str, Any] = {"status": result.status}
    if result.expiry:
        try:
            when = datetime.datetime.fromisoformat(result.expiry.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            info["expiryDate"] = _iso(when.timestamp())
        except ValueError:
            pass
    if result.parent_id_tag and len(result.parent_id_tag) <= ID_TAG_MAX:
        info["parentIdTag"] = result.parent_id_tag
    return info


@CHARGERS.register("ocpp")
@implementer(ICharger)
class OcppCharger(Instance):
    """One OCPP 1.6J charge point (one connector of it). See the module docstring."""

    Config = OcppChargerConfig

    boot_wait_s = 3.0          # after a connection without BootNotification, set up anyway (it was a reconnect)
    retry_min_s = 1.0
    retry_max_s = 30.0
    local_list_delay_s = 0.5   # token changes come in bursts (a config load): one differential update for them
    recent_starts = 16
    server_choice: "ServerChoice | None" = None     # without config/server: which server it uses, followed live
    # The charge point reports its own meter values: fronts relay them (events ("meter_values", name)) instead of
    # sampling EVC's view of the charger.
    own_meter_values = True

    def __init__(self, ctx, config: OcppChargerConfig):
        super().__init__(ctx, config)
        self.cp_id = config.cp_id or ctx.name
        self.status = ChargerStatus(vehicle="unknown", online=False, setpoint_A=float(config.A_max),
                                    actual_A=(None,) * config.phases)
        self.sessions = SessionTracker(ctx)
        self.server: Any = None
        self.meter: Any = None
        self.conn: Any = None
        self.data_transfer_handlers: dict[str, Callable[[str | None, Any], Any]] = {}
        self.upstream_meter_interval_s: int | None = None     # MeterValueSampleInterval a front's backend set
        self._unregister: Callable[[], None] | None = None
        self._unsubs: list[Callable[[], None]] = []
        self._subscribers = Subscribers(ctx.key, "status subscriber")
        self._connected_s: float | None = None
        self._seen_s: float | None = None
        # what the charge point told
        self._connector_status: str | None = None
        self._error_code = "NoError"
        self._info = ""
        self._cp_status: str | None = None
        self._cp_error = "NoError"
        self._energy_Wh: float | None = None
        self._power_W: float | None = None
        self._offered_A: float | None = None
        self._measured_A: list[float | None] = [None] * config.phases
        self._measured_s: float | None = None      # when the charge point's last MeterValues arrived
        self._tx_Wh: float | None = None             # the newest reading of the open transaction (its session's)
        self._boot: dict | None = None
        # transactions
        self.tx: dict | None = None                  # the newest transaction (open or stopped), as in data/transaction
        self._starts: OrderedDict[tuple, dict] = OrderedDict()   # idempotency: key -> StartTransaction answer
        self._starting: dict[tuple, list[defer.Deferred]] = {}   # key -> waiters for the first one's answer
        self._loaded: defer.Deferred = defer.Deferred()
        # smart charging
        self.smart = "pending"                       # pending | ok | rejected
        self.smart_why = ""
        self._ready = False                          # setup may begin on this connection
        self._need_base = True
        self._base_ok = False
        self._asked_A: float | None = None
        self._dyn_A: float | None = None
        self._dyn_sent_s = -math.inf
        self._dyn_until_s = -math.inf
        self._inflight_A: float | None = None
        self._inflight_sent_s = 0.0
        self._uncertain: tuple[float, float] | None = None   # (A, until_s): sent on a lost connection, may hold
        self._push_token: object | None = None
        self._retry_s = self.retry_min_s
        self._waiters: list[defer.Deferred] = []
        self._timers: dict[str, IDelayedCall] = {}
        # setup and local list
        self._setup_running = False
        self._setup_again = False
        self._admission: defer.Deferred | None = None   # waiting for the server's SetupPacer
        self.local_list_supported: bool | None = None
        self._ll_max_length: int | None = None
        self._ll_chunk: int | None = None
        self._ll_version = 0
        self._ll_entries: dict[str, dict] | None = None
        self._ll_full_needed = True
        self._ll_lock = defer.DeferredLock()
        self._long_tags_logged: set[str] = set()

    # --- ICharger ---

    def wants_current(self) -> bool:
        s = self.status
        return (self.config.mode == "ON" and s.online and not s.fault and s.vehicle in ("plugged", "charging")
                and self._connector_status != "Finishing" and self.sessions.may_charge)

    def apply(self, current_A) -> defer.Deferred:
        """Send the dynamic profile (0 = pause, else 6 .. A_max). Fires with the amps once the charge point accepted
        it; fails with NotConnected, SmartChargingRejected, CallTimeout or OcppCallError (retries go on)."""
        if current_A < 0:
            raise ValueError(f"{self.ctx.key}: current {current_A} A is negative")
        amps = min(float(current_A), float(self.config.A_max))
        if amps < IEC_MIN_A:
            amps = 0.0
        amps = math.floor(amps * 10 + 1e-6) / 10       # OCPP limits are multiples of 0.1; never round up
        self._asked_A = amps
        if self.smart == "rejected":
            return defer.fail(SmartChargingRejected(f"{self.ctx.key}: {self.smart_why}"))
        if self.conn is None:
            return defer.fail(NotConnected(f"{self.ctx.key}: charge point {self.cp_id} is not connected; "
                                           f"{amps:g} A will be sent when it connects"))
        d = defer.Deferred()
        self._waiters.append(d)
        self._sync()
        return d

    def subscribe(self, callback: Callable[[ChargerStatus], None]) -> Callable[[], None]:
        return self._subscribers.add(callback)

    # --- service ---

    def startService(self) -> None:
        cfg = self.config
        server = None
        if cfg.server is not None:
            server = self.ctx.resolve("server", cfg.server)
            check_server(cfg, cfg.server, server)
        meter = None
        if cfg.meter is not None:
            meter = self.ctx.resolve("meter", cfg.meter)
            if not IMeter.providedBy(meter):
                raise ConfigError(f"config/meter: meter {cfg.meter!r} gives no readings")
        if server is not None:
            self._unregister = server.register(self.cp_id, self)
            self.server = server
        super().startService()
        if meter is not None:
            self.meter = meter
            self._unsubs.append(meter.subscribe(self._meter_reading))
        if self.ctx.events is not None:
            self._unsubs.append(self.ctx.events.subscribe(("instance", "token"), self._token_changed))
        self.ctx.state.update({"online": False, "mode": cfg.mode, "connection": "disconnected",
                               "cp_id": self.cp_id, "smart_charging": self.smart})
        self.sessions.start()
        d = defer.ensureDeferred(self._load())
        d.addErrback(lambda f: log.failure("{charger}: reading data/ failed", f, charger=self.ctx.key))
        d.addBoth(lambda _: self._loaded.callback(None))   # without its data the charger still works
        if cfg.server is None:
            self.server_choice = ServerChoice(self)
            self.server_choice.start()

    def stopService(self):
        super().stopService()
        if self.server_choice is not None:
            self.server_choice.stop()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        # The connection stays open: the server parks it for the next instance of this charger (a config change)
        # or closes it (the charger was removed, the server stops).
        self.conn = None
        self._withdraw_setup()
        self._fail_waiters(NotConnected(f"{self.ctx.key} stopped"))
        return self.sessions.stop()

    async def _load(self) -> None:
        store = self.ctx.store
        if store is None:
            return None
        try:
            found = await store.range(self.ctx.data_key(""), prefix=True)
        except Exception as e:
            log.warn("{charger}: data/ not read ({error}); starting without the last transaction and list version",
                     charger=self.ctx.key, error=str(e))
            return None
        for kv in found.kvs:
            leaf = kv.key[len(self.ctx.data_key("")):]
            try:
                if leaf == "transaction":
                    self.tx = json.loads(kv.value)
                elif leaf == "local_list":
                    doc = json.loads(kv.value)
                    self._ll_version = int(doc.get("version", 0))
                    self._ll_entries = dict(doc.get("entries") or {})
                elif leaf == "boot":
                    self._boot = json.loads(kv.value)
            except (ValueError, TypeError, AttributeError):
                log.warn("{charger}: data/{leaf} is not valid JSON; ignored", charger=self.ctx.key, leaf=leaf)
        if self.tx is not None and self.tx.get("open"):
            self.ctx.state.set("transaction_id", self.tx.get("transaction_id"))
            key = self._start_key(self.tx.get("connector"), self.tx.get("id_tag"), self.tx.get("meter_start_Wh"),
                                  self.tx.get("timestamp"))
            self._starts[key] = {"transactionId": self.tx["transaction_id"],
                                 "idTagInfo": self.tx.get("id_tag_info") or {"status": "Accepted"}}
        if self._boot:
            self._write_boot_state()
        self._refresh_status()
        return None

    def _save(self, leaf: str, doc: dict) -> defer.Deferred:
        if self.ctx.store is None:
            return defer.succeed(None)
        d = self.ctx.store.put(self.ctx.data_key(leaf), json.dumps(doc, sort_keys=True).encode())

        def failed(f):
            log.warn("{charger}: data/{leaf} not written ({error})", charger=self.ctx.key, leaf=leaf,
                     error=f.getErrorMessage())
        return d.addErrback(failed)

    def _timer(self, name: str, delay_s: float, fn, *args) -> None:
        self._cancel(name)
        self._timers[name] = self.ctx.clock.callLater(max(0.0, delay_s), fn, *args)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    # --- the connection (called by server/ocpp and evc.ocpp.central) ---

    def credentials(self) -> tuple[str | None, str | None]:
        """(password_hash, password) for the server's Basic auth check; never logged."""
        return self.config.password_hash, self.config.password

    def ocpp_connected(self, conn) -> None:
        """A new accepted connection of this charge point (an older one, if any, is being closed)."""
        if not self.running:
            raise RuntimeError(f"{self.ctx.key} is not running")
        now = self.ctx.clock.seconds()
        self._withdraw_setup()
        self.conn = conn
        self._connected_s = self._seen_s = now
        self._ready = False
        self._forget_push()
        self._need_base = True
        self._dyn_sent_s = -math.inf           # the charge point may have lost it: send again
        self._retry_s = self.retry_min_s
        self._cancel("retry")
        self._cancel("refresh")
        self._smart_pending()
        self.ctx.state.update({"connection": "connected", "connection_since": _iso(now)})
        log.info("{charger}: charge point {cp_id} connected", charger=self.ctx.key, cp_id=self.cp_id)
        self._timer("boot_wait", self.boot_wait_s, self._begin_setup, conn)
        self._refresh_status()

    def ocpp_disconnected(self, conn) -> None:
        if conn is not self.conn:
            return          # an older connection that a newer one replaced
        self.conn = None
        self._ready = False
        self._forget_push()
        self._withdraw_setup()
        for name in ("boot_wait", "retry", "refresh"):
            self._cancel(name)
        if not self.running:
            return
        now = self.ctx.clock.seconds()
        self.ctx.state.update({"connection": "disconnected", "connection_since": _iso(now)})
        log.info("{charger}: charge point {cp_id} disconnected ({reason})", charger=self.ctx.key, cp_id=self.cp_id,
                 reason=conn.close_reason)
        self._fail_waiters(NotConnected(f"{self.ctx.key}: charge point {self.cp_id} disconnected"))
        self._refresh_status()

    def ocpp_seen(self, conn) -> None:
        if conn is self.conn:
            self._seen_s = self.ctx.clock.seconds()
            self.status = dataclasses.replace(self.status, updated=self._seen_s)

    def ocpp_call(self, action: str, payload: dict):
        handler = getattr(self, f"_on_{action}", None)
        if handler is None:
            raise NotSupportedError(description=f"{action} is not handled by this central system")
        return defer.ensureDeferred(handler(payload))

    def ocpp_after(self, action: str, payload: dict, result: dict) -> None:
        if action == "BootNotification" and self.conn is not None:
            # The charge point (re)booted: profiles it kept in RAM are gone, its smart charging may have changed.
            self._base_ok = False
            self._dyn_A = None
            self._uncertain = None
            self._need_base = True
            self._smart_pending()
            self._ll_full_needed = True
            self._cancel("boot_wait")
            self._begin_setup(self.conn)
            self._refresh_status()

    def call(self, action: str, payload: dict | None = None) -> defer.Deferred:
        """Send any CS->CP message; Deferred[dict] with the reply's payload (camelCase)."""
        conn = self.conn
        if conn is None:
            return defer.fail(NotConnected(f"{self.ctx.key}: charge point {self.cp_id} is not connected"))
        return conn.call(action, payload or {})

    # --- set-up after boot / reconnect ---

    def _begin_setup(self, conn) -> None:
        self._timers.pop("boot_wait", None)
        if conn is not self.conn or not self.running:
            return
        self._ready = True
        self._sync()
        if self._setup_running:
            self._setup_again = True
            return
        d = defer.ensureDeferred(self._setup(conn))
        d.addErrback(lambda f: log.failure("{charger}: set-up failed", f, charger=self.ctx.key))

    def _withdraw_setup(self) -> None:
        """A set-up still waiting for the server's pacer is for a connection that is gone: give up its place."""
        if self._admission is not None:
            self._admission.cancel()

    async def _setup(self, conn) -> None:
        self._setup_running = True
        pacer = getattr(self.server, "setup_pacer", None)
        admitted = False
        try:
            if pacer is not None:
                self._admission = pacer.admit()
                try:
                    await self._admission
                except defer.CancelledError:
                    return
                finally:
                    self._admission = None
                admitted = True
                if conn is not self.conn or not self.running:
                    return
            while True:
                self._setup_again = False
                await self._trigger_status(conn)
                if self.config.meter_interval_s or self.upstream_meter_interval_s is not None:
                    await self._configure_meter_values(conn)
                if self.config.local_list:
                    await self._local_list_setup(conn)
                if not self._setup_again or conn is not self.conn:
                    break
        finally:
            self._setup_running = False
            if admitted:
                pacer.release()

    async def _trigger_status(self, conn) -> None:
        # After an EVC restart the connector's state is unknown until the charge point says it.
        try:
            await conn.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                               "connectorId": self.config.connector})
        except (OcppCallError, CallTimeout, NotConnected) as e:
            log.info("{charger}: TriggerMessage StatusNotification not done ({error})", charger=self.ctx.key,
                     error=str(e))

    async def _configure_meter_values(self, conn, interval_only: bool = False) -> None:
        wanted = [("MeterValueSampleInterval", str(self.meter_interval_s))]
        if self.config.meter_interval_s and not interval_only:
            wanted.append(("MeterValuesSampledData", METER_DATA))
        for key, value in wanted:
            try:
                result = await conn.call("ChangeConfiguration", {"key": key, "value": value})
                if result.get("status") != "Accepted" and key == "MeterValuesSampledData":
                    value = METER_DATA_MINIMAL
                    result = await conn.call("ChangeConfiguration", {"key": key, "value": value})
            except (OcppCallError, CallTimeout, NotConnected) as e:
                log.info("{charger}: ChangeConfiguration {key} not done ({error})", charger=self.ctx.key, key=key,
                         error=str(e))
                if isinstance(e, NotConnected):
                    return
                continue
            status = result.get("status")
            if status not in ("Accepted", "RebootRequired"):
                log.warn("{charger}: the charge point answered {status} to {key}={value}", charger=self.ctx.key,
                         status=status, key=key, value=value)

    @property
    def meter_interval_s(self) -> int:
        """The MeterValueSampleInterval the charge point is given: a backend's (through a front) over config's."""
        if self.upstream_meter_interval_s is not None:
            return self.upstream_meter_interval_s
        return self.config.meter_interval_s

    def set_meter_interval(self, seconds: int) -> defer.Deferred:
        """A front's backend set MeterValueSampleInterval: it reaches the charge point now (when connected) and after
        every connection, until EVC restarts (the front keeps the backend's value and sets it again at its start)."""
        self.upstream_meter_interval_s = int(seconds)
        self.ctx.state.set("meter_interval_s", self.upstream_meter_interval_s)
        if self.conn is None or not self._ready:
            return defer.succeed(None)      # sent with the set-up of the next connection
        return defer.ensureDeferred(self._configure_meter_values(self.conn, interval_only=True))

    def _relay(self, kind: str, tx_id: int | None, values: list) -> None:
        """Hand the charge point's own meter values to the fronts (front/ocpp relays them to its backend): `kind`
        "meter_values" (a MeterValues of the open transaction) or "transaction_data" (StopTransaction's)."""
        if self.ctx.events is None or not values:
            return
        s = self.sessions.session
        session = s.id if s is not None and tx_id is not None and s.transaction_id == tx_id else None
        self.ctx.events.publish(("meter_values", self.ctx.name),
                                {"kind": kind, "session": session, "transaction_id": tx_id, "meter_value": values})

    # --- smart charging ---

    def _smart_pending(self) -> None:
        if self.smart != "pending":
            self.smart, self.smart_why = "pending", ""
            self.ctx.state.set("smart_charging", "pending")
            self.ctx.state.delete("smart_charging_error")

    def _target_A(self) -> float | None:
        if self.config.mode != "ON":
            return 0.0
        return self._asked_A

    def _refresh_after_s(self) -> float:
        return self.config.profile_validity_s / 3

    def _profile(self, profile_id: int, stack_level: int, limit_A: float, duration_s: float | None) -> dict:
        schedule: dict[str, Any] = {
            "startSchedule": _iso(self.ctx.clock.seconds() - CLOCK_SKEW_S),
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(float(limit_A), 1),
                                        "numberPhases": self.config.phases}],
        }
        if duration_s is not None:
            schedule["duration"] = int(math.ceil(CLOCK_SKEW_S + duration_s))
        return {"chargingProfileId": profile_id, "stackLevel": stack_level,
                "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
                "chargingSchedule": schedule}

    def _sync(self) -> None:
        """Send what the charge point should hold (the base first, then the newest dynamic limit), one at a time."""
        conn = self.conn
        if (not self.running or conn is None or not self._ready or self._push_token is not None
                or self.smart == "rejected" or "retry" in self._timers):
            return
        if self._need_base:
            self._push(conn, "base", float(self.config.failsafe_A))
            return
        target = self._target_A()
        if target is None:
            return
        now = self.ctx.clock.seconds()
        if self._dyn_A == target and now < self._dyn_sent_s + self._refresh_after_s():
            self._resolve_waiters(target)
            return
        self._push(conn, "dynamic", target)

    def _forget_push(self) -> None:
        """The push in flight (if any) will never be answered: it may still have landed, so it keeps counting
        until it would have run out or a newer dynamic profile is accepted."""
        if self._inflight_A is not None:
            until_s = self._inflight_sent_s + self.config.profile_validity_s + CLOCK_SKEW_S
            if self._uncertain is None or self._uncertain[0] <= self._inflight_A:
                self._uncertain = (self._inflight_A, until_s)
        self._push_token = None
        self._inflight_A = None

    def _push(self, conn, which: str, amps: float) -> None:
        token = self._push_token = object()
        sent_s = self.ctx.clock.seconds()
        if which == "base":
            profile = self._profile(BASE_PROFILE_ID, BASE_STACK_LEVEL, amps, None)
        else:
            profile = self._profile(DYNAMIC_PROFILE_ID, DYNAMIC_STACK_LEVEL, amps, self.config.profile_validity_s)
            self._inflight_A = amps
            self._inflight_sent_s = sent_s
            self.ctx.state.set("wanted_A", amps)
        self._refresh_status()
        d = conn.call("SetChargingProfile", {"connectorId": self.config.connector, "csChargingProfiles": profile},
                      priority=True)
        d.addCallbacks(self._pushed, self._push_failed, callbackArgs=(token, which, amps, sent_s),
                       errbackArgs=(token, which, amps))

    def _pushed(self, result: dict, token, which: str, amps: float, sent_s: float) -> None:
        if token is not self._push_token:
            return
        self._push_token = None
        self._inflight_A = None
        status = result.get("status")
        if status != "Accepted":
            self._reject(f"SetChargingProfile ({which} profile, {amps:g} A) answered {status}")
            return
        self._retry_s = self.retry_min_s
        if self.smart != "ok":
            self.smart = "ok"
            self.ctx.state.set("smart_charging", "ok")
            self.ctx.state.delete("smart_charging_error")
        if which == "base":
            self._need_base = False
            self._base_ok = True
            log.info("{charger}: base profile {amps} A accepted", charger=self.ctx.key, amps=amps)
        else:
            if amps != self._dyn_A:
                log.info("{charger}: limited to {current_A} A", charger=self.ctx.key, current_A=amps)
            self._dyn_A = amps
            self._uncertain = None         # it replaced whatever an unanswered push may have left
            self._dyn_sent_s = sent_s
            self._dyn_until_s = sent_s + self.config.profile_validity_s
            self.ctx.state.set("limit_A", amps)
            self._timer("refresh", self._refresh_after_s(), self._sync)
            # If refreshing fails until it runs out, the charge point is back on the base: show it then.
            self._timer("expiry", self._dyn_until_s - self.ctx.clock.seconds(), self._refresh_status)
            if amps == self._target_A():
                self._resolve_waiters(amps)
        self._refresh_status()
        self._sync()

    def _push_failed(self, failure, token, which: str, amps: float) -> None:
        if token is not self._push_token:
            return None
        if failure.check(OcppCallError):
            self._push_token = None
            self._inflight_A = None          # refused: it did not land
            e = failure.value
            self._reject(f"SetChargingProfile ({which} profile) answered CALLERROR {e.code}"
                         + (f": {e.description}" if e.description else ""))
            return None
        self._forget_push()                  # no answer: it may have landed all the same
        if not failure.check(CallTimeout, NotConnected):
            log.failure("{charger}: SetChargingProfile failed", failure, charger=self.ctx.key)
        self._fail_waiters(failure.value)
        self._refresh_status()
        if self.conn is not None and self.running:
            delay_s = self._retry_s
            self._retry_s = min(self._retry_s * 2, self.retry_max_s)
            log.warn("{charger}: SetChargingProfile ({which}, {amps} A) failed ({error}); again in {delay_s} s",
                     charger=self.ctx.key, which=which, amps=amps, error=failure.getErrorMessage(), delay_s=delay_s)
            self._timer("retry", delay_s, self._retry)
        return None

    def _retry(self) -> None:
        self._timers.pop("retry", None)
        self._sync()

    def _reject(self, why: str) -> None:
        self.smart, self.smart_why = "rejected", why
        log.warn("{charger}: {why}: EVC cannot limit this charge point; control counts it at A_max {A_max} A",
                 charger=self.ctx.key, why=why, A_max=self.config.A_max)
        self.ctx.state.update({"smart_charging": "rejected", "smart_charging_error": why})
        self._cancel("refresh")
        self._fail_waiters(SmartChargingRejected(f"{self.ctx.key}: {why}"))
        self._refresh_status()

    def _resolve_waiters(self, amps: float) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(amps)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error)

    def _setpoint_A(self) -> float:
        """What the charge point may be letting the car draw now (see the module docstring)."""
        a_max = float(self.config.A_max)
        if self.smart == "rejected":
            return a_max
        base = float(self.config.failsafe_A) if self._base_ok else a_max
        dyn = self._dyn_A if self._dyn_A is not None and self.ctx.clock.seconds() < self._dyn_until_s else None
        if self.conn is None:
            value = max(base, dyn or 0.0)
        else:
            value = dyn if dyn is not None else base
        if self._inflight_A is not None:
            value = max(value, self._inflight_A)
        if self._uncertain is not None and self.ctx.clock.seconds() < self._uncertain[1]:
            value = max(value, self._uncertain[0])
        return min(value, a_max)

    # --- CALLs from the charge point ---

    async def _on_BootNotification(self, p: dict) -> dict:
        now = self.ctx.clock.seconds()
        self._boot = {"vendor": p.get("chargePointVendor"), "model": p.get("chargePointModel"),
                      "firmware": p.get("firmwareVersion"),
                      "serial": p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"),
                      "time": _iso(now)}
        log.info("{charger}: boot: {vendor} {model}, firmware {firmware}", charger=self.ctx.key,
                 vendor=self._boot["vendor"], model=self._boot["model"], firmware=self._boot["firmware"])
        self._write_boot_state()
        self._save("boot", self._boot)
        return {"status": "Accepted", "currentTime": _iso(now),
                "interval": int(getattr(self.server.config, "heartbeat_interval_s", 300))}

    def _write_boot_state(self) -> None:
        for leaf in ("vendor", "model", "firmware", "serial", "time"):
            value = (self._boot or {}).get(leaf)
            if value:
                self.ctx.state.set(f"boot/{leaf}", value)
            else:
                self.ctx.state.delete(f"boot/{leaf}")

    async def _on_Heartbeat(self, p: dict) -> dict:
        return {"currentTime": _iso(self.ctx.clock.seconds())}

    async def _on_StatusNotification(self, p: dict) -> dict:
        connector = p["connectorId"]
        if connector == 0:
            self._cp_status, self._cp_error = p["status"], p["errorCode"]
            self.ctx.state.update({"charge_point_status": p["status"], "charge_point_error_code": p["errorCode"]})
        elif connector == self.config.connector:
            self._connector_status, self._error_code, self._info = p["status"], p["errorCode"], p.get("info") or ""
            self.ctx.state.update({"status": p["status"], "error_code": p["errorCode"]})
        else:
            log.debug("{charger}: status of connector {connector} ignored (EVC drives connector {mine})",
                      charger=self.ctx.key, connector=connector, mine=self.config.connector)
            return {}
        self._refresh_status()
        return {}

    async def _on_Authorize(self, p: dict) -> dict:
        result = await authorize(self.ctx, p["idTag"], self.ctx.name)
        log.info("{charger}: Authorize: {status} ({source})", charger=self.ctx.key, status=result.status,
                 source=result.source)
        return {"idTagInfo": _id_tag_info(result)}

    @staticmethod
    def _start_key(connector, id_tag, meter_start, timestamp) -> tuple:
        return (connector, id_tag, meter_start, timestamp)

    async def _on_StartTransaction(self, p: dict) -> dict:
        await self._loaded
        key = self._start_key(p["connectorId"], p["idTag"], p["meterStart"], p["timestamp"])
        if key in self._starts:
            log.info("{charger}: StartTransaction sent again: same transaction {id}", charger=self.ctx.key,
                     id=self._starts[key]["transactionId"])
            return self._starts[key]
        if key in self._starting:      # the same message again while the first is still being answered
            waiter: defer.Deferred = defer.Deferred()
            self._starting[key].append(waiter)
            return await waiter
        self._starting[key] = waiters = []
        try:
            answer = await self._start_transaction(p, key)
        except Exception as e:
            for w in waiters:
                w.errback(Failure(e))
            raise
        finally:
            self._starting.pop(key, None)
        for w in waiters:
            w.callback(answer)
        return answer

    async def _start_transaction(self, p: dict, key: tuple) -> dict:
        result = await authorize(self.ctx, p["idTag"], self.ctx.name)
        tx_id = await self.server.allocate_transaction_id()
        info = _id_tag_info(result)
        answer = {"transactionId": tx_id, "idTagInfo": info}
        mine = p["connectorId"] == self.config.connector
        log.info("{charger}: transaction {id} started on connector {connector}: {status}", charger=self.ctx.key,
                 id=tx_id, connector=p["connectorId"], status=result.status)
        self._starts[key] = answer
        while len(self._starts) > self.recent_starts:
            self._starts.popitem(last=False)
        if not mine:
            return answer
        old, s = self.tx, self.sessions.session
        if (old is not None and old.get("open") and s is not None and s.transaction_id is None
                and s.id == old.get("session")):
            # The open session belongs to the transaction before (a record from an EVC that did not name it yet).
            self.sessions.end("Other")
        self._energy_Wh = self._tx_Wh = float(p["meterStart"])
        self.tx = {"transaction_id": tx_id, "connector": p["connectorId"], "id_tag": p["idTag"],
                   "meter_start_Wh": p["meterStart"], "timestamp": p["timestamp"], "id_tag_info": info,
                   "open": True, "accepted": result.accepted}
        self.ctx.state.update({"transaction_id": tx_id, "energy_Wh": self._energy_Wh})
        # A transaction means a car: the session is this transaction, metered from its own meterStart.
        self.sessions.transaction_started(tx_id, self._tx_Wh, p["idTag"], result.accepted)
        self._refresh_status()
        if result.accepted:
            if self.ctx.events is not None:
                self.ctx.events.publish(("authorization", self.ctx.name), {"authorized": True, "id_tag": p["idTag"]})
        session = self.sessions.session
        self.tx["session"] = session.id if session is not None else None
        await self._save("transaction", self.tx)
        return answer

    async def _on_StopTransaction(self, p: dict) -> dict:
        await self._loaded
        answer: dict = {}
        if p.get("idTag"):
            answer["idTagInfo"] = _id_tag_info(await authorize(self.ctx, p["idTag"], self.ctx.name))
        tx_id = p["transactionId"]
        tx = self.tx
        if tx is None or tx.get("transaction_id") != tx_id or not tx.get("open"):
            log.info("{charger}: StopTransaction for transaction {id}, which is not open here (sent again, or "
                     "older than EVC's records): acknowledged", charger=self.ctx.key, id=tx_id)
            return answer
        if p.get("transactionData"):
            self._meter_values(p["transactionData"])
            for value in _energy_readings(p["transactionData"]):
                self._tx_reading(value)
            self._relay("transaction_data", tx_id, p["transactionData"])
        self._energy_Wh = self._tx_Wh = float(p["meterStop"])
        reason = p.get("reason") or "Local"
        self._feed_sessions()          # the final meter value, while the transaction still says a car is there
        self.tx = dict(tx, open=False, meter_stop_Wh=p["meterStop"], stop_timestamp=p.get("timestamp"),
                       reason=reason)
        self.sessions.transaction_stopped(tx_id, self._tx_Wh, reason if reason in REASONS else "Other")
        self._tx_Wh = None
        if self.ctx.events is not None:
            self.ctx.events.publish(("authorization", self.ctx.name), {"authorized": False, "id_tag": None})
        log.info("{charger}: transaction {id} stopped ({reason}), meter {meter_Wh} Wh", charger=self.ctx.key,
                 id=tx_id, reason=reason, meter_Wh=p["meterStop"])
        self.ctx.state.set("energy_Wh", self._energy_Wh)
        self.ctx.state.delete("transaction_id")
        self._refresh_status()
        await self._save("transaction", self.tx)
        return answer

    async def _on_MeterValues(self, p: dict) -> dict:
        connector = p["connectorId"]
        if connector != self.config.connector:
            log.debug("{charger}: meter values of connector {connector} ignored", charger=self.ctx.key,
                      connector=connector)
            return {}
        self._meter_values(p["meterValue"])
        tx = self.tx
        if tx is not None and tx.get("open"):
            given = p.get("transactionId")
            if given is not None and given != tx["transaction_id"]:
                log.info("{charger}: meter values of transaction {given} while {open} is open: not counted for the "
                         "session", charger=self.ctx.key, given=given, open=tx["transaction_id"])
            else:
                since = None if given is not None else _parse_time(tx.get("timestamp"))
                for value in _energy_readings(p["meterValue"], since):
                    self._tx_reading(value)
                if given is not None:
                    self._relay("meter_values", given, p["meterValue"])
        if p.get("transactionId") is None:
            self._relay("meter_values", None, p["meterValue"])
        self._refresh_status()
        return {}

    def _tx_reading(self, value_Wh: float) -> None:
        """A reading of the open transaction's energy register: the session's newest reading."""
        self._tx_Wh = value_Wh
        self._feed_sessions()

    def _meter_values(self, values: list) -> None:
        measured = list(self._measured_A)
        for mv in values:
            for sv in mv.get("sampledValue") or ():
                if sv.get("format") == "SignedData":
                    continue
                try:
                    value = float(sv["value"])
                except (KeyError, ValueError):
                    continue
                if not math.isfinite(value):
                    continue
                measurand = sv.get("measurand", "Energy.Active.Import.Register")
                unit = sv.get("unit")
                phase = (sv.get("phase") or "")[:2]
                if measurand == "Energy.Active.Import.Register" and not phase:
                    self._energy_Wh = value * 1000 if unit == "kWh" else value
                elif measurand == "Current.Import":
                    if phase in PHASE_INDEX:
                        index = PHASE_INDEX[phase]
                        if index < len(measured):
                            measured[index] = value
                    elif not phase:
                        # No phase given: count it on every phase (never less than the car may draw on one).
                        measured = [value] * len(measured)
                elif measurand == "Current.Offered" and not phase:
                    self._offered_A = value
                elif measurand == "Power.Active.Import" and not phase:
                    self._power_W = value * 1000 if unit == "kW" else value
        self._measured_A = measured
        self._measured_s = self.ctx.clock.seconds()
        if self._energy_Wh is not None:
            self.ctx.state.set("energy_Wh", round(self._energy_Wh, 1), deadband=1.0)
        if self._power_W is not None:
            self.ctx.state.set("power_W", round(self._power_W), deadband=10)

    async def _on_DataTransfer(self, p: dict) -> dict:
        handler = self.data_transfer_handlers.get(p["vendorId"])
        if handler is None:
            return {"status": "UnknownVendorId"}
        return await defer.maybeDeferred(handler, p.get("messageId"), p.get("data"))

    async def _on_DiagnosticsStatusNotification(self, p: dict) -> dict:
        self.ctx.state.set("diagnostics_status", p["status"])
        return {}

    async def _on_FirmwareStatusNotification(self, p: dict) -> dict:
        self.ctx.state.set("firmware_status", p["status"])
        return {}

    # --- status ---

    def _vehicle(self) -> str:
        vehicle = VEHICLE.get(self._connector_status or "", "unknown")
        if self.tx is not None and self.tx.get("open") and vehicle in ("none", "unknown"):
            vehicle = "plugged"          # a transaction runs: a car is there whatever the last status said
        if self._cp_status == "Faulted":
            vehicle = "fault"
        return vehicle

    def _fault(self) -> str:
        faults = []
        if self._cp_status == "Faulted":
            faults.append(f"the charge point reports a fault ({self._cp_error})")
        if self._connector_status == "Faulted":
            faults.append(f"connector {self.config.connector} faulted ({self._error_code}"
                          + (f": {self._info}" if self._info else "") + ")")
        if self.smart == "rejected":
            faults.append(f"smart charging rejected ({self.smart_why}): counted at A_max")
        return "; ".join(faults)

    def _actual_A(self) -> tuple[float | None, ...]:
        if self.meter is not None:
            reading = self.meter.reading
            if reading is None or reading.stale:
                return (None,) * self.config.phases
            return tuple(reading.A[PHASE_INDEX[p]] for p in self.config.phase_map)
        return tuple(self._measured_A)

    def _actual_s(self) -> float | None:
        """When actual_A was measured: its meter's reading, or the charge point's last MeterValues."""
        if self.meter is not None:
            reading = self.meter.reading
            return None if reading is None or reading.stale else reading.updated
        return self._measured_s

    def _meter_reading(self, reading: Reading) -> None:
        self._refresh_status()

    def _compose(self) -> ChargerStatus:
        controllable = self.conn is not None and self.smart != "rejected"
        return ChargerStatus(vehicle=self._vehicle(), online=controllable, setpoint_A=self._setpoint_A(),
                             offered_A=self._offered_A, actual_A=self._actual_A(), limit_A=None,
                             fault=self._fault(), updated=self._seen_s, actual_s=self._actual_s())

    def _feed_sessions(self) -> None:
        s = self._compose()
        # The session follows the car, whether or not EVC can limit the charge point.
        self.sessions.update(dataclasses.replace(s, online=self.conn is not None), self._tx_Wh)

    def _refresh_status(self) -> None:
        if not self.running:
            return
        new = self._compose()
        old, self.status = self.status, new
        self._write_state(new)
        self._feed_sessions()
        if dataclasses.replace(old, updated=None) == dataclasses.replace(new, updated=None):
            return
        self._subscribers.notify(new)
        if self.ctx.events is not None:
            self.ctx.events.publish(("charger", self.ctx.name), new)

    def _write_state(self, s: ChargerStatus) -> None:
        write_status(self.ctx.state, s, self.config.phase_map)

    # --- the local authorization list ---

    def local_entries(self) -> dict[str, dict]:
        """idTag -> idTagInfo of every token valid here (what the charge point's local list should hold)."""
        tokens = self.ctx.find("token")
        now = datetime.datetime.fromtimestamp(self.ctx.clock.seconds(), datetime.timezone.utc)
        out = {}
        for tag in sorted(tokens):
            if len(tag) > ID_TAG_MAX:
                if tag not in self._long_tags_logged:
                    self._long_tags_logged.add(tag)
                    log.warn("{charger}: token {length} characters long is left out of the local list (OCPP 1.6 "
                             "id tags have at most 20)", charger=self.ctx.key, length=len(tag))
                continue
            result = local_lookup(tokens, tag, self.ctx.name, now)
            if result.status != "Invalid":
                out[tag] = _id_tag_info(result)
        return out

    async def _local_list_setup(self, conn) -> None:
        await self._loaded
        try:
            result = await conn.call("GetConfiguration", {"key": [
                "SupportedFeatureProfiles", "LocalAuthListEnabled", "LocalAuthListMaxLength",
                "SendLocalListMaxLength"]})
        except NotConnected:
            return
        except (OcppCallError, CallTimeout) as e:
            log.info("{charger}: GetConfiguration failed ({error}); no local list", charger=self.ctx.key,
                     error=str(e))
            return
        keys = {k.get("key"): k.get("value") for k in result.get("configurationKey") or ()}
        profiles = keys.get("SupportedFeatureProfiles")
        if profiles is None:
            try:
                await conn.call("GetLocalListVersion", {})
                supported = True
            except (OcppCallError, CallTimeout):
                supported = False
            except NotConnected:
                return
        else:
            supported = "LocalAuthListManagement" in [x.strip() for x in profiles.split(",")]
        self.local_list_supported = supported
        self._ll_max_length = _int_or_none(keys.get("LocalAuthListMaxLength"))
        self._ll_chunk = _int_or_none(keys.get("SendLocalListMaxLength"))
        self.ctx.state.set("local_list", "supported" if supported else "not supported")
        if supported:
            self._ll_full_needed = True
            await self._ll_lock.run(lambda: defer.ensureDeferred(self._send_local_list(conn)))

    def _token_changed(self, topic, event) -> None:
        if self.running and self.local_list_supported:
            self._timer("local_list", self.local_list_delay_s, self._local_list_update)

    def _local_list_update(self) -> None:
        self._timers.pop("local_list", None)
        conn = self.conn
        if conn is None or not self.local_list_supported:
            return
        d = self._ll_lock.run(lambda: defer.ensureDeferred(self._send_local_list(conn)))
        d.addErrback(lambda f: log.failure("{charger}: local list update failed", f, charger=self.ctx.key))

    async def _send_local_list(self, conn) -> None:
        if conn is not self.conn:
            return
        entries = self.local_entries()
        if self._ll_max_length is not None and len(entries) > self._ll_max_length:
            log.warn("{charger}: {n} tokens, the charge point's local list holds {max}: the first {max} (by id) "
                     "are sent", charger=self.ctx.key, n=len(entries), max=self._ll_max_length)
            entries = dict(list(entries.items())[:self._ll_max_length])
        full = self._ll_full_needed or self._ll_entries is None
        if full:
            items = list(entries.items())
        else:
            old = self._ll_entries or {}
            items = [(t, i) for t, i in entries.items() if old.get(t) != i]
            items += [(t, None) for t in sorted(old) if t not in entries]
            if not items:
                return
        chunk = self._ll_chunk if self._ll_chunk and self._ll_chunk > 0 else max(len(items), 1)
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)] or [[]]
        version = self._ll_version
        for n, part in enumerate(chunks):
            version += 1
            update = "Full" if full and n == 0 else "Differential"
            payload = {"listVersion": version, "updateType": update,
                       "localAuthorizationList": [dict({"idTag": t}, **({"idTagInfo": i} if i else {}))
                                                  for t, i in part]}
            try:
                result = await conn.call("SendLocalList", payload)
            except (OcppCallError, CallTimeout, NotConnected) as e:
                log.warn("{charger}: SendLocalList failed ({error}); a full list goes next time",
                         charger=self.ctx.key, error=str(e))
                self._ll_full_needed = True
                return
            status = result.get("status")
            if status != "Accepted":
                log.warn("{charger}: SendLocalList ({update}, version {version}) answered {status}",
                         charger=self.ctx.key, update=update, version=version, status=status)
                if status == "NotSupported":
                    self.local_list_supported = False
                    self.ctx.state.set("local_list", "not supported")
                self._ll_full_needed = True
                self._ll_version = version      # never send a version the charge point may have seen again
                await self._save("local_list", {"version": self._ll_version, "entries": self._ll_entries or {}})
                return
        self._ll_version = version
        self._ll_entries = entries
        self._ll_full_needed = False
        self.ctx.state.update({"local_list_version": version, "local_list_size": len(entries)})
        log.info("{charger}: local list version {version} sent ({update}, {n} tokens)", charger=self.ctx.key,
                 version=version, update="full" if full else "differential", n=len(entries))
        await self._save("local_list", {"version": version, "entries": entries})

    # --- authorization from fronts (the ICharger-style authorize/deauthorize pair that EVCC_manual has) ---

    def authorize(self, id_tag: str) -> defer.Deferred:
        """Ask the charge point to start a transaction for `id_tag` (RemoteStartTransaction on the configured
        connector). Nothing is authorized here: the session becomes authorized by the StartTransaction that follows.

        Deferred[dict]: the charge point's answer ({"status": "Accepted"}). Fails with NotConnected,
        RemoteCommandRejected, CallTimeout, OcppCallError or ValueError (a tag OCPP 1.6 cannot carry); each failure
        is logged with the charger's name (never the tag)."""
        if not id_tag or len(id_tag) > ID_TAG_MAX:
            error = ValueError(f"{self.ctx.key}: an id tag of {len(id_tag)} characters cannot be sent in OCPP 1.6 "
                               f"(1 to {ID_TAG_MAX})")
            log.warn("{charger}: remote start refused: {error}", charger=self.ctx.key, error=str(error))
            return defer.fail(error)
        return self._remote_command("RemoteStartTransaction", self.remote_start(id_tag))

    def deauthorize(self) -> defer.Deferred:
        """Ask the charge point to stop the open transaction (RemoteStopTransaction with its transaction id); the
        session ends with the StopTransaction that follows (unless the caller ended it first, as front/ocpp does).

        Without an open transaction nothing is sent and the Deferred fires with None: there is nothing EVC could
        withdraw. (A remote start the charge point accepted but has not begun cannot be cancelled in OCPP 1.6; it
        lapses after the charge point's ConnectionTimeOut.) Otherwise as authorize(): Deferred[dict], failures
        logged and passed on."""
        tx = self.tx
        if tx is None or not tx.get("open"):
            log.info("{charger}: deauthorized without an open transaction: nothing to stop", charger=self.ctx.key)
            return defer.succeed(None)
        return self._remote_command("RemoteStopTransaction", self.remote_stop(tx["transaction_id"]))

    def _remote_command(self, action: str, d: defer.Deferred) -> defer.Deferred:
        def answered(result: dict) -> dict:
            status = result.get("status")
            if status != "Accepted":
                raise RemoteCommandRejected(f"{self.ctx.key}: charge point {self.cp_id} answered {status} to "
                                            f"{action}")
            log.info("{charger}: {action} accepted by the charge point", charger=self.ctx.key, action=action)
            return result

        def failed(f: Failure) -> Failure:
            # A CALLERROR's description may repeat the id tag, which is never logged: its code only.
            error = f.value.code if f.check(OcppCallError) else f.getErrorMessage()
            log.warn("{charger}: {action} failed: {error}", charger=self.ctx.key, action=action, error=error)
            return f
        return d.addCallback(answered).addErrback(failed)

    # --- messages to the charge point (fronts, tools) ---

    def remote_start(self, id_tag: str, connector: int | None = None, charging_profile: dict | None = None):
        payload: dict[str, Any] = {"idTag": id_tag, "connectorId": connector or self.config.connector}
        if charging_profile is not None:
            payload["chargingProfile"] = charging_profile
        return self.call("RemoteStartTransaction", payload)

    def remote_stop(self, transaction_id: int | None = None):
        if transaction_id is None:
            if self.tx is None or not self.tx.get("open"):
                return defer.fail(ValueError(f"{self.ctx.key}: no transaction is running"))
            transaction_id = self.tx["transaction_id"]
        return self.call("RemoteStopTransaction", {"transactionId": transaction_id})

    def change_availability(self, operative: bool, connector: int | None = None):
        return self.call("ChangeAvailability", {"connectorId": self.config.connector if connector is None
                                                else connector, "type": "Operative" if operative else "Inoperative"})

    def change_configuration(self, key: str, value: str):
        return self.call("ChangeConfiguration", {"key": key, "value": value})

    def get_configuration(self, keys: list[str] | None = None):
        return self.call("GetConfiguration", {"key": list(keys)} if keys else {})

    def reset(self, hard: bool = False):
        return self.call("Reset", {"type": "Hard" if hard else "Soft"})

    def unlock_connector(self, connector: int | None = None):
        return self.call("UnlockConnector", {"connectorId": connector or self.config.connector})

    def clear_cache(self):
        return self.call("ClearCache", {})

    def set_charging_profile(self, profile: dict, connector: int | None = None):
        return self.call("SetChargingProfile", {"connectorId": self.config.connector if connector is None
                                                else connector, "csChargingProfiles": profile})

    def clear_charging_profile(self, profile_id: int | None = None, connector: int | None = None,
                               purpose: str | None = None, stack_level: int | None = None):
        payload = {"id": profile_id, "connectorId": connector, "chargingProfilePurpose": purpose,
                   "stackLevel": stack_level}
        return self.call("ClearChargingProfile", {k: v for k, v in payload.items() if v is not None})

    def get_composite_schedule(self, duration_s: int, connector: int | None = None, unit: str | None = None):
        payload: dict[str, Any] = {"connectorId": self.config.connector if connector is None else connector,
                                   "duration": int(duration_s)}
        if unit is not None:
            payload["chargingRateUnit"] = unit
        return self.call("GetCompositeSchedule", payload)

    def trigger_message(self, requested: str, connector: int | None = None):
        payload: dict[str, Any] = {"requestedMessage": requested}
        if connector is not None:
            payload["connectorId"] = connector
        return self.call("TriggerMessage", payload)

    def send_local_list(self, version: int, update_type: str, entries: list[dict]):
        return self.call("SendLocalList", {"listVersion": version, "updateType": update_type,
                                           "localAuthorizationList": entries})

    def get_local_list_version(self):
        return self.call("GetLocalListVersion", {})

    def data_transfer(self, vendor_id: str, message_id: str | None = None, data: str | None = None):
        payload = {"vendorId": vendor_id, "messageId": message_id, "data": data}
        return self.call("DataTransfer", {k: v for k, v in payload.items() if v is not None})


def check_server(cfg: OcppChargerConfig, name: str, server) -> None:
    """ConfigError unless `server` (server/<name>) can take this charger: an OCPP central system, and a password
    given when its security profile asks for one."""
    if not hasattr(server, "register") or not hasattr(server, "allocate_transaction_id"):
        raise ConfigError(f"config/server: server {name!r} is not an OCPP central system")
    profile = getattr(server.config, "security_profile", 0)
    if profile >= 1 and not (cfg.password_hash or cfg.password):
        raise ConfigError(f"config/password_hash: server {name} uses security profile {profile}: give "
                          "password_hash (made by `evc passwd`) or password")


class ServerChoice:
    """Which server/ocpp a charger without config/server uses (DESIGN §3: the site's only one), followed live.

    It watches the site's server/ocpp instances start and stop. With exactly one running, the charger registers with
    it; with none or several it uses none and its state/error says so, naming the candidates. Once bound it stays
    with its server while that one runs, also when a second server appears: the charge point is connected there, so
    adding a server never drops a charging car; state/error then asks for config/server until there is one server
    again or config/server names one. When its server stops (removed, or restarted by a config change) the choice
    is made again. Among several, a server that holds this charge point's connection (parked while the charger
    restarted) is kept. The choice is made a tick after a change, so the start of the whole site (chargers start
    before servers, one server after the other: nothing orders them) neither shows a passing "no server" error nor
    binds to the first of two servers."""

    def __init__(self, charger: OcppCharger):
        self.charger = charger
        self.ctx = charger.ctx
        self.name: str | None = None     # the server/<name> in use
        self.server: Any = None
        self.error: str | None = None    # why it uses none, or why the one it uses is in doubt
        self._published: str | None = None
        self._unfollow: Callable[[], None] | None = None
        self._pending: IDelayedCall | None = None

    def start(self) -> None:
        unfollow = [follow_instances(self.ctx, "server", "*", self._changed, self._changed),
                    # a charger that held this cp_id on the only server may go away: try again then
                    follow_instances(self.ctx, "charger", "*", self._charger_changed, self._charger_changed)]
        self._unfollow = lambda: [f() for f in unfollow]
        self.update()

    def stop(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self.server is not None:
            self.ctx.state.delete("server")
        self.server = self.name = None        # the charger's stopService unregisters
        if self._published is not None:
            self.ctx.state.delete("error")
            self._published = None

    def _changed(self, name: str, svc) -> None:
        if self._unfollow is not None:
            self.update()

    def _charger_changed(self, name: str, svc) -> None:
        if svc is not self.charger and self.server is None and self.error is not None:
            self._changed(name, svc)

    def candidates(self) -> dict[str, Any]:
        """The running server/ocpp instances, by name."""
        return {n: s for n, s in sorted(self.ctx.find("server").items()) if getattr(s, "type_name", None) == "ocpp"}

    def update(self) -> None:
        """Choose again a tick later: the supervisor starts a site's servers one after the other, and a charger that
        took the first of two would be bound before it saw the second."""
        if self._pending is None or not self._pending.active():
            self._pending = self.ctx.clock.callLater(0, self._choose)

    def _choose(self) -> None:
        self._pending = None
        if self._unfollow is None:
            return
        servers = self.candidates()
        if self.server is not None and servers.get(self.name) is not self.server:
            self._unbind()
        error = None
        if self.server is None:
            pick = None
            if len(servers) == 1:
                pick = next(iter(servers))
            elif len(servers) > 1:
                held = [n for n, s in servers.items() if self.charger.cp_id in getattr(s, "connections", {})]
                pick = held[0] if len(held) == 1 else None
            if pick is not None:
                try:
                    self._bind(pick, servers[pick])
                except ConfigError as e:
                    error = str(e)
        if error is None:
            error = self._doubt(servers)
        self.error = error
        self._publish()

    def _doubt(self, servers: dict) -> str | None:
        names = ", ".join(servers)
        if len(servers) > 1:
            using = f" (it keeps using {self.name} meanwhile)" if self.server else ""
            return (f"config/server: missing; the site has {len(servers)} server/ocpp ({names}): name one"
                    f"{using}")
        if self.server is not None:
            return None
        idle = sorted(n for n, p in self.ctx.problems("server").items() if p.type_name == "ocpp")
        if idle:
            return (f"config/server: missing; the site has no running server/ocpp (configured but not running: "
                    f"{', '.join(idle)}; see their state/error)")
        return ("config/server: missing; the site has no server/ocpp to connect to (configure one: "
                "server/<name>/type ocpp, config/listen host:port)")

    def _bind(self, name: str, server) -> None:
        charger = self.charger
        check_server(charger.config, name, server)
        charger._unregister = server.register(charger.cp_id, charger)
        charger.server = server
        self.name, self.server = name, server
        self.ctx.state.set("server", name)
        log.info("{charger}: uses server/{server}, the site's server/ocpp (config/server not given)",
                 charger=self.ctx.key, server=name)

    def _unbind(self) -> None:
        charger = self.charger
        if charger._unregister is not None:
            charger._unregister()
            charger._unregister = None
        charger.server = None
        log.info("{charger}: server/{server} stopped", charger=self.ctx.key, server=self.name)
        self.name = self.server = None
        self.ctx.state.delete("server")

    def _publish(self) -> None:
        if self.error == self._published:
            return
        if self.error is None:
            self.ctx.state.delete("error")
            log.info("{charger}: config error cleared", charger=self.ctx.key)
        else:
            self.ctx.state.set("error", self.error)
            log.warn("{charger}: {error}", charger=self.ctx.key, error=self.error)
        self._published = self.error


def _parse_time(text) -> datetime.datetime | None:
    try:
        when = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.timezone.utc)


def _energy_readings(meter_values: list, since: datetime.datetime | None = None) -> list[float]:
    """The Energy.Active.Import.Register values (Wh, whole charge point, in message order) of a meterValue list;
    with `since`, only those stamped at or after it (an unstamped or unreadable time does not count then)."""
    out = []
    for mv in meter_values:
        if since is not None:
            when = _parse_time(mv.get("timestamp"))
            if when is None or when < since:
                continue
        for sv in mv.get("sampledValue") or ():
            if sv.get("format") == "SignedData" or sv.get("phase"):
                continue
            if sv.get("measurand", "Energy.Active.Import.Register") != "Energy.Active.Import.Register":
                continue
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                out.append(value * 1000 if sv.get("unit") == "kWh" else value)
    return out


def _int_or_none(text) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


__all__ = ["OcppCharger", "OcppChargerConfig", "SmartChargingRejected", "RemoteCommandRejected",
          "BASE_PROFILE_ID", "DYNAMIC_PROFILE_ID"]
