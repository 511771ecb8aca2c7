"""Run lstmdsl's CUDA runtime on the CPU: a fake CuPy (cupy/ beside this file) for the arrays, and the
runtime's device layer (lstmdsl/runtime/device.py: launches, strided copies, fills, graphs) and cuBLAS
GEMMs emulated on host memory from the raw addresses, leading dimensions and pitches the runtime
computes, bounds-checked against the allocations. Kernels are emulated by the plan's node semantics from
their KernelDescs. A CUDA graph records the calls issued at capture and replays exactly those, so the
addresses baked in at capture are what later calls use. Used by tests/test_runtime_emulated.py in a
subprocess, so the fake CuPy never meets the other tests."""
import ctypes
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cupy  # noqa: E402 - the fake one
import lstmdsl  # noqa: E402
from lstmdsl import reference  # noqa: E402
from lstmdsl.check import compare, random_case, randomize  # noqa: E402
from lstmdsl.runtime import cublas, device, executor, workspace  # noqa: E402

workspace.POISON = True
LOG = []
KERNELS = {}  # kernel name -> (KernelDesc, Kernel op, phase nodes); the last program built wins
RECORDING = []  # the calls of a graph being captured


def region(ptr, rows, cols, ld, item):
    """a [rows, cols] view at ptr with leading dimension ld (elements of `item` bytes), bounds-checked."""
    start, end = ptr, ptr + item * ((rows - 1) * ld + cols)
    for s, e, arr in cupy.ALLOCS:
        if s <= start and end <= e:
            break
    else:
        raise AssertionError(f"out of bounds: [{start:#x}, {end:#x}) rows={rows} cols={cols} ld={ld}")
    ctype = ctypes.c_float if item == 4 else ctypes.c_double
    buf = (ctype * ((end - start) // item)).from_address(start)
    flat = np.frombuffer(buf, np.float32 if item == 4 else np.float64)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item * ld, item)), (start, end)


def recorded(fn):
    """Run fn now, or record it while a graph is being captured."""
    def wrapper(*args):
        if RECORDING and RECORDING[-1] is not None:
            RECORDING[-1].append((fn, args))
        else:
            fn(*args)
    wrapper.__wrapped__ = fn
    return wrapper


ITEM = {"f32": 4, "f64": 8}


@recorded
def gemm(M, N, K, a, lda, ta, b, ldb, tb, c, ldc, acc, types, stream, lane=0):
    a_t, b_t, c_t, compute = types
    A = region(a, K, M, lda, ITEM[a_t])[0].T if ta else region(a, M, K, lda, ITEM[a_t])[0]
    Bm = region(b, N, K, ldb, ITEM[b_t])[0].T if tb else region(b, K, N, ldb, ITEM[b_t])[0]
    C, _ = region(c, M, N, ldc, ITEM[c_t])
    r = (A.astype(np.float64) @ Bm.astype(np.float64)).astype(C.dtype)
    if acc:
        C += r
    else:
        C[...] = r


@recorded
def gemm_batched(M, N, K, a, lda, ta, b, ldb, tb, c, ldc, acc, types, stream, lane, count, strides):
    items = [ITEM[t] for t in types[:3]]
    for i in range(count):
        gemm.__wrapped__(M, N, K, a + i * strides[0] * items[0], lda, ta, b + i * strides[1] * items[1], ldb, tb,
                         c + i * strides[2] * items[2], ldc, acc, types, stream, lane)


@recorded
def copy_rows(dst, dst_pitch, src, src_pitch, width, rows, stream):
    for r in range(rows):
        region(src + r * src_pitch, 1, width, width, 1)
        region(dst + r * dst_pitch, 1, width, width, 1)
        ctypes.memmove(dst + r * dst_pitch, src + r * src_pitch, width)


@recorded
def zero(ptr, nbytes, stream):
    region(ptr, 1, nbytes, nbytes, 1)
    ctypes.memset(ptr, 0, nbytes)


@recorded
def launch(function, grid, threads, args, stream):
    name, item = function
    if name.endswith("_add"):
        dst, ld_dst, src, ld_src, n, rows = (v for _, v in args)
        region(dst, rows, n, ld_dst, item)[0][...] += region(src, rows, n, ld_src, item)[0]
        return
    desc, ops, nodes = KERNELS[name]
    val = {a.name: v for a, (_, v) in zip(desc.args, args)}
    for stage, op in zip(desc.stages or (desc,), ops):  # a row-fused launch: its stages in order
        _stage(stage, op, nodes, val, item)


