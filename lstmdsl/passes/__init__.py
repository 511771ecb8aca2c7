"""The passes, in the order they run. Each is a pure function Plan -> Plan.

The scheduling passes (PIPELINE) are switched by the schedule, and make_persistent follows them (the
schedule's persistent mode decides what it does); every schedule computes the same results
within floating-point tolerance (tests/test_passes.py runs every spec under every schedule). Stage
splitting needs no pass of its own: base_plan orders each step's GEMMs and kernels by data dependence,
so a product of a value computed inside the step always sits between two kernels, and the fusion
passes never merge across it. The lowering passes (LOWERING) always run, in order: they decide the
types, the storage, how each op is called, whether a projection feeds the next step folded (`fold projection`)
and which of a step's GEMMs run at once, so the runtime only executes. Stacking layers reuses one plan per layer; the wavefront pass decides whether a stack of
them may overlap its layers (Wavefront), the chunks pass whether a forward-only workspace may keep one chunk's
steps of the input products and run chunk by chunk (Chunks), the last whether dx may take dy's memory in training
(Buffer.over).
"""

from __future__ import annotations

import dataclasses

from ..grad import StepGrad
from ..ir import Cell
from ..plan import Plan, base_plan
from ..schedule import Schedule
from .calls import assign_calls
from .fanout import plan_fanout
from .gate_fusion import fuse_gates
from .input_hoisting import hoist_input
from .overlay import plan_overlay
from .persistent import make_persistent
from .pointwise_fusion import fuse_pointwise
from .projection import fold_projection
from .recurrent_fusion import fuse_recurrent
from .row_fusion import fuse_rows
from .sum_folding import fold_sums
from .storage import assign_storage
from .types import assign_types
from .wavefront import plan_chunks, plan_wavefront
from .weight_grads import batch_weight_grads

# (schedule switch, pass)
PIPELINE = (
    ("fuse_gates", fuse_gates),
    ("hoist_input", hoist_input),
    ("fuse_pointwise", fuse_pointwise),
    ("fuse_recurrent", fuse_recurrent),
    ("fuse_rows", fuse_rows),
    ("batch_weight_grads", batch_weight_grads),
    ("fold_sums", fold_sums),
)
LOWERING = (("types", assign_types), ("storage", assign_storage), ("calls", assign_calls),
            ("projection", fold_projection), ("fanout", plan_fanout), ("wavefront", plan_wavefront), ("chunks", plan_chunks),
            ("overlay", plan_overlay))


def schedule_plan(cell: Cell, grad: StepGrad, schedule: Schedule, trace=None, direction: str = "forward",
                  dtype: str = "float32") -> Plan:
    """The plan after the scheduling passes (what runs, not yet how). trace(name, plan) sees each step. dtype:
    the layer's element type, which the persistent pass's cost model reads (float64: no rules)."""
    plan = base_plan(cell, grad, schedule, direction)
    if dtype == "float64":  # (the types pass sets the rest; make_persistent reads plan.dtype before it runs)
        plan = dataclasses.replace(plan, dtype="f64", compute="f64", operand_type="f64")
    if trace:
        trace("base", plan)
    for switch, run in PIPELINE:
        if getattr(schedule, switch):
            plan = run(plan)
            if trace:
                trace(switch, plan)
    plan = make_persistent(plan)  # not a switch: a mode (auto, on, off) that make_persistent reads
    if trace:
        trace("persistent", plan)
    return plan


def make_plan(cell: Cell, grad: StepGrad, schedule: Schedule, dtype: str = "float32", trace=None,
              direction: str = "forward", half_params: bool = False) -> Plan:
    """The complete plan for a layer of element type dtype ("float32" or "float64") reading its sequence
    forward or in reverse time; half_params: its parameters are half precision themselves (passes/types.py)."""
    plan = schedule_plan(cell, grad, schedule, trace, direction, dtype)
    plan = assign_types(plan, dtype, half_params)
    for name, run in LOWERING[1:]:
        plan = run(plan)
        if trace:
            trace(name, plan)
    return plan
