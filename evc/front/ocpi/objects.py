"""The rules of every OCPI object EVC sends or accepts (2.2.1 and 2.1.1): required fields, lengths, enums, DateTime.

`check(name, doc, version)` raises Invalid (its `errors` name each field: "evses[0].connectors: at least 1 needed")
or returns the document unchanged. `partial=True` checks a PATCH: only the fields present, plus `last_updated`,
which a PATCH must carry. Inbound, an object that fails is answered with status_code 2001 and changes nothing;
outbound, EVC checks what it builds before it queues it, so its own mistakes never reach an eMSP.

Fields the module does not know are ignored (OCPI asks receivers to accept additions); `null` counts as absent.
The spec's types: `string(n)` is UTF-8 text of at most n characters, `CiString(n)` printable ASCII compared without
case, DateTime is RFC 3339 in UTC ("2026-01-31T12:00:00Z"; the Z and fractions are optional on input).
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Callable, Iterable

VERSIONS = ("2.2.1", "2.1.1")

DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z?$")
CISTRING = re.compile(r"^[\x20-\x7e]*$")
LATITUDE = re.compile(r"^-?[0-9]{1,2}\.[0-9]{5,7}$")
LONGITUDE = re.compile(r"^-?[0-9]{1,3}\.[0-9]{5,7}$")
HOUR = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class Invalid(ValueError):
    """An object that breaks its module's rules; `errors` lists every broken rule, each naming its field."""

    def __init__(self, name: str, errors: list[str]):
        self.name = name
        self.errors = errors
        super().__init__(f"{name}: " + "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)"
                                                                 if len(errors) > 5 else ""))


# -- field types: each is a function (value, where, version, errors) -> None --

Check = Callable[[Any, str, str, list], None]


def _string(n: int, ci: bool = False, pattern: re.Pattern | None = None) -> Check:
    def check(v, where, version, errors):
        if not isinstance(v, str):
            errors.append(f"{where}: must be a string")
        elif len(v) > n:
            errors.append(f"{where}: at most {n} characters ({len(v)} given)")
        elif ci and not CISTRING.match(v):
            errors.append(f"{where}: printable ASCII only (CiString)")
        elif pattern is not None and not pattern.match(v):
            errors.append(f"{where}: {v!r} does not have the required form")
    return check


def S(n: int) -> Check:
    """string(n)"""
    return _string(n)


def CI(n: int) -> Check:
    """CiString(n)"""
    return _string(n, ci=True)


def _datetime(v, where, version, errors):
    if not isinstance(v, str) or not DATETIME.match(v):
        errors.append(f"{where}: not an OCPI DateTime (e.g. 2026-01-31T12:00:00Z)")
        return
    try:
        datetime.fromisoformat(v.rstrip("Z")[:26])
    except ValueError:
        errors.append(f"{where}: {v!r} is not a valid date and time")


def _number(v, where, version, errors):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        errors.append(f"{where}: must be a number")


def _int(v, where, version, errors):
    if isinstance(v, bool) or not isinstance(v, int):
        errors.append(f"{where}: must be an integer")


def _bool(v, where, version, errors):
    if not isinstance(v, bool):
        errors.append(f"{where}: must be true or false")


def _url(v, where, version, errors):
    if not isinstance(v, str) or not re.match(r"^https?://[^\s/]+(/\S*)?$", v) or len(v) > 255:
        errors.append(f"{where}: must be an http(s) URL of at most 255 characters")


DT, NUM, INT, BOOL, URL = _datetime, _number, _int, _bool, _url


def E(*values: str) -> Check:
    allowed = frozenset(values)

    def check(v, where, version, errors):
        if v not in allowed:
            shown = ", ".join(sorted(allowed)) if len(allowed) <= 12 else f"one of {len(allowed)} values"
            errors.append(f"{where}: {v!r} is not one of {shown}")
    return check