def _stage(desc, op, nodes, val, item):
    B = int(val["B"])
    size = lambda s: 1 if s == "one" else int(val[f"n_{s}"])  # noqa: E731
    sizes = {k[2:]: int(v) for k, v in val.items() if k.startswith("n_")} | {"one": 1}
    dtype = np.dtype(np.float32 if item == 4 else np.float64)
    if desc.reduce is not None:  # one reduction node: its arguments are in<a> / p<a>, by node
        (i,) = op.nodes
        n = nodes[i]
        parts = []
        for a in n.args:
            width = size(nodes[a].size)
            if nodes[a].op == "param":
                parts.append(np.broadcast_to(region(val[f"p{a}"], 1, width, 1, item)[0][0], (B, width)))
            else:
                parts.append(region(val[f"in{a}"], B, width, val[f"ld_in{a}"], item)[0].copy())
        result = reference.eval_node(n, parts, {}, B, dtype, sizes)
        for k, line in enumerate(desc.reduce[3]):
            out = region(val[f"out{i}_{k}"], B, 1, val[f"ld_out{i}_{k}"], item)[0]
            if "+=" in line:
                out += result
            else:
                out[...] = result
        return
    values, reads, writes = {}, [], []
    for a in desc.args:
        if a.name.startswith("in"):
            i = int(a.name[2:])
            arr, rg = region(val[a.name], B, size(nodes[i].size), val["ld_" + a.name], item)
            values[i] = arr.copy()
            reads.append((i, val[a.name], val["ld_" + a.name]))
        elif a.name.startswith("p"):
            i = int(a.name[1:])
            values[i] = np.broadcast_to(region(val[a.name], 1, size(nodes[i].size), 1, item)[0][0],
                                        (B, size(nodes[i].size)))
    for i in op.nodes:
        n = nodes[i]
        for x in n.args:
            if x not in values:
                if nodes[x].op == "const":
                    values[x] = np.float64(nodes[x].attr)
                else:
                    raise AssertionError(f"{desc.name}: node {i} reads %{x}, not loaded")
        if n.op == "matvec":
            (x,) = n.args
            W = region(val[f"w{i}"], size(n.size), size(nodes[x].size), size(nodes[x].size), item)[0]
            values[i] = values[x].astype(np.float64) @ W.T.astype(np.float64)
        else:
            v = reference.eval_node(n, [values[x] for x in n.args], {}, B, dtype, sizes)
            values[i] = np.broadcast_to(v, (B, size(n.size)))
    text = "\n".join(line for _, lines in desc.groups for line in lines)
    for a in desc.args:
        if a.name.startswith("out"):
            i = int(a.name[3:].split("_")[0])
            arr, rg = region(val[a.name], B, size(nodes[i].size), val["ld_" + a.name], item)
            writes.append((i, val[a.name], val["ld_" + a.name]))
            if f"{a.name}[b * ld_{a.name} + j] +=" in text or f"{a.name}[b * ld_{a.name}] +=" in text:
                arr += values[i]
            else:
                arr[...] = values[i]
    for i, wptr, wld in writes:
        wset = {wptr + item * (b * wld + j) for b in range(B) for j in range(size(nodes[i].size))}
        for j, rptr, rld in reads:
            rset = {rptr + item * (b * rld + c) for b in range(B) for c in range(size(nodes[j].size))}
            if wset & rset and i != j:
                LOG.append(f"{desc.name}: writes %{i} over a region it reads for %{j}")


class Graph:
    """Records the calls `issue` makes, and replays them."""

    def __init__(self, issue, stream):
        RECORDING.append([])
        try:
            issue(stream)
        finally:
            self.calls = RECORDING.pop()
        GRAPHS.append(self)

    def launch(self, stream):
        for fn, args in self.calls:
            fn(*args)


class Uniform:
    """The device's generator of uniform draws, with numpy's."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, shape):
        return cupy.asarray(self.rng.random(shape, np.float32))


class SideStream:
    """The emulation runs every stream's work in the order it is issued."""

    handle = 0

    def fork(self, stream):
        return 0

    def join(self, stream):
        pass


GRAPHS = []
device.Uniform, device.SideStream = Uniform, SideStream
device.check_available = lambda: None
device.launch, device.copy_rows, device.zero, device.Graph = launch, copy_rows, zero, Graph
device.is_capturing = lambda stream: False
device.current_stream = lambda: 0
device.current_device = lambda: 0
cublas.gemm = gemm
cublas.gemm_batched = gemm_batched
cublas.lane = lambda stream: stream
executor.load_module = lambda source: None
executor.function = lambda module, name: name

_engine_init = executor.Engine.__init__


def _init(self, program, sizes):
    _engine_init(self, program, sizes)
    item = ITEM[program.plan.dtype]
    self.functions = {name: (name, item) for name in program.kernels}
    if program.add is not None:
        self.add_function = (program.add.name, item)
    for phase in (program.plan.forward, program.plan.backward):
        for _, op in phase.ops():
            if type(op).__name__ == "Kernel":
                if op.joins:  # a stage of the launch before it
                    KERNELS[leader][1].append(op)
                else:
                    leader = op.name
                    KERNELS[op.name] = (program.kernels[op.name], [op], phase.nodes)


executor.Engine.__init__ = _init


def check(spec, T=4, B=3, I=5, H=6, L=1, schedule=None, P=None, seed=0, dfinal=True, verbose=True, graphs=False,
          dtype="float32", bidirectional=False, lengths=None, dropout=0.0, dropconnect=0.0, num_heads=None):
    kw = dict(num_layers=L, seed=seed, schedule=schedule, dtype=dtype, bidirectional=bidirectional, dropout=dropout,
              dropconnect=dropconnect)
    if P:
        kw["proj_size"] = P
    if num_heads:
        kw["num_heads"] = num_heads
    gpu = lstmdsl.compile(spec, input_size=I, hidden_size=H, backend="cuda", **kw)
    gpu.use_graphs = graphs
    randomize(gpu, seed + 1)
    x, state, dy, dstate = random_case(gpu, T, B, seed + 2)
    if gpu.cell.name == "slstm":  # its normaliser is positive (tests/conftest.py POSITIVE_STATES)
        state["n"] = np.abs(state["n"]) + 0.5
    if not dfinal:
        dstate = {k: np.zeros_like(v) for k, v in dstate.items()}
    result = compare(gpu, x, state, dy, dstate, lengths)
    if graphs:  # a second call replays the captured graphs
        result = compare(gpu, x, state, dy, dstate, lengths)
    bad = result.failures()
    if LOG:
        bad["overlap: " + "; ".join(sorted(set(LOG)))[:200]] = 1
    if verbose:
        print("OK" if not bad else f"BAD {bad}", *(set(LOG) or []))
    LOG.clear()
    return bad
