"""Locations: the site PUT once registered with an EVSE per charger, each status change PATCHed at EVSE level, the
eMSP's GETs with pagination; every object valid by the OCPI rules (the fake eMSP is lax, so they are checked here)."""
from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.front.ocpi.objects import errors_of
from ocpi_rig import Rig, wait_for


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


async def _site(rig, **kw):
    s1 = await rig.site.charger("s1")
    s2 = await rig.site.charger("s2")
    await rig.start_front(**kw)
    await rig.registered()
    await wait_for(lambda: rig.emsp.requests("PUT", "/ocpi/2.2.1/locations"), 5, "the Location PUT")
    await rig.delivered()
    return s1, s2


def _patches(rig, evse):
    return [r.body["status"] for r in rig.emsp.requests("PATCH", f"/ocpi/2.2.1/locations/DE/EVC/SITE1/{evse}")]


@pytest_twisted.ensureDeferred
async def test_the_location_is_put_with_an_evse_per_charger(rig):
    await _site(rig)
    put = rig.emsp.requests("PUT", "/ocpi/2.2.1/locations/DE/EVC/SITE1")
    assert len(put) == 1
    loc = put[0].body
    assert errors_of("Location", loc, "2.2.1") == []
    assert [e["uid"] for e in loc["evses"]] == ["s1", "s2"]
    assert [e["status"] for e in loc["evses"]] == ["AVAILABLE", "AVAILABLE"]
    assert loc["evses"][0]["evse_id"] == "DE*EVC*ES1"
    conn = loc["evses"][0]["connectors"][0]
    assert (conn["standard"], conn["power_type"], conn["max_amperage"], conn["max_voltage"]) == \
        ("IEC_62196_T2", "AC_3_PHASE", 16, 230)
    assert loc["coordinates"] == {"latitude": "52.52000", "longitude": "13.40500"}
    h = put[0].headers
    assert (h["ocpi-from-country-code"], h["ocpi-from-party-id"], h["ocpi-to-party-id"]) == ("DE", "EVC", "EMS")