def O(name: str) -> Check:
    """A nested object, checked by its own rules (of the same version)."""
    def check(v, where, version, errors):
        if not isinstance(v, dict):
            errors.append(f"{where}: must be an object ({name})")
            return
        _check_fields(name, v, version, where + ".", errors, partial=False)
    return check


def L(item: Check, min_items: int = 0) -> Check:
    def check(v, where, version, errors):
        if not isinstance(v, list):
            errors.append(f"{where}: must be a list")
            return
        if len(v) < min_items:
            errors.append(f"{where}: at least {min_items} needed")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]", version, errors)
    return check


# -- enums --

CONNECTOR_TYPES = ("CHADEMO", "CHAOJI", *(f"DOMESTIC_{c}" for c in "ABCDEFGHIJKLMNOPQRSTU"), "GBT_AC", "GBT_DC",
                   "IEC_60309_2_single_16", "IEC_60309_2_three_16", "IEC_60309_2_three_32", "IEC_60309_2_three_64",
                   "IEC_62196_T1", "IEC_62196_T1_COMBO", "IEC_62196_T2", "IEC_62196_T2_COMBO", "IEC_62196_T3A",
                   "IEC_62196_T3C", "NEMA_5_20", "NEMA_6_30", "NEMA_6_50", "NEMA_10_30", "NEMA_10_50", "NEMA_14_30",
                   "NEMA_14_50", "PANTOGRAPH_BOTTOM_UP", "PANTOGRAPH_TOP_DOWN", "TESLA_R", "TESLA_S")
CONNECTOR_FORMATS = ("SOCKET", "CABLE")
POWER_TYPES = {"2.2.1": ("AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC"),
               "2.1.1": ("AC_1_PHASE", "AC_3_PHASE", "DC")}
EVSE_STATUSES = ("AVAILABLE", "BLOCKED", "CHARGING", "INOPERATIVE", "OUTOFORDER", "PLANNED", "REMOVED", "RESERVED",
                 "UNKNOWN")
CAPABILITIES = {"2.2.1": ("CHARGING_PROFILE_CAPABLE", "CHARGING_PREFERENCES_CAPABLE", "CHIP_CARD_SUPPORT",
                          "CONTACTLESS_CARD_SUPPORT", "CREDIT_CARD_PAYABLE", "DEBIT_CARD_PAYABLE", "PED_TERMINAL",
                          "REMOTE_START_STOP_CAPABLE", "RESERVABLE", "RFID_READER", "START_SESSION_CONNECTOR_REQUIRED",
                          "TOKEN_GROUP_CAPABLE", "UNLOCK_CAPABLE"),
                "2.1.1": ("CHARGING_PROFILE_CAPABLE", "CREDIT_CARD_PAYABLE", "REMOTE_START_STOP_CAPABLE",
                          "RESERVABLE", "RFID_READER", "UNLOCK_CAPABLE")}
PARKING_TYPES = ("ALONG_MOTORWAY", "PARKING_GARAGE", "PARKING_LOT", "ON_DRIVEWAY", "ON_STREET", "UNDERGROUND_GARAGE")
LOCATION_TYPES_211 = ("ON_STREET", "PARKING_GARAGE", "UNDERGROUND_GARAGE", "PARKING_LOT", "OTHER", "UNKNOWN")
TOKEN_TYPES = {"2.2.1": ("AD_HOC_USER", "APP_USER", "OTHER", "RFID"), "2.1.1": ("OTHER", "RFID")}
WHITELIST = ("ALWAYS", "ALLOWED", "ALLOWED_OFFLINE", "NEVER")
ALLOWED = ("ALLOWED", "BLOCKED", "EXPIRED", "NO_CREDIT", "NOT_ALLOWED")
AUTH_METHODS = {"2.2.1": ("AUTH_REQUEST", "COMMAND", "WHITELIST"), "2.1.1": ("AUTH_REQUEST", "WHITELIST")}
SESSION_STATUSES = {"2.2.1": ("ACTIVE", "COMPLETED", "INVALID", "PENDING", "RESERVATION"),
                    "2.1.1": ("ACTIVE", "COMPLETED", "INVALID", "PENDING")}
