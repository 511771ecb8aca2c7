"""Time the quick grid's lstmdsl cases for two source trees in one run, to show that a change kept the
speed (or what it changed): each tree is timed in its own process, in the order A B A B, and each case's
time is the smaller of the tree's two medians. Needs a GPU and CuPy.

    python3 benchmarks/versions.py OLD_TREE NEW_TREE [--repeat 20] [--json out.json]
    python3 benchmarks/versions.py OLD NEW --cases zoneout_lstm:16 gru_torch:1 --hidden 256 [--lengths]

--cases SPEC:B ... times those cases instead (one layer, I = H = --hidden); --lengths gives each batch random
sequence lengths, uniform in [T/2, T] (the length mask's plans); --schedule "precision tf32" compiles every case
with those directives; --new-env NAME=VALUE ... sets environment variables for the new tree's runs only, so that one
tree can be compared with itself under a switch:

    python3 benchmarks/versions.py . . --new-env LSTMDSL_GEMM_LT=1      # cuBLASLt's kernels against cuBLAS's

A tree is a folder holding the lstmdsl package (a checkout, or `git archive REV lstmdsl grammars
templates specs | tar -x -C DIR`). The table printed last has before, after and after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [(s, b) for s in ("vanilla", "peephole", "gru") for b in (1, 64)] + [(s, 64) for s in ("cifg", "fgr", "lstmp")]
H, T = 512, 100

_PROBE = r"""
import json, statistics, sys
import cupy, numpy as np
import lstmdsl
H, T, repeat = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cases, masked, schedule = json.loads(sys.argv[4]), sys.argv[5] == "1", sys.argv[6] or None

def median_ms(fn):
    for _ in range(3):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record(); fn(); b.record(); b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b))
    return statistics.median(times)

out = {}
for spec, B in cases:
    extra = {"proj_size": H // 2} if lstmdsl.parse(spec).uses_size("proj") else {}
    layer = lstmdsl.compile(spec, H, H, 1, backend="cuda", seed=0, schedule=schedule, **extra)
    x = cupy.asarray(np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32))
    ones = cupy.ones((T, B, layer.output_size), np.float32)
    lengths = np.random.default_rng(1).integers(T // 2, T + 1, B) if masked else None
    out[f"{spec} B={B} forward"] = median_ms(lambda: layer.forward(x, train=False, lengths=lengths))
    out[f"{spec} B={B} train"] = median_ms(lambda: (layer.forward(x, lengths=lengths), layer.backward(ones)))
    layer.free_workspaces()
print(json.dumps(out))
"""


def run(tree: str, repeat: int, hidden: int = H, cases=CASES, masked: bool = False, schedule: str = "",
        extra_env: dict | None = None) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(tree), os.environ.get("PYTHONPATH", "")]),
               **(extra_env or {}))
    r = subprocess.run([sys.executable, "-c", _PROBE, str(hidden), str(T), str(repeat), json.dumps(cases),
                        "1" if masked else "0", schedule], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{tree}: the probe failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", help="write the times here")
    ap.add_argument("--cases", nargs="+", metavar="SPEC:B", help="these cases instead of the quick grid's")
    ap.add_argument("--hidden", type=int, default=H)
    ap.add_argument("--lengths", action="store_true", help="random sequence lengths in [T/2, T]")
    ap.add_argument("--schedule", default="", help="schedule directives for every case, e.g. 'precision tf32'")
    ap.add_argument("--new-env", nargs="+", default=[], metavar="NAME=VALUE",
                    help="environment variables for the new tree's runs only")
    args = ap.parse_args()
    if any("=" not in e for e in args.new_env):
        ap.error(f"--new-env takes NAME=VALUE, got {' '.join(args.new_env)}")
    extra = {"new": dict(e.split("=", 1) for e in args.new_env), "old": {}}
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases] if args.cases else CASES
    rounds = {"old": [], "new": []}
    for _ in range(2):
        for which in ("old", "new"):
            rounds[which].append(run(getattr(args, which), args.repeat, args.hidden, cases, args.lengths,
                                     args.schedule, extra[which]))
    best = {w: {k: min(r[k] for r in rs) for k in rs[0]} for w, rs in rounds.items()}
    rows = [{"case": k, "before_ms": best["old"][k], "after_ms": best["new"][k],
             "ratio": best["new"][k] / best["old"][k]} for k in best["old"]]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": {"H": args.hidden, "T": T, "layers": 1, "lengths": args.lengths},
                       "schedule": args.schedule, "new_env": extra["new"], "rounds": rounds, "rows": rows}, f, indent=2)
    label = f"case (H={args.hidden}, T={T}, {args.schedule or 'fp32'})"
    print(f"{label:<28} {'before ms':>10} {'after ms':>10} {'after/before':>13}")
    for r in rows:
        print(f"{r['case']:<28} {r['before_ms']:>10.3f} {r['after_ms']:>10.3f} {r['ratio']:>13.2f}")


if __name__ == "__main__":
    main()
