"""Schemas: one file per registered type, commented, and errors that name the leaf."""
import json

import pytest
from jsonschema import Draft202012Validator

from evc.errors import ConfigError
from evc.registry import KINDS, REGISTRIES
from evc.schema import Catalog, schema_dir


def test_registry_keys_and_schema_files_match_one_to_one():
    files = Catalog().schema_files()
    registered = {kind: set(REGISTRIES[kind].names()) for kind in KINDS}
    for kind in KINDS:
        assert registered[kind] == files.get(kind, set()), f"kind {kind}: registry vs schema/{kind}/*.json"


def _all_schema_files():
    return sorted(p for p in schema_dir().glob("*/*.json"))


@pytest.mark.parametrize("path", _all_schema_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_schema_is_valid_and_every_property_is_described(path):
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema.get("description"), f"{path}: top-level description missing"

    def walk(node, where):
        for name, ps in (node.get("properties") or {}).items():
            assert ps.get("description"), f"{path}: {where}{name} has no description"
            walk(ps, f"{where}{name}/")
        for sub in ("items", "additionalProperties"):
            if isinstance(node.get(sub), dict):
                walk(node[sub], where)
        for sub in node.get("$defs", {}).values():
            walk(sub, where)

    walk(schema, "")


def test_root_schema_describes_every_kind():
    root = json.loads((schema_dir() / "etcd" / "root.json").read_text())
    assert set(root["properties"]) == set(KINDS)


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd" / "root.json").write_text("{}")
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "T.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "a test type",
        "type": "object", "additionalProperties": False, "required": ["bus_addr"],
        "properties": {
            "bus_addr": {"type": "integer", "minimum": 1, "maximum": 247, "description": "address"},
            "interval_s": {"type": "number", "default": 1.0, "description": "poll interval"},
            "meter": {"type": "string", "x-ref": "meter", "description": "a meter"},
            "chargers": {"type": "array", "items": {"type": "string", "x-ref": "charger"}, "description": "list"},
        }}))
    return Catalog(registries={}, directory=tmp_path)


def test_validate_applies_defaults(catalog):
    assert catalog.validate("thing", "T", {"bus_addr": 3}) == {"bus_addr": 3, "interval_s": 1.0}


@pytest.mark.parametrize("doc, message", [
    ({}, r"^config/bus_addr: missing \(required\)$"),
    ({"bus_addr": 300}, r"^config/bus_addr: 300 is greater than the maximum of 247$"),
    ({"bus_addr": "x"}, r"^config/bus_addr: 'x' is not of type 'integer'$"),
    ({"bus_addr": 1, "colour": "red"}, r"^config/colour: not a known setting$"),
])
def test_validation_errors_name_the_leaf(catalog, doc, message):
    with pytest.raises(ConfigError, match=message):
        catalog.validate("thing", "T", doc)


def test_references_come_from_x_ref(catalog):
    assert catalog.references("thing", "T") == {"meter": "meter", "chargers": "charger"}


def test_unknown_type_names_the_known_types():
    with pytest.raises(ConfigError, match=r"^type: unknown meter type 'SDM999' \(known: .*SDM630"):
        Catalog().lookup("meter", "SDM999")


def test_planned_type_is_reported_as_not_available_yet(monkeypatch):
    # Every type of the design is available today; a type the design names before it lands is reported so.
    from evc import registry
    monkeypatch.setitem(registry.PLANNED, "reader", {"holo"})
    with pytest.raises(ConfigError, match=r"^type: reader type 'holo' is not available yet"):
        Catalog().lookup("reader", "holo")


def test_the_old_placeholder_reader_type_is_an_unknown_type():
    known = r"\(known: PN532, QUIO, RDM6300, line\)$"
    with pytest.raises(ConfigError, match=r"^type: unknown reader type 'serial' " + known):
        Catalog().lookup("reader", "serial")


@pytest.mark.parametrize("doc, message", [
    ({"bus_addr": 1}, r"^config/bus or config/conn: one of them is required$"),
    ({"bus": "h:1", "conn": "c1", "bus_addr": 1}, r"^config/bus and config/conn: give only one of bus, conn$"),
])
def test_an_exclusive_choice_is_explained(doc, message):
    with pytest.raises(ConfigError, match=message):
        Catalog().validate("meter", "SDM630", doc)
