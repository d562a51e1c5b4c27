"""front/ocpp under the real supervisor: config leaves as people write them, errors naming the leaf, state in etcd."""
from __future__ import annotations

import dataclasses
import json

import pytest
import pytest_twisted
from zope.interface import implementer

from evc.charger.base import ChargerStatus, ICharger
from evc.instance import Instance
from evc.front.ocpp import OcppFront, OcppFrontConfig
from evc.errors import ConfigError
from evc.schema import Catalog, schema_dir
from evc.store.memory import MemoryStore
from evc.testing import wait_for
from front_helpers import Upstream

ROOT = "/evc/sup"


@implementer(ICharger)
class SupervisedCharger(Instance):
    Config = dataclasses.make_dataclass("ChargerConfig", [("A_max", float, 16)], frozen=True)

    def __init__(self, ctx, config):
        super().__init__(ctx, config)
        self.status = ChargerStatus(vehicle="none", online=True)

    def wants_current(self):
        return False

    def subscribe(self, callback):
        return lambda: None

    def apply(self, current_A):
        return None


@pytest.fixture
def supervised(tmp_path):
    from twisted.internet import reactor
    from evc.registry import Registry
    from evc.state import StateWriter
    from evc.supervisor import Supervisor

    regs = {k: Registry(k) for k in ("charger", "front")}
    regs["charger"].register("fakecharger")(SupervisedCharger)
    regs["front"]._types["ocpp"] = OcppFront                # the real one, without re-registering it
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd" / "root.json").write_text("{}")
    (tmp_path / "charger").mkdir()
    (tmp_path / "charger" / "fakecharger.json").write_text(json.dumps({
        "type": "object", "additionalProperties": False, "description": "a test type",
        "properties": {"A_max": {"type": "number", "description": "a"}}}))
    (tmp_path / "front").mkdir()
    (tmp_path / "front" / "ocpp.json").write_text((schema_dir() / "front" / "ocpp.json").read_text())
    store = MemoryStore()
    state = StateWriter(store, ROOT, reactor, tick_s=0.05)
    sup = Supervisor(store, ROOT, state, reactor, reactor, catalog=Catalog(registries=regs, directory=tmp_path))
    put = lambda key, value: store.put(f"{ROOT}/{key}", value.encode())    # noqa: E731
    state.startService()
    sup.startService()
    yield sup, store, put
    sup.stopService()
    state.stopService()


def _leaf(store, key):
    kvs = store.range(f"{ROOT}/{key}").result.kvs
    return kvs[0].value.decode() if kvs else None


@pytest_twisted.ensureDeferred
async def test_configured_with_etcd_leaves_it_connects_and_reports_in_state(supervised, tmp_path):
    sup, store, put = supervised
    upstream = Upstream(tmp_path)
    await upstream.start()
    try:
        put("charger/s1/type", "fakecharger")
        put("charger/s2/type", "fakecharger")
        put("front/up/type", "ocpp")
        put("front/up/config/url", upstream.url)
        put("front/up/config/chargers", '["s1"]')
        put("front/up/config/heartbeat_s", "60")
        await wait_for(lambda: _leaf(store, "front/up/state/s1/connection") == "accepted", 10, "s1 accepted")
        assert _leaf(store, "front/up/state/s2/connection") is None       # not covered
        assert _leaf(store, "front/up/state/s1/outbox") == "0"
        assert {c["cp"] for c in upstream.calls("BootNotification")} == {"s1"}
    finally:
        await sup.stopService()
        upstream.kill()


@pytest.mark.parametrize("leaf, value, message", [
    ("url", "http://backend/ocpp", "config/url"),
    ("identity", "SITE1", "config/identity: must contain {name}"),
    ("offline_auth", "maybe", "config/offline_auth"),
    ("ca_file", "/etc/ca.pem", "config/ca_file"),
])
def test_a_bad_setting_is_reported_naming_its_leaf(supervised, leaf, value, message):
    from twisted.internet import reactor
    sup, store, put = supervised
    put(f"front/up/config/{leaf}", value)
    if leaf != "url":
        put("front/up/config/url", "ws://backend/ocpp")
    put("front/up/type", "ocpp")
    reactor.runUntilCurrent()
    assert ("front", "up") not in sup.instances
    assert message in sup.errors.get(("front", "up"), "")


@pytest.mark.parametrize("settings, leaf", [
    ({"url": "ftp://x"}, "config/url"),
    ({"url": "ws://x", "identity": "{id}"}, "config/identity"),
    ({"url": "ws://x", "authorize": "never"}, "config/authorize"),
    ({"url": "ws://x", "free_id_tag": "x" * 21}, "config/free_id_tag"),
    ({"url": "ws://x", "reconnect_min_s": 10, "reconnect_max_s": 1}, "config/reconnect_max_s"),
])
def test_config_errors_name_the_leaf(settings, leaf):
    with pytest.raises(ConfigError, match=leaf):
        OcppFrontConfig(**settings)


def test_schema_and_config_agree_and_validated_defaults_build_a_config():
    doc = Catalog().validate("front", "ocpp", {"url": "wss://csms.example/ocpp", "chargers": ["s1", "s2"]})
    config = OcppFront.build_config(doc)
    assert config.chargers == ("s1", "s2") and config.offline_auth == "local" and config.heartbeat_s == 300
    fields = {f.name for f in dataclasses.fields(OcppFrontConfig)}
    props = set(json.loads((schema_dir() / "front" / "ocpp.json").read_text())["properties"])
    assert props == fields


def test_the_password_never_shows_in_the_config_repr():
    assert "s3cret" not in repr(OcppFrontConfig(url="ws://x", password="s3cret-s3cret-s3cret"))
