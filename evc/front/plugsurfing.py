"""front/plugsurfing: front/ocpi (evc/front/ocpi/) with Plugsurfing's conventions as defaults (docs/ocpi.md)."""
from __future__ import annotations

import dataclasses

from evc.front.ocpi.front import OcpiFront, OcpiFrontConfig
from evc.registry import FRONTS


@dataclasses.dataclass(frozen=True)
class PlugsurfingConfig(OcpiFrontConfig):
    """schema/front/plugsurfing.json describes every field."""
    # Plugsurfing lets its eMSPs answer real-time authorization within 3 s: a little above it, then the whitelist.
    authorize_timeout_s: float = 3.5


@FRONTS.register("plugsurfing")
class PlugsurfingFront(OcpiFront):
    """front/plugsurfing: the same CPO as front/ocpi; only its defaults differ."""
    Config = PlugsurfingConfig


__all__ = ["PlugsurfingFront", "PlugsurfingConfig"]
