"""Run lstmdsl.runtime.CudaLayer on the CPU: fake CuPy arrays (cupy/ beside this file), cuBLAS GEMMs
and generated kernels emulated from the raw pointers and leading dimensions the runtime computes
(bounds-checked against the allocations), kernels by the plan's node semantics. It exercises the
storage layout and the runtime's pointer arithmetic without a GPU (CUDA graphs are not emulated).
Used by tests/test_runtime_emulated.py in a subprocess, so the fake CuPy never meets the other tests."""
import ctypes
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cupy  # noqa: E402 - the fake one
import lstmdsl  # noqa: E402
from lstmdsl import reference, runtime  # noqa: E402
from lstmdsl.plan import Kernel  # noqa: E402

runtime.check_available = lambda: None
runtime.POISON = True
LOG = []

def region(ptr, rows, cols, ld):
    """a [rows, cols] float32 view at ptr with leading dimension ld, bounds-checked."""
    start, end = ptr, ptr + 4 * ((rows - 1) * ld + cols)
    for s, e, arr in cupy.ALLOCS:
        if s <= start and end <= e:
            break
    else:
        raise AssertionError(f"out of bounds: [{start:#x}, {end:#x}) rows={rows} cols={cols} ld={ld}")
    buf = (ctypes.c_float * ((end - start) // 4)).from_address(start)
    flat = np.frombuffer(buf, np.float32)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4 * ld, 4)), (start, end)

def gemm(M, N, K, a, lda, ta, b, ldb, tb, c, ldc, acc, precision):
    A = region(a, K, M, lda)[0].T if ta else region(a, M, K, lda)[0]
    Bm = region(b, N, K, ldb)[0].T if tb else region(b, K, N, ldb)[0]
    C, _ = region(c, M, N, ldc)
    r = (A.astype(np.float64) @ Bm.astype(np.float64)).astype(np.float32)
    if acc: C += r
    else: C[...] = r
runtime.gemm = gemm

class KernelSim:
    def __init__(self, desc, op, nodes, slots, layer):
        self.desc, self.op, self.nodes, self.slots = desc, op, nodes, slots
    def __call__(self, grid, block, args):
        desc, nodes = self.desc, self.nodes
        val = dict(zip((a.name for a in desc.args), args))
        B = int(val["B"])
        size = lambda s: int(val[f"n_{s}"])
        values, reads, writes = {}, [], []
        for a in desc.args:
            if a.name.startswith("in"):
                i = a.bind[1]
                arr, rg = region(int(val[a.name]), B, size(nodes[i].size), int(val["ld_" + a.name]))
                values[i] = arr.copy(); reads.append((rg, i, int(val[a.name]), int(val['ld_' + a.name])))
            elif a.name.startswith("p"):
                i = int(a.name[1:]); values[i] = np.broadcast_to(np.asarray(val[a.name]), (B, size(nodes[i].size)))
        for i in self.op.nodes:
            n = nodes[i]
            for x in n.args:
                if x not in values:
                    if nodes[x].op == "const": values[x] = np.float32(nodes[x].attr)
                    else: raise AssertionError(f"{desc.name}: node {i} reads %{x}, not loaded")
            if n.op == "matvec":
                W = np.asarray(next(val[a.name] for a in desc.args if a.name == f"w{i}"))
                values[i] = (values[n.args[0]].astype(np.float64) @ W.T.astype(np.float64)).astype(np.float32)
            else:
                values[i] = np.broadcast_to(reference.eval_node(n, [values[x] for x in n.args], {}, B, np.dtype(np.float32), {n.size: size(n.size)}), (B, size(n.size)))
        text = "\n".join(l for _, ls in desc.groups for l in ls)
        for a in desc.args:
            if a.name.startswith("out"):
                i = a.bind[1]
                arr, rg = region(int(val[a.name]), B, size(nodes[i].size), int(val["ld_" + a.name]))
                writes.append((rg, i, int(val[a.name]), int(val['ld_' + a.name])))
                if f"{a.name}[b * ld_{a.name} + j] +=" in text: arr += values[i]
                else: arr[...] = values[i]
        for (wrg, i, wptr, wld) in writes:
            wset = {wptr + 4 * (b * wld + j) for b in range(B) for j in range(size(nodes[i].size))}
            for (rrg, j, rptr, rld) in reads:
                rset = {rptr + 4 * (b * rld + c) for b in range(B) for c in range(size(nodes[j].size))}
                if wset & rset and i != j:
                    LOG.append(f"{desc.name}: writes %{i} over a region it reads for %{j}")

