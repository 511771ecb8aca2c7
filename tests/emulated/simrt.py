"""Run lstmdsl's CUDA runtime on the CPU: a fake CuPy (cupy/ beside this file) for the arrays, and the
runtime's device layer (lstmdsl/runtime/device.py: launches, strided copies, fills, graphs) and cuBLAS
GEMMs emulated on host memory from the raw addresses, leading dimensions and pitches the runtime
computes, bounds-checked against the allocations. Kernels are emulated by the plan's node semantics from
their KernelDescs. A CUDA graph records the calls issued at capture and replays exactly those, so the
addresses baked in at capture are what later calls use. Used by tests/test_runtime_emulated.py in a
subprocess, so the fake CuPy never meets the other tests."""
import bisect
import ctypes
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cupy  # noqa: E402 - the fake one
import lstmdsl  # noqa: E402
from lstmdsl import reference  # noqa: E402
from lstmdsl.check import compare, random_case, randomize  # noqa: E402
from lstmdsl import draws  # noqa: E402
from lstmdsl.runtime import convert, cublas, device, executor, nvrtc, specialise, warmup, workspace  # noqa: E402
from lstmdsl.runtime import draws as rt_draws  # noqa: E402

workspace.POISON = True
LOG = []
KERNELS = {}  # kernel name -> (KernelDesc, Kernel op, phase nodes); the last program built wins
IN_PLACE = {}  # kernel name -> (written, read) node pairs that Storage.in_place lets share their elements
RECORDING = []  # the calls of a graph being captured


NP = {"f32": np.float32, "f64": np.float64, "bf16": np.uint16, "f16": np.float16, "u8": np.uint8}
CTYPE = {"float": "f32", "double": "f64", "lstmdsl_bf16": "bf16", "lstmdsl_f16": "f16"}


_STARTS, _ENDS, _INDEXED = [], [], [0]  # the allocations sorted by start (cupy.ALLOCS keeps every one alive)


def _allocated(start, end) -> bool:
    """Whether [start, end) lies inside one allocation: the one starting last at or before `start`, found by
    bisection (the allocations are never freed, so they never overlap, except arrays wrapping the same
    memory twice: those fall back to a scan). A scan of all of them at every access made the emulated run
    quadratic in the number of cases."""
    for s, e, _ in cupy.ALLOCS[_INDEXED[0]:]:
        i = bisect.bisect_right(_STARTS, s)
        _STARTS.insert(i, s)
        _ENDS.insert(i, e)
    _INDEXED[0] = len(cupy.ALLOCS)
    i = bisect.bisect_right(_STARTS, start) - 1
    if i >= 0 and end <= _ENDS[i]:
        return True
    return any(s <= start and end <= e for s, e, _ in cupy.ALLOCS)


def region(ptr, rows, cols, ld, dtype):
    """a [rows, cols] view at ptr with leading dimension ld (elements of dtype: f32, f64, bf16 (its bits),
    f16 or u8 for bytes), bounds-checked."""
    item = np.dtype(NP[dtype]).itemsize
    start, end = ptr, ptr + item * ((rows - 1) * ld + cols)
    if not _allocated(start, end):
        raise AssertionError(f"out of bounds: [{start:#x}, {end:#x}) rows={rows} cols={cols} ld={ld}")
    buf = (ctypes.c_uint8 * (end - start)).from_address(start)
    flat = np.frombuffer(buf, NP[dtype])
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item * ld, item)), (start, end)


def to_float(a, dtype):
    """Values of an array of dtype as floats (bf16 from its bits; exact)."""
    if dtype == "bf16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float64 if dtype == "f64" else np.float32)


def from_float(v, dtype):
    """Floats stored as dtype, rounded to nearest even as the kernels' conversions do."""
    if dtype != "bf16":
        return np.asarray(v).astype(NP[dtype])
    f = np.asarray(v, np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), out)


def load(ptr, rows, cols, ld, dtype):
    return to_float(region(ptr, rows, cols, ld, dtype)[0], dtype)


def store(ptr, rows, cols, ld, dtype, values, add=False):
    view = region(ptr, rows, cols, ld, dtype)[0]
    if add:
        values = to_float(view, dtype) + values
    view[...] = from_float(np.broadcast_to(values, (rows, cols)), dtype)


