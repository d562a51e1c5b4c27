"""The OCPI object rules: required fields, lengths, enums, DateTime, per version, PATCH documents."""
from __future__ import annotations

import copy

import pytest

from evc.front.ocpi.objects import Invalid, check, errors_of

T = "2026-01-31T12:00:00Z"


def connector_221():
    return {"id": "1", "standard": "IEC_62196_T2", "format": "SOCKET", "power_type": "AC_3_PHASE",
            "max_voltage": 230, "max_amperage": 32, "last_updated": T}


def evse_221():
    return {"uid": "s1", "evse_id": "DE*EVC*Es1", "status": "AVAILABLE", "connectors": [connector_221()],
            "last_updated": T}


def location_221():
    return {"country_code": "DE", "party_id": "EVC", "id": "site1", "publish": True, "address": "Main St 1",
            "city": "Berlin", "country": "DEU", "coordinates": {"latitude": "52.52000", "longitude": "13.40500"},
            "time_zone": "Europe/Berlin", "evses": [evse_221()], "last_updated": T}


def location_211():
    loc = location_221()
    for k in ("country_code", "party_id", "publish"):
        del loc[k]
    loc["type"] = "PARKING_LOT"
    loc["postal_code"] = "10115"
    c = loc["evses"][0]["connectors"][0]
    c["voltage"], c["amperage"] = c.pop("max_voltage"), c.pop("max_amperage")
    return loc


def token_221():
    return {"country_code": "DE", "party_id": "PSF", "uid": "04A1B2C3", "type": "RFID", "contract_id": "DE-PSF-C1",
            "issuer": "DE*8PS", "valid": True, "whitelist": "ALLOWED_OFFLINE", "last_updated": T}


def cdr_221():
    return {"country_code": "DE", "party_id": "EVC", "id": "CDR1", "start_date_time": T,
            "end_date_time": "2026-01-31T13:00:00Z",
            "cdr_token": {"country_code": "DE", "party_id": "PSF", "uid": "04A1", "type": "RFID",
                          "contract_id": "C1"},
            "auth_method": "AUTH_REQUEST",
            "cdr_location": {"id": "site1", "address": "Main St 1", "city": "Berlin", "country": "DEU",
                             "coordinates": {"latitude": "52.52000", "longitude": "13.40500"}, "evse_uid": "s1",
                             "evse_id": "DE*EVC*Es1", "connector_id": "1", "connector_standard": "IEC_62196_T2",
                             "connector_format": "SOCKET", "connector_power_type": "AC_3_PHASE"},
            "currency": "EUR",
            "charging_periods": [{"start_date_time": T, "dimensions": [{"type": "ENERGY", "volume": 11.5}]}],
            "total_cost": {"excl_vat": 3.45}, "total_energy": 11.5, "total_time": 1.0, "last_updated": T}


def test_valid_objects_of_both_versions_pass():
    assert check("Location", location_221(), "2.2.1")
    assert check("Location", location_211(), "2.1.1")
    assert check("Token", token_221(), "2.2.1")
    assert check("CDR", cdr_221(), "2.2.1")


def test_a_missing_required_field_is_named():
    loc = location_221()
    del loc["coordinates"]
    with pytest.raises(Invalid) as e:
        check("Location", loc, "2.2.1")
    assert e.value.errors == ["coordinates: missing"]


def test_an_evse_without_connectors_is_refused_with_its_path():
    loc = location_221()
    loc["evses"][0]["connectors"] = []
    assert errors_of("Location", loc, "2.2.1") == ["evses[0].connectors: at least 1 needed"]


def test_string_lengths_are_enforced():
    tok = token_221()
    tok["uid"] = "X" * 37
    assert errors_of("Token", tok, "2.2.1") == ["uid: at most 36 characters (37 given)"]


def test_a_cistring_must_be_printable_ascii():
    tok = token_221()
    tok["uid"] = "ÄÖÜ"
    assert errors_of("Token", tok, "2.2.1") == ["uid: printable ASCII only (CiString)"]


def test_enums_are_enforced():
    evse = evse_221()
    evse["status"] = "BUSY"
    assert errors_of("EVSE", evse, "2.2.1")[0].startswith("status: 'BUSY' is not one of")


