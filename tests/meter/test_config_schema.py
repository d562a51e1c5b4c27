"""Every meter type's Config dataclass and its schema/meter/<type>.json agree, and the seed's meter loads."""
import dataclasses
import json

import pytest

from evc.registry import METERS
from evc.schema import Catalog, schema_dir

TYPES = ["SDM630", "SDM120", "SDM72"]


def schema_of(type_name):
    return json.loads((schema_dir() / "meter" / f"{type_name}.json").read_text())


def test_every_meter_module_is_registered():
    assert set(TYPES) <= set(METERS.names())


@pytest.mark.parametrize("type_name", TYPES)
def test_schema_properties_are_the_config_fields(type_name):
    cls = METERS.lookup(type_name)
    schema = schema_of(type_name)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    assert set(schema["properties"]) == set(fields)
    assert schema["additionalProperties"] is False
    for name, ps in schema["properties"].items():
        assert ps.get("description"), name
        if "default" in ps:
            assert fields[name].default == ps["default"], name
    assert schema["properties"]["conn"]["x-ref"] == "conn"


@pytest.mark.parametrize("type_name", TYPES)
def test_defaults_from_the_schema_build_a_config(type_name):
    cls = METERS.lookup(type_name)
    doc = Catalog().validate("meter", type_name, {"bus": "127.0.0.1:5020"})
    cfg = cls.build_config(doc)
    assert cfg.bus_addr == 1 and cfg.interval_s == 1.0 and cfg.effective_stale_s == 5.0


def test_the_seeds_meter_validates_as_written():
    doc = Catalog().validate("meter", "SDM630", {"type": "SDM630", "bus": "host1:502", "bus_addr": 1})
    cfg = METERS.lookup("SDM630").build_config(doc)
    assert (cfg.bus, cfg.bus_addr, cfg.conn) == ("host1:502", 1, None)


@pytest.mark.parametrize("doc", [{}, {"bus": "h:502", "conn": "c"}, {"bus": "h:502", "bus_addr": 248},
                                 {"bus": "h:502", "colour": "red"}, {"conn": "c", "interval_s": 0}])
def test_the_schema_refuses(doc):
    from evc.errors import ConfigError
    with pytest.raises(ConfigError):
        Catalog().validate("meter", "SDM630", doc)


def test_sdm72_has_a_longer_default_gap():
    assert schema_of("SDM72")["properties"]["gap_ms"]["default"] == 200
    assert METERS.lookup("SDM72").Config(bus="h").gap_ms == 200
