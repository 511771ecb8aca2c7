"""Measure a committed grid's memory again, as lstmdsl/bench.py now counts it, and put the figures into the grid's
JSON (its times stay those of the grid's own run): each row that has cuDNN in it runs once more, lstmdsl and
cuDNN, one timed call each (memory does not depend on the repeats). Written for the correction of 2026-12-04
(bench.py's docstring: cuDNN's figures had counted torch's memory from before the case).

    python3 benchmarks/memory_rerun.py grid_full_bf16 [--modes train forward] [--update-results]

Writes benchmarks/out/NAME.json (--out DIR: DIR/NAME.json; --update-results: benchmarks/results/NAME.json) after
every row, so a run cut short keeps what it measured and a second run goes on from there (rows already done carry
"memory_rerun": the date).
The meta gets "memory": the command, date and versions of the re-measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import lstmdsl  # noqa: E402
from lstmdsl.bench import bench_case  # noqa: E402
from lstmdsl.files import write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="grids in benchmarks/results (without .json)")
    ap.add_argument("--modes", nargs="+", default=["train", "forward"], choices=("train", "forward"))
    ap.add_argument("--update-results", action="store_true", help="write into benchmarks/results")
    ap.add_argument("--out", type=Path, help="write into this folder (default benchmarks/out)")
    ap.add_argument("--again", action="store_true", help="also the rows an earlier run of this script measured")
    args = ap.parse_args()
    import run  # (benchmarks/run.py: its meta, with the versions; imports torch and CuPy)

    out_dir = HERE / "results" if args.update_results else args.out or HERE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        source = out_dir / f"{name}.json"
        data = json.loads((source if source.exists() else HERE / "results" / f"{name}.json").read_text())
        precision = data["meta"]["precision"]
        data["meta"]["memory"] = {k: v for k, v in run.meta(precision).items() if k != "gemm_tflops"} | {
            "command": " ".join(["python3", "benchmarks/memory_rerun.py", *sys.argv[1:]]),
            "note": "memory of the rows with cuDNN measured again as lstmdsl/bench.py counts it since 2026-12-04"}
        today = time.strftime("%Y-%m-%d")
        for i, row in enumerate(data["rows"]):
            done = row.get("memory_rerun") and not args.again
            if "cudnn" not in row["results"] or row["mode"] not in args.modes or done:
                continue
            new = bench_case(lstmdsl.parse(row["spec"]), row["batch"], row["hidden"], row["steps"], row["layers"],
                             row["mode"], precision, repeat=1, competitors=("lstmdsl", "cudnn"))["results"]
            for who in ("lstmdsl", "cudnn"):
                old = row["results"][who]
                if "memory" in new[who] and "memory" in old:
                    old["memory"] = new[who]["memory"]
                    if "cublas_workspaces_kept" in new[who]:
                        old["cublas_workspaces_kept"] = new[who]["cublas_workspaces_kept"]
            row["memory_rerun"] = today
            write_json(out_dir / f"{name}.json", data)
            mib = {w: row["results"][w].get("memory", 0) / 2**20 for w in ("lstmdsl", "cudnn")}
            print(f"{name} {i + 1}/{len(data['rows'])} {row['mode']} B={row['batch']} H={row['hidden']} "
                  f"T={row['steps']} L={row['layers']}: lstmdsl {mib['lstmdsl']:.1f} MiB, cuDNN {mib['cudnn']:.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
