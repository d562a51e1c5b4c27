"""The etcd tree <-> documents mapping (DESIGN §2)."""
import pytest

from evc.errors import ConfigError
from evc.tree import InstanceLeaves, Key, Mirror, decode_leaf, flatten, parse_key, unflatten

ROOT = "/evc/s1"
SCHEMA = {
    "type": "object",
    "properties": {
        "meter": {"type": "string"},
        "A_max": {"oneOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]},
        "mode": {"enum": ["OFF", "ON"]},
        "enabled": {"type": "boolean"},
        "name": {"type": ["string", "null"]},
        "limits": {"type": "object", "properties": {"L1": {"type": "number"}}},
    },
}


def test_parse_key_sections():
    assert parse_key(ROOT, "/evc/s1/charger/s1/type") == Key("charger", "s1", "type", ())
    assert parse_key(ROOT, "/evc/s1/charger/s1/config/A_max") == Key("charger", "s1", "config", ("A_max",))
    assert parse_key(ROOT, "/evc/s1/meter/m1/state/A/L1") == Key("meter", "m1", "state", ("A", "L1"))


@pytest.mark.parametrize("key", [
    "/evc/s2/charger/s1/type",          # another root
    "/evc/s1x/charger/s1/type",         # a root that merely starts with ours
    "/evc/s1/vehicle/v1/type",          # not a kind
    "/evc/s1/charger/s1/config",        # a section with no leaf
    "/evc/s1/charger/s1/type/extra",
    "/evc/s1/charger/s1/other/x",
    "/evc/s1/charger//type",
])
def test_parse_key_ignores_keys_outside_the_tree(key):
    assert parse_key(ROOT, key) is None


def test_string_leaves_hold_raw_text_or_a_json_quoted_string():
    assert decode_leaf("m1", {"type": "string"}, "config/meter") == "m1"
    assert decode_leaf('"m1"', {"type": "string"}, "config/meter") == "m1"
    assert decode_leaf("123", {"type": "string"}, "config/meter") == "123"


def test_number_boolean_array_leaves_hold_json():
    assert decode_leaf("16", SCHEMA["properties"]["A_max"], "config/A_max") == 16
    assert decode_leaf("[16, 16, 10]", SCHEMA["properties"]["A_max"], "config/A_max") == [16, 16, 10]
    assert decode_leaf("true", {"type": "boolean"}, "config/enabled") is True


def test_a_number_leaf_that_is_not_json_names_the_leaf():
    with pytest.raises(ConfigError, match=r"config/A_max: 'sixteen' is not a valid"):
        decode_leaf("sixteen", {"type": "number"}, "config/A_max")


def test_enum_of_strings_is_a_string_leaf():
    assert decode_leaf("OFF", SCHEMA["properties"]["mode"], "config/mode") == "OFF"


def test_document_nests_leaves_and_decodes_each_by_its_schema():
    leaves = InstanceLeaves("charger", "s1", "EVCC_manual", {
        ("meter",): "m1", ("A_max",): "32", ("limits", "L1"): "10", ("enabled",): "false"})
    assert leaves.document(SCHEMA) == {"meter": "m1", "A_max": 32, "limits": {"L1": 10}, "enabled": False}


def test_seed_form_config_type_selects_the_type_and_is_dropped_from_the_document():
    leaves = InstanceLeaves("meter", "m1", None, {("type",): "SDM630", ("meter",): "x"})
    assert leaves.type_name() == "SDM630"
    assert leaves.document(SCHEMA) == {"meter": "x"}


def test_type_leaf_wins_over_config_type():
    assert InstanceLeaves("meter", "m1", "SDM120", {("type",): "SDM630"}).type_name() == "SDM120"


def test_missing_type_is_an_error_that_says_where_to_write_it():
    with pytest.raises(ConfigError, match=r"^type: missing .*meter/m1/type"):
        InstanceLeaves("meter", "m1", None, {("bus",): "h:1"}).type_name()


def test_token_kind_needs_no_type():
    assert InstanceLeaves("token", "04A2B3", None, {("status",): "Accepted"}).type_name() == "token"


def test_mirror_reports_only_config_changes():
    m = Mirror(ROOT)
    assert m.apply("/evc/s1/meter/m1/type", b"SDM630") == ("meter", "m1")
    assert m.apply("/evc/s1/meter/m1/type", b"SDM630") is None          # same value: no change
    assert m.apply("/evc/s1/meter/m1/state/W", b"100") is None          # state is EVC's own
    assert m.apply("/evc/s1/meter/m1/data/x", b"1") is None
    assert m.apply("/evc/s1/meter/m1/config/bus_addr", b"2") == ("meter", "m1")
    assert m.apply("/evc/s1/meter/m1/config/bus_addr", None) == ("meter", "m1")
    assert m.apply("/evc/s1/meter/m1/type", None) == ("meter", "m1")
    assert ("meter", "m1") not in m.instances                            # no leaves left: gone


def test_flatten_and_unflatten_round_trip():
    doc = {"charger": {"s1": {"type": "EVCC_manual",
                              "config": {"meter": "m1", "A_max": 32, "phase_map": ["L1", "L2", "L3"],
                                         "limits": {"L1": 10}}}}}
    keys = flatten(doc, ROOT)
    assert keys == {
        "/evc/s1/charger/s1/type": "EVCC_manual",
        "/evc/s1/charger/s1/config/meter": "m1",
        "/evc/s1/charger/s1/config/A_max": "32",
        "/evc/s1/charger/s1/config/phase_map": '["L1","L2","L3"]',
        "/evc/s1/charger/s1/config/limits/L1": "10",
    }
    assert unflatten([(k, v.encode()) for k, v in keys.items()], ROOT) == doc


@pytest.mark.parametrize("doc, message", [
    ({"vehicle": {}}, r"^vehicle: not a kind"),
    ({"meter": {"m1": {"type": "SDM630", "state": {}}}}, r"^meter/m1/state: only `type` and `config`"),
    ({"meter": {"m1": {"type": 5}}}, r"^meter/m1/type: must be a string"),
    ({"meter": {"m1": {"config": {"a/b": 1}}}}, r"config/a/b: a setting name may not"),
    ([1, 2], r"mapping of kinds"),
])
def test_flatten_rejects_bad_documents_naming_the_path(doc, message):
    with pytest.raises(ConfigError, match=message):
        flatten(doc, ROOT)
