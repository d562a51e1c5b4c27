"""Charger tests share the RS485 helpers of tests/conn (a Context, a recording state sink, in-memory buses)."""
import sys
from pathlib import Path

_CONN_TESTS = str(Path(__file__).resolve().parent.parent / "conn")
if _CONN_TESTS not in sys.path:
    sys.path.insert(0, _CONN_TESTS)
