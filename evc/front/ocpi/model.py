"""EVC's site as OCPI objects (pure functions): the Location, its EVSEs and connectors, Sessions, CDRs, the Tariff.

Every builder takes the version and returns a document that `objects.check` accepts; the front checks it anyway
before it queues it. Conventions (docs/ocpi.md): the EVSE uid is the charger's name, its connector id "1"; the
OCPI session id and the CDR id are EVC's session id.
"""
from __future__ import annotations

from typing import Any, Optional

from evc.charger.base import ChargerStatus
from evc.front.ocpi.transport import ocpi_time, parse_time

VOLTAGE_V = 230


def coordinate(text: str, decimals: int = 5) -> str:
    """A configured coordinate in OCPI's form (5 to 7 decimals)."""
    whole, _, frac = str(text).partition(".")
    frac = (frac + "0" * decimals)[:max(decimals, min(len(frac), 7))]
    return f"{whole}.{frac}"


def evse_status(running: bool, status: Optional[ChargerStatus], mode: Optional[str], session_open: bool) -> str:
    """An EVSE's OCPI status from what EVC knows of its charger.

    Not running (a config error) -> INOPERATIVE; not answering -> UNKNOWN; a fault -> OUTOFORDER; mode OFF ->
    INOPERATIVE; no car -> AVAILABLE; a car in a session -> CHARGING (OCPI: in use); a car whose session ended but
    which stays plugged -> BLOCKED.
    """
    if not running or status is None:
        return "INOPERATIVE"
    if not status.online:
        return "UNKNOWN"
    if status.vehicle == "fault" or status.fault:
        return "OUTOFORDER"
    if mode == "OFF":
        return "INOPERATIVE"
    if status.vehicle == "none":
        return "AVAILABLE"
    if status.vehicle == "unknown":
        return "UNKNOWN"
    return "CHARGING" if session_open else "BLOCKED"


def connector(version: str, charger_cfg: Any, override: dict, now_s: float, tariff_id: Optional[str] = None) -> dict:
    phases = getattr(charger_cfg, "phases", 3) or 3
    power = override.get("power_type") or ("AC_3_PHASE" if phases == 3 else "AC_1_PHASE")
    amps = int(getattr(charger_cfg, "A_max", 16) or 16)
    volts = int(override.get("max_voltage") or VOLTAGE_V)
    doc = {"id": "1", "standard": override.get("standard") or "IEC_62196_T2",
           "format": override.get("format") or "SOCKET", "power_type": power}
    if version == "2.1.1":
        doc.update({"voltage": volts, "amperage": amps})
    else:
        doc.update({"max_voltage": volts, "max_amperage": amps,
                    "max_electric_power": volts * amps * (3 if power == "AC_3_PHASE" else 1)})
    if tariff_id:
        if version == "2.1.1":
            doc["tariff_id"] = tariff_id
        else:
            doc["tariff_ids"] = [tariff_id]
    doc["last_updated"] = ocpi_time(now_s)
    return doc


def evse_id(cfg, name: str) -> str:
    return (cfg.evse_ids or {}).get(name) or f"{cfg.country_code}*{cfg.party_id}*E{name.upper()}"


def evse(version: str, cfg, name: str, charger_cfg: Any, status: str, now_s: float) -> dict:
    return {"uid": name, "evse_id": evse_id(cfg, name), "status": status,
            "capabilities": ["REMOTE_START_STOP_CAPABLE", "RFID_READER"],
            "connectors": [connector(version, charger_cfg, (cfg.connectors or {}).get(name) or {}, now_s,
                                     (cfg.tariff or {}).get("id"))],
            "last_updated": ocpi_time(now_s)}


PARKING_TO_211 = {"ALONG_MOTORWAY": "ON_STREET", "PARKING_GARAGE": "PARKING_GARAGE", "PARKING_LOT": "PARKING_LOT",
                  "ON_DRIVEWAY": "OTHER", "ON_STREET": "ON_STREET", "UNDERGROUND_GARAGE": "UNDERGROUND_GARAGE"}


