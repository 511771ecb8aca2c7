"""The program builder: (cell, schedule, element type) -> the compiled program — the plan with every
decision in it, the kernel descriptions and the CUDA source. The one place that runs the stages in
order; the runtime, `lstmdsl compile --emit`, the benchmarks and the tests all come here.

The source is kept in the disk cache (cache.py), keyed by everything it is made from, so a program
built before needs no jinja2 and no rendering.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .cache import cached_text
from .codegen import add_kernel, generator_digest, kernel_descs, render
from .kerneldesc import AddDesc, KernelDesc
from .grad import differentiate
from .ir import Cell
from .passes import make_plan
from .plan import Plan
from .planverify import verify
from .schedule import Schedule

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Program:
    """Everything about one (cell, schedule, dtype) that does not depend on sizes."""

    plan: Plan
    kernels: dict[str, KernelDesc]  # by name, in the plan's order
    add: AddDesc | None  # the kernel of copies that add into a slot, when there are any
    source: str

    @property
    def dtype(self) -> str:
        return self.plan.dtype


@functools.lru_cache(maxsize=64)
def build_program(cell: Cell, schedule: Schedule, dtype: str = "float32", direction: str = "forward",
                  half_params: bool = False) -> Program:
    """Plan, verify, describe the kernels, render (or read the source from the cache). direction "reverse":
    the layer reads its sequence backwards in time; half_params: its parameters are half precision themselves
    (the torch module's .half(): the weight gradients are written in half, Plan.grad_type)."""
    plan = make_plan(cell, differentiate(cell), schedule, dtype, direction=direction, half_params=half_params)
    verify(plan)
    kernels = kernel_descs(plan)
    add = add_kernel(plan)
    key = repr((generator_digest(), cell.name, schedule.describe(), plan.dtype, direction,
                tuple(kernels.values()), add))
    source = cached_text("cuda", key, lambda: render(plan, kernels, add))
    return Program(plan, kernels, add, source)
