"""Small shapes, two or more source trees, one run: the vanilla LSTM's (or --spec's) forward and training step (T =
100, one layer, fp32, B {1, 16, 64} x H {16, 32, 64, 128, 256}, the schedule `auto` chooses, or --schedule's), timed
two ways: with CUDA events around the call as the benchmarks time it (the host's time to issue the call included),
and as GPU time only (the call issued behind a 4 ms spin kernel, so the GPU never waits for the host). Each tree
runs in its own process, in the order A B A B (A B C A B C for three); each case's time is the smaller of the tree's
two medians, and each later tree's ratio is to the first's.

    python3 benchmarks/ab_small.py OLD_TREE NEW_TREE [MORE_TREES ...] [--shapes 1x32 16x64 ...]   (BxH; default all 15)
        [--schedule "precision fp16; persistent"] [--spec fgr]
    python3 benchmarks/ab_small.py . . --schedules "precision fp16; persistent" "precision fp16; persistent; specialise"
        (one schedule a tree: a tree may be named twice, to compare schedules)

A tree is a folder holding the lstmdsl package (`git archive REV lstmdsl grammars templates specs | tar -x
-C DIR`). Needs a GPU and CuPy.
"""
import argparse
import json
import os
import subprocess
import sys

PROBE = r'''
import json, statistics, sys, time
import cupy
import lstmdsl
from lstmdsl import api
from lstmdsl.timing import spin
from lstmdsl.runtime import nvrtc
spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()[sys.argv[3]].read_text())
out = {}
for B, H in json.loads(sys.argv[1]):
    layer = api.compile(spec, H, H, 1, backend="cuda", schedule=sys.argv[2], seed=0)
    x = cupy.random.standard_normal((100, B, H), dtype=cupy.float32)
    ones = cupy.ones((100, B, H), cupy.float32)
    for mode, fn in (("forward", lambda: layer.forward(x, train=False)), ("train", lambda: (layer.forward(x), layer.backward(ones)))):
        for _ in range(3): fn()
        nvrtc.settle(); fn()  # (kernels compiled for their shape on a thread are in use from here: timing._warm_up)
        cupy.cuda.Device().synchronize()
        ev, q = [], []
        for _ in range(15):
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record(); fn(); b.record(); b.synchronize(); ev.append(cupy.cuda.get_elapsed_time(a, b))
            spin(4.0)
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record(); fn(); b.record(); b.synchronize(); q.append(cupy.cuda.get_elapsed_time(a, b))
        out[f"{mode} {B} {H}"] = (statistics.median(ev), statistics.median(q))
    layer.free_workspaces()
print("RESULT" + json.dumps(out))
'''
def run(tree, schedule):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(SHAPES), schedule, args.spec], env=env,
                       capture_output=True, text=True, cwd=tree)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
    if not line: print(r.stderr[-3000:]); sys.exit(1)
    return json.loads(line[0][6:])
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("trees", nargs="+", help="two or more trees; each later one is compared with the first")
ap.add_argument("--shapes", nargs="+", default=[f"{b}x{h}" for b in (1, 16, 64) for h in (16, 32, 64, 128, 256)])
ap.add_argument("--schedule", default="precision fp32", help="the layers' schedule (default: precision fp32)")
ap.add_argument("--schedules", nargs="+", help="one schedule a tree, in the trees' order (instead of --schedule)")
ap.add_argument("--spec", default="vanilla", help="a shipped spec's name (default: vanilla)")
args = ap.parse_args()
if len(args.trees) < 2:
    ap.error("give two trees or more")
if args.schedules is not None and len(args.schedules) != len(args.trees):
    ap.error(f"--schedules: {len(args.schedules)} schedules for {len(args.trees)} trees")
SHAPES = [[int(v) for v in s.split("x")] for s in args.shapes]
runs = list(enumerate(zip(args.trees, args.schedules or [args.schedule] * len(args.trees))))
trees = [i for i, _ in runs]
res = {i: [] for i in trees}
for _ in range(2):
    for i, (tree, schedule) in runs:
        res[i].append(run(tree, schedule))
names = [os.path.basename(os.path.abspath(t)) + (f"[{i}]" if args.schedules else "") for i, (t, _) in runs]
print(f"{'case':18} | event ms " + " ".join(names) + " (ratios to the first) | queued ms, the same")
for case in res[trees[0]][0]:
    cells = []
    for i in (0, 1):  # event, queued
        ms = [min(r[case][i] for r in res[t]) for t in trees]
        cells.append(" ".join(f"{m:.3f}" for m in ms) + " " + " ".join(f"{m / ms[0]:.2f}x" for m in ms[1:]))
    print(f"{case:18} | " + " | ".join(cells))