def columns(val, name, n):
    """The columns of a slot's n elements: 0..n-1, or their places in a slot stored head by head
    (the kernel's hb_<name> / hp_<name> arguments, Slot.interleave)."""
    j = np.arange(n)
    if f"hb_{name}" not in val:
        return j
    hb, hp = int(val[f"hb_{name}"]), int(val[f"hp_{name}"])
    return (j // hb) * hp + j % hb


def load_cols(ptr, rows, cols, ld, dtype):
    return load(ptr, rows, int(cols[-1]) + 1, ld, dtype)[:, cols] if len(cols) else np.zeros((rows, 0))


def store_cols(ptr, rows, cols, ld, dtype, values, add=False):
    values = np.broadcast_to(values, (rows, len(cols)))
    if len(cols) and np.array_equal(cols, np.arange(len(cols))):  # (0..n-1: one store of the block; a column at
        store(ptr, rows, len(cols), ld, dtype, values, add=add)   # a time took a quarter of the emulated run)
        return
    item = np.dtype(NP[dtype]).itemsize
    for k, c in enumerate(cols):
        store(ptr + item * int(c), rows, 1, ld, dtype, values[:, k:k + 1], add=add)


def run_or_record(fn, args):
    """Record fn(*args) into the graph being captured, or run it now."""
    if RECORDING and RECORDING[-1] is not None:
        RECORDING[-1].append((fn, args))
    else:
        fn(*args)


def recorded(fn):
    """Run fn now, or record it while a graph is being captured (or queue it on a wavefront's stream)."""
    def wrapper(*args):
        deferred = next((w for w in WAVES if any(type(a) is int and a in w.queues for a in args)), None)
        capturing = RECORDING and RECORDING[-1] is not None
        if deferred is not None and not (capturing and isinstance(deferred, SideStream)):
            deferred.queue(fn, args)  # (a side stream's graph is captured as usual, and its launch deferred)
        else:
            run_or_record(fn, args)
    wrapper.__wrapped__ = fn
    return wrapper


ITEM = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2}


WORKSPACES = set()  # (A's type, the cuBLAS workspace's bytes) of every GEMM run (Issue.workspace: the plan's)


@recorded
def gemm(M, N, K, a, lda, ta, b, ldb, tb, c, ldc, acc, types, stream, lane=0, workspace=None, first=False):
    a_t, b_t, c_t, compute = types
    WORKSPACES.add((a_t, workspace))
    assert a_t == b_t, f"cuBLAS multiplies operands of one type, got {a_t} and {b_t}"
    A = load(a, K, M, lda, a_t).T if ta else load(a, M, K, lda, a_t)
    Bm = load(b, N, K, ldb, b_t).T if tb else load(b, K, N, ldb, b_t)
    store(c, M, N, ldc, c_t, A.astype(np.float64) @ Bm.astype(np.float64), add=acc)


@recorded
def gemm_batched(M, N, K, a, lda, ta, b, ldb, tb, c, ldc, acc, types, stream, lane, count, strides, workspace=None):
    items = [ITEM[t] for t in types[:3]]
    for i in range(count):
        gemm.__wrapped__(M, N, K, a + i * strides[0] * items[0], lda, ta, b + i * strides[1] * items[1], ldb, tb,
                         c + i * strides[2] * items[2], ldc, acc, types, stream, lane, workspace)


@recorded
def copy_rows(dst, dst_pitch, src, src_pitch, width, rows, stream):
    for r in range(rows):
        region(src + r * src_pitch, 1, width, width, "u8")
        region(dst + r * dst_pitch, 1, width, width, "u8")
        ctypes.memmove(dst + r * dst_pitch, src + r * src_pitch, width)


@recorded
def zero(ptr, nbytes, stream):
    region(ptr, 1, nbytes, nbytes, "u8")
    ctypes.memset(ptr, 0, nbytes)


@recorded
def zero_rows(ptr, pitch, width, rows, stream):  # (one device call, as the 2-D memset is)
    for r in range(rows):
        region(ptr + r * pitch, 1, width, width, "u8")
        ctypes.memset(ptr + r * pitch, 0, width)