DIMENSIONS = {"2.2.1": ("CURRENT", "ENERGY", "ENERGY_EXPORT", "ENERGY_IMPORT", "MAX_CURRENT", "MIN_CURRENT",
                        "MAX_POWER", "MIN_POWER", "PARKING_TIME", "POWER", "RESERVATION_TIME", "STATE_OF_CHARGE",
                        "TIME"),
              "2.1.1": ("ENERGY", "FLAT", "MAX_CURRENT", "MIN_CURRENT", "PARKING_TIME", "TIME")}
PRICE_COMPONENTS = ("ENERGY", "FLAT", "PARKING_TIME", "TIME")
ROLES = ("CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP")
MODULES = ("cdrs", "chargingprofiles", "commands", "credentials", "hubclientinfo", "locations", "sessions", "tariffs",
           "tokens")
INTERFACE_ROLES = ("SENDER", "RECEIVER")
COMMAND_RESPONSES = {"2.2.1": ("ACCEPTED", "NOT_SUPPORTED", "REJECTED", "UNKNOWN_SESSION"),
                     "2.1.1": ("ACCEPTED", "NOT_SUPPORTED", "REJECTED", "TIMEOUT", "UNKNOWN_SESSION")}
COMMAND_RESULTS = ("ACCEPTED", "CANCELED_RESERVATION", "EVSE_OCCUPIED", "EVSE_INOPERATIVE", "FAILED", "NOT_SUPPORTED",
                   "REJECTED", "TIMEOUT", "UNKNOWN_RESERVATION")
COMMANDS = {"2.2.1": ("START_SESSION", "STOP_SESSION", "RESERVE_NOW", "CANCEL_RESERVATION", "UNLOCK_CONNECTOR"),
            "2.1.1": ("START_SESSION", "STOP_SESSION", "RESERVE_NOW", "UNLOCK_CONNECTOR")}
IMAGE_CATEGORIES = ("CHARGER", "ENTRANCE", "LOCATION", "NETWORK", "OPERATOR", "OTHER", "OWNER")


def V(by_version: dict[str, Iterable[str]]) -> Check:
    """An enum whose values depend on the version."""
    checks = {v: E(*values) for v, values in by_version.items()}
    return lambda v, where, version, errors: checks[version](v, where, version, errors)


# -- the objects: name -> {field: (check, required)}; the same name may differ per version --

R, o = True, False      # required, optional

COMMON: dict[str, dict[str, tuple[Check, bool]]] = {
    "GeoLocation": {"latitude": (_string(10, pattern=LATITUDE), R), "longitude": (_string(11, pattern=LONGITUDE), R)},
    "DisplayText": {"language": (S(2), R), "text": (S(512), R)},
    "Image": {"url": (URL, R), "thumbnail": (URL, o), "category": (E(*IMAGE_CATEGORIES), R), "type": (CI(4), R),
              "width": (INT, o), "height": (INT, o)},
    "BusinessDetails": {"name": (S(100), R), "website": (URL, o), "logo": (O("Image"), o)},
    "RegularHours": {"weekday": (INT, R), "period_begin": (_string(5, pattern=HOUR), R),
                     "period_end": (_string(5, pattern=HOUR), R)},
    "ExceptionalPeriod": {"period_begin": (DT, R), "period_end": (DT, R)},
    "Hours": {"twentyfourseven": (BOOL, o), "regular_hours": (L(O("RegularHours")), o),
              "exceptional_openings": (L(O("ExceptionalPeriod")), o),
              "exceptional_closings": (L(O("ExceptionalPeriod")), o)},
    "Version": {"version": (E("2.0", "2.1", "2.1.1", "2.2", "2.2.1"), R), "url": (URL, R)},
    "Price": {"excl_vat": (NUM, R), "incl_vat": (NUM, o)},
    "CommandResult": {"result": (E(*COMMAND_RESULTS), R), "message": (L(O("DisplayText")), o)},
}

