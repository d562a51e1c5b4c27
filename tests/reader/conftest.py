"""Reader tests import their helpers (reader_helpers, reader_site) from this folder."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
