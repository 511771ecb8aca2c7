"""benchmarks/report.py: the tables, facts and the performance page come from the results JSON, and the
committed docs/performance.md is what the committed JSON makes."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from lstmdsl.bench import BENCH_VERSION

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
report = pytest.importorskip("report")

META = {"gpu": "GPU X", "driver": 13000, "cuda_runtime": 13020, "torch": "2.11", "cudnn": 91900, "cupy": "14.2",
        "python": "3.12", "lstmdsl": "0.1.0", "precision": "fp32", "gemm_tflops": 50.0}


def row(spec, b, mode, results, h=512, t=100, l=1):
    return {"spec": spec, "batch": b, "hidden": h, "steps": t, "layers": l, "mode": mode, "precision": "fp32",
            "flops": 10**9, "results": results, "checks": {}}


def timing(ms, mib):
    return {"ms": ms, "min_ms": ms, "max_ms": ms, "host_ms": 0.1, "memory": mib * 2**20}


GRID = {"meta": META, "rows": [
    row("vanilla", 1, "forward", {"lstmdsl": timing(1.0, 10), "cudnn": timing(2.0, 20), "eager": timing(10.0, 30)}),
    row("vanilla", 1, "train", {"lstmdsl": timing(3.0, 40), "cudnn": timing(2.0, 20)}),
    row("peephole", 1, "train", {"lstmdsl": {"error": "out of memory"}, "eager": timing(30.0, 50)}),
]}


def test_grid_table_has_times_ratios_floor_and_out_of_memory():
    text = report.grid_table(GRID)
    assert "| vanilla | 1 | 512 | 100 | 1 | forward | 1.00 | 2.00 | 10.00 | - | 0.02 | 0.50x | 10.0x | - |" in text
    assert "| peephole | 1 | 512 | 100 | 1 | train | OOM |" in text


def test_a_grid_page_says_how_its_rows_were_measured_and_shows_memory_measured_again():
    """Rows of the harness before 2026-12-04 get the warning; memory_rerun.py's rows show their new figures, or OOM
    where the new run ran out of memory (the old figure removed), and rows of the current harness need no note."""
    old = {"meta": META | {"memory": {"date": "2026-12-05", "command": "python3 benchmarks/memory_rerun.py g"}},
           "rows": [row("vanilla", 1, "train", {"lstmdsl": timing(3.0, 40), "cudnn": {
               **{k: v for k, v in timing(2.0, 20).items() if k != "memory"}, "memory_error": "out of memory"}})
               | {"memory_rerun": "2026-12-05", "memory_version": BENCH_VERSION},
               row("vanilla", 1, "forward", {"lstmdsl": timing(1.0, 10), "cudnn": timing(2.0, 20)})]}
    text = report.grid_table(old)
    assert "| vanilla | 1 | 512 | 100 | 1 | train | 3.00 | 2.00 | - | - |" in text and "| 40 | OOM | - |" in text
    note = report.harness_note(old)
    assert note.startswith("**Measured with the harness before 2026-12-04** (2 of 2 rows")
    assert "The memory of 1 rows was measured again on 2026-12-05" in note and "1 of them as the harness now" in note
    new = {"meta": META, "rows": [r | {"bench_version": BENCH_VERSION} for r in GRID["rows"]]}
    assert report.harness_note(new) == ""
    # (version 2's way, before fp16's float16 arrays: the warning is about version 1's only)
    assert report.harness_note({"meta": META, "rows": [r | {"bench_version": 2} for r in GRID["rows"]]}) == ""


def test_memory_note_says_where_lstmdsl_memory_is_what_the_pool_held():
    assert report.memory_note(GRID).startswith("lstmdsl's memory in ")
    peak = {"meta": META, "rows": [r | {"results": {k: v | ({"pool_memory": v["memory"]} if k == "lstmdsl" and
                                                            "memory" in v else {})
                                                    for k, v in r["results"].items()}} for r in GRID["rows"]]}
    assert report.memory_note(peak) == ""


def test_grid_facts_count_where_lstmdsl_is_slower():
    facts = report.grid_facts(GRID)
    assert facts["count"] == {"forward": (0, 1), "train": (1, 1)}
    assert facts["slower"] == [{"mode": "train", "shape": "B=1, H=512, T=100, L=1", "ratio": 1.5}]
    assert facts["ooms"] == ["peephole lstmdsl train at B=1, H=512, T=100, L=1"]
    assert facts["mem_over"] == [(1, 512, 100, 1, 2.0)]
    assert facts["fwd_small"] == (2.0, 2.0, 1)


def test_merge_joins_parts_and_refuses_another_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"meta": META, "rows": GRID["rows"][:2]}))
    newer = row("vanilla", 1, "train", {"lstmdsl": timing(2.5, 40), "cudnn": timing(2.0, 20)})
    b.write_text(json.dumps({"meta": META | {"gemm_tflops": 40.0}, "rows": [newer, GRID["rows"][2]]}))
    report.merge("joined", [str(a), str(b)])
    joined = json.loads((tmp_path / "joined.json").read_text())
    assert len(joined["rows"]) == 3 and newer in joined["rows"]
    assert joined["meta"]["gemm_tflops"] == 40.0 and len(joined["meta"]["parts"]) == 2
    report.merge("again", [str(tmp_path / "joined.json"), str(b)])  # a merged file's runs, not nested copies
    parts = json.loads((tmp_path / "again.json").read_text())["meta"]["parts"]
    assert len(parts) == 2 and not any("parts" in p for p in parts)  # (b once)
    c.write_text(json.dumps({"meta": META | {"gpu": "GPU Y"}, "rows": []}))
    with pytest.raises(SystemExit, match="GPU Y"):
        report.merge("bad", [str(a), str(c)])


def test_a_grid_names_every_run_behind_it_in_order():
    """One run: its command. Parts: each command once, where it last ran (its rows replace the earlier ones')."""
    assert report.commands({"command": "python3 benchmarks/run.py --a"}) == "`python3 benchmarks/run.py --a`"
    a, b = {"command": "A", "date": "1"}, {"command": "B", "date": "2"}
    again = {"command": "A", "date": "3"}
    text = report.commands({"command": "A", "parts": [{"command": "A", "parts": [a, b]}, again]})
    assert text.startswith("`B`; `A` (joined with")


def test_the_speedup_plot_of_one_shape_draws(tmp_path, monkeypatch):
    """One shape per bar: its geometric mean is the value itself up to a rounding, which once made a
    negative error bar and the plot (and the report of a one-shape run) fail."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    # a measured pair; here the training ratio's geometric mean, exp(log(v)), is 4e-16 below v
    one = [row("vanilla", 1, mode, {"lstmdsl": timing(ours, 10), "cudnn": timing(theirs, 20)})
           for mode, ours, theirs in (("forward", 3.6287039518356323, 14.327935695648193),
                                      ("train", 10.306047916412354, 36.703086853027344))]
    report.plot_speedup("one", {"meta": META, "rows": one})
    assert (tmp_path / "one_speedup.png").stat().st_size > 0


def test_a_grid_cut_short_says_so(tmp_path, monkeypatch):
    """run.py saves a grid after every row, marked partial until its end: the page says how far it got."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    report.write_grid("cut", {"meta": META | {"partial": True, "command": "python3 benchmarks/run.py"},
                              "rows": GRID["rows"][:2]})
    assert "**Partial**: the run stopped after 2 rows." in (tmp_path / "cut.md").read_text()


