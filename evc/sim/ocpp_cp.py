"""An OCPP 1.6J charge point simulator: a networked charger with simulated cars, for the demo and the tests.

It speaks to any central system (CS) through the `ocpp` library's v16 ChargePoint over a `websockets` client,
and behaves as the spec asks of a charge point (shared/reference/ocpp16-essentials.md):
- boot gate: BootNotification until Accepted; Pending and Rejected wait the interval the CS gave; nothing but
  answers goes out until Accepted; then heartbeats on HeartbeatInterval and StatusNotification on every change;
- per connector: Available → Preparing → Charging → SuspendedEV / SuspendedEVSE → Finishing → Available (also
  Unavailable, Faulted); an id tag (plug with a tag, a swipe, RemoteStart) is authorized (Authorize, or the local
  list / cache as LocalPreAuthorize, LocalAuthorizeOffline, AllowOfflineTxForUnknownId say), then
  StartTransaction; unplugging, a RemoteStop, the same tag again, UnlockConnector or Reset stop it;
- transaction messages (Start/Stop, sampled and clock-aligned MeterValues in a transaction) go through one FIFO
  that survives disconnections and retries a CALLERROR up to TransactionMessageAttempts, waiting
  TransactionMessageRetryInterval × earlier tries; other messages may overtake it and are dropped while offline;
- smart charging really applies: profiles are stacked per purpose (the highest valid stackLevel whose
  schedule covers the moment wins; when it ends the next one below takes over), TxProfile overrides
  TxDefaultProfile, ChargePointMaxProfile caps the sum of the connectors, and the car's offered current follows
  the composite limit in time (timers fire on every breakpoint, not only on the tick). Below `min_current_A`
  (IEC 61851: 6 A) nothing is offered (SuspendedEVSE).

The simulator's choices where the spec is silent:
- an Absolute schedule without startSchedule starts when its transaction starts (Tx/TxDefault profiles) or
  when it was set (ChargePointMaxProfile); a Relative one starts at the transaction's start;
- a TxDefaultProfile on connector N replaces all connector-0 TxDefaultProfiles for that connector;
- ChargePointMaxProfile is split equally among the connectors that have a transaction;
- W limits become A per phase as W / (voltage_V × numberPhases), numberPhases defaulting to 3 (the spec's);
  a period's numberPhases also limits the phases the car may draw on;
- the CP's clock is the injected clock: it is not set from the CS's currentTime.

Time is injected (`clock`: Twisted's IReactorTime, `task.Clock` in tests): timers, heartbeats, samples,
profile validity, backoff and boot waits all run on it. The websocket and the ocpp library run on asyncio (the
reactor's own loop under Twisted's asyncio reactor).

Command line, one charger per process:
    python -m evc.sim.ocpp_cp --url ws://127.0.0.1:9000/ocpp --id cp1 [--password ...] [--plug-at 2 --id-tag AA]
Commands on stdin (one per line; each answers one JSON line): status, plug [tag] [connector],
unplug [connector], tag <idTag> [connector], soc <0..1> [connector], hold|release [connector],
fault|clear [connector], disconnect.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import math
import ssl
import sys
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import websockets
from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from twisted.internet import task
from twisted.logger import Logger

from evc import __version__
from evc.sim.car import SimCar

log = Logger(namespace="evc.sim.ocpp_cp")

SUBPROTOCOL = "ocpp1.6"
PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
KINDS = ("Absolute", "Recurring", "Relative")
CYCLE_S = {"Daily": 86400.0, "Weekly": 7 * 86400.0}
UNITS = {"A": "Current", "W": "Power"}
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Current.Offered",
              "Voltage", "SoC")
SMART_CHARGING_MODES = ("accept", "reject", "unsupported")
TRIGGERABLE = ("BootNotification", "Heartbeat", "MeterValues", "StatusNotification",
               "DiagnosticsStatusNotification", "FirmwareStatusNotification")
# How far ahead the breakpoint timer looks; a later change is picked up by a following refresh.
HORIZON_S = 2 * 86400.0
TX_QUEUE_MAX = 5000


# -- time --------------------------------------------------------------------------------------------------

def iso(t_s: float) -> str:
    """Seconds since the epoch as OCPP's UTC date-time."""
    return datetime.fromtimestamp(t_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str, what: str) -> float:
    """OCPP date-time text (with Z or an offset; naive means UTC) as seconds since the epoch."""
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ProfileError(f"{what} {text!r} is not an ISO 8601 date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# -- smart charging ------------------------------------------------------------------------------------------

class ProfileError(ValueError):
    """A charging profile the charge point refuses (answered Rejected); the message says why."""


@dataclass(frozen=True)
class Period:
    start_s: float
    limit: float
    phases: int | None


@dataclass(frozen=True)
class Profile:
    """One installed charging profile, in seconds since the epoch and plain floats."""
    id: int
    connector_id: int
    stack_level: int
    purpose: str
    kind: str
    recurrency: str | None
    valid_from_s: float | None
    valid_to_s: float | None
    transaction_id: int | None
    duration_s: float | None
    start_s: float | None
    unit: str
    periods: tuple[Period, ...]
    set_at_s: float

    @classmethod
    def from_payload(cls, connector_id: int, doc: dict, now_s: float, max_periods: int = 24) -> "Profile":
        """Build from a csChargingProfiles / chargingProfile object (the ocpp library's snake_case keys)."""
        try:
            schedule = doc["charging_schedule"]
            purpose = doc["charging_profile_purpose"]
            kind = doc["charging_profile_kind"]
            unit = schedule["charging_rate_unit"]
            raw_periods = schedule["charging_schedule_period"]
            profile_id = int(doc["charging_profile_id"])
            stack_level = int(doc["stack_level"])
        except (KeyError, TypeError) as e:
            raise ProfileError(f"charging profile lacks {e}") from None
        if purpose not in PURPOSES:
            raise ProfileError(f"chargingProfilePurpose {purpose!r} is not one of {', '.join(PURPOSES)}")
        if kind not in KINDS:
            raise ProfileError(f"chargingProfileKind {kind!r} is not one of {', '.join(KINDS)}")
        if unit not in UNITS:
            raise ProfileError(f"chargingRateUnit {unit!r} is not A or W")
        recurrency = doc.get("recurrency_kind")
        start_text = schedule.get("start_schedule")
        start_s = parse_time(start_text, "startSchedule") if start_text else None
        if kind == "Recurring":
            if recurrency not in CYCLE_S:
                raise ProfileError("a Recurring profile needs recurrencyKind Daily or Weekly")
            if start_s is None:
                raise ProfileError("a Recurring profile needs a startSchedule")
        if not raw_periods:
            raise ProfileError("chargingSchedulePeriod is empty")
        if len(raw_periods) > max_periods:
            raise ProfileError(f"{len(raw_periods)} periods, more than ChargingScheduleMaxPeriods {max_periods}")
        periods = []
        for p in raw_periods:
            period = Period(float(p["start_period"]), float(p["limit"]),
                            int(p["number_phases"]) if p.get("number_phases") is not None else None)
            if period.limit < 0:
                raise ProfileError(f"limit {period.limit} is negative")
            if period.phases is not None and period.phases not in (1, 2, 3):
                raise ProfileError(f"numberPhases {period.phases} is not 1, 2 or 3")
            if periods and period.start_s <= periods[-1].start_s:
                raise ProfileError("startPeriod values must increase")
            periods.append(period)
        duration = schedule.get("duration")
        valid_from, valid_to = doc.get("valid_from"), doc.get("valid_to")
        return cls(
            id=profile_id, connector_id=connector_id, stack_level=stack_level, purpose=purpose, kind=kind,
            recurrency=recurrency if kind == "Recurring" else None,
            valid_from_s=parse_time(valid_from, "validFrom") if valid_from else None,
            valid_to_s=parse_time(valid_to, "validTo") if valid_to else None,
            transaction_id=doc.get("transaction_id"),
            duration_s=float(duration) if duration is not None else None,
            start_s=start_s, unit=unit, periods=tuple(periods), set_at_s=now_s)

    def _valid(self, t_s: float) -> bool:
        return ((self.valid_from_s is None or t_s >= self.valid_from_s)
                and (self.valid_to_s is None or t_s < self.valid_to_s))

    def anchor_s(self, t_s: float, tx_start_s: float) -> float:
        """When the schedule period that may cover `t_s` began (the cycle's start for a Recurring one)."""
        if self.kind == "Recurring":
            cycle = CYCLE_S[self.recurrency]
            return self.start_s + math.floor((t_s - self.start_s) / cycle) * cycle
        if self.kind == "Relative":
            return tx_start_s
        if self.start_s is not None:
            return self.start_s
        return self.set_at_s if self.purpose == "ChargePointMaxProfile" else tx_start_s

    def period_at(self, t_s: float, tx_start_s: float) -> Period | None:
        """The schedule period in force at `t_s`, or None when this profile says nothing then."""
        if not self._valid(t_s):
            return None
        offset = t_s - self.anchor_s(t_s, tx_start_s)
        if offset < 0 or (self.duration_s is not None and offset >= self.duration_s):
            return None
        current = None
        for period in self.periods:
            if period.start_s > offset:
                break
            current = period
        return current

    def breakpoints(self, t0_s: float, t1_s: float, tx_start_s: float) -> set[float]:
        """Moments in (t0, t1] where this profile's answer may change."""
        points = {self.valid_from_s, self.valid_to_s}
        if self.kind == "Recurring":
            cycle = CYCLE_S[self.recurrency]
            anchors = []
            a = self.anchor_s(t0_s, tx_start_s)
            while a <= t1_s:
                anchors.append(a)
                a += cycle
        else:
            anchors = [self.anchor_s(t0_s, tx_start_s)]
        for a in anchors:
            points.add(a)
            points.update(a + p.start_s for p in self.periods)
            if self.duration_s is not None:
                points.add(a + self.duration_s)
        return {p for p in points if p is not None and t0_s < p <= t1_s}


def period_A(period: Period, unit: str, voltage_V: float) -> float:
    """A period's limit as current per phase."""
    if unit == "A":
        return period.limit
    return period.limit / (voltage_V * (period.phases or 3))


class ProfileStore:
    """The installed charging profiles and the stacking rules over them."""

    def __init__(self):
        self.profiles: list[Profile] = []

    def install(self, profile: Profile) -> None:
        """Same id, or same connector + stackLevel + purpose, replaces (OCPP 1.6 §3.13.2)."""
        self.profiles = [p for p in self.profiles
                         if p.id != profile.id and not (p.connector_id == profile.connector_id
                                                        and p.stack_level == profile.stack_level
                                                        and p.purpose == profile.purpose)]
        self.profiles.append(profile)

    def clear(self, profile_id=None, connector_id=None, purpose=None, stack_level=None) -> int:
        """ClearChargingProfile: an id removes that profile whatever the other fields; else all that match."""
        if profile_id is not None:
            keep = [p for p in self.profiles if p.id != profile_id]
        else:
            keep = [p for p in self.profiles
                    if not ((connector_id is None or p.connector_id == connector_id)
                            and (purpose is None or p.purpose == purpose)
                            and (stack_level is None or p.stack_level == stack_level))]
        removed = len(self.profiles) - len(keep)
        self.profiles = keep
        return removed

    def drop_tx_profiles(self, connector_id: int) -> None:
        """A TxProfile ends with its transaction."""
        self.profiles = [p for p in self.profiles
                         if not (p.purpose == "TxProfile" and p.connector_id == connector_id)]

    def purge(self, now_s: float) -> None:
        self.profiles = [p for p in self.profiles if p.valid_to_s is None or p.valid_to_s > now_s]

    def relevant(self, purpose: str, connector_id: int, tx_id: int | None = None) -> list[Profile]:
        """The profiles of `purpose` that may apply to `connector_id`, highest stackLevel first."""
        if purpose == "ChargePointMaxProfile":
            found = [p for p in self.profiles if p.purpose == purpose]
        elif purpose == "TxDefaultProfile":
            found = [p for p in self.profiles if p.purpose == purpose and p.connector_id == connector_id]
            if not found:
                found = [p for p in self.profiles if p.purpose == purpose and p.connector_id == 0]
        else:
            found = [p for p in self.profiles if p.purpose == purpose and p.connector_id == connector_id
                     and (p.transaction_id is None or tx_id is None or p.transaction_id == tx_id)]
        return sorted(found, key=lambda p: -p.stack_level)

    @staticmethod
    def winner(profiles: list[Profile], t_s: float, tx_start_s: float) -> tuple[Profile, Period] | None:
        for profile in profiles:
            period = profile.period_at(t_s, tx_start_s)
            if period is not None:
                return profile, period
        return None


# -- configuration keys --------------------------------------------------------------------------------------

@dataclass
class ConfigKey:
    value: str
    readonly: bool = False
    kind: str = "str"             # str | int | bool | measurands
    write_only: bool = False      # never shown in GetConfiguration (AuthorizationKey)
    max_items: int = 0            # for measurand lists


def _config_keys(connectors: int, smart_charging: bool) -> dict[str, ConfigKey]:
    profiles = "Core,LocalAuthListManagement,RemoteTrigger" + (",SmartCharging" if smart_charging else "")
    keys = {
        "AllowOfflineTxForUnknownId": ConfigKey("false", kind="bool"),
        "AuthorizationCacheEnabled": ConfigKey("true", kind="bool"),
        "AuthorizationKey": ConfigKey("", kind="str", write_only=True),
        "AuthorizeRemoteTxRequests": ConfigKey("true", kind="bool"),
        "ClockAlignedDataInterval": ConfigKey("0", kind="int"),
        "ConnectionTimeOut": ConfigKey("60", kind="int"),
        "ConnectorPhaseRotation": ConfigKey("0.RST"),
        "GetConfigurationMaxKeys": ConfigKey("60", readonly=True, kind="int"),
        "HeartbeatInterval": ConfigKey("300", kind="int"),
        "LocalAuthorizeOffline": ConfigKey("true", kind="bool"),
        "LocalPreAuthorize": ConfigKey("false", kind="bool"),
        "MeterValuesAlignedData": ConfigKey("Energy.Active.Import.Register", kind="measurands", max_items=6),
        "MeterValuesAlignedDataMaxLength": ConfigKey("6", readonly=True, kind="int"),
        "MeterValuesSampledData": ConfigKey("Energy.Active.Import.Register,Current.Import,Power.Active.Import",
                                            kind="measurands", max_items=6),
        "MeterValuesSampledDataMaxLength": ConfigKey("6", readonly=True, kind="int"),
        "MeterValueSampleInterval": ConfigKey("10", kind="int"),
        "NumberOfConnectors": ConfigKey(str(connectors), readonly=True, kind="int"),
        "ResetRetries": ConfigKey("1", kind="int"),
        "StopTransactionOnEVSideDisconnect": ConfigKey("true", kind="bool"),
        "StopTransactionOnInvalidId": ConfigKey("true", kind="bool"),
        "StopTxnAlignedData": ConfigKey("", kind="measurands", max_items=6),
        "StopTxnAlignedDataMaxLength": ConfigKey("6", readonly=True, kind="int"),
        "StopTxnSampledData": ConfigKey("", kind="measurands", max_items=6),
        "StopTxnSampledDataMaxLength": ConfigKey("6", readonly=True, kind="int"),
        "SupportedFeatureProfiles": ConfigKey(profiles, readonly=True),
        "TransactionMessageAttempts": ConfigKey("3", kind="int"),
        "TransactionMessageRetryInterval": ConfigKey("60", kind="int"),
        "UnlockConnectorOnEVSideDisconnect": ConfigKey("true", kind="bool"),
        "WebSocketPingInterval": ConfigKey("30", kind="int"),
        "LocalAuthListEnabled": ConfigKey("true", kind="bool"),
        "LocalAuthListMaxLength": ConfigKey("100", readonly=True, kind="int"),
        "SendLocalListMaxLength": ConfigKey("100", readonly=True, kind="int"),
    }
    if smart_charging:
        keys.update({
            "ChargeProfileMaxStackLevel": ConfigKey("8", readonly=True, kind="int"),
            "ChargingScheduleAllowedChargingRateUnit": ConfigKey("Current,Power", readonly=True),
            "ChargingScheduleMaxPeriods": ConfigKey("24", readonly=True, kind="int"),
            "ConnectorSwitch3to1PhaseSupported": ConfigKey("true", readonly=True, kind="bool"),
            "MaxChargingProfilesInstalled": ConfigKey("16", readonly=True, kind="int"),
        })
    return keys


class ConfigTable:
    """The charge point's configuration keys (GetConfiguration / ChangeConfiguration)."""

    def __init__(self, keys: dict[str, ConfigKey], on_change: Callable[[str], None] = lambda key: None):
        self.keys = keys
        self._on_change = on_change

    def get(self, key: str) -> str:
        return self.keys[key].value

    def int(self, key: str) -> int:
        return int(self.keys[key].value)

    def bool(self, key: str) -> bool:
        return self.keys[key].value.lower() == "true"

    def list(self, key: str) -> list[str]:
        return [v.strip() for v in self.keys[key].value.split(",") if v.strip()]

    def set(self, key: str, value: str) -> None:
        """Set a key from inside the charge point (e.g. HeartbeatInterval from BootNotification)."""
        self.keys[key].value = value
        self._on_change(key)

    def report(self, requested: list[str] | None) -> tuple[list[dict], list[str]]:
        names = requested if requested else [k for k, v in self.keys.items() if not v.write_only]
        known, unknown = [], []
        for name in names:
            entry = self.keys.get(name)
            if entry is None or entry.write_only:
                unknown.append(name)
            else:
                known.append({"key": name, "readonly": entry.readonly, "value": entry.value})
        return known, unknown

    def change(self, key: str, value: str) -> str:
        """ChangeConfiguration: Accepted, Rejected (read-only or a bad value) or NotSupported (unknown key)."""
        entry = self.keys.get(key)
        if entry is None:
            return "NotSupported"
        if entry.readonly:
            return "Rejected"
        problem = self._check(key, entry, value)
        if problem:
            log.info("ChangeConfiguration {key} refused: {problem}", key=key, problem=problem)
            return "Rejected"
        if entry.kind == "bool":
            value = value.strip().lower()
        entry.value = value
        self._on_change(key)
        return "Accepted"

    @staticmethod
    def _check(key: str, entry: ConfigKey, value: str) -> str | None:
        if entry.kind == "int":
            try:
                if int(value) < 0:
                    return f"{value!r} is negative"
            except ValueError:
                return f"{value!r} is not an integer"
        elif entry.kind == "bool":
            if value.strip().lower() not in ("true", "false"):
                return f"{value!r} is not true or false"
        elif entry.kind == "measurands":
            items = [v.strip() for v in value.split(",") if v.strip()]
            unknown = [v for v in items if v not in MEASURANDS]
            if unknown:
                return f"unsupported measurand(s) {', '.join(unknown)}"
            if len(items) > entry.max_items:
                return f"{len(items)} measurands, at most {entry.max_items}"
        if key == "AuthorizationKey" and not 16 <= len(value.encode()) <= 40:
            return "an AuthorizationKey has 16 to 20 bytes (40 hex digits when sent over OCPP)"
        return None


# -- connectors and transactions ------------------------------------------------------------------------------

@dataclass
class Transaction:
    id_tag: str
    start_s: float
    meter_start_Wh: int
    id: int | None = None             # from StartTransaction.conf
    start_replies: list = field(default_factory=list)   # every transactionId the CS answered (lost replies)


class SimConnector:
    """One connector: the EVSE side a SimCar plugs into, plus its transaction state."""

    def __init__(self, cp: "OcppChargePointSim", connector_id: int, phases: int, max_current_A: float):
        self.cp = cp
        self.connector_id = connector_id
        self.name = f"{cp.cp_id}/{connector_id}"
        self.wired_phases = phases
        self.max_current_A = max_current_A
        self.car: SimCar | None = None
        self.energy_Wh = 0.0
        self.tx: Transaction | None = None
        self.pending_tag: str | None = None          # presented, waiting for authorization or a plug
        self.pending_authorized = False
        self.pending_deadline_s: float | None = None
        self.pending_profile: dict | None = None     # a TxProfile from RemoteStartTransaction
        self.finishing = False
        self.inoperative = False
        self.scheduled_inoperative = False
        self.faulted = False
        self.offer_A = 0.0
        self.limit_A: float | None = None            # the composite limit now, whether or not charging
        self.limit_phases: int | None = None
        self.reported: str | None = None             # last status sent

    # What SimCar reads from the EVSE it is plugged into.
    @property
    def phases(self) -> int:
        return min(self.wired_phases, self.limit_phases or 3)

    @property
    def offered_A(self) -> float:
        return self.offer_A if self.car is not None else 0.0

    @property
    def relay_on(self) -> bool:
        return self.car is not None and self.car.wants_charge and self.offered_A > 0

    def attach_car(self, car) -> None:
        if self.car is not None and self.car is not car:
            raise RuntimeError(f"connector {self.name} already has car {self.car.name} plugged in")
        self.car = car

    def detach_car(self, car) -> None:
        if self.car is car:
            self.car = None

    @property
    def plugged(self) -> bool:
        return self.car is not None

    def status(self, cp_inoperative: bool) -> str:
        if self.faulted:
            return "Faulted"
        if self.tx is not None:
            if self.offer_A <= 0:
                return "SuspendedEVSE"
            if self.car is None or self.car.current_A <= 0:
                return "SuspendedEV"
            return "Charging"
        if self.inoperative or cp_inoperative:
            return "Unavailable"
        if self.plugged:
            return "Finishing" if self.finishing else "Preparing"
        if self.pending_tag is not None:
            return "Preparing"
        return "Available"


@dataclass
class _Out:
    """One outgoing CALL: transaction messages stay queued across disconnections, others do not."""
    seq: int
    action: str
    build: Callable[[], Any]
    tx: bool
    on_result: Callable[[Any], None] | None = None
    future: asyncio.Future | None = None
    attempts: int = 0
    retry_at_s: float = 0.0


class Offline(Exception):
    """The charge point is not connected (or not yet accepted) to send this."""


class _Link(_OcppChargePoint):
    """The ocpp library's charge point over one websocket; every CS→CP action lands in the simulator."""

    def __init__(self, sim: "OcppChargePointSim", ws):
        super().__init__(sim.cp_id, ws, response_timeout=sim.response_timeout_s)
        self.sim = sim

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag, connector_id=None, charging_profile=None):
        return call_result.RemoteStartTransaction(
            status=self.sim._remote_start(id_tag, connector_id, charging_profile))

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id):
        return call_result.RemoteStopTransaction(status=self.sim._remote_stop(transaction_id))

    @on(Action.change_availability)
    def on_change_availability(self, connector_id, type):
        return call_result.ChangeAvailability(status=self.sim._change_availability(connector_id, type))

    @on(Action.get_configuration)
    def on_get_configuration(self, key=None):
        known, unknown = self.sim.config.report(key)
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key, value):
        return call_result.ChangeConfiguration(status=self.sim.config.change(key, value))

    @on(Action.reset)
    def on_reset(self, type):
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, type):
        self.sim._spawn(self.sim._reset(type))

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id):
        return call_result.UnlockConnector(status=self.sim._unlock(connector_id))

    @on(Action.clear_cache)
    def on_clear_cache(self):
        self.sim.auth_cache.clear()
        return call_result.ClearCache(status="Accepted")

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id, message_id=None, data=None):
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id, cs_charging_profiles):
        return call_result.SetChargingProfile(
            status=self.sim._set_charging_profile(connector_id, cs_charging_profiles))

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, id=None, connector_id=None, charging_profile_purpose=None,
                                  stack_level=None):
        return call_result.ClearChargingProfile(
            status=self.sim._clear_charging_profile(id, connector_id, charging_profile_purpose, stack_level))

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(self, connector_id, duration, charging_rate_unit=None):
        return call_result.GetCompositeSchedule(
            **self.sim._composite_answer(connector_id, duration, charging_rate_unit))

    @on(Action.trigger_message)
    def on_trigger(self, requested_message, connector_id=None):
        return call_result.TriggerMessage(status=self.sim._trigger_status(requested_message, connector_id))

    @after(Action.trigger_message)
    def after_trigger(self, requested_message, connector_id=None):
        self.sim._triggered(requested_message, connector_id)

    @on(Action.send_local_list)
    def on_send_local_list(self, list_version, update_type, local_authorization_list=None):
        return call_result.SendLocalList(
            status=self.sim._send_local_list(list_version, update_type, local_authorization_list or []))

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self):
        return call_result.GetLocalListVersion(list_version=self.sim.local_list_version_now)

    # Known actions of profiles this charge point does not implement: NotSupported, as 1.6 J table 7 says.
    @on(Action.reserve_now)
    def on_reserve_now(self, **_):
        raise NotSupportedError(description="Reservation is not supported by this charge point")

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, **_):
        raise NotSupportedError(description="Reservation is not supported by this charge point")

    @on(Action.get_diagnostics)
    def on_get_diagnostics(self, **_):
        raise NotSupportedError(description="FirmwareManagement is not supported by this charge point")

    @on(Action.update_firmware)
    def on_update_firmware(self, **_):
        raise NotSupportedError(description="FirmwareManagement is not supported by this charge point")


