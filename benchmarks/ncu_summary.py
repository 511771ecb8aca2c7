"""Where a kernel's warps wait, from ncu's per-instruction samples: reads the SASS page that ncu exports as CSV and
prints the stall reasons over the whole kernel, the regions between block barriers (their share of the samples
and their instructions a warp and step) and the instructions with the most samples.

    ncu --set full --import-source no -k regex:persistent --launch-skip 6 -c 1 -f -o /tmp/p python3 DRIVER ...
    ncu --import /tmp/p.ncu-rep --page source --csv --print-source sass > sass.csv
    python3 benchmarks/ncu_summary.py sass.csv [--top 25] [--per WARPS_TIMES_STEPS]

Instruction counts are given a warp and step: divided by --per (the launch's warps times its steps), or by the
most executed instruction's count, taken as once a warp and step (a persistent kernel's step loop). Written in
the twenty-fourth session (benchmarks/results/probes/generic_step_h200.txt section 22 came from it). Needs no GPU."""
import argparse
import csv
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def load(path: str) -> tuple[list[str], list[dict]]:
    """The SASS rows of an ncu `--page source --csv --print-source sass` export: (stall columns, rows)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SystemExit(f"ncu_summary: cannot read {path}: {e}")
    start = next((i for i, r in enumerate(rows) if "Source" in r and SAMPLES in r), None)
    if start is None:
        raise SystemExit(f"ncu_summary: {path} has no SASS page with '{SAMPLES}' (export it with --page source "
                         "--csv --print-source sass from a report taken with --set full)")
    head = rows[start]
    stalls = [h for h in head if h.startswith("stall_") and "Not Issued" not in h]
    out = [dict(zip(head, r)) for r in rows[start + 1:] if len(r) == len(head)]
    return stalls, out


def summary(path: str, top: int = 25, per: float | None = None) -> str:
    stalls, rows = load(path)
    samples = [number(r[SAMPLES]) for r in rows]
    total = sum(samples) or 1.0
    executed = [number(r.get(EXECUTED, "0")) for r in rows]
    per = per or max(executed + [1.0])
    lines = [f"{path}: {len(rows)} instructions, {total:.0f} samples, "
             f"{sum(executed) / per:.1f} instructions executed a warp and step"]
    share = {h: sum(number(r[h]) for r in rows) / total for h in stalls}
    lines.append("stalls: " + ", ".join(f"{h[6:]} {100 * v:.1f}%" for h, v in
                                        sorted(share.items(), key=lambda kv: -kv[1]) if v >= 0.005))
    lines.append("regions between block barriers (share of the samples, instructions a warp and step):")
    first, acc, count = 0, 0.0, 0.0
    for i, r in enumerate(rows):
        acc, count = acc + samples[i], count + executed[i]
        source = r["Source"].strip()
        if "BAR.SYNC" in source or "EXIT" in source or i == len(rows) - 1:
            if acc / total >= 0.005:
                lines.append(f"  {first:5}-{i:5} {100 * acc / total:5.1f}% {count / per:7.1f}  ends at {source[:50]}")
            first, acc, count = i + 1, 0.0, 0.0
    lines.append(f"the {top} instructions with the most samples:")
    for i in sorted(range(len(rows)), key=lambda k: -samples[k])[:top]:
        reasons = sorted(((h, number(rows[i][h])) for h in stalls), key=lambda kv: -kv[1])[:2]
        lines.append(f"  {i:5} {100 * samples[i] / total:5.1f}% x{executed[i] / per:5.2f} "
                     f"{rows[i]['Source'].strip()[:60]:60} " + " ".join(f"{h[6:]}={v:.0f}" for h, v in reasons if v))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="ncu's SASS page as CSV")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--per", type=float,
                    help="warps x steps of the launch (default: the most executed instruction's count)")
    args = ap.parse_args(argv)
    print(summary(args.csv, args.top, args.per))


if __name__ == "__main__":
    sys.exit(main())