def location(version: str, cfg, evses: list[dict], now_s: float) -> dict:
    loc = cfg.location
    doc: dict[str, Any] = {}
    if version != "2.1.1":
        doc.update({"country_code": cfg.country_code, "party_id": cfg.party_id})
    doc["id"] = loc["id"]
    if version != "2.1.1":
        doc["publish"] = True
    if loc.get("name"):
        doc["name"] = loc["name"]
    doc.update({"address": loc["address"], "city": loc["city"]})
    if loc.get("postal_code"):
        doc["postal_code"] = loc["postal_code"]
    doc["country"] = loc["country"]
    doc["coordinates"] = {"latitude": coordinate(loc["coordinates"]["latitude"]),
                          "longitude": coordinate(loc["coordinates"]["longitude"])}
    parking = loc.get("parking_type") or "PARKING_LOT"
    if version == "2.1.1":
        doc["type"] = PARKING_TO_211.get(parking, "UNKNOWN")
    else:
        doc["parking_type"] = parking
    doc["evses"] = evses
    doc["operator"] = {"name": cfg.business_name}
    doc["time_zone"] = loc.get("time_zone") or "Europe/Berlin"
    if loc.get("opening_times"):
        doc["opening_times"] = loc["opening_times"]
    doc["last_updated"] = max([ocpi_time(now_s)] + [e["last_updated"] for e in evses])
    return doc


# -- sessions and CDRs --

def _hours(start: str, end_s: float) -> float:
    try:
        return max(0.0, (end_s - parse_time(start)) / 3600.0)
    except ValueError:
        return 0.0


def costs(tariff: Optional[dict], kwh: float, hours: float) -> dict:
    """{"energy", "time", "total"} as Price objects (excl_vat, incl_vat) from the configured tariff (0 without)."""
    t = tariff or {}
    vat = float(t.get("vat_percent") or 0) / 100.0
    e = kwh * float(t.get("price_per_kWh") or 0)
    h = hours * float(t.get("price_per_hour") or 0)

    def price(x: float) -> dict:
        return {"excl_vat": round(x, 4), "incl_vat": round(x * (1 + vat), 4)}

    return {"energy": price(e), "time": price(h), "total": price(e + h)}


def tariff(version: str, cfg, now_s: float) -> Optional[dict]:
    t = cfg.tariff
    if not t:
        return None
    components = []
    if t.get("price_per_kWh"):
        components.append({"type": "ENERGY", "price": float(t["price_per_kWh"]), "step_size": 1})
    if t.get("price_per_hour"):
        components.append({"type": "TIME", "price": float(t["price_per_hour"]), "step_size": 60})
    if not components:
        components.append({"type": "FLAT", "price": 0.0, "step_size": 1})
    if version != "2.1.1" and t.get("vat_percent") is not None:
        for c in components:
            c["vat"] = float(t["vat_percent"])
    doc: dict[str, Any] = {}
    if version != "2.1.1":
        doc.update({"country_code": cfg.country_code, "party_id": cfg.party_id})
    doc.update({"id": t.get("id") or "default", "currency": t.get("currency") or "EUR",
                "elements": [{"price_components": components}], "last_updated": ocpi_time(now_s)})
    return doc


def currency(cfg) -> str:
    return (cfg.tariff or {}).get("currency") or "EUR"


def _periods(start: str, kwh: float, hours: float) -> list[dict]:
    return [{"start_date_time": start, "dimensions": [{"type": "ENERGY", "volume": round(kwh, 3)},
                                                      {"type": "TIME", "volume": round(hours, 4)}]}]


def session(version: str, cfg, rec: dict, s, loc_doc: dict, now_s: float) -> dict:
    """The OCPI Session of EVC session `s` (evc.session.Session) with its roaming record `rec` (token, auth)."""
    start = rec.get("start") or ocpi_time(parse_time(s.authorized_time or s.start_time))
    kwh = round((s.energy_Wh or 0.0) / 1000.0, 3)
    end_s = parse_time(s.stop_time) if s.stop_time else now_s
    hours = _hours(start, end_s)
    status = "COMPLETED" if not s.open else ("ACTIVE" if s.authorized else "PENDING")
    cost = costs(cfg.tariff, kwh, hours)["total"]
    if version == "2.1.1":
        doc = {"id": s.id, "start_datetime": start, "kwh": kwh, "auth_id": rec["token"]["contract_id"],
               "auth_method": "WHITELIST" if rec["auth_method"] == "WHITELIST" else "AUTH_REQUEST",
               "location": loc_doc, "currency": currency(cfg), "charging_periods": _periods(start, kwh, hours),
               "total_cost": cost["excl_vat"], "status": status, "last_updated": ocpi_time(now_s)}
        if s.stop_time:
            doc["end_datetime"] = ocpi_time(end_s)
        return doc
    doc = {"country_code": cfg.country_code, "party_id": cfg.party_id, "id": s.id, "start_date_time": start}
    if s.stop_time:
        doc["end_date_time"] = ocpi_time(end_s)
    doc.update({"kwh": kwh, "cdr_token": rec["token"], "auth_method": rec["auth_method"]})
    if rec.get("authorization_reference"):
        doc["authorization_reference"] = rec["authorization_reference"]
    doc.update({"location_id": cfg.location["id"], "evse_uid": s.charger, "connector_id": "1",
                "currency": currency(cfg), "charging_periods": _periods(start, kwh, hours), "total_cost": cost,
                "status": status, "last_updated": ocpi_time(now_s)})
    return doc


