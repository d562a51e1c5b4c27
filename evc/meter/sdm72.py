"""meter/SDM72: Eastron SDM72D-M; v2 reads like the SDM630, v1 (power and energy only) is detected by its 02."""
from __future__ import annotations

import dataclasses

from evc.meter.eastron import EastronConfig, EastronMeter, ReadPlan, three_phase_fields
from evc.registry import METERS


@dataclasses.dataclass(frozen=True)
class Sdm72Config(EastronConfig):
    """schema/meter/SDM72.json"""
    # field reports of SDM72s rebooting on back-to-back reads: a longer pause than the SDM630's
    gap_ms: int = 200


@METERS.register("SDM72")
class Sdm72(EastronMeter):
    Config = Sdm72Config
    PHASES = 3
    FIELDS = three_phase_fields()
    PLANS = (
        ReadPlan("block", ((0x0000, 76),)),
        ReadPlan("split", ((0x0000, 18), (0x0034, 2), (0x0046, 4))),
        # v1 has no voltage, current or per-phase power registers: it answers 02 to the split's first read
        ReadPlan("v1 (total power and energy only)", ((0x0034, 2), (0x0048, 2))),
    )
