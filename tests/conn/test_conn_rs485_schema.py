"""schema/conn/rs485.json and the conn's Config agree: defaults, refusals that name the leaf, the seed's example."""
import pytest

from evc.conn.rs485 import Rs485Config, Rs485Conn
from evc.errors import ConfigError
from evc.registry import CONNS
from evc.schema import Catalog


@pytest.fixture(scope="module")
def catalog():
    return Catalog()


def test_rs485_is_registered():
    assert CONNS.lookup("rs485") is Rs485Conn


def test_the_seeds_conn_loads_with_defaults(catalog):
    doc = catalog.validate("conn", "rs485", {"remote": "host2:50485", "local": "/dev/rs485-1"})
    assert doc == {"remote": "host2:50485", "local": "/dev/rs485-1", "baud": 9600, "parity": "N", "stopbits": 1,
                   "gap_ms": 100, "timeout_ms": 300}
    assert Rs485Conn.build_config(doc) == Rs485Config(local="/dev/rs485-1", remote="host2:50485")


def test_every_schema_property_is_a_config_field(catalog):
    import dataclasses
    props = set(catalog.type_schema("conn", "rs485")["properties"])
    assert props == {f.name for f in dataclasses.fields(Rs485Config)}


@pytest.mark.parametrize("doc, message", [
    ({}, r"^config/remote: missing \(required\)$"),
    ({"local": "/dev/x", "baud": 9601}, r"^config/baud: 9601 is not one of"),
    ({"local": "/dev/x", "parity": "M"}, r"^config/parity: 'M' is not one of"),
    ({"local": "/dev/x", "stopbits": 3}, r"^config/stopbits: 3 is not one of"),
    ({"remote": "host2"}, r"^config/remote: 'host2' does not match"),
    ({"local": "/dev/x", "speed": 9600}, r"^config/speed: not a known setting$"),
    ({"local": "/dev/x", "timeout_ms": 0}, r"^config/timeout_ms: 0 is less than the minimum of 10$"),
])
def test_bad_config_is_refused_naming_the_leaf(catalog, doc, message):
    with pytest.raises(ConfigError, match=message):
        catalog.validate("conn", "rs485", doc)
