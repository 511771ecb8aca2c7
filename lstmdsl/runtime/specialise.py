"""Persistent kernels compiled for one launch's shape (plan.Persistent.specialises).

The general persistent kernel takes the batch, the sizes and its launch's choices as arguments, and at small
sizes most of its step is arithmetic on them. Where the plan says so, the executor (Engine.persistent_run)
renders the phase's kernel again with those arguments as constants (codegen.render_persistent) and launches
that one instead, with the same arguments. Under `specialise` it is compiled at the first call of a shape; under
`specialise auto` here, on a thread of its own (NVRTC and the disk cache only, no CUDA call: nvrtc.prepare),
while the general kernel runs, and the engine loads it at its first call after the compile has finished (never
inside a capture). Each kernel lands in the disk cache like every module: a shape seen before costs a load.

Why: the general kernel's step is mostly arithmetic on its sizes at small shapes: at B = 1, H = 32, 323 instructions
a warp and step against cuDNN's 87 (ncu, fp32, H200; cuDNN's kernel is a template on H). Measured on the H200
(benchmarks/specialise.py, results/specialise_h200.md: vanilla, fp32, T = 1000, forced persistent, GPU time),
compiled for the shape against the general kernel: forward 0.67-0.82x at B = 1-64, H = 16-64, 0.71x at B = 1,
H = 128, 0.84-0.88x at B = 4-64, H = 128-512, 0.75-0.78x at B = 1, H = 512-1024; training 0.64-0.97x; but forward
1.18-1.39x at B = 8-16, H = 128-256, grids that hand their state on in tagged words, where the constant batch
lets the compiler unroll the rows and keep more values live (plan.Persistent.specialises leaves those out).
NVRTC compiles a shape's three kernels in about 0.1-0.16 s there.

The compile thread is nvrtc.prepare_later's; nvrtc.settle() waits for it (the benchmarks do before they time:
lstmdsl.timing). LSTMDSL_SPECIALISE=0 in the environment keeps every launch on the general kernel.
"""

from __future__ import annotations

import os
import warnings

from ..cache import cached_text
from ..codegen import generator_digest, render_persistent
from . import device, nvrtc
from .issue import shape_value
from .nvrtc import function, load_module


def enabled() -> bool:
    return os.environ.get("LSTMDSL_SPECIALISE", "1") != "0"


def request(engine, ws, phase: str, pers, run) -> None:
    """The phase's kernel compiled for the workspace's shape (engine: an executor.Engine; run: the launch,
    runtime/persistent.PersistentRun), compiled at once where the schedule says `specialise`, else begun on the
    compile thread; install() loads it once compiled (Engine._run: at this call, or a later one under `auto`);
    nothing where the plan's cost model says no."""
    if not (pers.specialises(ws.B, run.blocks, run.split, run.exchange) and enabled()):
        return
    desc = engine.program.kernels[pers.name]
    constants = {a.name: shape_value(a.bind, ws, run) for a in desc.shape_args()}
    plan = engine.program.plan
    # the source from the disk cache where a process rendered it before (as program.build_program's): a warm
    # start then neither imports jinja2 nor compiles the template (0.16 s of the first result on an H100 host)
    key = repr((generator_digest(), plan.cell.name, plan.schedule.describe(), plan.dtype,
                plan.operand_type, desc, sorted(constants.items()), run.blocks))
    source = cached_text("cuda", key, lambda: render_persistent(plan, desc, constants, run.blocks))
    prepare = nvrtc.prepare_now if pers.specialise == "on" else nvrtc.prepare_later
    ws.special_pending[phase] = prepare(source, nvrtc.architecture())  # (install() loads it: not in a capture)


def install(engine, ws, phase: str, stream: int) -> None:
    """The phase's kernel compiled for the workspace's shape, once its compile has finished (not inside a
    capture: loading a module there could break it); a compile that failed leaves the general kernel."""
    job = ws.special_pending.get(phase)
    if job is None or not job.done.is_set() or device.is_capturing(stream):
        return
    del ws.special_pending[phase]
    try:
        if job.error is not None:
            raise job.error
        _use(engine, ws, phase, job.source, ws.persistent[phase])
    except Exception as err:  # noqa: BLE001 - the general kernel runs the same steps
        warnings.warn(f"lstmdsl: the persistent kernel of cell {engine.program.plan.cell.name} compiled for "
                      f"B = {ws.B} failed ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                      "running the general kernel", stacklevel=4)


def _use(engine, ws, phase: str, source: str, run) -> None:
    """Launch the kernel compiled from `source` for this workspace's phase from now on (its captured graphs of
    the phase dropped: the next call captures the new kernel), where it fits the launch as the general one did
    (its registers may differ: the grid must stay co-resident), else warn and keep the general kernel."""
    pers = getattr(engine.program.plan, phase).loop.persistent
    fn = function(load_module(source), pers.name)  # (a module loads once per process)
    if device.shared_budget(fn) < run.shared or \
            device.co_resident(fn, pers.threads, run.shared) * device.on_chip()[0] < run.blocks:
        warnings.warn(f"lstmdsl: the persistent kernel of cell {engine.program.plan.cell.name} compiled for B = "
                      f"{ws.B} does not fit the launch of {run.blocks} blocks; running the general kernel", stacklevel=4)
        return
    ws.persistent_function[phase] = fn
    for key in [k for k in ws.graphs if k[0] == phase]:
        del ws.graphs[key]
