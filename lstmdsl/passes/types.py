"""Types: the element type of every value and parameter, and the compute type of the GEMMs.

Today one element type serves a whole layer: float32 (f32) or float64 (f64). A float32 layer's GEMMs
compute in strict fp32 or, when the schedule says `precision tf32`, on the tensor cores with fp32
accumulation; a float64 layer computes in f64 throughout. The storage pass gives every buffer and
weight stack the plan's element type, and the calls pass gives every GEMM its operand and compute types,
so a precision with values of several types is a change here, not in the runtime.
"""

from __future__ import annotations

import dataclasses

from ..errors import BackendUnavailable, UsageError
from ..plan import Plan

ELEMENT = {"float32": "f32", "float64": "f64"}


def assign_types(plan: Plan, dtype: str) -> Plan:
    precision = plan.schedule.precision
    if dtype == "float64":
        if precision != "fp32":
            raise UsageError(f"precision {precision} applies to float32 layers; a float64 layer computes in "
                             "float64 throughout")
        return dataclasses.replace(plan, dtype="f64", compute="f64")
    if precision not in ("fp32", "tf32"):
        raise BackendUnavailable(f"precision {precision} is not supported by the CUDA backend yet; use fp32 or tf32")
    return dataclasses.replace(plan, dtype=ELEMENT[dtype], compute=precision)
