"""Where a persistent kernel's step goes, by the clock of each warp: the kernels rendered from a copy of templates/
in which every thread adds clock64() differences at six points of every step and lane 0 of each warp stores its
sums at the end into a __device__ array of the module, read back with CuPy's RawModule.get_global. Nothing in the
package changes; the instrumented kernels have source (and cache entries) of their own. Phases, a step of a
one-stage kernel (the vanilla LSTM):
  staging    the step's start to the end of the warp's staging of the products' operand (in a grid that hands its
             state on in tagged words: the polls for the other blocks' words of the step before, i.e. the
             hand-off's latency)
  stage bar  the block barrier after it (waiting for the block's slowest warp)
  products   the warp's share of the tensor-core or register-tile products
  prod bar   the barrier after them
  items      the warp's items (the pointwise work, its stores, its exchange words)
  end        the barriers that end the stage and the step (in the tagged-words grid only the block's own)
Printed: block 0's warps, and warp 0's phases over the blocks (min, median, max).
Cycles a step (and us at the device's clock rate), forward only, T = 100, one layer, the schedule `auto` chooses.

    python3 benchmarks/probe_step_clock.py [--spec vanilla] [--schedule "specialise"] [fp16:16x256 fp32:1x512 ...]
        [--products]   (bf16/fp16: the tensor-core products split in three, clocked in half_products.cu.j2: the
                        warp's k-steps with their sums' stores, the wait at the slices' barrier, the slices' sums)
        [--polls]      (a grid that hands its state on in tagged words: the rounds of loads its staging took a
                        step, the most of a warp's lanes, in pointwise.cu.j2's stage_exchanged_by)
        [--lengths]    (each call with lengths uniform in [T/2, T], one of them T: the kernels of the cell that
                        masks each sequence's end, issue 12's packed batches)

(--schedule: more of the schedule after `precision P`; a spec with one product stage, the vanilla LSTM's kind)

Needs a GPU and CuPy."""
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import sys
import cupy
import lstmdsl
from lstmdsl import api, codegen, resources
from lstmdsl.runtime import nvrtc
templates, blocks, warps, phases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
name, extra, masked = sys.argv[5], sys.argv[6], sys.argv[7] == "lengths"
real = codegen.resource_dir
codegen.resource_dir = lambda folder: __import__("pathlib").Path(templates) if folder == "templates" else real(folder)
codegen._template.cache_clear()
spec = lstmdsl.parse(resources.shipped_specs()[name].read_text())
for case in sys.argv[8:]:
    precision, shape = case.split(":")
    B, H = (int(v) for v in shape.split("x"))
    schedule = f"precision {precision}" + (f"; {extra}" if extra else "")
    layer = api.compile(spec, H, H, 1, backend="cuda", schedule=schedule, seed=0)
    x = cupy.random.standard_normal((100, B, H), dtype=cupy.float32)
    lengths = None
    if masked:  # uniform in [T/2, T], one of them T (seeded)
        import numpy
        lengths = numpy.random.default_rng(0).integers(50, 101, B)
        lengths[0] = 100
    for _ in range(3):
        layer.forward(x, train=False, lengths=lengths)
    nvrtc.settle()
    layer.forward(x, train=False, lengths=lengths)
    cupy.cuda.Device().synchronize()
    sums = [cupy.ndarray((blocks, warps, phases + 1), cupy.int64, m.get_global("lstmdsl_clock_out"))
            for src, m in nvrtc._MODULES.items() if "lstmdsl_clock_out" in src]
    subs = [cupy.ndarray((blocks, warps, 3), cupy.int64, m.get_global("lstmdsl_clock_sub"))
            for src, m in nvrtc._MODULES.items() if "lstmdsl_clock_sub[" in src]
    polls = [cupy.ndarray((blocks, warps), cupy.uint64, m.get_global("lstmdsl_poll_rounds"))
             for src, m in nvrtc._MODULES.items() if "lstmdsl_poll_rounds[" in src]
    for a in sums + subs + polls:
        a[...] = 0
    layer.forward(x, train=False, lengths=lengths)
    cupy.cuda.Device().synchronize()
    print(f"CASE {case} {cupy.cuda.runtime.getDeviceProperties(0)['clockRate']}", flush=True)
    for a in sums:  # the module whose kernel ran has T in the last column
        a = cupy.asnumpy(a)
        if a[..., -1].any():
            print("DATA", " ".join(str(v) for v in a.reshape(-1).tolist()), flush=True)
    for a in subs:
        a = cupy.asnumpy(a)
        if a.any():
            print("SUB", " ".join(str(v) for v in a.reshape(-1).tolist()), flush=True)
    for a in polls:
        a = cupy.asnumpy(a)
        if a.any():
            print("POLL", " ".join(str(v) for v in a.reshape(-1).tolist()), flush=True)
    print("END", flush=True)
    layer.free_workspaces()
