"""Types: the element type of every value and parameter, and the types of the GEMMs.

A float64 layer computes in f64 throughout. A float32 layer keeps its values, parameters and gradients in
f32; its GEMMs compute in strict fp32 or, under `precision tf32`, on the tensor cores with fp32
accumulation. Under `precision bf16` or `precision fp16` (mixed precision) the GEMMs' operands are half
precision: the weight stacks are half copies of the f32 master weights, and the buffers that a GEMM reads
(the input, a state that feeds a product, the incoming gradients of the weights) hold half values that
the kernels round as they store them; the tensor cores accumulate in fp32 into f32 results, and the
pointwise math, the other states (an LSTM's cell state) and every gradient stay f32 (but the weight
stacks' gradients where the parameters are half themselves: assign_types). Here the plan gets its
types; the storage pass gives each buffer its own (passes/storage.py, `_half_buffers`), and the calls pass
gives every GEMM its operand types, so the runtime only reads them.
"""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..plan import Plan, WeightGrad

ELEMENT = {"float32": "f32", "float64": "f64"}
HALF = {"bf16": "bf16", "fp16": "f16"}  # precision -> the element type of GEMM operands


def check_precision(dtype: str, precision: str) -> None:
    """A float64 layer computes in float64 throughout: a reduced precision does not apply to it."""
    if dtype == "float64" and precision != "fp32":
        raise UsageError(f"precision {precision} applies to float32 layers; a float64 layer computes in float64 "
                         "throughout")


def assign_types(plan: Plan, dtype: str, half_params: bool = False) -> Plan:
    """half_params: the parameters themselves are half (lstmdsl.torch's .half()): the weight stacks' gradients
    are written in the operand type by the batched weight-gradient GEMMs (one rounding of an fp32 sum over all
    steps), where every one of them runs after the loop; a plan whose weight gradients add up step by step (`no
    batch weights`) keeps them f32, as do the vector gradients (the caller converts those)."""
    precision = plan.schedule.precision
    check_precision(dtype, precision)
    if dtype == "float64":
        return dataclasses.replace(plan, dtype="f64", compute="f64", operand_type="f64")
    if precision in HALF:
        batched = not any(isinstance(op, WeightGrad) for op in plan.backward.loop.body)
        return dataclasses.replace(plan, dtype="f32", compute="fp32", operand_type=HALF[precision],
                                   grad_type=HALF[precision] if half_params and batched else "")
    return dataclasses.replace(plan, dtype=ELEMENT[dtype], compute=precision, operand_type=ELEMENT[dtype])
