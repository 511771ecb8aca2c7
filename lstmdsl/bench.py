"""Benchmarks: lstmdsl against cuDNN and the same cell written in PyTorch, in one process, on one GPU.

Competitors, on the same data and weights:
  lstmdsl   the CUDA backend with the spec's schedule (and the requested precision);
  cudnn     torch.nn.LSTM, for specs whose IR is the vanilla LSTM's (specs/vanilla.cell, specs/np.cell);
  eager     the cell as a PyTorch module, the way a user writes it: the products of the input for all
            steps as one GEMM first, then a Python loop evaluating the step's equations with torch
            operations (built from the spec's IR, so every spec has one: lstmdsl/eager.py); forward is an
            inference (regularisers at their expectations), and a cell with regularisers is checked so;
  compile   the same module with its step function under torch.compile (default mode).
In bf16 and fp16 the competitors are lstmdsl (its layer API, half inside, and x and dy in the half type, y and dx
out in it: float16 arrays in fp16 since version 3, uint16 arrays of bfloat16 bits in bf16 since version 4, both
2026-12-06, the row's lstmdsl "io"; float32 arrays before, or with half_arrays=False) and cuDNN with its weights
and input in that type (nn.LSTM(...).to(torch.bfloat16)). In bf16 cuDNN's weights are put into
one buffer by hand (flatten_bf16): PyTorch leaves them apart there, and cuDNN then copies them at every call.
Every competitor's output is checked against lstmdsl's before it is timed. Times are CUDA-event medians
after two warm-up calls, with the spread (min, max) kept. "train" is forward plus the backward of
sum(y) with respect to the input and all weights, each call's gradients made anew (set to None first, as after
zero_grad()); "forward" runs cuDNN's LSTM in eval mode (its inference kernels).

Memory. For each torch competitor, torch's max_memory_allocated over its timed calls less what torch held when
its turn began: the competitors run one after the other, each built then and dropped after, so none holds another's
weights or gradients; not counted are the harness's tensors (x in float32, which lstmdsl reads where it lies in
fp32 and tf32, the copy that takes the gradient, the reference output the others are checked against), anything
from before the case, and torch's BLAS workspaces (made before the case by _warm_torch_blas; an eager competitor's
use of them is not counted, unlike lstmdsl's kept workspaces below). In bf16 and fp16 x's half-precision copy is
cuDNN's input and counts for it; lstmdsl reads the same copy, counted for it too ("input_memory"; with float32 arrays, its own half
copy made inside counts for it). For lstmdsl, the peak of the bytes in use from CuPy's
memory pool over a call made after its check and a first call (the timed calls run without the hook, whose
callbacks cost host time), counting what was taken from the layer's build on and is still in use then or taken
during the call, as torch's peak is reset after its competitors' first calls (PeakInUse, a CuPy memory hook: its
parameters, gradients, workspaces, outputs and the harness's output gradient; the counterpart of torch's
max_memory_allocated), plus the cuBLAS workspaces its calls used that an earlier case made (kept by the process:
cublas.workspaces_reused). Rows also keep "pool_memory": what the pool held after the calls beyond what it held
before (freed blocks still cached included: an upper bound of the peak), with the same kept workspaces and half
input added, lstmdsl's count in rows measured before
the hook (their "memory": the rows measured on 2026-12-04 and before).

Until 2026-12-04 the torch competitors' figures held all that torch held (in every grid, torch's 32 MiB cuBLAS
workspace from the GEMM-rate measurement, the inputs, the reference output), their training kept the previous
call's gradients through each backward, and the cuDNN "forward" ran in training mode: the committed figures
measured before that favour lstmdsl (BENCH_VERSION names the way a row was measured). Until 2026-12-06 lstmdsl's
layer API got float32 x and dy in fp16 too, and until version 4 in bf16 (its y, dy and dx float32 arrays, each
twice cuDNN's half ones).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from . import api
from .arrays import HALF_ARRAYS
from .eager import EagerCell, _torch
from .spec import Spec
from .timing import time_gpu, time_gpu_only

COMPETITORS = ("lstmdsl", "cudnn", "eager", "compile")


def vanilla_equivalent(spec: Spec) -> bool:
    """True when the spec's IR is the vanilla LSTM's (so cuDNN can run it)."""
    return dataclasses.replace(spec.cell, name="vanilla") == api.parse("vanilla").cell


def _cudnn(layer: api.Layer, H: int, L: int):
    """torch.nn.LSTM with lstmdsl's vanilla weights (gate order i, f, z, o = torch's i, f, g, o)."""
    torch = _torch()
    lstm = torch.nn.LSTM(layer.input_size, H, L).cuda()
    s = layer.state_dict()
    with torch.no_grad():
        for k in range(L):
            cat = lambda m: torch.tensor(np.concatenate([s[f"l{k}.{m}_{g}"] for g in "ifzo"])).cuda()  # noqa: E731
            getattr(lstm, f"weight_ih_l{k}").copy_(cat("W"))
            getattr(lstm, f"weight_hh_l{k}").copy_(cat("R"))
            getattr(lstm, f"bias_ih_l{k}").copy_(cat("b"))
            getattr(lstm, f"bias_hh_l{k}").zero_()
    return lstm


def flatten_bf16(lstm) -> bool:
    """Put a bf16 nn.LSTM's weights into one buffer, as flatten_parameters does for float16 and float32 but skips
    for bfloat16 (torch.backends.cudnn.CUDNN_TENSOR_DTYPES): left apart, cuDNN copies them into one at every call.
    The call flatten_parameters makes (torch._cudnn_rnn_flatten_weight), so cuDNN's bf16 is timed at its best:
    0.67-1.02x the time of a call as PyTorch runs it (benchmarks/probe_cudnn_bf16_flat.py,
    benchmarks/results/probes/generic_step_h200.txt, section 9). False where this torch has no such call."""
    torch = _torch()
    try:
        import torch.backends.cudnn.rnn as rnn

        with torch.no_grad():
            torch._cudnn_rnn_flatten_weight(lstm._flat_weights, 4 if lstm.bias else 2, lstm.input_size,
                                            rnn.get_cudnn_mode(lstm.mode), lstm.hidden_size, lstm.proj_size,
                                            lstm.num_layers, lstm.batch_first, bool(lstm.bidirectional))
    except (AttributeError, ImportError, RuntimeError, TypeError):  # (a private call: another torch may differ)
        return False
    return True


def flops(layer: api.Layer, batch: int, steps: int, mode: str) -> int:
    """The matrix products' floating-point operations of one call: 2 * B * rows * cols per matrix and
    step, summed over the layers; training does it three times (forward, gradient passed back, weight
    gradient). Pointwise work is left out: it is memory-bound, and small beside the products."""
    per_step = sum(2 * batch * a.shape[0] * a.shape[1] for a in layer.state_dict().values() if a.ndim == 2)
    return per_step * steps * (3 if mode == "train" else 1)


def _warm_torch_blas(torch, precision: str) -> None:
    """Make torch's cuBLAS and cuBLASLt workspaces for this precision's types before a case: kept by torch for the
    process, they would otherwise count for whichever torch competitor first multiplied a matrix (the eager cell;
    cuDNN's LSTM does its own), in the case that made them only. The handles are per thread: the products on this
    one, with a 1-D bias too (cuBLASLt's path, as the eager cell's addmm), and a backward (autograd's thread)."""
    for dtype in {torch.float32, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)}:
        a = torch.ones(16, 16, device="cuda", dtype=dtype, requires_grad=True)
        with torch.no_grad():
            torch.addmm(a, a, a)
            torch.addmm(a[0], a, a.t())
        torch.mm(a, a.t()).sum().backward()
        a.grad = None


def _out_of_memory(e: BaseException) -> bool:
    import cupy

    return isinstance(e, (_torch().cuda.OutOfMemoryError, cupy.cuda.memory.OutOfMemoryError))


BENCH_VERSION = 4  # the harness's way of measuring (module docstring): 1 before 2026-12-04, 2 since, 3 since
# 2026-12-06 (fp16: float16 arrays in and out of lstmdsl's layer API), 4 later that day (bf16: bfloat16 bits so;
# fp32 and tf32 measure as in 2, fp16 as in 3)
CHANGED = {2: ("fp32", "tf32", "bf16", "fp16"), 3: ("fp16",), 4: ("bf16",)}  # each version's change: its precisions


def measured_as_now(precision: str, version: int | None) -> bool:
    """Whether a row of this precision measured by the harness's version `version` is measured as the harness
    measures it now (no later version changed how that precision is measured)."""
    return version is not None and all(precision not in p for v, p in CHANGED.items() if v > version)


MEMORY_COUNTED = "peak_in_use"  # how lstmdsl's "memory" is counted now (module docstring; benchmarks/memory_rerun.py)


def peak_in_use(cupy):
    """A CuPy memory hook counting the bytes in use from the memory pool (blocks as the pool rounds them) that were
    taken while it was entered, and their peak: `with hook:` (it may be entered again; it keeps counting). CuPy's
    hooks are the entering thread's: allocations and frees on other threads are not seen (the layer API allocates on
    its caller's; the torch module's backward runs on autograd's thread)."""

    class PeakInUse(cupy.cuda.MemoryHook):
        name = "lstmdsl_peak_in_use"

        def __init__(self):
            self.taken: dict[int, int] = {}  # address -> bytes, of the blocks taken and not yet given back
            self.in_use = self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            if not mem_ptr:  # (called after a failed allocation too)
                return
            self.in_use += mem_size - self.taken.get(mem_ptr, 0)  # (an address given again whose free went unseen:
            self.taken[mem_ptr] = mem_size                        # freed on another thread or outside the hook)
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.in_use -= self.taken.pop(mem_ptr, 0)  # (a block taken before the hook was entered: not counted)

    return PeakInUse()

HEADS_DEFAULT = 4  # the blocks of a block-diagonal matrix in the benchmarks (xLSTM's sLSTM default)


def bench_case(spec: Spec, batch: int, hidden: int, steps: int, layers: int = 1, mode: str = "forward",
               precision: str = "fp32", repeat: int = 10, competitors=COMPETITORS, schedule: str | None = None,
               log=None, num_heads: int | None = None, gpu_time: bool = False, half_arrays: bool = True) -> dict:
    """Time one shape for every competitor that applies; returns a row (times in ms, memory in bytes).
    gpu_time: also each competitor's GPU time alone (timing.time_gpu_only: "gpu_ms"), beside the time of a
    call as its caller sees it ("ms", host issue included).
    A spec with block-diagonal matrices runs with num_heads blocks (default HEADS_DEFAULT, xLSTM's).
    half_arrays: in bf16 and fp16 lstmdsl's layer API gets x and dy in the half type (False: float32 arrays).

    A competitor that runs out of GPU memory is recorded as {"error": "out of memory"} and the others
    still run. Competitors whose call is slow (eager PyTorch at T * layers >= 1000) are timed fewer times.
    """
    torch = _torch()
    import cupy

    import gc

    gc.collect()
    torch.cuda.empty_cache()
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.used_bytes()
    _warm_torch_blas(torch, precision)  # (their workspaces made now, never counted for a torch competitor)
    from .runtime import cublas

    before = cublas.workspace_uses()  # (the workspaces kept from earlier cases: added to lstmdsl's memory below)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if half is not None:  # the torch competitors at the same precision: cuDNN with half weights and input
        competitors = tuple(c for c in competitors if c in ("lstmdsl", "cudnn"))
    extra = {"proj_size": hidden // 2} if spec.uses_size("proj") else {}
    if spec.uses_size("heads"):
        extra["num_heads"] = num_heads or HEADS_DEFAULT
    text = f"{schedule + '; ' if schedule else ''}precision {precision}"
    noisy = bool(spec.cell.noise)  # (the regularisers draw masks in training)
    in_use = peak_in_use(cupy)  # (lstmdsl's memory: what it took from its build on, its peak in a later call)
    with in_use:
        layer = api.compile(spec, hidden, hidden, layers, backend="cuda", schedule=text, seed=0, **extra)
    x = torch.randn(steps, batch, hidden, device="cuda")
    # the layer API takes x and dy in the half type (float16, or bfloat16 bits as uint16; y and dx come back so): its
    # input is then x's half copy, counted as its memory below as the same copy is counted as cuDNN's
    io = HALF_ARRAYS[precision].type if half_arrays and precision in HALF_ARRAYS else np.float32
    x_io = x.to(half) if io is not np.float32 else x
    xc = cupy.from_dlpack(x_io.view(torch.int16)).view(cupy.uint16) if io is np.uint16 else cupy.from_dlpack(x_io)
    as_torch = (lambda a: torch.from_dlpack(a.view(cupy.int16)).view(torch.bfloat16)) if io is np.uint16 else \
        torch.from_dlpack
    tol = {"fp32": 1e-4, "bf16": 5e-2}.get(precision, 2e-2)
    row = {"spec": spec.name, "batch": batch, "hidden": hidden, "steps": steps, "layers": layers, "mode": mode,
           "precision": precision, "bench_version": BENCH_VERSION, "flops": flops(layer, batch, steps, mode),
           "results": {}, "checks": {}}
    if "num_heads" in extra:
        row["heads"] = extra["num_heads"]
    y_ref = None  # lstmdsl's output; if lstmdsl cannot run the shape, the first competitor's

    def check(name, y):
        nonlocal y_ref
        if y_ref is None:
            y_ref = y.detach().clone()
            row["checks"]["reference"] = name
            return
        err = float((y.detach().double() - y_ref.double()).norm() / y_ref.double().norm())
        row["checks"][name] = err
        if not err <= tol:
            raise AssertionError(f"{name} disagrees with {row['checks']['reference']} on {spec.name} "
                                 f"(relative error {err:.1e})")

    if "lstmdsl" in competitors:
        try:
            # the check runs in the mode's own workspace, so the memory counted below is what the mode needs
            # (a cell with regularisers is checked in expectation, as the others are: their masks are their own)
            with in_use:  # (the hook's calls cost host time: the timed calls run without it)
                check("lstmdsl", as_torch(layer.forward(xc, train=mode == "train" and not noisy)[0]))
                ones = cupy.full((steps, batch, layer.output_size), 0x3F80 if io is np.uint16 else 1, io)  # (1.0)
                fn = (lambda: layer.forward(xc, train=False)) if mode == "forward" else \
                    (lambda: (layer.forward(xc), layer.backward(ones)))
                fn()
                in_use.peak = in_use.in_use  # (what the first calls made and freed is not counted: as for torch's)
                fn()
            own = x_io.nbytes if io is not np.float32 else 0  # (x itself, float32, is the harness's: not counted)
            row["results"]["lstmdsl"] = time_gpu(fn, repeat) | {
                "memory": in_use.peak + own, "input_memory": own,
                "io": "bfloat16" if io is np.uint16 else np.dtype(io).name,
                "pool_memory": int(pool.total_bytes() - base) + own}
            if gpu_time:
                row["results"]["lstmdsl"] |= time_gpu_only(fn, repeat)
            # its cuBLAS workspaces that an earlier case made (the pool's count has those this case made)
            kept = cublas.workspaces_reused(before, cublas.workspace_uses())
            row["results"]["lstmdsl"]["memory"] += kept
            row["results"]["lstmdsl"]["pool_memory"] += kept
            row["results"]["lstmdsl"]["cublas_workspaces_kept"] = kept
        except Exception as e:  # noqa: BLE001 (only running out of memory is a result; the rest re-raise)
            if not _out_of_memory(e):
                raise
            row["results"]["lstmdsl"] = {"error": "out of memory"}
        layer.free_workspaces()  # the competitors below get the whole GPU
        pool.free_all_blocks()
        if log is not None:
            r = row["results"]["lstmdsl"]
            print("  lstmdsl: " + (f"{r['ms']:.2f} ms" if "ms" in r else r["error"]), file=log, flush=True)
    # the harness's inputs, counted for no competitor: x (float32) and the copy that takes the gradient; in half
    # precision the torch competitors' input is x's half copy, counted as theirs (lstmdsl read this same copy,
    # counted as its too; with float32 arrays it read x and made a half copy of its own, counted as its)
    if half is not None:
        x = x_io if half_arrays else x.to(half)
    xg = x.clone().requires_grad_(True)
    own_input = x.nbytes if half is not None else 0

    def make(name):
        """(run, parameters, the eager cell or None) of a torch competitor, built when its turn comes and dropped
        after it (another's weights and gradients are not in its memory)."""
        if name == "cudnn":
            lstm = _cudnn(layer, hidden, layers)
            if half is not None:
                lstm = lstm.to(half)
            if half is torch.bfloat16:
                row["cudnn_flattened"] = flatten_bf16(lstm)
            lstm.train(mode == "train")  # (in training mode a forward runs cuDNN's training kernels and keeps
            # their reserve space, under no_grad too: the committed grids before 2026-12-04 timed that)
            return (lambda inp: lstm(inp)[0]), list(lstm.parameters()), None
        eager = EagerCell(spec, layer)
        eager.training = mode == "train"  # (a forward is an inference: the regularisers' expectations)
        params = eager.parameters()
        if name == "eager":
            return eager.forward, params, eager
        compiled_step = torch.compile(eager.step)
        return (lambda inp: eager.forward(inp, compiled_step)), params, eager

    names = [n for n in ("cudnn", "eager", "compile")
             if n in competitors and (n != "cudnn" or vanilla_equivalent(spec))]
    for name in names:
        slow = name in ("eager", "compile") and steps * layers >= 1000
        times = max(3, repeat // 3) if slow else repeat
        run = params = fn = eager = None
        gc.collect()
        torch.cuda.empty_cache()
        # what torch holds now is not this competitor's: the inputs, the reference output, torch's BLAS workspaces
        # (made before the case: _warm_torch_blas) and anything from before the case
        held, made_ref = torch.cuda.memory_allocated(), y_ref is None
        try:
            run, params, eager = make(name)
            if mode == "forward":
                def fn(run=run):
                    with torch.no_grad():
                        run(x)
            else:
                def fn(run=run, params=params):  # (each call's gradients anew, as after zero_grad(): not the
                    xg.grad = None              # previous call's kept through this one's backward)
                    for t in params:
                        t.grad = None
                    run(xg).sum().backward()
            t0 = time.perf_counter()
            if eager is not None:  # (checked in expectation where the cell has regularisers, as lstmdsl is)
                eager.training = mode == "train" and not noisy
            with torch.no_grad():
                check(name, run(x))
            first = time.perf_counter() - t0
            if eager is not None:
                eager.training = mode == "train"
            fn()  # (untimed: a compiled step compiles again for gradients here, outside the memory counted)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            timing = time_gpu(fn, times, warmup=1 if slow else 2)
            peak = torch.cuda.max_memory_allocated() - held + own_input - (y_ref.nbytes if made_ref else 0)
            row["results"][name] = timing | {"memory": int(peak), "first_call_s": first, "repeat": times}
            if gpu_time:  # (torch's current stream is CuPy's, the default one, which the spin holds)
                row["results"][name] |= time_gpu_only(fn, times)
        except Exception as e:  # noqa: BLE001 (only running out of memory is a result; the rest re-raise)
            if not _out_of_memory(e):
                raise
            row["results"][name] = {"error": "out of memory"}
        finally:
            xg.grad = None
            for t in params or ():
                t.grad = None
            t = None  # (the loop's last parameter: a view of cuDNN's whole weight buffer)
            del run, params, fn, eager, t
        if log is not None:
            r = row["results"][name]
            print(f"  {name}: " + (f"{r['ms']:.2f} ms" if "ms" in r else r["error"]), file=log, flush=True)
    return row
