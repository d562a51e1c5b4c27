"""front/plugsurfing: front/ocpi with Plugsurfing's defaults; and the config checks both types share."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from evc.errors import ConfigError
from evc.front.ocpi import OcpiCpoFront
from evc.front.plugsurfing import PlugsurfingFront
from ocpi_rig import CATALOG, LOCATION, Rig, wait_for


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


def _config(cls, type_name, **doc):
    base = {"country_code": "DE", "party_id": "EVC", "public_url": "https://ocpi.site.example", "location": LOCATION}
    base.update(doc)
    return cls.build_config(CATALOG.validate("front", type_name, {k: v for k, v in base.items() if v is not None}))


def test_plugsurfings_defaults():
    cfg = _config(PlugsurfingFront, "plugsurfing")
    assert cfg.authorize_timeout_s == 3.5 and cfg.version == "2.2.1"
    assert _config(OcpiCpoFront, "ocpi").authorize_timeout_s == 5


@pytest.mark.parametrize("missing", ["country_code", "party_id", "public_url", "location"])
def test_a_front_without_its_party_or_location_names_the_missing_leaf(missing):
    """The seed names front/plugsurfing with only `chargers`: it loads, and the front says what it lacks."""
    with pytest.raises(ConfigError, match=f"config/{missing}: missing"):
        _config(PlugsurfingFront, "plugsurfing", **{missing: None})


@pytest.mark.parametrize("doc,leaf", [
    ({"party_id": "EVCX"}, "config/party_id"), ({"country_code": "deu"}, "config/country_code"),
    ({"token_a": "abc"}, "config/versions_url"), ({"versions_url": "https://x/versions"}, "config/token_a"),
    ({"connectors": {"s1": {"standard": "SCHUKO"}}}, "config/connectors/s1/standard"),
    ({"version": "2.0"}, "config/version"), ({"incoming_token_a": "short"}, "config/incoming_token_a"),
    ({"location": {**LOCATION, "opening_times": {"regular_hours": [{"weekday": 8, "period_begin": "08:00",
                                                                    "period_end": "18:00"}]}}},
     "config/location/opening_times"),
])
def test_bad_settings_are_refused_naming_the_leaf(doc, leaf):
    with pytest.raises(ConfigError, match=leaf):
        _config(OcpiCpoFront, "ocpi", **doc)


@pytest_twisted.ensureDeferred
async def test_plugsurfing_registers_and_puts_the_location_before_any_session(rig):
    await rig.site.charger("s1")
    front = await rig.start_front(type_name="plugsurfing")
    assert front.type_name == "plugsurfing"
    await rig.registered()
    await wait_for(lambda: rig.emsp.requests("PUT", "/ocpi/2.2.1/locations"), 5, "the Location PUT")
    assert rig.emsp.requests("PUT", "/ocpi/2.2.1/locations")[0].body["evses"][0]["uid"] == "s1"


@pytest_twisted.ensureDeferred
async def test_the_seeds_front_plugsurfing_is_reported_not_started(etcd_session, etcd_root):
    """Under the supervisor: front/plugsurfing with only `chargers` loads; state/error says what is missing."""
    from twisted.internet import reactor

    from evc.state import StateWriter
    from evc.store.etcd import EtcdStore
    from evc.supervisor import Supervisor
    store = EtcdStore(etcd_session.url, reactor)
    await store.put(f"{etcd_root}/front/plugsurfing/type", b"plugsurfing")
    await store.put(f"{etcd_root}/front/plugsurfing/config/chargers", b'"*"')
    state = StateWriter(store, etcd_root, reactor, tick_s=0.05)
    sup = Supervisor(store, etcd_root, state, reactor, reactor=reactor)
    state.startService()
    sup.startService()
    try:
        await sup.ready

        async def error():
            r = await store.range(f"{etcd_root}/front/plugsurfing/state/error")
            return r.kvs[0].value.decode() if r.kvs else None

        text = await wait_for(error, 5, "front/plugsurfing's state/error")
        assert text.startswith("config/country_code: missing") and "docs/ocpi.md" in text
    finally:
        await sup.stopService()
        await state.stopService()
        await store.close()