V221: dict[str, dict[str, tuple[Check, bool]]] = {
    "Location": {
        "country_code": (CI(2), R), "party_id": (CI(3), R), "id": (CI(36), R), "publish": (BOOL, R),
        "name": (S(255), o), "address": (S(45), R), "city": (S(45), R), "postal_code": (S(10), o),
        "state": (S(20), o), "country": (S(3), R), "coordinates": (O("GeoLocation"), R),
        "parking_type": (E(*PARKING_TYPES), o), "evses": (L(O("EVSE")), o), "directions": (L(O("DisplayText")), o),
        "operator": (O("BusinessDetails"), o), "suboperator": (O("BusinessDetails"), o),
        "owner": (O("BusinessDetails"), o), "time_zone": (S(255), R), "opening_times": (O("Hours"), o),
        "charging_when_closed": (BOOL, o), "images": (L(O("Image")), o), "last_updated": (DT, R)},
    "EVSE": {
        "uid": (CI(36), R), "evse_id": (CI(48), o), "status": (E(*EVSE_STATUSES), R),
        "capabilities": (L(V(CAPABILITIES)), o), "connectors": (L(O("Connector"), 1), R), "floor_level": (S(4), o),
        "coordinates": (O("GeoLocation"), o), "physical_reference": (S(16), o),
        "directions": (L(O("DisplayText")), o), "images": (L(O("Image")), o), "last_updated": (DT, R)},
    "Connector": {
        "id": (CI(36), R), "standard": (E(*CONNECTOR_TYPES), R), "format": (E(*CONNECTOR_FORMATS), R),
        "power_type": (V(POWER_TYPES), R), "max_voltage": (INT, R), "max_amperage": (INT, R),
        "max_electric_power": (INT, o), "tariff_ids": (L(CI(36)), o), "terms_and_conditions": (URL, o),
        "last_updated": (DT, R)},
    "CdrToken": {"country_code": (CI(2), R), "party_id": (CI(3), R), "uid": (CI(36), R),
                 "type": (V(TOKEN_TYPES), R), "contract_id": (CI(36), R)},
    "CdrDimension": {"type": (V(DIMENSIONS), R), "volume": (NUM, R)},
    "ChargingPeriod": {"start_date_time": (DT, R), "dimensions": (L(O("CdrDimension"), 1), R),
                       "tariff_id": (CI(36), o)},
    "Session": {
        "country_code": (CI(2), R), "party_id": (CI(3), R), "id": (CI(36), R), "start_date_time": (DT, R),
        "end_date_time": (DT, o), "kwh": (NUM, R), "cdr_token": (O("CdrToken"), R),
        "auth_method": (V(AUTH_METHODS), R), "authorization_reference": (CI(36), o), "location_id": (CI(36), R),
        "evse_uid": (CI(36), R), "connector_id": (CI(36), R), "meter_id": (S(255), o), "currency": (S(3), R),
        "charging_periods": (L(O("ChargingPeriod")), o), "total_cost": (O("Price"), o),
        "status": (V(SESSION_STATUSES), R), "last_updated": (DT, R)},
    "CdrLocation": {
        "id": (CI(36), R), "name": (S(255), o), "address": (S(45), R), "city": (S(45), R),
        "postal_code": (S(10), o), "state": (S(20), o), "country": (S(3), R),
        "coordinates": (O("GeoLocation"), R), "evse_uid": (CI(36), R), "evse_id": (CI(48), R),
        "connector_id": (CI(36), R), "connector_standard": (E(*CONNECTOR_TYPES), R),
        "connector_format": (E(*CONNECTOR_FORMATS), R), "connector_power_type": (V(POWER_TYPES), R)},
    "PriceComponent": {"type": (E(*PRICE_COMPONENTS), R), "price": (NUM, R), "vat": (NUM, o), "step_size": (INT, R)},
    "TariffElement": {"price_components": (L(O("PriceComponent"), 1), R)},
    "Tariff": {
        "country_code": (CI(2), R), "party_id": (CI(3), R), "id": (CI(36), R), "currency": (S(3), R),
        "tariff_alt_text": (L(O("DisplayText")), o), "tariff_alt_url": (URL, o),
        "elements": (L(O("TariffElement"), 1), R), "start_date_time": (DT, o), "end_date_time": (DT, o),
        "last_updated": (DT, R)},
    "CDR": {
        "country_code": (CI(2), R), "party_id": (CI(3), R), "id": (CI(39), R), "start_date_time": (DT, R),
        "end_date_time": (DT, R), "session_id": (CI(36), o), "cdr_token": (O("CdrToken"), R),
        "auth_method": (V(AUTH_METHODS), R), "authorization_reference": (CI(36), o),
        "cdr_location": (O("CdrLocation"), R), "meter_id": (S(255), o), "currency": (S(3), R),
        "tariffs": (L(O("Tariff")), o), "charging_periods": (L(O("ChargingPeriod"), 1), R),
        "total_cost": (O("Price"), R), "total_fixed_cost": (O("Price"), o), "total_energy": (NUM, R),
        "total_energy_cost": (O("Price"), o), "total_time": (NUM, R), "total_time_cost": (O("Price"), o),
        "total_parking_time": (NUM, o), "total_parking_cost": (O("Price"), o), "remark": (S(255), o),
        "invoice_reference_id": (CI(39), o), "credit": (BOOL, o), "credit_reference_id": (CI(39), o),
        "last_updated": (DT, R)},
    "Token": {
        "country_code": (CI(2), R), "party_id": (CI(3), R), "uid": (CI(36), R), "type": (V(TOKEN_TYPES), R),
        "contract_id": (CI(36), R), "visual_number": (S(64), o), "issuer": (S(64), R), "group_id": (CI(36), o),
        "valid": (BOOL, R), "whitelist": (E(*WHITELIST), R), "language": (S(2), o), "last_updated": (DT, R)},
    "LocationReferences": {"location_id": (CI(36), R), "evse_uids": (L(CI(36)), o)},
    "AuthorizationInfo": {"allowed": (E(*ALLOWED), R), "token": (O("Token"), R),
                          "location": (O("LocationReferences"), o), "authorization_reference": (CI(36), o),
                          "info": (O("DisplayText"), o)},
    "CredentialsRole": {"role": (E(*ROLES), R), "business_details": (O("BusinessDetails"), R),
                        "party_id": (CI(3), R), "country_code": (CI(2), R)},
    "Credentials": {"token": (CI(64), R), "url": (URL, R), "roles": (L(O("CredentialsRole"), 1), R)},
    "Endpoint": {"identifier": (E(*MODULES), R), "role": (E(*INTERFACE_ROLES), R), "url": (URL, R)},
    "VersionDetail": {"version": (E("2.2.1", "2.2"), R), "endpoints": (L(O("Endpoint"), 1), R)},
    "StartSession": {"response_url": (URL, R), "token": (O("Token"), R), "location_id": (CI(36), R),
                     "evse_uid": (CI(36), o), "connector_id": (CI(36), o), "authorization_reference": (CI(36), o)},
    "StopSession": {"response_url": (URL, R), "session_id": (CI(36), R)},
    "ReserveNow": {"response_url": (URL, R), "token": (O("Token"), R), "expiry_date": (DT, R),
                   "reservation_id": (CI(36), R), "location_id": (CI(36), R), "evse_uid": (CI(36), o),
                   "authorization_reference": (CI(36), o)},
    "CancelReservation": {"response_url": (URL, R), "reservation_id": (CI(36), R)},
    "UnlockConnector": {"response_url": (URL, R), "location_id": (CI(36), R), "evse_uid": (CI(36), R),
                        "connector_id": (CI(36), R)},
    "CommandResponse": {"result": (V(COMMAND_RESPONSES), R), "timeout": (INT, R),
                        "message": (L(O("DisplayText")), o)},
}