_orig_init = runtime._Program.__init__
def _init(self, *a):
    _orig_init(self, *a)
    for phase, descs, slots in ((self.plan.forward, self.forward_kernels, self.layout.forward),
                                (self.plan.backward, self.backward_kernels, self.layout.backward)):
        ops = [op for op in phase.step if isinstance(op, Kernel)]
        for d, op in zip(descs, ops):
            self.functions[d.name] = KernelSim(d, op, phase.nodes, slots, None)
runtime._Program.__init__ = _init

def check(spec, T=4, B=3, I=5, H=6, L=1, schedule=None, P=None, seed=0, dfinal=True, verbose=True, layer_hook=None):
    kw = dict(num_layers=L, seed=seed, schedule=schedule)
    if P: kw["proj_size"] = P
    gpu = lstmdsl.compile(spec, input_size=I, hidden_size=H, backend="cuda", **kw)
    gpu.use_graphs = False
    ref = lstmdsl.compile(spec, input_size=I, hidden_size=H, dtype="float64", **kw)
    rng = np.random.default_rng(seed + 1)
    for k, p in gpu.parameters().items():
        p[...] = rng.uniform(-0.5, 0.5, p.shape).astype(np.float32)
        ref.parameters()[k][...] = np.asarray(p)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state = {k: (0.5 * rng.standard_normal(s)).astype(np.float32) for k, s in ref.state_shapes(B).items()}
    # forward-only first (its own, smaller workspace), then the training forward
    y_inf, final_inf = gpu.forward(cupy.asarray(x), {k: cupy.asarray(v) for k, v in state.items()}, train=False)
    y, final = gpu.forward(cupy.asarray(x), {k: cupy.asarray(v) for k, v in state.items()})
    y_ref, final_ref = ref.forward(x.astype(np.float64), {k: v.astype(np.float64) for k, v in state.items()})
    dy = rng.standard_normal(y_ref.shape)
    dfin = {k: (rng.standard_normal(v.shape) if dfinal else np.zeros(v.shape)) for k, v in final_ref.items()}
    dx = gpu.backward(cupy.asarray(dy.astype(np.float32)), {k: cupy.asarray(v.astype(np.float32)) for k, v in dfin.items()})
    dx_ref = ref.backward(dy, dfin)
    def rel(g, w):
        g = np.asarray(g, np.float64)
        if not np.all(np.isfinite(g)): return float("nan")
        return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))
    errs = {"y": rel(y, y_ref), "dx": rel(dx, dx_ref), "y forward-only": rel(y_inf, y_ref)}
    errs |= {f"final {k} forward-only": rel(final_inf[k], final_ref[k]) for k in final_ref}
    errs |= {f"final {k}": rel(final[k], final_ref[k]) for k in final_ref}
    errs |= {f"dinit {k}": rel(v, ref.initial_state_grads()[k]) for k, v in gpu.initial_state_grads().items()}
    errs |= {f"d {k}": rel(g, ref.grads()[k]) for k, g in gpu.grads().items()}
    bad = {k: e for k, e in errs.items() if not e <= 1e-4}
    if LOG:
        bad["overlap: " + "; ".join(sorted(set(LOG)))[:200]] = 1
    if verbose:
        print("OK" if not bad else f"BAD {bad}", *(set(LOG) or []))
    LOG.clear()
    return bad
