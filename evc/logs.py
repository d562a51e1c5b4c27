"""Machine-readable logging: one JSON object per line (`--log-format json`)."""
from __future__ import annotations

from typing import IO

from twisted.logger import globalLogPublisher, jsonFileLogObserver


def start_json_logging(out: IO[str]) -> None:
    globalLogPublisher.addObserver(jsonFileLogObserver(out))
