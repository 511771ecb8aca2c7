"""Measure a committed grid's memory again, as lstmdsl/bench.py now counts it (bench.BENCH_VERSION), and put the
figures into the grid's JSON (its times stay those of the grid's own run): each row runs once more with the
competitors it has, one timed call each (memory does not depend on the repeats). For the corrections of 2026-12-04
(bench.py's docstring: the torch competitors' figures had held torch's memory from before the case, the harness's
tensors and the previous call's gradients).

    python3 benchmarks/memory_rerun.py grid_full_bf16 [--modes train forward] [--batches 1 16] [--update-results]

Writes benchmarks/out/NAME.json (--out DIR: DIR/NAME.json; --update-results: benchmarks/results/NAME.json) after
every row, so a run cut short keeps what it measured and a second run goes on from there: it reads that file where
an earlier run of this script wrote it (its meta has "memory"), else the committed grid, and skips the rows whose
"memory_version" or "bench_version" is this harness's (--again: measures them too; --again --resume: all but those
that the file's own run measured, its rows' "memory_run" being the meta's, a run cut off going on where it stopped
across device calls: carry the file, as an untracked folder, to --out). A competitor out of memory now
has its old figure removed ("memory_error"). The meta's "memory" gets the command, date, versions and BENCH_VERSION
of the last run that measured a row (each row's "memory_rerun" has its own date).
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
from lstmdsl.bench import BENCH_VERSION, MEMORY_COUNTED, bench_case, measured_as_now  # noqa: E402
from lstmdsl.files import write_json  # noqa: E402


def wanted(row: dict, again: bool, run_id: str) -> bool:
    """Whether a row's memory is measured: not where it was measured as this harness measures its precision (in
    the grid's own run or again: bench.measured_as_now), unless again; never where this run (run_id: the one
    resumed) measured it already."""
    if row.get("memory_run") == run_id:
        return False
    versions = (row.get("memory_version"), row.get("bench_version"))
    return again or not any(measured_as_now(row["precision"], v) for v in versions)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="grids in benchmarks/results (without .json)")
    ap.add_argument("--modes", nargs="+", default=["train", "forward"], choices=("train", "forward"))
    ap.add_argument("--update-results", action="store_true", help="write into benchmarks/results")
    ap.add_argument("--out", type=Path, help="write into this folder (default benchmarks/out)")
    ap.add_argument("--batches", nargs="+", type=int, help="only the rows at these batch sizes")
    ap.add_argument("--again", action="store_true", help="also the rows this harness measured already")
    ap.add_argument("--resume", action="store_true", help="with --again: not the rows that the --out file's own run "
                    "measured (a run cut off goes on)")
    args = ap.parse_args()
    import run  # (benchmarks/run.py: its meta, with the versions; imports torch and CuPy)

    out_dir = HERE / "results" if args.update_results else args.out or HERE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        data = None
        if (out_dir / f"{name}.json").exists():  # (an earlier run of this script's, not some run.py output)
            data = json.loads((out_dir / f"{name}.json").read_text())
            data = data if "memory" in data.get("meta", {}) else None
        data = data or json.loads((HERE / "results" / f"{name}.json").read_text())
        precision = data["meta"]["precision"]
        meta = run.meta(precision, rate=False) | {
            "command": " ".join(["python3", "benchmarks/memory_rerun.py", *sys.argv[1:]]),
            "bench_version": BENCH_VERSION,
            "note": "memory measured again as lstmdsl/bench.py counts it (bench_version), the times left as they were"}
        today, measured, skipped = time.strftime("%Y-%m-%d"), 0, 0
        run_id = data["meta"].get("memory", {}).get("run") if args.resume else None
        meta["run"] = run_id = run_id or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for i, row in enumerate(data["rows"]):
            if row["mode"] not in args.modes or args.batches and row["batch"] not in args.batches:
                continue
            if not wanted(row, args.again, run_id):
                skipped += 1
                continue
            data["meta"]["memory"] = meta  # (only where this run measures something)
            new = bench_case(lstmdsl.parse(row["spec"]), row["batch"], row["hidden"], row["steps"], row["layers"],
                             row["mode"], precision, repeat=1, competitors=tuple(row["results"]),
                             num_heads=row.get("heads"))["results"]
            for who, old in row["results"].items():
                got = new.get(who, {})
                old.pop("memory_error", None)
                if "memory" in got:
                    old["memory"] = got["memory"]
                    for key in ("pool_memory", "cublas_workspaces_kept", "input_memory"):  # (lstmdsl's: its pool's
                        if key in got:                                                     # figure beside)
                            old[key] = got[key]
                    if "io" in got:  # (the arrays its memory was measured with: the row's times keep their own)
                        old["memory_io"] = got["io"]
                else:  # (out of memory now, or not run: the old figure was counted the old way)
                    old.pop("memory", None)
                    old["memory_error"] = got.get("error", "not measured")
            row["memory_rerun"], row["memory_version"] = today, BENCH_VERSION
            row["memory_counted"] = MEMORY_COUNTED  # (report.memory_note: lstmdsl's figure is its peak in use)
            row["memory_run"] = run_id
            measured += 1
            write_json(out_dir / f"{name}.json", data)
            mib = {w: r.get("memory", float("nan")) / 2**20 for w, r in row["results"].items()}
            print(f"{name} {i + 1}/{len(data['rows'])} {row['mode']} B={row['batch']} H={row['hidden']} "
                  f"T={row['steps']} L={row['layers']}: " + ", ".join(f"{w} {m:.1f} MiB" for w, m in mib.items()),
                  flush=True)
        if measured:
            write_json(out_dir / f"{name}.json", data)
        print(f"{name}: {measured} rows measured, {skipped} already measured by this harness (--again: anew)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