@pytest.mark.parametrize("value", ["2026-01-31 12:00:00", "31.01.2026", "2026-13-31T12:00:00Z", 1700000000, ""])
def test_datetimes_must_be_rfc3339(value):
    tok = token_221()
    tok["last_updated"] = value
    assert errors_of("Token", tok, "2.2.1")[0].startswith("last_updated:")


@pytest.mark.parametrize("value", ["2026-01-31T12:00:00Z", "2026-01-31T12:00:00", "2026-01-31T12:00:00.123Z"])
def test_datetimes_with_or_without_z_and_fractions_pass(value):
    tok = token_221()
    tok["last_updated"] = value
    assert errors_of("Token", tok, "2.2.1") == []


def test_the_versions_differ_where_the_spec_does():
    """2.2.1 connectors have max_voltage, 2.1.1 voltage; 2.1.1 locations need a type and a postal code."""
    assert errors_of("Connector", connector_221(), "2.1.1") == ["voltage: missing", "amperage: missing"]
    loc = location_211()
    del loc["postal_code"]
    assert errors_of("Location", loc, "2.1.1") == ["postal_code: missing"]
    tok = token_221()
    tok["type"] = "APP_USER"
    assert errors_of("Token", {**tok, "auth_id": "A1"}, "2.1.1")[0].startswith("type: 'APP_USER'")


def test_coordinates_need_the_spec_form():
    loc = location_221()
    loc["coordinates"]["latitude"] = "52.5"
    assert errors_of("Location", loc, "2.2.1") == ["coordinates.latitude: '52.5' does not have the required form"]


def test_a_patch_needs_last_updated_and_only_what_it_carries():
    assert errors_of("EVSE", {"status": "CHARGING", "last_updated": T}, "2.2.1", partial=True) == []
    assert errors_of("EVSE", {"status": "CHARGING"}, "2.2.1", partial=True) == [
        "last_updated: missing (a PATCH must carry it)"]
    assert errors_of("EVSE", {"status": "NOPE", "last_updated": T}, "2.2.1", partial=True)[0].startswith("status:")


def test_nulls_count_as_absent_and_unknown_fields_are_ignored():
    tok = token_221()
    tok["visual_number"] = None
    tok["something_new"] = {"x": 1}
    assert errors_of("Token", tok, "2.2.1") == []
    tok["issuer"] = None
    assert errors_of("Token", tok, "2.2.1") == ["issuer: missing"]


def test_types_are_enforced():
    cdr = cdr_221()
    cdr["total_energy"] = "11.5"
    cdr["charging_periods"][0]["dimensions"][0]["volume"] = True
    assert errors_of("CDR", cdr, "2.2.1") == ["charging_periods[0].dimensions[0].volume: must be a number",
                                              "total_energy: must be a number"]


def test_not_an_object():
    assert errors_of("Token", ["x"], "2.2.1") == ["Token must be a JSON object"]
    assert errors_of("Token", {}, "9.9") == ["OCPI version '9.9' is not supported (2.2.1, 2.1.1)"]


def test_commands_of_both_versions():
    start = {"response_url": "https://emsp.example/cmd/1", "token": token_221(), "location_id": "site1"}
    assert errors_of("StartSession", start, "2.2.1") == []
    assert errors_of("StopSession", {"response_url": "ftp://x", "session_id": "S1"}, "2.2.1") == [
        "response_url: must be an http(s) URL of at most 255 characters"]
    assert errors_of("CommandResponse", {"result": "ACCEPTED", "timeout": 30}, "2.2.1") == []
    assert errors_of("CommandResponse", {"result": "ACCEPTED"}, "2.2.1") == ["timeout: missing"]
    assert errors_of("CommandResponse", {"result": "TIMEOUT"}, "2.1.1") == []


def test_credentials_of_both_versions():
    role = {"role": "CPO", "party_id": "EVC", "country_code": "DE", "business_details": {"name": "Site"}}
    c221 = {"token": "abc", "url": "https://evc.example/ocpi/versions", "roles": [role]}
    assert errors_of("Credentials", c221, "2.2.1") == []
    c211 = {"token": "abc", "url": "https://evc.example/ocpi/versions", "party_id": "EVC", "country_code": "DE",
            "business_details": {"name": "Site"}}
    assert errors_of("Credentials", c211, "2.1.1") == []
    bad = copy.deepcopy(c221)
    bad["roles"][0]["party_id"] = "EVCX"
    assert errors_of("Credentials", bad, "2.2.1") == ["roles[0].party_id: at most 3 characters (4 given)"]
