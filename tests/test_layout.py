"""DESIGN §3: each type's code is found by its type string, and the tests mirror the code's folders."""
import importlib
from pathlib import Path

from evc.registry import KINDS, REGISTRIES

REPO = Path(__file__).resolve().parent.parent


def test_every_registered_type_lives_in_a_module_named_after_its_type_string():
    """`<kind>/<type>` is implemented in evc/<kind>/<type>.py or the package evc/<kind>/<type>/."""
    for kind in KINDS:
        for type_name in REGISTRIES[kind].names():
            cls = REGISTRIES[kind].lookup(type_name)
            expected = f"evc.{kind}.{type_name.lower()}"
            assert cls.__module__ == expected or cls.__module__.startswith(expected + "."), \
                f"{kind}/{type_name} is implemented in {cls.__module__}, expected {expected}"
            importlib.import_module(expected)  # the type string alone finds the code


def test_tests_mirror_the_code_folders():
    """Every type with tests has them under tests/<kind>/ (no folder named after a protocol side)."""
    for kind in KINDS:
        if REGISTRIES[kind].names():
            assert (REPO / "tests" / kind).is_dir(), f"tests/{kind}/ is missing"
    for old in ("ocpp_front", "ocpp_cs"):
        assert not (REPO / "tests" / old).exists(), f"tests/{old}/ should have moved to tests/<kind>/"
