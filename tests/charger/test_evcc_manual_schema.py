"""schema/charger/EVCC_manual.json and the charger's Config agree: defaults, refusals that name the leaf, the seed."""
import dataclasses

import pytest

from evc.charger.evcc_manual import EvccManual, EvccManualConfig
from evc.errors import ConfigError
from evc.registry import CHARGERS
from evc.schema import Catalog


@pytest.fixture(scope="module")
def catalog():
    return Catalog()


def test_evcc_manual_is_registered():
    assert CHARGERS.lookup("EVCC_manual") is EvccManual


def test_the_seeds_charger_loads_with_defaults(catalog):
    doc = catalog.validate("charger", "EVCC_manual",
                           {"meter": "m1", "conn": "s123", "conn_port": 1, "mode": "OFF", "A_max": 32})
    assert doc == {"meter": "m1", "conn": "s123", "conn_port": 1, "mode": "OFF", "A_max": 32, "auth": "none",
                   "phases": 3, "priority": 0, "interval_s": 1.0}
    cfg = EvccManual.build_config(doc)
    assert cfg.phase_map == ("L1", "L2", "L3") and cfg.mode == "OFF"
    assert catalog.references("charger", "EVCC_manual") == {"conn": "conn", "meter": "meter"}


def test_every_schema_property_is_a_config_field(catalog):
    props = set(catalog.type_schema("charger", "EVCC_manual")["properties"])
    assert props == {f.name for f in dataclasses.fields(EvccManualConfig)}


def test_a_single_phase_charger_on_L2(catalog):
    doc = catalog.validate("charger", "EVCC_manual", {"conn": "c", "A_max": 16, "phases": 1, "phase_map": ["L2"]})
    assert EvccManual.build_config(doc).phase_map == ("L2",)


@pytest.mark.parametrize("doc, message", [
    ({"conn": "c"}, r"^config/A_max: missing \(required\)$"),
    ({"A_max": 16}, r"^config/conn: missing \(required\)$"),
    ({"conn": "c", "A_max": 5}, r"^config/A_max: 5 is less than the minimum of 6$"),
    ({"conn": "c", "A_max": 16, "conn_port": 248}, r"^config/conn_port: 248 is greater than the maximum of 247$"),
    ({"conn": "c", "A_max": 16, "mode": "AUTO"}, r"^config/mode: 'AUTO' is not one of \['OFF', 'ON'\]$"),
    ({"conn": "c", "A_max": 16, "auth": "rfid"}, r"^config/auth: 'rfid' is not one of"),
    ({"conn": "c", "A_max": 16, "phases": 2}, r"^config/phases: 2 is not one of \[1, 3\]$"),
    ({"conn": "c", "A_max": 16, "phase_map": ["L1"]}, r"^config/phase_map: \['L1'\] is too short$"),
    ({"conn": "c", "A_max": 16, "phases": 1, "phase_map": ["L1", "L2"]}, r"^config/phase_map: .* is too long$"),
    ({"conn": "c", "A_max": 16, "phase_map": ["L1", "L1", "L2"]}, r"^config/phase_map: .* has non-unique"),
    ({"conn": "c", "A_max": 16, "current": 10}, r"^config/current: not a known setting$"),
])
def test_bad_config_is_refused_naming_the_leaf(catalog, doc, message):
    with pytest.raises(ConfigError, match=message):
        catalog.validate("charger", "EVCC_manual", doc)