"""

BLOCKS, WARPS, PHASES = 160, 32, 6  # the array's room: blocks, warps a block, phases a step
PHASE_NAMES = ("staging", "stage bar", "products", "prod bar", "items", "end")
TICK = "lstmdsl_ck[{}] += clock64() - lstmdsl_c0, lstmdsl_c0 = clock64();\n"
EDITS = [  # (anchor, replacement) in persistent.cu.j2; each anchor must occur exactly once
    ("    for (int s = 0; s < T; ++s) {\n",
     "    long long lstmdsl_ck[6] = {0, 0, 0, 0, 0, 0}, lstmdsl_c0 = clock64();\n    for (int s = 0; s < T; ++s) {\n"),
    ("                // the products, [nb][J] each, pstride apart",
     "                " + TICK.format(0) + "                // the products, [nb][J] each, pstride apart"),
    ("                __syncthreads();\n{%- set lean = namespace(n=0, m=0) %}",
     "                __syncthreads();\n                " + TICK.format(1) + "{%- set lean = namespace(n=0, m=0) %}"),
    ("{%- endfor %}\n                __syncthreads();\n                for (int item = threadIdx.x",
     "{%- endfor %}\n                " + TICK.format(2) + "                __syncthreads();\n                "
     + TICK.format(3) + "                for (int item = threadIdx.x"),
    ("                // before the next rows overwrite the staged operands",
     "                " + TICK.format(4) + "                // before the next rows overwrite the staged operands"),
    ("grid_barrier(bar, target += {{ grid }});\n",
     "grid_barrier(bar, target += {{ grid }});\n        " + TICK.format(5)),
]
END = ("    }\n    if ((threadIdx.x & 31) == 0 && blockIdx.x < %d && threadIdx.x / 32 < %d) {\n"
       "        long long* const o = lstmdsl_clock_out + ((size_t)blockIdx.x * %d + threadIdx.x / 32) * 7;\n"
       "        for (int k = 0; k < 6; ++k) o[k] = lstmdsl_ck[k];\n"
       "        o[6] = T;\n"
       "    }\n}\n") % (BLOCKS, WARPS, WARPS)
# the sums of lane 0 of every warp of every block, each with T (one array a module, so #ifndef: several kernels
# include it)
OUT = ('#ifndef LSTMDSL_CLOCK_OUT\n#define LSTMDSL_CLOCK_OUT\n'
       'extern "C" {\n__device__ long long lstmdsl_clock_out[%d];\n}\n#endif\n') % (BLOCKS * WARPS * 7)


# --products: three more sums a warp, of the tensor-core products' parts (RED: no wait on memory in the step)
SUB = ('#ifndef LSTMDSL_CLOCK_SUB\n#define LSTMDSL_CLOCK_SUB\n'
       'extern "C" {\n__device__ long long lstmdsl_clock_sub[%d];\n}\n#endif\n') % (BLOCKS * WARPS * 3)
SUB_EDITS = [  # in half_products.cu.j2 (mma_products)
    ("    const int items = plan.tiles * plan.slices;\n",
     "    const int items = plan.tiles * plan.slices;\n"
     "    const long long lstmdsl_s0 = clock64();\n    long long lstmdsl_s1 = lstmdsl_s0, lstmdsl_s2 = 0;\n"),
    ("    if (plan.slices > 1) {  // the slices' sums, in slice order\n        __syncthreads();\n",
     "    lstmdsl_s1 = clock64();\n    if (plan.slices > 1) {  // the slices' sums, in slice order\n"
     "        __syncthreads();\n        lstmdsl_s2 = clock64();\n"),
    ("            mma_put(plan.red_to[k], sum);\n        }\n    }\n}\n",
     "            mma_put(plan.red_to[k], sum);\n        }\n    }\n"
     "    if ((threadIdx.x & 31) == 0 && blockIdx.x < %d && (threadIdx.x >> 5) < %d) {\n"
     "        unsigned long long* const o = reinterpret_cast<unsigned long long*>(lstmdsl_clock_sub)"
     " + ((size_t)blockIdx.x * %d + (threadIdx.x >> 5)) * 3;\n"
     "        const long long e = clock64(), m = lstmdsl_s2 ? lstmdsl_s2 : lstmdsl_s1;\n"
     "        atomicAdd(o, (unsigned long long)(lstmdsl_s1 - lstmdsl_s0));\n"
     "        atomicAdd(o + 1, (unsigned long long)(m - lstmdsl_s1));\n"
     "        atomicAdd(o + 2, (unsigned long long)(e - m));\n    }\n}\n" % (BLOCKS, WARPS, WARPS)),
]


# --polls: each warp's rounds of loads in the staging of the exchanged words (the most of its lanes), a sum a warp
POLL = ('#ifndef LSTMDSL_POLL_ROUNDS\n#define LSTMDSL_POLL_ROUNDS\n'
        'extern "C" {\n__device__ unsigned long long lstmdsl_poll_rounds[%d];\n}\n#endif\n') % (BLOCKS * WARPS)
POLL_EDITS = [  # in pointwise.cu.j2 (stage_exchanged_by)
    ("template <int V, typename T>\n__device__ __forceinline__ void stage_exchanged_by(",
     POLL + "template <int V, typename T>\n__device__ __forceinline__ void stage_exchanged_by("),
    ("    int r = V * threadIdx.x / cols, c = V * threadIdx.x - r * cols;  // the row and column of element e below\n",
     "    int r = V * threadIdx.x / cols, c = V * threadIdx.x - r * cols;  // the row and column of element e below\n"
     "    unsigned lstmdsl_rounds = 0;\n"),
    ("        for (;;) {\n            bool ready = true;\n",
     "        for (;;) {\n            ++lstmdsl_rounds;\n            bool ready = true;\n"),
    ("                dst[to[k]] = T(__uint_as_float((unsigned)w[k]));\n        }\n    }\n}\n",
     "                dst[to[k]] = T(__uint_as_float((unsigned)w[k]));\n        }\n    }\n"
     "    lstmdsl_rounds = __reduce_max_sync(0xffffffffu, lstmdsl_rounds);\n"
     "    if ((threadIdx.x & 31) == 0 && blockIdx.x < %d && (threadIdx.x >> 5) < %d)\n"
     "        atomicAdd(lstmdsl_poll_rounds + (size_t)blockIdx.x * %d + (threadIdx.x >> 5), "
     "(unsigned long long)lstmdsl_rounds);\n}\n" % (BLOCKS, WARPS, WARPS)),
]


def _edit(text: str, edits, name: str) -> str:
    for anchor, repl in edits:
        if text.count(anchor) != 1:
            raise SystemExit(f"probe_step_clock: {name} changed ({text.count(anchor)} of {anchor!r})")
        text = text.replace(anchor, repl)
    return text


def instrumented(src: str, products: bool = False, polls: bool = False) -> str:
    """A copy of the templates folder with the clock probe in persistent.cu.j2 (and, products: in
    half_products.cu.j2; polls: the count of the staging's rounds in pointwise.cu.j2)."""
    out = tempfile.mkdtemp(prefix="lstmdsl_clock_")
    shutil.copytree(src, out, dirs_exist_ok=True)
    if polls:
        path = os.path.join(out, "pointwise.cu.j2")
        text = _edit(open(path).read(), POLL_EDITS, "pointwise.cu.j2")
        open(path, "w").write(text)
    if products:
        path = os.path.join(out, "half_products.cu.j2")
        text = _edit(open(path).read(), SUB_EDITS, "half_products.cu.j2")
        head, tail = text.split("#define LSTMDSL_HALF_PRODUCTS\n", 1)
        open(path, "w").write(head + "#define LSTMDSL_HALF_PRODUCTS\n" + SUB + tail)
    path = os.path.join(out, "persistent.cu.j2")
    text = _edit(open(path).read(), EDITS, "persistent.cu.j2")
    if not text.endswith("    }\n}\n"):
        raise SystemExit("probe_step_clock: the template's end changed")
    open(path, "w").write(OUT + text[:-len("    }\n}\n")] + END)
    return out


def main() -> None:
    import argparse

    import numpy

    from lstmdsl.resources import resource_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", default=["fp16:16x256", "fp16:8x512", "bf16:16x256", "fp16:4x1024",
                                                 "fp32:1x512", "fp32:16x256"], help="PRECISION:BxH")
    ap.add_argument("--spec", default="vanilla")
    ap.add_argument("--schedule", default="", help="appended to `precision P`, e.g. specialise")
    ap.add_argument("--products", action="store_true", help="the tensor-core products split in three (bf16, fp16)")
    ap.add_argument("--polls", action="store_true", help="the rounds of loads of the exchanged words a step")
    ap.add_argument("--lengths", action="store_true", help="lengths uniform in [T/2, T]: the masked cell's kernels")
    args = ap.parse_args()
    templates = instrumented(str(resource_dir("templates")), args.products, args.polls)
    r = subprocess.run([sys.executable, "-c", CHILD, templates, str(BLOCKS), str(WARPS), str(PHASES), args.spec,
                        args.schedule, "lengths" if args.lengths else "-", *args.cases], capture_output=True, text=True)
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-3000:])
        raise SystemExit(r.returncode)
    head = " ".join(f"{n:>9}" for n in PHASE_NAMES)
    case, khz = None, None
    for line in r.stdout.splitlines():
        if line.startswith("CASE"):
            _, case, khz = line.split()
            print(f"\n{case}: cycles a step (lane 0 of each warp; us at {int(khz) / 1e6:.2f} GHz)\n"
                  f"{'':22} {head} {'all':>9}")
        elif line.startswith("DATA"):
            a = numpy.array(line.split()[1:], dtype=numpy.int64).reshape(BLOCKS, WARPS, PHASES + 1)
            ran = a[..., -1] > 0  # (blocks with no elements return before the loop; warps past the block's)
            per = numpy.where(ran[..., None], a[..., :-1] / numpy.maximum(a[..., -1:], 1), numpy.nan)
            blocks = numpy.flatnonzero(ran.any(axis=1))

            def row(label, v):
                print(f"{label:22} " + " ".join(f"{c:9.0f}" for c in v) + f" {numpy.nansum(v):9.0f}"
                      f"  {numpy.nansum(v) / int(khz) * 1e3:.2f} us")
            row("block 0, warp 0", per[0, 0])
            for w in numpy.flatnonzero(ran[0])[1:]:
                row(f"block 0, warp {w}", per[0, w])
            w0 = per[blocks, 0]
            for name, f in (("warp 0s: min", numpy.nanmin), ("median", numpy.nanmedian), ("max", numpy.nanmax)):
                row(f"{name} ({len(blocks)} blocks)" if name == "median" else name, f(w0, axis=0))
            prods = numpy.nanmax(per[blocks, :, 2], axis=1)
            print(f"{'slowest products':22} block {int(blocks[numpy.argmax(prods)])}: {prods.max():.0f} cycles "
                  f"(a warp's most; the blocks' median {numpy.median(prods):.0f})")
            steps = numpy.maximum(a[..., -1], 1)
        elif line.startswith("SUB"):  # (after its case's DATA: the same blocks, and T a step)
            sub = numpy.array(line.split()[1:], dtype=numpy.int64).reshape(BLOCKS, WARPS, 3) / steps[..., None]
            print(f"{'products split':22} {'k-steps':>9} {'slice bar':>9} {'sums':>9}   (median over blocks)")
            for w in numpy.flatnonzero(ran[0]):
                print(f"{'warp %d' % w:22} " + " ".join(f"{c:9.0f}" for c in numpy.median(sub[blocks, w], axis=0)))
        elif line.startswith("POLL"):  # (the steps after the first stage exchanged words: T - 1 of them)
            rounds = numpy.array(line.split()[1:], dtype=numpy.float64).reshape(BLOCKS, WARPS)
            rounds = rounds[blocks][:, ran[0]] / numpy.maximum(a[blocks][:, ran[0], -1] - 1, 1)
            print(f"{'poll rounds a step':22} min {rounds.min():.2f}, median {numpy.median(rounds):.2f}, "
                  f"max {rounds.max():.2f} (a warp's, over blocks and warps; 1: no word was late)")


if __name__ == "__main__":
    main()
