"""meter/SDM630: Eastron SDM630 v2, three phases, read in one 76-register block (fallback: three reads)."""
from __future__ import annotations

import dataclasses

from evc.meter.eastron import EastronConfig, EastronMeter, ReadPlan, three_phase_fields
from evc.registry import METERS


@dataclasses.dataclass(frozen=True)
class Sdm630Config(EastronConfig):
    """schema/meter/SDM630.json"""


@METERS.register("SDM630")
class Sdm630(EastronMeter):
    Config = Sdm630Config
    PHASES = 3
    FIELDS = three_phase_fields()
    PLANS = (
        # 0x0000..0x004B: V, A, W, VA, var, PF per phase, totals, frequency, import, export
        ReadPlan("block", ((0x0000, 76),)),
        # if the meter refuses the undocumented gaps inside that span: only documented registers
        ReadPlan("split", ((0x0000, 18), (0x0034, 2), (0x0046, 4))),
    )
