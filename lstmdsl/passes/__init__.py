"""The scheduling passes, in the order they run. Each is a pure function Plan -> Plan that a schedule
switch turns on or off; every schedule computes the same results within floating-point tolerance
(tests/test_passes.py runs every spec under every schedule).

Stage splitting needs no pass of its own: base_plan orders each step's GEMMs and kernels by data
dependence, so a product of a value computed inside the step always sits between two kernels, and the
fusion passes never merge across it. Stacking layers reuses one plan per layer.
"""

from __future__ import annotations

from ..grad import StepGrad
from ..ir import Cell
from ..plan import Plan, base_plan
from ..schedule import Schedule
from .gate_fusion import fuse_gates
from .input_hoisting import hoist_input
from .pointwise_fusion import fuse_pointwise
from .recurrent_fusion import fuse_recurrent
from .weight_grads import batch_weight_grads

# (schedule switch, pass)
PIPELINE = (
    ("fuse_gates", fuse_gates),
    ("hoist_input", hoist_input),
    ("fuse_pointwise", fuse_pointwise),
    ("fuse_recurrent", fuse_recurrent),
    ("batch_weight_grads", batch_weight_grads),
)


def make_plan(cell: Cell, grad: StepGrad, schedule: Schedule) -> Plan:
    plan = base_plan(cell, grad, schedule)
    for switch, run in PIPELINE:
        if getattr(schedule, switch):
            plan = run(plan)
    return plan