def test_the_committed_performance_page_is_what_the_results_make():
    pytest.importorskip("jinja2")
    if not (report.RESULTS / "grid_full_fp32.json").exists():
        pytest.skip("no full grid results committed")
    assert (ROOT / "docs" / "performance.md").read_text() == report.page(), \
        "docs/performance.md is stale: run python3 benchmarks/report.py"


def test_ncu_summary_reads_the_sass_page(tmp_path):
    """benchmarks/ncu_summary.py: stall reasons over the kernel, regions between block barriers with their share
    of the samples and instructions a warp and step, and the instructions with the most samples; a file without
    the SASS page is a clear error."""
    import ncu_summary

    head = ["Address", "Source", ncu_summary.SAMPLES, "Warp Stall Sampling (Not-issued Samples)",
            ncu_summary.EXECUTED, "stall_barrier", "stall_wait", "stall_long_sb", "stall_wait (Not Issued)"]
    rows = [["0x0", "LDG.E R2, desc[UR4][R2.64]", "10", "0", "800", "0", "2", "8", "0"],
            ["0x10", "ISETP.NE.AND P0, PT, R2, RZ, PT", "30", "0", "800", "0", "5", "25", "0"],
            ["0x20", "BAR.SYNC.DEFER_BLOCKING 0x0", "5", "0", "800", "0", "5", "0", "0"],
            ["0x30", "BSSY B0, 0x100", "50", "0", "800", "50", "0", "0", "0"],
            ["0x40", "FADD R1, R1, R2", "5", "0", "400", "0", "5", "0", "0"],
            ["0x50", "EXIT", "0", "0", "8", "0", "0", "0", "0"]]
    path = tmp_path / "sass.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "k", ""])
        w.writerow(head)
        w.writerows(rows)
    text = ncu_summary.summary(str(path), top=2)
    assert "6 instructions, 100 samples, 4.5 instructions executed a warp and step" in text
    assert "stalls: barrier 50.0%, long_sb 33.0%, wait 17.0%" in text
    assert "    0-    2  45.0%     3.0  ends at BAR.SYNC" in text and "    3-    5  55.0%     1.5  ends at EXIT" in text
    top = text.split("most samples:\n")[1].splitlines()
    assert len(top) == 2 and "BSSY" in top[0] and "barrier=50" in top[0] and "ISETP" in top[1]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="no SASS page"):
        ncu_summary.summary(str(tmp_path / "other.csv"))


