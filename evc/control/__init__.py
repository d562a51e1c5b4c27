"""Control: the builtin allocation of the site's current (a pure function); the loop around it comes later."""
from evc.control.allocation import (
    IEC_MIN_A, PHASES, Allocation, ChargerInput, Inputs, MeterReading, PerPhase, Result, SiteLimits,
    allocate, per_phase,
)

__all__ = [
    "IEC_MIN_A", "PHASES", "Allocation", "ChargerInput", "Inputs", "MeterReading", "PerPhase", "Result",
    "SiteLimits", "allocate", "per_phase",
]
