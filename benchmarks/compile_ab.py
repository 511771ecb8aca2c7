"""The warm start of two or more source trees, A/B on one GPU host: `python3 benchmarks/compile_ab.py . _br/OLD`
(benchmarks/stage_branch.sh OLD stages a commit's tree). Each tree gets a cache of its own; for each spec one cold
process fills it, then five warm processes per tree, alternated, run run.py's compile_times code (lstmdsl.compile
at I = H = 64, then a forward at T = 1, B = 1, timed after importing lstmdsl and CuPy). Prints the medians of
compile() and of the first result, with compile()'s spread."""
import os
import statistics
import subprocess
import sys

code = ("import time, sys, cupy, lstmdsl; cupy.cuda.Device().synchronize(); t=time.perf_counter(); "
        "s=lstmdsl.parse(sys.argv[1]); l=lstmdsl.compile(s, input_size=64, hidden_size=64, backend='cuda'); "
        "c=time.perf_counter()-t; "
        "l.forward(cupy.zeros((1, 1, 64), dtype=cupy.float32), train=False); cupy.cuda.Device().synchronize(); "
        "print(c, time.perf_counter()-t)")
trees = sys.argv[1:]
index = {t: k for k, t in enumerate(trees)}
if len(index) < 2:
    sys.exit(__doc__ + "\n(two different trees at least)")
for tree in trees:
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "lstmdsl")], check=False)
for spec in ("vanilla", "gru", "cifg", "layernorm"):
    res = {t: [] for t in trees}
    for t in trees:
        c = f"/tmp/lstmdsl-ab-cache-{index[t]}"
        subprocess.run(["rm", "-rf", c, c + "-cupy"], check=True)
    for i in range(6):
        for t in trees:
            c = f"/tmp/lstmdsl-ab-cache-{index[t]}"
            env = dict(os.environ, CUPY_CACHE_DIR=c + "-cupy", LSTMDSL_CACHE=c,
                       PYTHONPATH=os.path.abspath(t) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            out = subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True,
                                 check=True, cwd=t).stdout.split()
            if i:
                res[t].append(tuple(float(v) for v in out[-2:]))
    for t in trees:
        comp = statistics.median(r[0] for r in res[t]); first = statistics.median(r[1] for r in res[t])
        print(f"{spec:10s} {t:14s} warm compile {comp:.3f} s  first result {first:.3f} s  "
              f"(compile min {min(r[0] for r in res[t]):.3f} max {max(r[0] for r in res[t]):.3f})", flush=True)
