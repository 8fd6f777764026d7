"""The legs of `skoracle run`, one object per leg (harness.legs.base.Leg), in the order
they run. Each reads the typed options of harness.legs.context, never the command line;
harness.run builds those options and drives the legs."""

from __future__ import annotations

from harness.legs.base import Leg, Missing
from harness.legs.board import BoardLeg
from harness.legs.context import (
    BoardOptions,
    FootprintOptions,
    GateOptions,
    JvmOptions,
    LegContext,
    RunOptions,
)
from harness.legs.fixtures import FixturesLeg
from harness.legs.footprint import FootprintLeg
from harness.legs.gate import GateLeg
from harness.legs.jvm import JvmLeg
from harness.legs.kernels import KernelsLeg
from harness.legs.oracle import OracleLeg

#: Every leg by name, in the order `run` runs them.
LEGS: dict[str, Leg] = {leg.name: leg for leg in (
    OracleLeg(), KernelsLeg(), FixturesLeg(), FootprintLeg(), GateLeg(), BoardLeg(), JvmLeg())}

__all__ = ["LEGS", "BoardOptions", "FootprintOptions", "GateOptions", "JvmOptions", "Leg",
           "LegContext", "Missing", "RunOptions"]