@recorded
def launch(function, grid, threads, args, stream):
    name, dtype = function
    if name.endswith("_add"):
        dst, ld_dst, src, ld_src, n, rows = (v for _, v in args)
        store(dst, rows, n, ld_dst, dtype, load(src, rows, n, ld_src, dtype), add=True)
        return
    if name == "lstmdsl_uniform":  # runtime/draws.py: the numpy twin of its kernel
        out, n, key, offset = (v for _, v in args)
        store(out, 1, n, n, "f32", draws.uniform(key, offset, (1, n)))
        return
    if name.startswith("lstmdsl_convert_"):  # runtime/convert.py
        src_t, dst_t = name[len("lstmdsl_convert_"):].split("_")
        dst, ld_dst, src, ld_src, n, rows = (v for _, v in args)
        store(dst, rows, n, ld_dst, dst_t, load(src, rows, n, ld_src, src_t))
        return
    desc, ops, nodes = KERNELS[name]
    val = {a.name: v for a, (_, v) in zip(desc.args, args)}
    types = {a.name: CTYPE[a.ctype.replace("const ", "").replace("* __restrict__", "").replace("*", "").strip()]
             for a in desc.args if "*" in a.ctype}
    for stage, op in zip(desc.stages or (desc,), ops):  # a row-fused launch: its stages in order
        _stage(stage, op, nodes, val, dtype, types)


SHARED = 227 * 1024  # what an H200 block may opt in to; the emulated device has 132 multiprocessors
STATIC = 256  # the emulated kernels' static shared memory (block_reduce's partial sums in double)
PERSISTENT = []  # (kernel name, blocks, shared bytes, cached) of every persistent launch
SPECIAL = []  # the names of the launches of kernels compiled for their shapes (runtime/specialise.py)


@recorded
def launch_cooperative(function, blocks, threads, shared, args, stream):
    """A persistent kernel: its stages in order at every step, each slot at that step's address."""
    name, dtype = function[:2]
    desc, ops, nodes = KERNELS[name]
    PERSISTENT.append((name, blocks, shared, args[[a.name for a in desc.args].index("cached")][1]))
    if len(function) > 2:  # a kernel compiled for its launch's shape: its constants must be this launch's
        SPECIAL.append(name)
        line = next(ln for ln in function[2].splitlines() if ln.startswith("// compiled for one launch: "))
        said = dict(kv.split(" = ") for kv in line.split(": ", 1)[1].split(", ")[1:])
        given = {a.name: str(v) for a, (_, v) in zip(desc.args, args) if a.name in said}
        assert said == given and line.split(": ", 1)[1].startswith(f"{blocks} blocks"), \
            f"{name} compiled for {line} launched with {blocks} blocks, {given}"
    assert shared <= SHARED - STATIC and blocks >= 1, "dynamic and static shared memory past the limit"
    val = {a.name: v for a, (_, v) in zip(desc.args, args)}
    types = {a.name: CTYPE[a.ctype.replace("const ", "").replace("*", "").strip()] for a in desc.args
             if "*" in a.ctype and a.name not in ("bar", "xchg")}
    types.update({p.name: types[p.name + "_0"] for p in desc.pointers})
    groups = []
    for op in ops:
        if op.joins:
            groups[-1].append(op)
        else:
            groups.append([op])
    T = int(val["T"])
    for s in range(T):
        t = T - 1 - s if desc.reverse else s
        step = dict(val)
        for p in desc.pointers:
            area = t + p.area.step
            if val[p.area.buffer + "_m"]:
                area %= int(val[p.area.buffer + "_m"])
            step[p.name] = val[p.name + "_0"] + ITEM[types[p.name]] * area * int(val[p.area.buffer + "_s"])
        for stage, group in zip(desc.stages, groups):
            for sub, op in zip(stage.stages or (stage,), group):
                _stage(sub, op, nodes, step, dtype, types, {c.node: c for c in desc.cached})