# -- the simulator ----------------------------------------------------------------------------------------

class OcppChargePointSim:
    """An OCPP 1.6J charge point with `connectors` connectors and one simulated car each (not plugged in).

    `url` is the CS endpoint; the charge point's id is appended (percent-encoded). `clock` is an IReactorTime.
    `smart_charging`: "accept" (default), "reject" (SetChargingProfile answered Rejected) or "unsupported"
    (CALLERROR NotSupported, SmartCharging not in SupportedFeatureProfiles): a charger that cannot be limited.
    `lose_start_replies`: that many StartTransaction replies are treated as lost and the same request is sent
    again (a CS must answer the repeat with the same transactionId).
    """

    def __init__(self, clock, url: str, cp_id: str, *, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 connectors: int = 1, phases: int = 3, max_current_A: float = 32.0, min_current_A: float = 6.0,
                 voltage_V: float = 230.0, smart_charging: str = "accept", lose_start_replies: int = 0,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0, response_timeout_s: float = 30.0,
                 boot_retry_s: float = 30.0, tick_s: float = 1.0, vendor: str = "EVC", model: str = "SimCP",
                 car: dict | None = None, config: dict[str, str] | None = None):
        if smart_charging not in SMART_CHARGING_MODES:
            raise ValueError(f"smart_charging must be one of {', '.join(SMART_CHARGING_MODES)}, "
                             f"not {smart_charging!r}")
        if connectors < 1:
            raise ValueError(f"connectors must be at least 1, not {connectors}")
        self.clock = clock
        self.base_url = url.rstrip("/")
        self.cp_id = cp_id
        self.url = f"{self.base_url}/{urllib.parse.quote(cp_id, safe='')}"
        self._password = password
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.min_current_A = min_current_A
        self.voltage_V = voltage_V
        self.smart_charging = smart_charging
        self.lose_start_replies = lose_start_replies
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.response_timeout_s = response_timeout_s
        self.boot_retry_s = boot_retry_s
        self.tick_s = tick_s
        self.vendor, self.model = vendor, model
        self.config = ConfigTable(_config_keys(connectors, smart_charging == "accept"), self._config_changed)
        for key, value in (config or {}).items():
            if key not in self.config.keys:
                raise ValueError(f"unknown configuration key {key!r}")
            self.config.keys[key].value = str(value)
        self.connectors = {n: SimConnector(self, n, phases, max_current_A) for n in range(1, connectors + 1)}
        self.cars = {n: SimCar(f"{cp_id}-car{n}", **(car or {})) for n in self.connectors}
        self.profiles = ProfileStore()
        self.local_list: dict[str, dict] = {}
        self.local_list_version = 0
        self.auth_cache: dict[str, dict] = {}
        self.inoperative = False          # connector 0: the whole charge point
        self.reported0: str | None = None

        # Connection state, for status() and for tests to wait on.
        self.phase = "idle"               # idle | connecting | booting | boot-wait | online | backoff | stopped
        self.connected = False
        self.registration: str | None = None
        self.connects = 0
        self.boots = 0
        self.last_error: str | None = None
        self.next_retry_s: float | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._ws = None
        self._link: _Link | None = None
        self._link_tasks: set[asyncio.Task] = set()
        self._tasks: set[asyncio.Task] = set()
        self._send_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._cp_inoperative_scheduled = False
        self._txq: deque[_Out] = deque()
        self._volatile: deque[_Out] = deque()
        self._seq = 0
        self._reset_requested: str | None = None
        self._on_first_accept: list[Callable[[], Any]] | None = []
        self._stepped_at_s = clock.seconds()
        self._timers: dict[str, Any] = {}
        self._tick_loop = None

    # -- public: the car side ------------------------------------------------------------------------------

    @property
    def password(self) -> str | None:
        return self._password

    def connector(self, connector_id: int = 1) -> SimConnector:
        try:
            return self.connectors[int(connector_id)]
        except (KeyError, ValueError):
            raise ValueError(f"{self.cp_id} has no connector {connector_id!r} "
                             f"(1..{len(self.connectors)})") from None

    def plug(self, connector_id: int = 1, id_tag: str | None = None) -> None:
        """Plug the connector's car in; with `id_tag`, the driver also presents that tag."""
        c = self.connector(connector_id)
        self._advance()
        if not c.plugged:
            self.cars[c.connector_id].plug(c)
            c.finishing = False
            log.info("{connector}: car plugged in", connector=c.name)
        if id_tag is not None:
            self.present_tag(id_tag, connector_id)
        elif c.pending_tag is not None and c.pending_authorized and c.tx is None:
            self._start_tx(c, c.pending_tag)
        self.refresh()

    def unplug(self, connector_id: int = 1) -> None:
        c = self.connector(connector_id)
        self._advance()
        if c.car is not None:
            self.cars[c.connector_id].unplug()
            log.info("{connector}: car unplugged", connector=c.name)
        c.finishing = False
        if c.tx is not None and self.config.bool("StopTransactionOnEVSideDisconnect"):
            self._stop_tx(c, "EVDisconnected")
        self.refresh()

    def present_tag(self, id_tag: str, connector_id: int = 1) -> None:
        """A driver shows `id_tag` at the connector: starts a transaction, or stops its own."""
        c = self.connector(connector_id)
        if c.tx is not None:
            if c.tx.id_tag == id_tag:
                self._stop_tx(c, "Local")
                self.refresh()
            return
        if self.inoperative or c.inoperative or c.faulted:
            log.info("{connector}: tag refused, connector unavailable", connector=c.name)
            return
        self._hold_tag(c, id_tag)
        self._spawn_any(self._authorize_then_start(c, id_tag, remote=False))

    def set_fault(self, faulted: bool, connector_id: int = 1) -> None:
        c = self.connector(connector_id)
        c.faulted = faulted
        if faulted and c.tx is not None:
            self._stop_tx(c, "Other")
        self.refresh()

    # -- public: running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled: connect, boot, serve, reconnect with backoff."""
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._stepped_at_s = self.clock.seconds()
        self._start_timers()
        delay = self.backoff_s
        try:
            while True:
                self.phase = "connecting"
                try:
                    ws = await websockets.connect(
                        self.url, subprotocols=[SUBPROTOCOL], additional_headers=self._auth_headers(),
                        ssl=self._ssl_context(), open_timeout=self.response_timeout_s,
                        ping_interval=self.config.int("WebSocketPingInterval") or None,
                        user_agent_header=f"evc-sim/{__version__}")
                except websockets.exceptions.InvalidStatus as e:
                    self.last_error = f"HTTP {e.response.status_code} from {self.url}"
                except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake) as e:
                    self.last_error = f"{type(e).__name__}: {e}"
                else:
                    if ws.subprotocol != SUBPROTOCOL:
                        self.last_error = f"{self.url} did not agree to subprotocol {SUBPROTOCOL}"
                        await ws.close()
                    else:
                        delay = self.backoff_s
                        await self._serve(ws)
                        if self._reset_requested:
                            self._reset_requested = None
                            continue
                log.info("{cp}: offline ({error}); next try in {delay_s} s", cp=self.cp_id,
                         error=self.last_error, delay_s=delay)
                self.phase = "backoff"
                self.next_retry_s = self.clock.seconds() + delay
                await self._sleep(delay)
                self.next_retry_s = None
                delay = min(delay * 2, self.backoff_max_s)
        finally:
            self.phase = "stopped"
            self._stop_timers()
            for t in list(self._tasks):
                t.cancel()

    def start(self, reactor=None) -> None:
        """Run on the reactor's asyncio loop (Twisted's asyncio reactor)."""
        from evc.ocpp.bridge import loop
        self._task = asyncio.ensure_future(self.run(), loop=loop(reactor))

    async def aclose(self) -> None:
        """Stop running (the websocket is closed); waits until it has."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    def stop(self, reactor=None):
        """aclose() as a Deferred, for Twisted callers."""
        from evc.ocpp.bridge import to_deferred
        return to_deferred(self.aclose(), reactor)

    def call_when_accepted(self, fn: Callable[[], Any]) -> None:
        """Call `fn` once the CS has accepted this charge point for the first time (now, if it already has)."""
        if self._on_first_accept is None:
            fn()
        else:
            self._on_first_accept.append(fn)

    def disconnect(self) -> None:
        """Drop the websocket (as a network failure would); the simulator reconnects after its backoff."""
        if self._ws is not None:
            self._spawn_any(self._ws.close())

    @property
    def online(self) -> bool:
        return self.connected and self.registration == "Accepted"

    @property
    def local_list_version_now(self) -> int:
        return self.local_list_version if self.local_list else 0

    def status(self) -> dict:
        """The whole state as one JSON-able dict."""
        self._advance()
        return {
            "id": self.cp_id, "url": self.url, "phase": self.phase, "connected": self.connected,
            "registration": self.registration, "last_error": self.last_error,
            "status": self._status0(),
            "connectors": [{
                "connector": c.connector_id, "status": c.status(self.inoperative), "plugged": c.plugged,
                "transaction_id": c.tx.id if c.tx else None, "id_tag": c.tx.id_tag if c.tx else c.pending_tag,
                "offered_A": round(c.offered_A, 2), "limit_A": None if c.limit_A is None else round(c.limit_A, 2),
                "draw_A": [round(a, 2) for a in self.cars[n].draw_A] if c.plugged else [0.0, 0.0, 0.0],
                "power_W": round(self.cars[n].power_W if c.plugged else 0.0, 1),
                "energy_Wh": round(c.energy_Wh, 1), "soc": round(self.cars[n].soc, 4),
            } for n, c in self.connectors.items()],
            "profiles": len(self.profiles.profiles), "local_list_version": self.local_list_version_now,
            "queued_tx_messages": len(self._txq),
        }

    # -- connection ------------------------------------------------------------------------------------

    def _auth_headers(self) -> dict | None:
        if not self._password:
            return None
        token = base64.b64encode(f"{self.cp_id}:{self._password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss:"):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    async def _serve(self, ws) -> None:
        self._ws = ws
        self.connected = True
        self.connects += 1
        self.last_error = None
        link = self._link = _Link(self, ws)
        log.info("{cp}: connected to {url}", cp=self.cp_id, url=self.url)
        serve = self._loop.create_task(link.start())
        session = self._loop.create_task(self._session(link))
        try:
            done, _ = await asyncio.wait({serve, session}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    e = t.exception()
                    if not isinstance(e, websockets.exceptions.ConnectionClosed):
                        log.failure("{cp}: session failed", failure=_failure(e), cp=self.cp_id)
                    self.last_error = f"{type(e).__name__}: {e}"
        finally:
            self.connected = False
            self.registration = None
            self._link = None
            self._ws = None
            self._cancel_timer("heartbeat")
            for t in (serve, session, *self._link_tasks):
                t.cancel()
            for out in self._volatile:
                if out.future is not None and not out.future.done():
                    out.future.set_exception(Offline(f"{self.cp_id} went offline"))
            self._volatile.clear()
            await asyncio.gather(serve, session, *self._link_tasks, return_exceptions=True)
            self._link_tasks.clear()
            await ws.close()

    async def _session(self, link: _Link) -> None:
        """Boot until Accepted, then send the outbox until the connection ends."""
        while True:
            self.phase = "booting"
            self.boots += 1
            try:
                result = await link.call(self._boot_payload(), suppress=False)
            except (OCPPError, asyncio.TimeoutError) as e:
                log.warn("{cp}: BootNotification failed: {error!r}", cp=self.cp_id, error=e)
                result = None
            if result is not None:
                self.registration = result.status
                log.info("{cp}: boot {status}, interval {interval_s} s", cp=self.cp_id, status=result.status,
                         interval_s=result.interval)
                if result.status == "Accepted":
                    break
            wait_s = result.interval if result is not None and result.interval > 0 else self.boot_retry_s
            self.phase = "boot-wait"
            await self._sleep(wait_s)
        if result.interval > 0:
            self.config.set("HeartbeatInterval", str(int(result.interval)))
        self.phase = "online"
        first, self._on_first_accept = self._on_first_accept, None
        for fn in first or ():
            fn()
        self._schedule_heartbeat()
        self.reported0 = None
        for c in self.connectors.values():
            c.reported = None
        self.refresh()
        await self._sender(link)

    def _boot_payload(self):
        return call.BootNotification(charge_point_vendor=self.vendor, charge_point_model=self.model,
                                     charge_point_serial_number=self.cp_id, firmware_version=__version__,
                                     meter_type="SimMeter")

    # -- the outbox --------------------------------------------------------------------------------------

    def _enqueue(self, action: str, build: Callable[[], Any], *, tx: bool,
                 on_result: Callable[[Any], None] | None = None, want_future: bool = False):
        """Queue a CALL. A non-transaction message while offline is dropped (its future fails Offline)."""
        self._seq += 1
        out = _Out(self._seq, action, build, tx, on_result)
        if want_future:
            if self._loop is None:
                raise Offline(f"{self.cp_id} is not running")
            out.future = self._loop.create_future()
        if tx:
            if len(self._txq) >= TX_QUEUE_MAX:
                # A long outage: keep the Start/Stop messages, lose the oldest samples.
                for old in self._txq:
                    if old.action == "MeterValues":
                        self._txq.remove(old)
                        break
            self._txq.append(out)
        elif self.online:
            self._volatile.append(out)
        elif out.future is not None:
            out.future.set_exception(Offline(f"{self.cp_id} is offline"))
        if self._wake is not None:
            self._wake.set()
        return out.future

    async def _request(self, action: str, payload) -> Any:
        """Send a non-transaction CALL in order with the others and wait for its result."""
        return await self._enqueue(action, lambda: payload, tx=False, want_future=True)

    def _pick(self) -> _Out | None:
        now = self.clock.seconds()
        tx = self._txq[0] if self._txq and self._txq[0].retry_at_s <= now else None
        vol = self._volatile[0] if self._volatile else None
        if tx is not None and (vol is None or tx.seq < vol.seq):
            return tx
        return vol

    async def _sender(self, link: _Link) -> None:
        while True:
            out = self._pick()
            if out is None:
                self._wake.clear()
                if self._txq:             # the head waits for its retry time
                    self._set_timer("retry", max(0.0, self._txq[0].retry_at_s - self.clock.seconds()),
                                    self._wake.set)
                await self._wake.wait()
                continue
            try:
                async with self._send_lock:
                    result = await link.call(out.build(), suppress=False)
            except (OCPPError, asyncio.TimeoutError) as e:
                self._failed(out, e)
                continue
            (self._txq if out.tx else self._volatile).remove(out)
            if not self._txq:
                self._drained.set()
            if out.action == "StartTransaction" and self.lose_start_replies > 0:
                self.lose_start_replies -= 1
                log.info("{cp}: losing StartTransaction reply (transactionId {tx_id}); sending it again",
                         cp=self.cp_id, tx_id=result.transaction_id)
                self._record_lost_start(out, result)
                self._txq.appendleft(out)
                continue
            if out.on_result is not None:
                out.on_result(result)
            if out.future is not None and not out.future.done():
                out.future.set_result(result)

    def _failed(self, out: _Out, error: Exception) -> None:
        """A CALLERROR or no answer: a transaction message is retried (OCPP 1.6 §3.7), another is dropped."""
        if not out.tx:
            self._volatile.remove(out)
            if out.future is not None and not out.future.done():
                out.future.set_exception(error)
            log.warn("{cp}: {action} failed: {error!r}", cp=self.cp_id, action=out.action, error=error)
            return
        out.attempts += 1
        if out.attempts >= max(1, self.config.int("TransactionMessageAttempts")):
            self._txq.remove(out)
            if not self._txq:
                self._drained.set()
            log.warn("{cp}: {action} dropped after {attempts} attempts: {error!r}", cp=self.cp_id,
                     action=out.action, attempts=out.attempts, error=error)
            return
        wait_s = self.config.int("TransactionMessageRetryInterval") * out.attempts
        out.retry_at_s = self.clock.seconds() + wait_s
        log.warn("{cp}: {action} failed ({error!r}); retry in {wait_s} s", cp=self.cp_id, action=out.action,
                 error=error, wait_s=wait_s)

    def _record_lost_start(self, out: _Out, result) -> None:
        c = self.connectors[out.build().connector_id]
        if c.tx is not None:
            c.tx.start_replies.append(result.transaction_id)

    # -- tasks and timers on the injected clock ---------------------------------------------------------

    def _spawn(self, coro) -> None:
        """A task that belongs to the current connection (cancelled when it drops)."""
        if self._link is None or self._loop is None:
            coro.close()
            return
        task = self._loop.create_task(coro)
        self._link_tasks.add(task)
        task.add_done_callback(self._task_done)

    def _spawn_any(self, coro) -> None:
        """A task that outlives connections (cancelled when the simulator stops)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.cp_id} is not running (call start() or run() first)")
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._link_tasks.discard(task)
        self._tasks.discard(task)
        if task.cancelled():
            return
        e = task.exception()
        if e is not None and not isinstance(e, (Offline, OCPPError, asyncio.TimeoutError,
                                                websockets.exceptions.ConnectionClosed)):
            log.failure("{cp}: task failed", failure=_failure(e), cp=self.cp_id)

    async def _sleep(self, delay_s: float) -> None:
        """Wait `delay_s` on the injected clock."""
        fut = self._loop.create_future()
        call_ = self.clock.callLater(max(0.0, delay_s), lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            if call_.active():
                call_.cancel()

    def _set_timer(self, name: str, delay_s: float, fn: Callable[[], Any]) -> None:
        self._cancel_timer(name)
        self._timers[name] = self.clock.callLater(max(0.0, delay_s), self._fire, name, fn)

    def _fire(self, name: str, fn: Callable[[], Any]) -> None:
        self._timers.pop(name, None)
        fn()

    def _cancel_timer(self, name: str) -> None:
        dc = self._timers.pop(name, None)
        if dc is not None and dc.active():
            dc.cancel()

    def _start_timers(self) -> None:
        self._tick_loop = task.LoopingCall(self.refresh)
        self._tick_loop.clock = self.clock
        self._tick_loop.start(self.tick_s, now=False)
        self._schedule_sample()
        self._schedule_aligned()

    def _stop_timers(self) -> None:
        if self._tick_loop is not None and self._tick_loop.running:
            self._tick_loop.stop()
        for name in list(self._timers):
            self._cancel_timer(name)

    def _config_changed(self, key: str) -> None:
        if key == "HeartbeatInterval" and self.online:
            self._schedule_heartbeat()
        elif key == "MeterValueSampleInterval" and self._loop is not None:
            self._schedule_sample()
        elif key == "ClockAlignedDataInterval" and self._loop is not None:
            self._schedule_aligned()
        elif key == "AuthorizationKey":
            # Used from the next connection on (the CS accepts the new key once we answered Accepted).
            self._password = self.config.keys[key].value

    def _schedule_heartbeat(self) -> None:
        interval = self.config.int("HeartbeatInterval")
        if interval > 0:
            self._set_timer("heartbeat", interval, self._heartbeat)
        else:
            self._cancel_timer("heartbeat")

    def _heartbeat(self) -> None:
        self._enqueue("Heartbeat", call.Heartbeat, tx=False)
        self._schedule_heartbeat()

    def _schedule_sample(self) -> None:
        interval = self.config.int("MeterValueSampleInterval")
        if interval > 0:
            self._set_timer("sample", interval, self._sample_tick)
        else:
            self._cancel_timer("sample")

    def _sample_tick(self) -> None:
        self._advance()
        for c in self.connectors.values():
            if c.tx is not None:
                self._queue_meter_values(c, "Sample.Periodic", self.config.list("MeterValuesSampledData"))
        self._schedule_sample()

    def _schedule_aligned(self) -> None:
        interval = self.config.int("ClockAlignedDataInterval")
        if interval > 0:
            now = self.clock.seconds()
            self._set_timer("aligned", (math.floor(now / interval) + 1) * interval - now, self._aligned_tick)
        else:
            self._cancel_timer("aligned")

    def _aligned_tick(self) -> None:
        self._advance()
        measurands = self.config.list("MeterValuesAlignedData")
        for c in self.connectors.values():
            if c.tx is not None:
                self._queue_meter_values(c, "Sample.Clock", measurands)
            elif self.online:
                mv = [self._meter_value(c, "Sample.Clock", measurands)]
                self._enqueue("MeterValues", lambda c=c, mv=mv: call.MeterValues(
                    connector_id=c.connector_id, meter_value=mv), tx=False)
        self._schedule_aligned()

    # -- the physics: energy, offered current, statuses -----------------------------------------------------

    def _advance(self) -> None:
        """Integrate energy and the cars' charge up to now, at the currents that held since the last step."""
        now = self.clock.seconds()
        dt = now - self._stepped_at_s
        if dt <= 0:
            return
        self._stepped_at_s = now
        for n, c in self.connectors.items():
            if c.car is not None:
                c.energy_Wh += c.car.power_W * dt / 3600.0
                c.car.step(dt)

    def refresh(self) -> None:
        """Bring everything to now: energy, profile limits, offered currents, timeouts, status reports."""
        self._advance()
        now = self.clock.seconds()
        self.profiles.purge(now)
        for c in self.connectors.values():
            if (c.pending_tag is not None and not c.plugged and c.pending_deadline_s is not None
                    and now >= c.pending_deadline_s):
                log.info("{connector}: no car within ConnectionTimeOut; tag {tag} dropped", connector=c.name,
                         tag=c.pending_tag)
                c.pending_tag, c.pending_authorized, c.pending_profile = None, False, None
        self._update_offers(now)
        self._report_statuses()
        self._schedule_breakpoint(now)

    def _tx_start_s(self, c: SimConnector, now: float) -> float:
        return c.tx.start_s if c.tx is not None else now

    def _composite_A(self, c: SimConnector, t: float, now: float) -> tuple[float | None, int | None]:
        """The composite limit (A per phase, None = no profile) and phase limit for connector c at t.

        A connector without a transaction is given the share it would have once its transaction started."""
        sharing = self._sharing() + (0 if c.tx is not None else 1)
        tx_start = self._tx_start_s(c, now)
        tx_id = c.tx.id if c.tx is not None else None
        limits, phases = [], []
        tx_win = None
        if c.tx is not None:
            tx_win = self.profiles.winner(self.profiles.relevant("TxProfile", c.connector_id, tx_id), t, tx_start)
        if tx_win is None:
            tx_win = self.profiles.winner(self.profiles.relevant("TxDefaultProfile", c.connector_id), t, tx_start)
        if tx_win is not None:
            limits.append(period_A(tx_win[1], tx_win[0].unit, self.voltage_V))
            phases.append(tx_win[1].phases)
        cp_win = self.profiles.winner(self.profiles.relevant("ChargePointMaxProfile", 0), t, now)
        if cp_win is not None:
            limits.append(period_A(cp_win[1], cp_win[0].unit, self.voltage_V) / sharing)
            phases.append(cp_win[1].phases)
        phases = [p for p in phases if p is not None]
        return (min(limits) if limits else None), (min(phases) if phases else None)

    def _sharing(self) -> int:
        return sum(1 for c in self.connectors.values() if c.tx is not None)

    def _update_offers(self, now: float) -> None:
        for c in self.connectors.values():
            limit, phases = self._composite_A(c, now, now)
            c.limit_A, c.limit_phases = limit, phases
            offer = c.max_current_A if limit is None else min(c.max_current_A, limit)
            usable = c.tx is not None and not c.faulted and not c.inoperative and not self.inoperative
            c.offer_A = offer if usable and offer >= self.min_current_A else 0.0

    def _schedule_breakpoint(self, now: float) -> None:
        """Wake exactly when a profile's answer changes (or a pending tag times out)."""
        points = set()
        for c in self.connectors.values():
            tx_start = self._tx_start_s(c, now)
            for p in self.profiles.profiles:
                if p.connector_id in (0, c.connector_id):
                    points |= p.breakpoints(now, now + HORIZON_S, tx_start)
            if c.pending_deadline_s is not None and c.pending_tag is not None and not c.plugged:
                points.add(c.pending_deadline_s)
        points = {p for p in points if p > now}
        if points:
            self._set_timer("breakpoint", min(points) - now, self.refresh)
        else:
            self._cancel_timer("breakpoint")

    def _status0(self) -> str:
        return "Unavailable" if self.inoperative else "Available"

    def _report_statuses(self, force: bool = False) -> None:
        if not self.online:
            return
        s0 = self._status0()
        if force or s0 != self.reported0:
            self.reported0 = s0
            self._send_status(0, s0)
        for c in self.connectors.values():
            s = c.status(self.inoperative)
            if force or s != c.reported:
                c.reported = s
                self._send_status(c.connector_id, s, faulted=c.faulted)

    def _send_status(self, connector_id: int, status: str, faulted: bool = False) -> None:
        stamp = iso(self.clock.seconds())
        log.info("{cp}/{connector_id}: {status}", cp=self.cp_id, connector_id=connector_id, status=status)
        self._enqueue("StatusNotification", lambda: call.StatusNotification(
            connector_id=connector_id, error_code="OtherError" if faulted else "NoError", status=status,
            timestamp=stamp), tx=False)

    # -- meter values ------------------------------------------------------------------------------------

    def _meter_value(self, c: SimConnector, context: str, measurands: list[str]) -> dict:
        car = self.cars[c.connector_id]
        plugged = c.car is not None
        draw = car.draw_A if plugged else (0.0, 0.0, 0.0)
        sampled = []

        def add(measurand, value, unit, **extra):
            sampled.append({"value": value, "context": context, "measurand": measurand, "unit": unit, **extra})

        for m in measurands:
            if m == "Energy.Active.Import.Register":
                add(m, f"{c.energy_Wh:.1f}", "Wh", location="Outlet")
            elif m == "Power.Active.Import":
                add(m, f"{car.power_W if plugged else 0.0:.1f}", "W", location="Outlet")
            elif m == "Current.Import":
                for i in range(c.wired_phases):
                    add(m, f"{draw[i]:.2f}", "A", phase=f"L{i + 1}", location="Outlet")
            elif m == "Current.Offered":
                add(m, f"{c.offered_A:.1f}", "A")
            elif m == "Voltage":
                for i in range(c.wired_phases):
                    add(m, f"{self.voltage_V:.1f}", "V", phase=f"L{i + 1}-N", location="Outlet")
            elif m == "SoC" and plugged:
                add(m, f"{car.soc * 100:.0f}", "Percent", location="EV")
        return {"timestamp": iso(self.clock.seconds()), "sampledValue": sampled}

    def _queue_meter_values(self, c: SimConnector, context: str, measurands: list[str]) -> None:
        tx = c.tx
        mv = [self._meter_value(c, context, measurands)]
        self._enqueue("MeterValues", lambda: call.MeterValues(connector_id=c.connector_id, meter_value=mv,
                                                              transaction_id=tx.id), tx=True)

    # -- authorization and transactions -------------------------------------------------------------------

    def _local_info(self, id_tag: str) -> dict | None:
        """What the local list (first) or the cache knows of a tag; an expired entry counts as unknown."""
        info = None
        if self.config.bool("LocalAuthListEnabled"):
            info = self.local_list.get(id_tag)
        if info is None and self.config.bool("AuthorizationCacheEnabled"):
            info = self.auth_cache.get(id_tag)
        if info is not None and info.get("expiry_date"):
            try:
                if parse_time(info["expiry_date"], "expiryDate") <= self.clock.seconds():
                    return None
            except ProfileError:
                return None
        return info

    async def _authorize(self, id_tag: str) -> str:
        info = self._local_info(id_tag)
        local = info.get("status") if info else None
        if self.online:
            if local == "Accepted" and self.config.bool("LocalPreAuthorize"):
                return "Accepted"
            try:
                result = await self._request("Authorize", call.Authorize(id_tag=id_tag))
            except (Offline, OCPPError, asyncio.TimeoutError):
                pass
            else:
                status = result.id_tag_info["status"]
                if self.config.bool("AuthorizationCacheEnabled"):
                    self.auth_cache[id_tag] = dict(result.id_tag_info)
                return status
        if local is not None:
            return local if self.config.bool("LocalAuthorizeOffline") else "Invalid"
        return "Accepted" if self.config.bool("AllowOfflineTxForUnknownId") else "Invalid"

    def _hold_tag(self, c: SimConnector, id_tag: str) -> None:
        c.pending_tag, c.pending_authorized = id_tag, False
        c.pending_deadline_s = self.clock.seconds() + self.config.int("ConnectionTimeOut")
        self.refresh()

    async def _authorize_then_start(self, c: SimConnector, id_tag: str, remote: bool) -> None:
        if remote and not self.config.bool("AuthorizeRemoteTxRequests"):
            status = "Accepted"
        else:
            status = await self._authorize(id_tag)
        if c.pending_tag != id_tag or c.tx is not None:
            return                         # timed out or replaced meanwhile
        log.info("{connector}: tag {tag} {status}", connector=c.name, tag=id_tag, status=status)
        if status != "Accepted":
            c.pending_tag, c.pending_profile = None, None
            self.refresh()
            return
        c.pending_authorized = True
        if c.plugged:
            self._start_tx(c, id_tag)
        self.refresh()

    def _start_tx(self, c: SimConnector, id_tag: str) -> None:
        self._advance()
        now = self.clock.seconds()
        tx = c.tx = Transaction(id_tag=id_tag, start_s=now, meter_start_Wh=int(round(c.energy_Wh)))
        c.pending_tag, c.pending_authorized, c.pending_deadline_s = None, False, None
        c.finishing = False
        if c.pending_profile is not None:
            try:
                self.profiles.install(Profile.from_payload(c.connector_id, c.pending_profile, now,
                                                           self._max_periods()))
            except ProfileError as e:
                log.warn("{connector}: RemoteStart's profile ignored: {reason}", connector=c.name, reason=str(e))
            c.pending_profile = None
        log.info("{connector}: transaction starts for {tag}", connector=c.name, tag=id_tag)
        payload = call.StartTransaction(connector_id=c.connector_id, id_tag=id_tag,
                                        meter_start=tx.meter_start_Wh, timestamp=iso(now))
        self._enqueue("StartTransaction", lambda: payload, tx=True, on_result=lambda r: self._started(c, tx, r))
        self.refresh()

    def _started(self, c: SimConnector, tx: Transaction, result) -> None:
        tx.id = result.transaction_id
        tx.start_replies.append(result.transaction_id)
        info = result.id_tag_info or {}
        if self.config.bool("AuthorizationCacheEnabled") and info:
            self.auth_cache[tx.id_tag] = dict(info)
        log.info("{connector}: transaction {tx_id} ({status})", connector=c.name, tx_id=tx.id,
                 status=info.get("status"))
        if info.get("status") != "Accepted" and c.tx is tx and self.config.bool("StopTransactionOnInvalidId"):
            self._stop_tx(c, "DeAuthorized")
            self.refresh()

    def _stop_tx(self, c: SimConnector, reason: str) -> None:
        self._advance()
        tx, c.tx = c.tx, None
        if tx is None:
            return
        now = self.clock.seconds()
        meter_stop = int(round(c.energy_Wh))
        c.finishing = c.plugged
        self.profiles.drop_tx_profiles(c.connector_id)
        if c.scheduled_inoperative:
            c.inoperative, c.scheduled_inoperative = True, False
        if self._cp_inoperative_scheduled and not any(x.tx for x in self.connectors.values()):
            self.inoperative, self._cp_inoperative_scheduled = True, False
        data = None
        stop_measurands = self.config.list("StopTxnSampledData")
        if stop_measurands:
            data = [self._meter_value(c, "Transaction.End", stop_measurands)]
        log.info("{connector}: transaction {tx_id} stops ({reason}), {energy_Wh} Wh", connector=c.name,
                 tx_id=tx.id, reason=reason, energy_Wh=meter_stop - tx.meter_start_Wh)
        self._enqueue("StopTransaction", lambda: call.StopTransaction(
            meter_stop=meter_stop, timestamp=iso(now), transaction_id=tx.id if tx.id is not None else 0,
            reason=reason, id_tag=tx.id_tag, transaction_data=data), tx=True)

    # -- CS -> CP handlers (called by _Link) ----------------------------------------------------------------

    def _remote_start(self, id_tag: str, connector_id, charging_profile) -> str:
        if self.registration != "Accepted" or self.inoperative:
            return "Rejected"
        if connector_id is not None:
            c = self.connectors.get(connector_id)
            if c is None:
                return "Rejected"
        else:
            free = [c for c in self.connectors.values()
                    if c.tx is None and not c.inoperative and not c.faulted and c.pending_tag is None]
            if not free:
                return "Rejected"
            c = next((c for c in free if c.plugged), free[0])
        if c.tx is not None or c.inoperative or c.faulted:
            return "Rejected"
        if charging_profile is not None and self.smart_charging == "accept":
            if charging_profile.get("charging_profile_purpose") != "TxProfile":
                return "Rejected"
            try:
                Profile.from_payload(c.connector_id, charging_profile, self.clock.seconds(), self._max_periods())
            except ProfileError as e:
                log.info("{connector}: RemoteStart refused: {reason}", connector=c.name, reason=str(e))
                return "Rejected"
            c.pending_profile = charging_profile
        self._hold_tag(c, id_tag)
        self._spawn(self._authorize_then_start(c, id_tag, remote=True))
        return "Accepted"

    def _remote_stop(self, transaction_id) -> str:
        for c in self.connectors.values():
            if c.tx is not None and c.tx.id == transaction_id:
                self._stop_tx(c, "Remote")
                self.refresh()
                return "Accepted"
        return "Rejected"

    def _change_availability(self, connector_id, kind: str) -> str:
        if connector_id != 0 and connector_id not in self.connectors:
            return "Rejected"
        targets = list(self.connectors.values()) if connector_id == 0 else [self.connectors[connector_id]]
        scheduled = False
        if kind == "Operative":
            if connector_id == 0:
                self.inoperative = self._cp_inoperative_scheduled = False
            for c in targets:
                c.inoperative = c.scheduled_inoperative = False
        else:
            for c in targets:
                if c.tx is not None:
                    c.scheduled_inoperative = scheduled = True
                else:
                    c.inoperative = True
            if connector_id == 0:
                # The charge point itself goes Unavailable once its last transaction has ended.
                self.inoperative = not scheduled
                self._cp_inoperative_scheduled = scheduled
        self.refresh()
        return "Scheduled" if scheduled else "Accepted"

    async def _reset(self, kind: str) -> None:
        """Stop every transaction (SoftReset / HardReset), let the Stops go out, then reconnect and boot."""
        for c in self.connectors.values():
            if c.tx is not None:
                self._stop_tx(c, f"{kind}Reset")
        self.refresh()
        if self._txq:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), self.response_timeout_s)
            except asyncio.TimeoutError:
                log.warn("{cp}: resetting with {count} transaction messages unsent", cp=self.cp_id,
                         count=len(self._txq))
        log.info("{cp}: {kind} reset", cp=self.cp_id, kind=kind)
        self._reset_requested = kind
        if self._ws is not None:
            await self._ws.close()

    def _unlock(self, connector_id) -> str:
        c = self.connectors.get(connector_id)
        if c is None:
            return "NotSupported"
        if c.tx is not None:
            self._stop_tx(c, "UnlockCommand")
        self.refresh()
        return "Unlocked"

    def _max_periods(self) -> int:
        key = self.config.keys.get("ChargingScheduleMaxPeriods")
        return int(key.value) if key else 24

    def _smart_charging_gate(self, refused: str) -> str | None:
        if self.smart_charging == "unsupported":
            raise NotSupportedError(description="SmartCharging is not supported by this charge point")
        if self.smart_charging == "reject":
            return refused
        return None

    def _set_charging_profile(self, connector_id: int, doc: dict) -> str:
        refused = self._smart_charging_gate("Rejected")
        if refused:
            return refused
        now = self.clock.seconds()
        try:
            if connector_id != 0 and connector_id not in self.connectors:
                raise ProfileError(f"connector {connector_id} does not exist")
            profile = Profile.from_payload(connector_id, doc, now, self._max_periods())
            if profile.stack_level > self.config.int("ChargeProfileMaxStackLevel"):
                raise ProfileError(f"stackLevel {profile.stack_level} above ChargeProfileMaxStackLevel")
            if UNITS[profile.unit] not in self.config.list("ChargingScheduleAllowedChargingRateUnit"):
                raise ProfileError(f"unit {profile.unit} not allowed")
            if profile.purpose == "ChargePointMaxProfile" and connector_id != 0:
                raise ProfileError("a ChargePointMaxProfile belongs on connector 0")
            if profile.purpose == "TxProfile":
                c = self.connectors.get(connector_id)
                if c is None or c.tx is None:
                    raise ProfileError("a TxProfile needs a transaction on its connector")
                if profile.transaction_id is not None and c.tx.id is not None \
                        and profile.transaction_id != c.tx.id:
                    raise ProfileError(f"transactionId {profile.transaction_id} is not the connector's "
                                       f"transaction {c.tx.id}")
            if len(self.profiles.profiles) >= self.config.int("MaxChargingProfilesInstalled") and not any(
                    p.id == profile.id for p in self.profiles.profiles):
                raise ProfileError("MaxChargingProfilesInstalled reached")
        except ProfileError as e:
            log.info("{cp}: SetChargingProfile on {connector_id} rejected: {reason}", cp=self.cp_id,
                     connector_id=connector_id, reason=str(e))
            return "Rejected"
        self.profiles.install(profile)
        log.info("{cp}: profile {profile_id} ({purpose}, stack {stack}) on connector {connector_id}",
                 cp=self.cp_id, profile_id=profile.id, purpose=profile.purpose, stack=profile.stack_level,
                 connector_id=connector_id)
        self.refresh()
        return "Accepted"

    def _clear_charging_profile(self, profile_id, connector_id, purpose, stack_level) -> str:
        refused = self._smart_charging_gate("Unknown")
        if refused:
            return refused
        removed = self.profiles.clear(profile_id, connector_id, purpose, stack_level)
        self.refresh()
        return "Accepted" if removed else "Unknown"

    def composite_schedule(self, connector_id: int, duration_s: int, unit: str = "A") -> list[dict]:
        """GetCompositeSchedule's periods from now: [{startPeriod, limit, numberPhases?}] in `unit`."""
        self._advance()
        now = self.clock.seconds()
        end = now + duration_s
        if connector_id == 0:
            cs = list(self.connectors.values())
        else:
            cs = [self.connector(connector_id)]
        points = {now}
        for c in cs:
            for p in self.profiles.profiles:
                if p.connector_id in (0, c.connector_id):
                    points |= p.breakpoints(now, end, self._tx_start_s(c, now))
        periods = []
        for t in sorted(x for x in points if x < end):
            if connector_id == 0:
                win = self.profiles.winner(self.profiles.relevant("ChargePointMaxProfile", 0), t, now)
                total = sum(c.max_current_A for c in cs)
                limit_A = total if win is None else min(total, period_A(win[1], win[0].unit, self.voltage_V))
                phases = win[1].phases if win else None
                wired = max(c.wired_phases for c in cs)
            else:
                c = cs[0]
                limit, phases = self._composite_A(c, t, now)
                limit_A = c.max_current_A if limit is None else min(c.max_current_A, limit)
                wired = c.wired_phases
            value = limit_A if unit == "A" else limit_A * self.voltage_V * (phases or wired)
            entry = {"startPeriod": int(round(t - now)), "limit": round(value, 1)}
            if phases is not None:
                entry["numberPhases"] = phases
            if periods and {k: v for k, v in periods[-1].items() if k != "startPeriod"} == \
                    {k: v for k, v in entry.items() if k != "startPeriod"}:
                continue
            if periods and periods[-1]["startPeriod"] == entry["startPeriod"]:
                periods[-1] = entry
                continue
            periods.append(entry)
        return periods

    def _composite_answer(self, connector_id: int, duration, unit) -> dict:
        refused = self._smart_charging_gate("Rejected")
        if refused:
            return {"status": refused}
        if connector_id != 0 and connector_id not in self.connectors:
            return {"status": "Rejected"}
        unit = unit or "A"
        now = self.clock.seconds()
        periods = self.composite_schedule(connector_id, int(duration), unit)
        return {"status": "Accepted", "connector_id": connector_id, "schedule_start": iso(now),
                "charging_schedule": {"duration": int(duration), "startSchedule": iso(now),
                                      "chargingRateUnit": unit, "chargingSchedulePeriod": periods}}

    def _trigger_status(self, requested: str, connector_id) -> str:
        if requested not in TRIGGERABLE:
            return "NotImplemented"
        if connector_id is not None and connector_id != 0 and connector_id not in self.connectors:
            return "Rejected"
        return "Accepted"

    def _triggered(self, requested: str, connector_id) -> None:
        if self._trigger_status(requested, connector_id) != "Accepted":
            return
        ids = [connector_id] if connector_id is not None else [0, *self.connectors]
        if requested == "BootNotification":
            self._spawn(self._triggered_boot())
        elif requested == "Heartbeat":
            self._enqueue("Heartbeat", call.Heartbeat, tx=False)
        elif requested == "StatusNotification":
            for n in ids:
                if n == 0:
                    self._send_status(0, self._status0())
                else:
                    c = self.connectors[n]
                    self._send_status(n, c.status(self.inoperative), faulted=c.faulted)
        elif requested == "MeterValues":
            self._advance()
            measurands = self.config.list("MeterValuesSampledData")
            for n in ids:
                if n == 0:
                    continue
                c = self.connectors[n]
                mv = [self._meter_value(c, "Trigger", measurands)]
                tx_id = c.tx.id if c.tx else None
                self._enqueue("MeterValues", lambda c=c, mv=mv, tx_id=tx_id: call.MeterValues(
                    connector_id=c.connector_id, meter_value=mv, transaction_id=tx_id), tx=False)
        elif requested == "DiagnosticsStatusNotification":
            self._enqueue(requested, lambda: call.DiagnosticsStatusNotification(status="Idle"), tx=False)
        elif requested == "FirmwareStatusNotification":
            self._enqueue(requested, lambda: call.FirmwareStatusNotification(status="Idle"), tx=False)

    async def _triggered_boot(self) -> None:
        result = await self._request("BootNotification", self._boot_payload())
        if result.status == "Accepted" and result.interval > 0:
            self.config.set("HeartbeatInterval", str(int(result.interval)))

    def _send_local_list(self, version: int, update_type: str, entries: list[dict]) -> str:
        if len(entries) > self.config.int("SendLocalListMaxLength"):
            return "Failed"
        if update_type == "Full":
            new = {e["id_tag"]: dict(e["id_tag_info"]) for e in entries if e.get("id_tag_info")}
        else:
            if version <= self.local_list_version:
                return "VersionMismatch"
            new = dict(self.local_list)
            for e in entries:
                if e.get("id_tag_info"):
                    new[e["id_tag"]] = dict(e["id_tag_info"])
                else:
                    new.pop(e["id_tag"], None)
        if len(new) > self.config.int("LocalAuthListMaxLength"):
            return "Failed"
        self.local_list, self.local_list_version = new, version
        log.info("{cp}: local list version {version}, {count} tags", cp=self.cp_id, version=version,
                 count=len(new))
        return "Accepted"


