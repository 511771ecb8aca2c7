"""Where a persistent kernel's step goes, by the clock of the thread on the critical path: the kernels rendered
from a copy of templates/ in which thread 0 of the first and last block adds clock64() differences at four points
of every step and stores the sums at the end into a __device__ array of the module, read back with CuPy's
RawModule.get_global. Nothing in the package changes; the instrumented kernels have source (and cache entries)
of their own. Phases, a step of a one-stage kernel (the vanilla LSTM):
  stage   the step's start to the barrier after staging the products' operand (in a grid that hands its state on
          in tagged words: the polls for the other blocks' words of the step before, i.e. the hand-off's latency)
  prods   the tensor-core or register-tile products and the barrier after them
  items   thread 0's items (the pointwise work, its stores, its exchange words)
  end     the barriers that end the stage and the step (none in the tagged-words grid but the block's own)
Cycles a step (and us at the device's clock rate), forward only, T = 100, one layer, the schedule `auto` chooses.
(Written in the twenty-third session and compiled here with nvcc; not yet run on a GPU.)

    python3 benchmarks/probe_step_clock.py [fp16:16x256 fp32:1x512 ...]

Needs a GPU and CuPy."""
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r'''
import sys
import cupy
import lstmdsl
from lstmdsl import api, codegen, resources
from lstmdsl.runtime import nvrtc
templates = sys.argv[1]
real = codegen.resource_dir
codegen.resource_dir = lambda name: __import__("pathlib").Path(templates) if name == "templates" else real(name)
codegen._template.cache_clear()
spec = lstmdsl.parse(resources.shipped_specs()["vanilla"].read_text())
for case in sys.argv[2:]:
    precision, shape = case.split(":")
    B, H = (int(v) for v in shape.split("x"))
    layer = api.compile(spec, H, H, 1, backend="cuda", schedule=f"precision {precision}", seed=0)
    x = cupy.random.standard_normal((100, B, H), dtype=cupy.float32)
    for _ in range(3):
        layer.forward(x, train=False)
    nvrtc.settle()
    layer.forward(x, train=False)
    cupy.cuda.Device().synchronize()
    sums = [cupy.ndarray((2, 5), cupy.int64, m.get_global("lstmdsl_clock_out"))
            for src, m in nvrtc._MODULES.items() if "lstmdsl_clock_out" in src]
    for a in sums:
        a[...] = 0
    layer.forward(x, train=False)
    cupy.cuda.Device().synchronize()
    print(f"CASE {case} {cupy.cuda.runtime.getDeviceProperties(0)['clockRate']}", flush=True)
    for a in sums:  # the module whose kernel ran has T in column 4
        for w, row in enumerate(cupy.asnumpy(a).tolist()):
            if row[4]:
                print("lstmdsl_clock", "first" if w == 0 else "last", row[4], *row[:4], flush=True)
    print("END", flush=True)
    layer.free_workspaces()
'''

TICK = "lstmdsl_ck[{}] += clock64() - lstmdsl_c0, lstmdsl_c0 = clock64();\n"
EDITS = [  # (anchor, replacement) in persistent.cu.j2; each anchor must occur exactly once
    ("    for (int s = 0; s < T; ++s) {\n",
     "    long long lstmdsl_ck[4] = {0, 0, 0, 0}, lstmdsl_c0 = clock64();\n    for (int s = 0; s < T; ++s) {\n"),
    ("                __syncthreads();\n{%- set lean = namespace(n=0, m=0) %}",
     "                __syncthreads();\n                " + TICK.format(0) + "{%- set lean = namespace(n=0, m=0) %}"),
    ("{%- endfor %}\n                __syncthreads();\n                for (int item = threadIdx.x",
     "{%- endfor %}\n                __syncthreads();\n                " + TICK.format(1)
     + "                for (int item = threadIdx.x"),
    ("                // before the next rows overwrite the staged operands",
     "                " + TICK.format(2) + "                // before the next rows overwrite the staged operands"),
    ("grid_barrier(bar, target += {{ grid }});\n",
     "grid_barrier(bar, target += {{ grid }});\n        " + TICK.format(3)),
]
END = ("    }\n    if (threadIdx.x == 0 && (blockIdx.x == 0 || blockIdx.x + 1 == {{ grid }})) {\n"
       "        long long* const o = lstmdsl_clock_out + (blockIdx.x == 0 ? 0 : 5);\n"
       "        o[0] = lstmdsl_ck[0], o[1] = lstmdsl_ck[1], o[2] = lstmdsl_ck[2], o[3] = lstmdsl_ck[3], o[4] = T;\n"
       "    }\n}\n")
# the sums of the first block and the last, each with T (one array a module, so #ifndef: several kernels include it)
OUT = ('#ifndef LSTMDSL_CLOCK_OUT\n#define LSTMDSL_CLOCK_OUT\n'
       'extern "C" {\n__device__ long long lstmdsl_clock_out[10];\n}\n#endif\n')


def instrumented(src: str) -> str:
    """A copy of the templates folder with the clock probe in persistent.cu.j2."""
    out = tempfile.mkdtemp(prefix="lstmdsl_clock_")
    shutil.copytree(src, out, dirs_exist_ok=True)
    path = os.path.join(out, "persistent.cu.j2")
    text = open(path).read()
    for anchor, repl in EDITS:
        if text.count(anchor) != 1:
            raise SystemExit(f"probe_step_clock: the template changed ({text.count(anchor)} of {anchor!r})")
        text = text.replace(anchor, repl)
    if not text.endswith("    }\n}\n"):
        raise SystemExit("probe_step_clock: the template's end changed")
    open(path, "w").write(OUT + text[:-len("    }\n}\n")] + END)
    return out


def main() -> None:
    from lstmdsl.resources import resource_dir

    cases = sys.argv[1:] or ["fp16:16x256", "fp16:8x512", "bf16:16x256", "fp16:4x1024", "fp32:1x512", "fp32:16x256"]
    templates = instrumented(str(resource_dir("templates")))
    r = subprocess.run([sys.executable, "-c", CHILD, templates, *cases], capture_output=True, text=True)
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-3000:])
        raise SystemExit(r.returncode)
    print(f"{'case':14} {'block':>5} | cycles a step: {'stage':>7} {'prods':>7} {'items':>7} {'end':>7} {'all':>7}"
          f" | us a step at the clock rate")
    case, khz, inside = None, None, False
    for line in r.stdout.splitlines():
        if line.startswith("CASE"):
            _, case, khz = line.split()
            inside = True
        elif line.startswith("END"):
            inside = False
        elif inside and line.startswith("lstmdsl_clock"):
            _, block, T, *ck = line.split()
            per = [int(c) / int(T) for c in ck]
            print(f"{case:14} {block:>5} | {'':15}" + " ".join(f"{c:7.0f}" for c in per) + f" {sum(per):7.0f}"
                  f" | {sum(per) / int(khz) * 1e3:.2f}")


if __name__ == "__main__":
    main()