def _matrix(val, key, rows, cols, dtype, cached=None):
    """A persistent stage's matrix w<key> as [rows, cols]; a block-diagonal one (hr<key> rows and hc<key>
    columns a head: CachedWeights.heads) is stored as its blocks stacked by rows, and comes back whole; from a
    stack's head-by-head copy (CachedWeights.order: matrix m of M, w<key> the copy's first row), head g's rows
    of this matrix are the copy's rows (g * M + m) * hr onward."""
    if f"hr{key}" not in val:
        return load(val[f"w{key}"], rows, cols, int(val[f"ldw{key}"]), dtype)
    hr, hc = int(val[f"hr{key}"]), int(val[f"hc{key}"])
    if cached is not None and cached.order:
        m, M = cached.order
        copy = load(val[f"w{key}"], M * rows, hc, int(val[f"ldw{key}"]), dtype).astype(np.float64)
        blocks = np.concatenate([copy[(g * M + m) * hr:(g * M + m + 1) * hr] for g in range(rows // hr)])
    else:
        blocks = load(val[f"w{key}"], rows, hc, int(val[f"ldw{key}"]), dtype).astype(np.float64)
    whole = np.zeros((rows, cols))
    for g in range(rows // hr):
        whole[g * hr:(g + 1) * hr, g * hc:(g + 1) * hc] = blocks[g * hr:(g + 1) * hr]
    return whole


_OUTPUTS = {}  # id(KernelDesc) -> (the desc, kept alive, and its outputs: (arg, node, whether the kernel adds))


def _outputs(desc):
    """The kernel's output arguments, each with its node and whether the kernel adds into it (`+=` in its lines),
    read from the desc once, not at every launch."""
    if id(desc) not in _OUTPUTS:
        text = "\n".join(line for _, lines in desc.groups for line in lines)
        outs = []
        for a in desc.args:
            if a.name.startswith("out"):
                add = any(f"{a.name}[b * ld_{a.name}{tail}] +=" in text
                          for tail in ("", " + j", f" + (j / hb_{a.name}) * hp_{a.name} + j % hb_{a.name}"))
                outs.append((a, int(a.name[3:].split("_")[0]), add))
        _OUTPUTS[id(desc)] = (desc, outs)
    return _OUTPUTS[id(desc)][1]


def _stage(desc, op, nodes, val, real, types, cached=None):
    B = int(val["B"])
    size = lambda s: 1 if s == "one" else int(val[f"n_{s}"])  # noqa: E731
    sizes = {k[2:]: int(v) for k, v in val.items() if k.startswith("n_")} | {"one": 1}
    dtype = np.dtype(NP[real])
    item = {name: ITEM[t] for name, t in types.items()}
    if desc.reduce is not None:  # one reduction node: its arguments are in<a> / p<a>, by node
        (i,) = op.nodes
        n = nodes[i]
        parts = []
        for a in n.args:
            width = size(nodes[a].size)
            if nodes[a].op == "param":
                parts.append(np.broadcast_to(load(val[f"p{a}"], 1, width, 1, types[f"p{a}"])[0], (B, width)))
            else:
                parts.append(load(val[f"in{a}"], B, width, val[f"ld_in{a}"], types[f"in{a}"]))
        result = reference.eval_node(n, parts, {}, B, dtype, sizes)
        for k, line in enumerate(desc.reduce[3]):
            name = f"out{i}_{k}"
            store(val[name], B, 1, val[f"ld_{name}"], types[name], result, add="+=" in line)
        return
    values, reads, writes = {}, [], []
    for a in desc.args:
        if a.name.startswith("in"):
            i = int(a.name[2:])
            cols = columns(val, a.name, size(nodes[i].size))
            values[i] = load_cols(val[a.name], B, cols, val["ld_" + a.name], types[a.name])
            reads.append((i, val[a.name], val["ld_" + a.name], item[a.name], cols))
        elif a.name.startswith("p"):
            i = int(a.name[1:])
            values[i] = np.broadcast_to(load(val[a.name], 1, size(nodes[i].size), 1, types[a.name])[0],
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
            W = _matrix(val, i, size(n.size), size(nodes[x].size), types[f"w{i}"], (cached or {}).get(i))
            values[i] = values[x].astype(np.float64) @ W.T.astype(np.float64)
        elif n.op == "matvec_t":  # a persistent backward's: the sum over its (operand, matrix) pairs
            values[i] = sum(values[x].astype(np.float64) @ _matrix(
                val, f"{i}_{m}", size(nodes[x].size), size(n.size), types[f"w{i}_{m}"],
                (cached or {}).get(f"{i}_{m}")).astype(np.float64) for m, x in enumerate(n.args))
        else:
            v = reference.eval_node(n, [values[x] for x in n.args], {}, B, dtype, sizes)
            values[i] = np.broadcast_to(v, (B, size(n.size)))
    for a, i, add in _outputs(desc):
        cols = columns(val, a.name, size(nodes[i].size))
        store_cols(val[a.name], B, cols, val["ld_" + a.name], types[a.name], values[i], add=add)
        writes.append((i, val[a.name], val["ld_" + a.name], item[a.name], cols))
    batch = np.arange(B)[:, None]  # (each element's address: sets made from arrays, not Python loops)
    addresses = lambda ptr, ld, nbytes, cols: set((ptr + nbytes * (batch * ld + np.asarray(cols, np.int64)[None, :])  # noqa: E731
                                                   ).ravel().tolist())
    rsets = [addresses(rptr, rld, ritem, rcols) for _, rptr, rld, ritem, rcols in reads]
    for i, wptr, wld, witem, wcols in writes:
        wset = addresses(wptr, wld, witem, wcols)
        for (j, rptr, rld, ritem, rcols), rset in zip(reads, rsets):
            if (i, j) in IN_PLACE.get(desc.name, ()) and (wptr, wld, witem) == (rptr, rld, ritem) \
                    and list(wcols) == list(rcols):
                continue  # Storage.in_place, element for element: each thread loads its element before it stores
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
        side = next((w for w in WAVES if isinstance(w, SideStream) and stream in w.queues), None)
        if side is not None:  # launched on a side stream: it runs at the join
            side.queue(self.launch, (None,))
            return
        for fn, args in self.calls:
            fn(*args)


class SideStream:
    """A side stream (device.SideStream): its work is queued and run at the join, after everything issued
    on the main stream meanwhile (the latest order the events allow), so work on the main stream that
    writes what the side stream's reads shows up as a wrong result."""

    COUNT = [0]

    def __init__(self):
        self.handle = 0x51DE0000 + self.COUNT[0]
        self.COUNT[0] += 1
        self.queues = {self.handle: []}

    def fork(self, stream):
        if self not in WAVES:
            WAVES.append(self)
        return self.handle

    def queue(self, fn, args):
        self.queues[self.handle].append((fn, args))

    def join(self, stream):
        if self in WAVES:
            WAVES.remove(self)
        calls, self.queues[self.handle] = self.queues[self.handle], []
        for fn, args in calls:
            run_or_record(fn, args)


class Wave:
    """A wavefront's layer streams (device.Wave). The work issued on them is queued per stream, and at the
    join run in one of three orders, in turn from one join to the next: the last layer that may run first,
    as far as its waits allow (a chunk that reads what another layer writes, with no wait between them,
    reads the poison instead), and two lockstep orders, one chunk per layer per round from the first layer
    up or from the last down (the layers interleaved, as they run on the GPU, so work of two layers that
    shares memory without a wait between them gives a wrong result)."""

    BASE = 0x5EED0000  # fake stream handles
    ORDER = [0]  # the next join's order: 0 latest layer first, 1 lockstep upwards, 2 lockstep downwards

    def __init__(self, layers):
        self.streams = [self.BASE + k for k in range(layers)]
        self.queues = {}

    def fork(self, stream):
        self.queues = {s: [] for s in self.streams}
        self.issued = [0] * len(self.streams)  # done() calls issued per layer
        WAVES.append(self)
        return list(self.streams)

    def queue(self, fn, args):
        stream = next(a for a in args if type(a) is int and a in self.queues)
        self.queues[stream].append(("call", fn, args))

    def done(self, k, stream):
        self.issued[k] += 1
        self.queues[stream].append(("done", k))

    def after(self, k, stream):
        self.queues[stream].append(("after", k, self.issued[k]))  # the record it waits for: the latest

    def join(self, stream):
        WAVES.remove(self)
        order, self.ORDER[0] = self.ORDER[0], (self.ORDER[0] + 1) % 3
        ran, queues = [0] * len(self.streams), [list(q) for q in self.queues.values()]
        while any(queues):
            progress = False
            for q in (reversed(queues) if order != 1 else queues):
                while q and not (q[0][0] == "after" and ran[q[0][1]] < q[0][2]):
                    item = q.pop(0)
                    if item[0] == "call":
                        run_or_record(*item[1:])
                    progress = True
                    if item[0] == "done":
                        ran[item[1]] += 1
                        if order:  # lockstep: one chunk of this layer, then the next layer's
                            break
            assert progress, "the wavefront's streams wait for each other"


WAVES = []
GRAPHS = []
device.SideStream, device.Wave = SideStream, Wave
device.check_available = lambda: None
device.launch, device.copy_rows, device.zero, device.Graph = launch, copy_rows, zero, Graph
device.zero_rows = zero_rows
device.launch_cooperative = launch_cooperative
device.on_chip = lambda: (132, SHARED)
device.shared_budget = lambda function: SHARED - STATIC
device.co_resident = lambda function, threads, shared: 1 if shared <= SHARED - STATIC else 0
device.is_capturing = lambda stream: False
device.current_stream = lambda: 0
device.current_device = lambda: 0
cublas.gemm = gemm
warmup.start = lambda device, warm: None  # (no cuBLAS to start)
cublas.gemm_batched = gemm_batched
cublas.lane = lambda stream, part=0: stream
cublas.current_device = lambda: 0
cublas._time = lambda call, stream, calls=20: 1.0  # (no GPU: both ways take the same time, the workspace is kept)
LT_ASKED = set()  # (M, N, K, the workspace's bytes) of every shape whose cuBLASLt first kernel tune looked up (none)
cublas._first_kernel = lambda M, N, K, *rest: LT_ASKED.add((M, N, K, rest[-1]))
cublas._handle = lambda lane, bare=False, gemm_types=("f32",), workspace=None: types.SimpleNamespace(stream=None,
                                                                                                    bare=bare)
cublas._identity = lambda lane: ("emulated", 0)
cublas._store = lambda key, bare: None  # (the choices stay in this process: nothing written to the cache)
# a kernel compiled for one shape (runtime/specialise.py): the "module" is its source, which the launch checks
executor.load_module = specialise.load_module = lambda source: source
executor.function = specialise.function = \
    lambda module, name: (name, "f64" if "#define real double" in module else "f32", module)
nvrtc.prepare = lambda source, arch: time.sleep(0.01)  # (the compile thread's work: none to do here)
nvrtc.architecture = lambda: "90"
convert.load_module = lambda source: None
convert.function = lambda module, name: (name, "f32")
rt_draws.load_module = lambda source: None
rt_draws.function = lambda module, name: (name, "f32")

_engine_init = executor.Engine.__init__


def _init(self, program, sizes):
    _engine_init(self, program, sizes)
    dtype = program.plan.dtype
    self.functions = {name: (name, dtype) for name in program.kernels}
    if program.add is not None:
        self.add_function = (program.add.name, dtype)
    st = program.plan.storage
    pairs = {"forward": {(v, p) for where, v, p in st.in_place if where == "forward"},
             "backward": {(g, j) for where, g, _ in st.in_place if where == "backward"
                          for j, n in enumerate(program.plan.backward.nodes) if n.op == "fwd"}}
    for title, phase in (("forward", program.plan.forward), ("backward", program.plan.backward)):
        for _, op in phase.ops():
            if type(op).__name__ == "Kernel":
                IN_PLACE[op.name] = pairs[title]
                if op.joins:  # a stage of the launch before it
                    KERNELS[leader][1].append(op)
                else:
                    leader = op.name
                    KERNELS[op.name] = (program.kernels[op.name], [op], phase.nodes)
        pers = phase.loop.persistent
        if pers is not None:
            KERNELS[pers.name] = (program.kernels[pers.name], list(pers.stages), phase.nodes)
            IN_PLACE.update({name: pairs[title] for name in [pers.name] + [st.name for st in pers.stages]})


executor.Engine.__init__ = _init


def check(spec, T=4, B=3, I=5, H=6, L=1, schedule=None, P=None, seed=0, dfinal=True, verbose=True, graphs=False,
          dtype="float32", bidirectional=False, lengths=None, dropout=0.0, dropconnect=0.0, num_heads=None,
          fanout=True, zero_states=False, overlap=True):
    kw = dict(num_layers=L, seed=seed, schedule=schedule, dtype=dtype, bidirectional=bidirectional, dropout=dropout,
              dropconnect=dropconnect)
    if P:
        kw["proj_size"] = P
    if num_heads:
        kw["num_heads"] = num_heads
    gpu = lstmdsl.compile(spec, input_size=I, hidden_size=H, backend="cuda", **kw)
    gpu.use_graphs, gpu.use_fanout, gpu.overlap_directions = graphs, fanout, overlap
    randomize(gpu, seed + 1)
    x, state, dy, dstate = random_case(gpu, T, B, seed + 2)
    if gpu.cell.name == "slstm":  # its normaliser is positive (tests/conftest.py POSITIVE_STATES)
        state["n"] = np.abs(state["n"]) + 0.5
        if gpu.schedule.precision in ("bf16", "fp16"):  # (the stabiliser's kink: see tests/test_gpu.py check)
            dfinal = False
    if zero_states:  # (the default a caller gets; the reverse direction holds it through its padding)
        state = {k: np.zeros_like(v) for k, v in state.items()}
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