def test_memory_rerun_measures_the_rows_left_and_goes_on_where_a_run_stopped():
    """benchmarks/memory_rerun.py's choice of rows: not those this harness measured, unless --again; never those the
    run being resumed measured already (--again --resume: a run cut off by a device call's limit goes on)."""
    import memory_rerun

    old = {"bench_version": 1, "precision": "fp32"}
    current = {"bench_version": memory_rerun.BENCH_VERSION, "precision": "fp32"}
    remeasured = old | {"memory_version": memory_rerun.BENCH_VERSION, "memory_run": "earlier"}
    this_run = current | {"memory_version": memory_rerun.BENCH_VERSION, "memory_run": "run-1"}
    assert [memory_rerun.wanted(r, False, "run-1") for r in (old, current, remeasured, this_run)] == \
        [True, False, False, False]
    assert [memory_rerun.wanted(r, True, "run-1") for r in (old, current, remeasured, this_run)] == \
        [True, True, True, False]
    # a version that changed how one precision is measured leaves the others' rows as measured now (version 4: bf16's
    # arrays; 3: fp16's; 2: every precision's)
    by = {p: [memory_rerun.wanted({"bench_version": v, "precision": p}, False, "run-1") for v in (1, 2, 3, 4)]
          for p in ("fp32", "tf32", "fp16", "bf16")}
    assert by == {"fp32": [True, False, False, False], "tf32": [True, False, False, False],
                  "fp16": [True, True, False, False], "bf16": [True, True, True, False]}


def test_the_memory_regimes_table_shows_the_ways_measured_and_the_half_modules_ratio():
    """benchmarks/memory_regimes.py's table: only the ways a result measured (--ways half: the two half modules),
    the stack's layers, each row's memory ratio of lstmdsl's half module to cuDNN's, and how many are at or below."""
    regimes = pytest.importorskip("memory_regimes")
    half = regimes.WAYS["half"]
    result = {"precision": "bf16", "gpu": "GPU X", "torch": "2.11", "cudnn": 91900, "cupy": "14.2", "lstmdsl": "0.1.0",
              "layers": 4, "ways": list(half), "rows": [
                  {"batch": b, "hidden": 256, "steps": 100, "results": {half[0]: cudnn, half[1]: timing(1.0, ours)}}
                  for b, cudnn, ours in ((1, timing(2.0, 60), 66), (16, timing(2.0, 50), 40),
                                         (64, {"error": "out of memory"}, 40))]}
    text = regimes.markdown(result)
    assert "4 vanilla layers" in text and "cuDNN under autocast" not in text
    assert "| 1 | 256 | 100 | 60 | 2.00 | 66 | 1.00 | 1.10x |" in text
    assert "| 64 | 256 | 100 | out of memory | - | 40 | 1.00 | - |" in text
    assert "at or below cuDNN's memory at 1 of 2 shapes (0.80-1.10x)" in text
    old = dict(result, ways=None, rows=result["rows"][:1])  # (results written before --ways: the ways they have)
    assert "| lstmdsl / cuDNN half module memory |" in regimes.markdown(old)


def test_the_suite_says_what_it_needs_without_a_gpu():
    """benchmarks/run.py --help works without CuPy or torch; a run without them says so and exits 69 (it was an
    ImportError's traceback at the first import)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, str(ROOT / "benchmarks" / "run.py")]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and "--quick" in shown.stdout, shown.stderr
    # CuPy made unimportable (so the check runs where it is installed too)
    blocked = [sys.executable, "-c", "import runpy, sys; sys.modules['cupy'] = None; sys.argv = sys.argv[1:]; "
               "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]); runpy.run_path(sys.argv[0], run_name='__main__')",
               str(ROOT / "benchmarks" / "run.py"), "--quick"]
    cut = subprocess.run(blocked, capture_output=True, text=True, env=env, timeout=120)
    assert cut.returncode == 69 and "needs a GPU with CuPy and torch" in cut.stderr, cut.stderr
    assert "Traceback" not in cut.stderr