@pytest_twisted.ensureDeferred
async def test_each_status_change_is_patched_at_evse_level(rig):
    s1, s2 = await _site(rig)
    s1.plug()
    await wait_for(lambda: _patches(rig, "s1") == ["CHARGING"], 5, "s1 CHARGING")
    s2.set(vehicle="fault", fault="RCD tripped")
    await wait_for(lambda: _patches(rig, "s2") == ["OUTOFORDER"], 5, "s2 OUTOFORDER")
    s2.set(online=False)
    await wait_for(lambda: _patches(rig, "s2") == ["OUTOFORDER", "UNKNOWN"], 5, "s2 UNKNOWN")
    s1.unplug()
    await wait_for(lambda: _patches(rig, "s1") == ["CHARGING", "AVAILABLE"], 5, "s1 AVAILABLE")
    for r in rig.emsp.requests("PATCH", "/ocpi/2.2.1/locations"):
        assert errors_of("EVSE", r.body, "2.2.1", partial=True) == []
        assert set(r.body) == {"status", "last_updated"}
    assert len(rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")) == 1     # a PATCH never cascades: no re-PUT


@pytest_twisted.ensureDeferred
async def test_the_same_status_is_not_patched_twice(rig):
    s1, _ = await _site(rig)
    s1.plug()
    s1.charge(16.0, 100)
    s1.charge(16.0, 200)
    await wait_for(lambda: _patches(rig, "s1"), 5, "a PATCH")
    await rig.delivered()
    assert _patches(rig, "s1") == ["CHARGING"]


@pytest_twisted.ensureDeferred
async def test_a_new_charger_puts_the_location_again(rig):
    await _site(rig)
    await rig.site.charger("s3")
    await wait_for(lambda: len(rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")) == 2, 5, "a second PUT")
    assert [e["uid"] for e in rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")[-1].body["evses"]] == \
        ["s1", "s2", "s3"]


@pytest_twisted.ensureDeferred
async def test_restart_does_not_put_an_unchanged_location_again(rig):
    await _site(rig)
    await rig.stop_front()
    await rig.start_front()
    await rig.delivered()
    assert len(rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")) == 1


@pytest_twisted.ensureDeferred
async def test_the_emsp_gets_the_location_its_evses_and_connectors(rig):
    await _site(rig)
    code, hdrs, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations")
    assert code == 200 and doc["status_code"] == 1000 and len(doc["data"]) == 1
    assert hdrs["x-total-count"] == "1" and hdrs["x-limit"] == "50" and "link" not in hdrs
    assert hdrs["ocpi-from-party-id"] == "EVC" and hdrs["ocpi-to-party-id"] == "EMS"
    assert errors_of("Location", doc["data"][0], "2.2.1") == []
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations/SITE1/s2")
    assert code == 200 and doc["data"]["uid"] == "s2" and errors_of("EVSE", doc["data"], "2.2.1") == []
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations/SITE1/s2/1")
    assert code == 200 and doc["data"]["id"] == "1"


@pytest_twisted.ensureDeferred
async def test_pagination_of_the_location_list(rig):
    await _site(rig)
    code, hdrs, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations?offset=0&limit=0")
    assert code == 200 and doc["data"] == [] and hdrs["x-total-count"] == "1" and hdrs["x-limit"] == "0"
    code, hdrs, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations?date_from=2100-01-01T00:00:00Z")
    assert code == 200 and doc["data"] == [] and hdrs["x-total-count"] == "0"
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations?limit=abc")
    assert code == 400 and doc["status_code"] == 2001


@pytest.mark.parametrize("path", ["NOPE", "SITE1/s9", "SITE1/s1/2"])
@pytest_twisted.ensureDeferred
async def test_unknown_location_evse_or_connector_is_2003(rig, path):
    await _site(rig)
    code, _, doc = await rig.emsp.call_evc("GET", f"{rig.evc}/2.2.1/locations/{path}")
    assert code == 404 and doc["status_code"] == 2003


@pytest_twisted.ensureDeferred
async def test_the_location_in_2_1_1(etcd_session, etcd_root):
    rig = Rig(etcd_session.url, etcd_root, versions=("2.1.1",))
    try:
        await rig.site.charger("s1")
        await rig.start_front()
        await rig.registered()
        await wait_for(lambda: rig.emsp.requests("PUT", "/ocpi/2.1.1/locations"), 5, "the Location PUT")
        loc = rig.emsp.requests("PUT", "/ocpi/2.1.1/locations/DE/EVC/SITE1")[0].body
        assert errors_of("Location", loc, "2.1.1") == []
        assert loc["type"] == "PARKING_LOT" and "country_code" not in loc
        assert loc["evses"][0]["connectors"][0]["amperage"] == 16
        rig.site.chargers["s1"].plug()
        await wait_for(lambda: rig.emsp.requests("PATCH", "/ocpi/2.1.1/locations/DE/EVC/SITE1/s1"), 5, "PATCH")
        patch = rig.emsp.requests("PATCH", "/ocpi/2.1.1/locations/DE/EVC/SITE1/s1")[0]
        assert "ocpi-from-party-id" not in patch.headers
        assert patch.header("authorization") == f"Token {rig.emsp.token_c}"
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_connector_settings_override_the_defaults(rig):
    s1 = await rig.site.charger("s1")
    s1.config = dataclasses.replace(s1.config, phases=1, A_max=32)
    await rig.start_front(connectors={"s1": {"standard": "IEC_62196_T2_COMBO", "format": "CABLE"}},
                          evse_ids={"s1": "DE*EVC*E0001"})
    await rig.registered()
    await wait_for(lambda: rig.emsp.requests("PUT", "/ocpi/2.2.1/locations"), 5, "the Location PUT")
    evse = rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")[0].body["evses"][0]
    assert evse["evse_id"] == "DE*EVC*E0001"
    c = evse["connectors"][0]
    assert (c["standard"], c["format"], c["power_type"], c["max_amperage"]) == \
        ("IEC_62196_T2_COMBO", "CABLE", "AC_1_PHASE", 32)


@pytest_twisted.ensureDeferred
async def test_a_restarted_charger_does_not_flap_and_a_removed_one_is_removed(rig):
    s1, s2 = await _site(rig)
    rig.front.detach_grace_s = 0.3
    events = rig.site.events
    events.publish(("instance", "charger", "s2"), ("stopped", s2))        # a config change: stopped, started
    s2b = await rig.site.charger("s2")
    assert s2b is not s2
    await rig.delivered()
    assert _patches(rig, "s2") == [] and len(rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")) == 1
    del rig.site.chargers["s2"]
    events.publish(("instance", "charger", "s2"), ("stopped", s2b))       # removed for good
    await wait_for(lambda: _patches(rig, "s2") == ["REMOVED"], 5, "s2 REMOVED")
    await wait_for(lambda: len(rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")) == 2, 5, "the Location again")
    assert [e["uid"] for e in rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")[-1].body["evses"]] == ["s1"]