def cdr(version: str, cfg, rec: dict, s, loc_doc: dict, evse_doc: dict, now_s: float) -> dict:
    """The CDR of ended EVC session `s`: energy from its own readings, times, one charging period, the cost."""
    start = rec.get("start") or ocpi_time(parse_time(s.authorized_time or s.start_time))
    end_s = parse_time(s.stop_time) if s.stop_time else now_s
    kwh = round((s.energy_Wh or 0.0) / 1000.0, 3)
    hours = round(_hours(start, end_s), 4)
    c = costs(cfg.tariff, kwh, hours)
    t = tariff(version, cfg, now_s)
    if version == "2.1.1":
        # 2.1.1 names the end stop_date_time; some 2.1.1 implementations read 2.2's end_date_time: both go out
        # (a receiver ignores what it does not know).
        doc = {"id": s.id, "start_date_time": start, "stop_date_time": ocpi_time(end_s),
               "end_date_time": ocpi_time(end_s),
               "auth_id": rec["token"]["contract_id"],
               "auth_method": "WHITELIST" if rec["auth_method"] == "WHITELIST" else "AUTH_REQUEST",
               "location": loc_doc, "currency": currency(cfg), "charging_periods": _periods(start, kwh, hours),
               "total_cost": c["total"]["excl_vat"], "total_energy": kwh, "total_time": hours,
               "last_updated": ocpi_time(now_s)}
        if t is not None:
            doc["tariffs"] = [t]
        return doc
    conn = evse_doc["connectors"][0]
    loc = cfg.location
    cdr_loc = {"id": loc["id"], "address": loc["address"], "city": loc["city"], "country": loc["country"],
               "coordinates": loc_doc["coordinates"], "evse_uid": s.charger, "evse_id": evse_doc["evse_id"],
               "connector_id": conn["id"], "connector_standard": conn["standard"],
               "connector_format": conn["format"], "connector_power_type": conn["power_type"]}
    if loc.get("name"):
        cdr_loc["name"] = loc["name"]
    if loc.get("postal_code"):
        cdr_loc["postal_code"] = loc["postal_code"]
    doc = {"country_code": cfg.country_code, "party_id": cfg.party_id, "id": s.id, "start_date_time": start,
           "end_date_time": ocpi_time(end_s), "session_id": s.id, "cdr_token": rec["token"],
           "auth_method": rec["auth_method"]}
    if rec.get("authorization_reference"):
        doc["authorization_reference"] = rec["authorization_reference"]
    doc.update({"cdr_location": cdr_loc, "currency": currency(cfg)})
    if t is not None:
        doc["tariffs"] = [t]
    doc.update({"charging_periods": _periods(start, kwh, hours), "total_cost": c["total"],
                "total_energy": kwh, "total_energy_cost": c["energy"], "total_time": hours,
                "total_time_cost": c["time"], "last_updated": ocpi_time(now_s)})
    if s.meter_reset:
        doc["remark"] = "The charger's energy counter was reset during the session: the energy is a lower bound."
    return doc


def cdr_token(version: str, token: dict, party: dict) -> dict:
    """A CdrToken from a Token (2.2.1) or from what EVC knows of a token (uid, type, contract id)."""
    return {"country_code": token.get("country_code") or party["country_code"],
            "party_id": token.get("party_id") or party["party_id"], "uid": token["uid"],
            "type": token.get("type") or "RFID",
            "contract_id": token.get("contract_id") or token.get("auth_id") or token["uid"]}


__all__ = ["evse_status", "evse", "location", "connector", "session", "cdr", "tariff", "cdr_token", "costs"]