V211: dict[str, dict[str, tuple[Check, bool]]] = {
    "Location": {
        "id": (S(39), R), "type": (E(*LOCATION_TYPES_211), R), "name": (S(255), o), "address": (S(45), R),
        "city": (S(45), R), "postal_code": (S(10), R), "country": (S(3), R), "coordinates": (O("GeoLocation"), R),
        "evses": (L(O("EVSE")), o), "directions": (L(O("DisplayText")), o), "operator": (O("BusinessDetails"), o),
        "suboperator": (O("BusinessDetails"), o), "owner": (O("BusinessDetails"), o), "time_zone": (S(255), o),
        "opening_times": (O("Hours"), o), "charging_when_closed": (BOOL, o), "images": (L(O("Image")), o),
        "last_updated": (DT, R)},
    "EVSE": {
        "uid": (S(39), R), "evse_id": (S(48), o), "status": (E(*EVSE_STATUSES), R),
        "capabilities": (L(V(CAPABILITIES)), o), "connectors": (L(O("Connector"), 1), R), "floor_level": (S(4), o),
        "coordinates": (O("GeoLocation"), o), "physical_reference": (S(16), o),
        "directions": (L(O("DisplayText")), o), "images": (L(O("Image")), o), "last_updated": (DT, R)},
    "Connector": {
        "id": (S(36), R), "standard": (E(*CONNECTOR_TYPES), R), "format": (E(*CONNECTOR_FORMATS), R),
        "power_type": (V(POWER_TYPES), R), "voltage": (INT, R), "amperage": (INT, R), "tariff_id": (S(36), o),
        "terms_and_conditions": (URL, o), "last_updated": (DT, R)},
    "CdrDimension": {"type": (V(DIMENSIONS), R), "volume": (NUM, R)},
    "ChargingPeriod": {"start_date_time": (DT, R), "dimensions": (L(O("CdrDimension"), 1), R)},
    "Session": {
        "id": (S(36), R), "start_datetime": (DT, R), "end_datetime": (DT, o), "kwh": (NUM, R),
        "auth_id": (S(36), R), "auth_method": (V(AUTH_METHODS), R), "location": (O("Location"), R),
        "meter_id": (S(255), o), "currency": (S(3), R), "charging_periods": (L(O("ChargingPeriod")), o),
        "total_cost": (NUM, o), "status": (V(SESSION_STATUSES), R), "last_updated": (DT, R)},
    "PriceComponent": {"type": (E(*PRICE_COMPONENTS), R), "price": (NUM, R), "step_size": (INT, R)},
    "TariffElement": {"price_components": (L(O("PriceComponent"), 1), R)},
    "Tariff": {"id": (S(36), R), "currency": (S(3), R), "tariff_alt_text": (L(O("DisplayText")), o),
               "tariff_alt_url": (URL, o), "elements": (L(O("TariffElement"), 1), R), "last_updated": (DT, R)},
    "CDR": {
        "id": (S(36), R), "start_date_time": (DT, R), "stop_date_time": (DT, R), "auth_id": (S(36), R),
        "auth_method": (V(AUTH_METHODS), R), "location": (O("Location"), R), "meter_id": (S(255), o),
        "currency": (S(3), R), "tariffs": (L(O("Tariff")), o), "charging_periods": (L(O("ChargingPeriod"), 1), R),
        "total_cost": (NUM, R), "total_energy": (NUM, R), "total_time": (NUM, R), "total_parking_time": (NUM, o),
        "remark": (S(255), o), "last_updated": (DT, R)},
    "Token": {
        "uid": (S(36), R), "type": (V(TOKEN_TYPES), R), "auth_id": (S(36), R), "visual_number": (S(64), o),
        "issuer": (S(64), R), "valid": (BOOL, R), "whitelist": (E(*WHITELIST), R), "language": (S(2), o),
        "last_updated": (DT, R)},
    "LocationReferences": {"location_id": (S(39), R), "evse_uids": (L(S(39)), o), "connector_ids": (L(S(36)), o)},
    "AuthorizationInfo": {"allowed": (E(*ALLOWED), R), "location": (O("LocationReferences"), o),
                          "info": (O("DisplayText"), o)},
    "Credentials": {"token": (S(64), R), "url": (URL, R), "business_details": (O("BusinessDetails"), R),
                    "party_id": (CI(3), R), "country_code": (CI(2), R)},
    "Endpoint": {"identifier": (E(*MODULES), R), "url": (URL, R)},
    "VersionDetail": {"version": (E("2.1.1", "2.1"), R), "endpoints": (L(O("Endpoint"), 1), R)},
    "StartSession": {"response_url": (URL, R), "token": (O("Token"), R), "location_id": (S(39), R),
                     "evse_uid": (S(39), o)},
    "StopSession": {"response_url": (URL, R), "session_id": (S(36), R)},
    "ReserveNow": {"response_url": (URL, R), "token": (O("Token"), R), "expiry_date": (DT, R),
                   "reservation_id": (INT, R), "location_id": (S(39), R), "evse_uid": (S(39), o)},
    "UnlockConnector": {"response_url": (URL, R), "location_id": (S(39), R), "evse_uid": (S(39), R),
                        "connector_id": (S(36), R)},
    # 2.1.1 answers a command and reports its outcome with the same object.
    "CommandResponse": {"result": (V(COMMAND_RESPONSES), R), "message": (L(O("DisplayText")), o)},
    "CommandResult": {"result": (V(COMMAND_RESPONSES), R), "message": (L(O("DisplayText")), o)},
}