def _failure(e: BaseException):
    from twisted.python.failure import Failure
    return Failure(e, type(e), e.__traceback__)


# -- the command-line front ------------------------------------------------------------------------------

def run_command(sim: OcppChargePointSim, line: str) -> dict:
    """Apply one stdin command; returns the JSON-able answer."""
    words = line.split()
    if not words:
        return {"ok": True}
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd == "status":
            return {"ok": True, **sim.status()}
        if cmd == "plug":
            tag = args[0] if args else None
            sim.plug(int(args[1]) if len(args) > 1 else 1, tag)
        elif cmd == "unplug":
            sim.unplug(int(args[0]) if args else 1)
        elif cmd == "tag":
            sim.present_tag(args[0], int(args[1]) if len(args) > 1 else 1)
        elif cmd == "soc":
            sim.cars[int(args[1]) if len(args) > 1 else 1].soc = float(args[0])
            sim.refresh()
        elif cmd in ("hold", "release"):
            sim.cars[int(args[0]) if args else 1].charge_enabled = cmd == "release"
            sim.refresh()
        elif cmd in ("fault", "clear"):
            sim.set_fault(cmd == "fault", int(args[0]) if args else 1)
        elif cmd == "disconnect":
            sim.disconnect()
        else:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
    except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as e:
        return {"ok": False, "error": f"{line.strip()}: {e}"}
    return {"ok": True}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evc.sim.ocpp_cp", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the central system's endpoint; /<id> is appended")
    parser.add_argument("--id", required=True, dest="cp_id", help="charge point identity")
    parser.add_argument("--password", help="HTTP basic auth password (security profile 1/2)")
    parser.add_argument("--ca-file", help="CA certificate(s) to check a wss:// server with")
    parser.add_argument("--cert", help="client certificate (security profile 3)")
    parser.add_argument("--key", help="client certificate's key")
    parser.add_argument("--connectors", type=int, default=1)
    parser.add_argument("--phases", type=int, default=3, help="phases wired to each connector")
    parser.add_argument("--max-current-a", type=float, default=32.0, help="the charger's own limit in A")
    parser.add_argument("--car-phases", type=int, default=3)
    parser.add_argument("--car-max-a", type=float, default=16.0)
    parser.add_argument("--soc", type=float, default=0.3, help="the cars' state of charge, 0..1")
    parser.add_argument("--capacity-wh", type=float, default=60_000.0)
    parser.add_argument("--plug-at", type=float,
                        help="plug the car into connector 1 this many seconds after the CS first accepted the boot")
    parser.add_argument("--unplug-at", type=float, help="unplug it this many seconds after that acceptance")
    parser.add_argument("--id-tag", help="the tag the driver presents when plugging in")
    parser.add_argument("--meter-interval-s", type=int, default=10, help="MeterValueSampleInterval")
    parser.add_argument("--smart-charging", choices=SMART_CHARGING_MODES, default="accept")
    parser.add_argument("--lose-start-replies", type=int, default=0,
                        help="treat this many StartTransaction replies as lost and resend")
    parser.add_argument("--backoff-s", type=float, default=1.0)
    parser.add_argument("--backoff-max-s", type=float, default=60.0)
    parser.add_argument("--vendor", default="EVC")
    parser.add_argument("--model", default="SimCP")
    args = parser.parse_args(argv)

    from twisted.internet import asyncioreactor
    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from evc.sim.commands import listen_stdin

    # stdout carries the JSON answers; the log goes to stderr.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    try:
        sim = OcppChargePointSim(
            reactor, args.url, args.cp_id, password=args.password, ca_file=args.ca_file, cert_file=args.cert,
            key_file=args.key, connectors=args.connectors, phases=args.phases, max_current_A=args.max_current_a,
            smart_charging=args.smart_charging, lose_start_replies=args.lose_start_replies,
            backoff_s=args.backoff_s, backoff_max_s=args.backoff_max_s, vendor=args.vendor, model=args.model,
            car={"phases": args.car_phases, "max_current_A": args.car_max_a, "soc": args.soc,
                 "capacity_Wh": args.capacity_wh},
            config={"MeterValueSampleInterval": str(args.meter_interval_s)})
    except ValueError as e:
        parser.error(str(e))

    sim.start(reactor)
    # Counted from the first accepted boot: a tag shown before the CS answers would be judged offline.
    if args.plug_at is not None:
        sim.call_when_accepted(lambda: reactor.callLater(args.plug_at, sim.plug, 1, args.id_tag))
    if args.unplug_at is not None:
        sim.call_when_accepted(lambda: reactor.callLater(args.unplug_at, sim.unplug, 1))
    listen_stdin(lambda line: run_command(sim, line), sys.stdin)
    reactor.addSystemEventTrigger("before", "shutdown", sim.stop, reactor)
    reactor.run()


if __name__ == "__main__":
    main()
