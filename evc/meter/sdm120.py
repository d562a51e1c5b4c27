"""meter/SDM120: Eastron SDM120, single phase (L1), read in one 74-register block (fallback: two reads)."""
from __future__ import annotations

import dataclasses

from evc.meter.eastron import EastronConfig, EastronMeter, ReadPlan
from evc.registry import METERS


@dataclasses.dataclass(frozen=True)
class Sdm120Config(EastronConfig):
    """schema/meter/SDM120.json"""


@METERS.register("SDM120")
class Sdm120(EastronMeter):
    Config = Sdm120Config
    PHASES = 1
    FIELDS = {0x0000: ("V", 0), 0x0006: ("A", 0), 0x000C: ("W", 0), 0x0046: ("frequency_Hz", 0),
              0x0048: ("energy_kWh", 0)}
    PLANS = (
        ReadPlan("block", ((0x0000, 74),)),
        ReadPlan("split", ((0x0000, 14), (0x0046, 4))),
    )