RULES = {"2.2.1": {**COMMON, **V221}, "2.1.1": {**COMMON, **V211}}


def _check_fields(name: str, doc: dict, version: str, prefix: str, errors: list, partial: bool) -> None:
    rules = RULES[version].get(name)
    if rules is None:
        raise KeyError(f"no rules for OCPI {version} object {name}")
    for field, (check, required) in rules.items():
        value = doc.get(field)
        where = prefix + field
        if value is None:
            if required and not partial:
                errors.append(f"{where}: missing")
            continue
        check(value, where, version, errors)
    if name == "RegularHours" and isinstance(doc.get("weekday"), int) and not 1 <= doc["weekday"] <= 7:
        errors.append(f"{prefix}weekday: 1 (Monday) to 7 (Sunday)")
    if name == "Hours" and doc.get("twentyfourseven") is None and not doc.get("regular_hours"):
        errors.append(f"{prefix}twentyfourseven: missing (or give regular_hours)")


def errors_of(name: str, doc: Any, version: str, partial: bool = False) -> list[str]:
    """Every rule `doc` breaks as an OCPI `version` `name` (empty: it is valid)."""
    if version not in RULES:
        return [f"OCPI version {version!r} is not supported ({', '.join(VERSIONS)})"]
    if not isinstance(doc, dict):
        return [f"{name} must be a JSON object"]
    errors: list[str] = []
    _check_fields(name, doc, version, "", errors, partial)
    if partial and doc.get("last_updated") is None:
        errors.append("last_updated: missing (a PATCH must carry it)")
    return errors


def check(name: str, doc: Any, version: str, partial: bool = False) -> Any:
    """`doc` when it is a valid OCPI `version` `name`, else Invalid (see the module docstring)."""
    errors = errors_of(name, doc, version, partial)
    if errors:
        raise Invalid(name, errors)
    return doc


def known(name: str, version: str) -> bool:
    return name in RULES.get(version, {})


__all__ = ["Invalid", "check", "errors_of", "known", "VERSIONS", "EVSE_STATUSES", "WHITELIST", "ALLOWED",
           "COMMANDS", "COMMAND_RESULTS", "CONNECTOR_TYPES", "CONNECTOR_FORMATS", "POWER_TYPES", "PARKING_TYPES"]
