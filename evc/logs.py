"""Machine-readable logging: one JSON object per line (`--log-format json`)."""
from __future__ import annotations

from typing import IO

from twisted.logger import globalLogPublisher, jsonFileLogObserver


def start_json_logging(out: IO[str]):
    """Add a JSON observer for every log event; returns it (for removeObserver)."""
    observer = jsonFileLogObserver(out)
    globalLogPublisher.addObserver(observer)
    return observer
