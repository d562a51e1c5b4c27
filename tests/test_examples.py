"""examples/: every site document validates offline with the real schemas (planned types allowed, as warnings)."""
import glob
import os

import pytest

from evc import cli
from evc.registry import PLANNED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*.yaml")) + glob.glob(os.path.join(REPO, "examples", "*.json")))


def test_there_are_examples():
    assert any(p.endswith("seed-site.yaml") for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_validates(path):
    leaves, report = cli.check_site(cli.read_site_file(path))
    assert report.errors == [], "\n".join(report.errors)
    assert leaves
    for warning in report.warnings:
        # The only thing an example may be warned about is a type that is planned but not available yet.
        assert "is not available yet" in warning, warning


def test_seed_example_is_the_seed_tree_as_written():
    """DESIGN §2: the seed's instances, types and settings, with the meter's type in config/type."""
    leaves, _ = cli.check_site(cli.read_site_file(os.path.join(REPO, "examples", "seed-site.yaml")))
    assert {k: v for k, v in leaves.items() if k.startswith("charger/s1/")} == {
        "charger/s1/type": "EVCC_manual", "charger/s1/config/meter": "m1", "charger/s1/config/conn": "s123",
        "charger/s1/config/conn_port": "1", "charger/s1/config/mode": "OFF", "charger/s1/config/A_max": "32"}
    assert "meter/m1/type" not in leaves
    assert leaves["meter/m1/config/type"] == "SDM630"
    assert leaves["meter/m1/config/bus"] == "127.0.0.1:15020" and leaves["meter/m1/config/bus_addr"] == "1"
    assert leaves["control/master/type"] == "builtin"
    assert leaves["conn/s123/type"] == "rs485" and leaves["conn/s123/config/remote"] == "127.0.0.1:15485"
    assert leaves["reader/r1/config/charger"] == "s1" and leaves["reader/r1/type"] in PLANNED["reader"] | {"serial"}
    assert leaves["front/plugsurfing/type"] == "plugsurfing" and leaves["front/plugsurfing/config/chargers"] == "*"
    assert leaves["front/local/type"] == "manual" and leaves["front/local/config/chargers"] == "*"
