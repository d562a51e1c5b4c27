"""Reader configs: the schema's defaults per type, and errors that name the leaf."""
import pytest

from evc.errors import ConfigError
from evc.reader.line import LineReader
from evc.reader.pn532 import Pn532Reader
from evc.reader.quio import QuioReader
from evc.reader.rdm6300 import Rdm6300Reader
from evc.registry import READERS
from evc.schema import Catalog


def test_the_four_types_are_registered():
    assert READERS.names() == ["PN532", "QUIO", "RDM6300", "line"]


@pytest.mark.parametrize("type_name, baud", [("RDM6300", 9600), ("PN532", 115200), ("line", 9600)])
def test_each_serial_type_has_its_usual_baud_and_the_shared_defaults(type_name, baud):
    doc = Catalog().validate("reader", type_name, {"remote": "192.168.1.31:4001", "charger": "s1"})
    cfg = READERS.lookup(type_name).build_config(doc)
    assert cfg.baud == baud and cfg.uid_format == "hex" and cfg.hold_s == 60 and cfg.charger == "s1"


def test_quio_defaults():
    cfg = QuioReader.build_config(Catalog().validate("reader", "QUIO", {"conn": "s123", "chargers": "*"}))
    assert (cfg.bus_addr, cfg.register_base, cfg.chargers) == (1, 0, "*")


@pytest.mark.parametrize("doc, message", [
    ({"local": "/dev/x"}, "config/charger or config/chargers"),
    ({"local": "/dev/x", "charger": "s1", "chargers": "*"}, "give only one of charger, chargers"),
    ({"charger": "s1"}, "config/remote"),
    ({"local": "/dev/x", "charger": "s1", "uid_format": "octal"}, "config/uid_format"),
    ({"remote": "nohostport", "charger": "s1"}, "config/remote"),
    ({"local": "/dev/x", "charger": "s1", "hold_s": -1}, "config/hold_s"),
])
def test_bad_configs_name_the_leaf(doc, message):
    with pytest.raises(ConfigError, match=message):
        Catalog().validate("reader", "RDM6300", doc)


def test_the_dataclasses_check_what_the_schema_cannot():
    with pytest.raises(ConfigError, match="config/chargers"):
        Rdm6300Reader.Config(local="/dev/x", charger="s1", chargers=["s2"])
    with pytest.raises(ConfigError, match="config/line_format"):
        LineReader.Config(local="/dev/x", charger="s1", line_format="octal")
    with pytest.raises(ConfigError, match="config/poll_s"):
        Pn532Reader.Config(local="/dev/x", charger="s1", poll_s=0)
    with pytest.raises(ConfigError, match="config/bus_addr"):
        QuioReader.Config(conn="c", charger="s1", bus_addr=0)


def test_chargers_are_references_so_a_dangling_name_is_reported():
    refs = Catalog().references("reader", "RDM6300")
    assert refs["charger"] == "charger" and refs["chargers"] == "charger"
    assert Catalog().references("reader", "QUIO")["conn"] == "conn"


def test_the_seeds_old_placeholder_type_is_unknown_and_the_error_lists_the_real_ones():
    with pytest.raises(ConfigError, match=r"unknown reader type 'serial' \(known: PN532, QUIO, RDM6300, line\)"):
        Catalog().lookup("reader", "serial")
