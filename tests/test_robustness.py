"""Never lose a run, never show a raw exception: output paths checked before work, atomic files, training
that checkpoints and resumes exactly, disposable caches, and only lstmdsl's documented errors for bad
input (hypothesis throws arbitrary values at the API and the command line)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lstmdsl
from lstmdsl import InputFileError, LstmdslError, UsageError
from lstmdsl.cli import main
from lstmdsl.errors import OutputFileError
from lstmdsl.files import write_text

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, env=None, timeout=300):
    r = subprocess.run([sys.executable, "-m", "lstmdsl", *args], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
    assert "Traceback" not in r.stderr, r.stderr
    return r


# ------------------------------------------------------------------------- check before you work

@pytest.mark.parametrize("out", ["/proc/lstmdsl-x", "FILE"])
def test_train_refuses_an_unwritable_out_before_training(tmp_path, out):
    if out == "FILE":
        out = tmp_path / "a-file"
        out.write_text("not a folder")
    t0 = time.perf_counter()
    r = cli("train", "vanilla", "--task", "digits", "--backend", "numpy", "--epochs", "50", "--out", str(out))
    assert r.returncode == 73 and "--out" in r.stderr, r.stderr
    assert time.perf_counter() - t0 < 20  # refused at once, not after 50 epochs


def test_save_writes_the_path_given_and_load_reads_it(tmp_path):
    layer = lstmdsl.compile("gru", 3, 4)
    layer.save(tmp_path / "noext")
    assert (tmp_path / "noext").is_file() and not (tmp_path / "noext.npz").exists()
    np.testing.assert_array_equal(lstmdsl.load(tmp_path / "noext").parameters()["l0.W_r"],
                                  layer.parameters()["l0.W_r"])
    with pytest.raises(OutputFileError, match="cannot write"):
        layer.save(tmp_path / "noext" / "below-a-file")


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    layer = lstmdsl.compile("vanilla", 3, 4, seed=1)
    path = tmp_path / "layer.npz"
    layer.save(path)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half of an archive")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OutputFileError, match="No space left on device"):
        lstmdsl.compile("vanilla", 3, 4, seed=2).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["layer.npz"]  # no temporary file left behind


# --------------------------------------------------------------------------- training never loses work

def test_train_into_a_folder_that_holds_a_run_needs_resume_or_overwrite(tmp_path):
    """Repeating a command without --resume must not start again over the run (or checkpoint) it left."""
    args = ("train", "vanilla", "--task", "digits", "--backend", "numpy", "-H", "8", "--epochs", "1",
            "--max-train", "32", "--out", str(tmp_path / "t"))
    assert cli(*args).returncode == 0
    before = (tmp_path / "t" / "layer.npz").read_bytes()
    again = cli(*args)
    assert again.returncode == 64 and "--resume" in again.stderr and "--overwrite" in again.stderr, again.stderr
    assert (tmp_path / "t" / "layer.npz").read_bytes() == before
    both = cli(*args, "--resume", "--overwrite")
    assert both.returncode == 64 and "exclude" in both.stderr, both.stderr
    assert cli(*args, "--overwrite", "--seed", "3").returncode == 0
    assert (tmp_path / "t" / "layer.npz").read_bytes() != before
    missing = cli(*args[:-1], str(tmp_path / "typo" / "t"), "--resume")  # (it made the folder, empty: helper-99)
    assert missing.returncode == 66 and "no such folder" in missing.stderr and not (tmp_path / "typo").exists()


def test_written_files_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp's temporary file is 0600; the file written through it takes the umask's mode, or the mode of the
    file it replaces."""
    old = os.umask(0o022)
    try:
        for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
            os.umask(mask)
            write_text(tmp_path / f"{mask:o}.txt", "x")
            assert stat.S_IMODE((tmp_path / f"{mask:o}.txt").stat().st_mode) == mode, oct(mask)
        os.chmod(tmp_path / "22.txt", 0o640)
        write_text(tmp_path / "22.txt", "y")
        assert stat.S_IMODE((tmp_path / "22.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_symbolic_link_is_written_through_and_a_descriptor_in_place(tmp_path):
    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "real.txt")
    write_text(tmp_path / "link", "new")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real.txt").read_text() == "new"
    (tmp_path / "out").symlink_to("/proc/self/fd/1")  # (-o /dev/stdout with stdout sent to a file)
    with open(tmp_path / "stdout.txt", "w") as f:
        r = subprocess.run([sys.executable, "-m", "lstmdsl", "compile", "vanilla", "--emit", "ir", "-o",
                            str(tmp_path / "out")], stdout=f, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").is_symlink() and (tmp_path / "stdout.txt").read_text().startswith("cell vanilla")


def test_a_spec_that_makes_nan_fails_saying_so_and_its_json_stays_json(tmp_path):
    spec = tmp_path / "nan.cell"
    spec.write_text("cell nanny {\n    input x\n    state h\n    h' = tanh(W x + U h) / 0\n    output h'\n}\n")
    r = cli("run", str(spec), "--backend", "numpy")
    assert r.returncode == 1 and "NaN or infinite values" in r.stdout and "RuntimeWarning" not in r.stderr, r
    r = cli("run", str(spec), "--backend", "numpy", "--json")
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert r.returncode == 1 and out["finite"] is False and out["output_rms"] is None


def test_small_cli_mistakes_get_a_pointed_answer(tmp_path):
    r = cli("run", "vanila")
    assert r.returncode == 66 and "did you mean 'vanilla'?" in r.stderr, r.stderr
    r = cli("run", "vanilla", "--backend", "numpy", "-B", "3", "--lengths", "-1,2,3")
    assert r.returncode == 64 and "every length must be at least 1" in r.stderr, r.stderr
    r = cli("run", "vanilla", "-B", "3", "--lengths", "--json")  # (not taken for the value)
    assert r.returncode == 64 and json.loads(r.stdout)["exit_code"] == 64, r
    r = cli("run", "vanilla", "--backend", "numpy", "-T", "3", "--dropout", "0.5")
    assert r.returncode == 0 and "with num_layers = 1 (-L 1) dropout 0.5 does nothing" in r.stderr, r.stderr
    with pytest.warns(UserWarning, match="with num_layers = 1 .* dropout 0.5 does nothing"):  # (the API too, since
        lstmdsl.compile("vanilla", 3, 4, dropout=0.5)  # 2026-12-04: the CLI and the torch module warned, it did not)
    with pytest.warns(UserWarning, match="dropout 0.5 does nothing"):
        lstmdsl.compile("vanilla", 3, 4, dropout=0.5).save(tmp_path / "d.npz")
    with pytest.warns(UserWarning, match="dropout 0.5 does nothing") as caught:  # (load's compile: still the
        lstmdsl.load(tmp_path / "d.npz")                                        # caller's line, not lstmdsl's)
    assert [w.filename for w in caught] == [__file__], [(w.filename, w.lineno) for w in caught]
    bf16 = tmp_path / "bf16.cell"  # (train noted only --precision, not the spec's own schedule's: helper-102)
    bf16.write_text(lstmdsl.parse("vanilla").source.text.replace("fuse pointwise }", "fuse pointwise; precision bf16 }"))
    r = cli("train", str(bf16), "--task", "digits", "--backend", "numpy", "-H", "4", "--epochs", "1", "--max-train",
            "16", "--out", str(tmp_path / "b"))
    assert r.returncode == 0 and "note: precision bf16 applies to the CUDA backend only" in r.stderr, r.stderr
    r = cli("train", "vanilla", "--task", "digits", "--backend", "numpy", "-H", "8", "--epochs", "2",
            "--max-train", "64", "--lr", "1e30", "--out", str(tmp_path / "t"))
    assert r.returncode == 0 and "the run diverged; try a smaller --lr" in r.stderr, r.stderr


def test_sizes_beyond_memory_are_refused_with_the_sizes_to_lower():
    """Not an internal error, and not the out-of-memory killer's silent exit 137: the reference's tape is estimated
    before the work starts; an allocation that fails anyway is a usage error too; counts past 2^31 - 1 are refused."""
    r = cli("run", "vanilla", "--backend", "numpy", "-T", "1000000000")
    assert r.returncode == 64 and "would keep about" in r.stderr and "lower -T, -B, -H or -L" in r.stderr, r.stderr
    r = cli("run", "vanilla", "--backend", "numpy", "-H", "1000000", "--json")  # (its parameters: refused before
    # they are drawn since 2026-12-04; numpy's allocation failed first before)
    assert r.returncode == 64 and "parameters and their gradients would keep about" in r.stderr, r.stderr
    assert json.loads(r.stdout)["exit_code"] == 64
    r = cli("run", "vanilla", "-B", "99999999999999999999")
    assert r.returncode == 64 and "expected at most 2147483647" in r.stderr, r.stderr


def test_compile_output_that_cannot_be_written_exits_73(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = cli("compile", "vanilla", "--emit", "ir", "-o", str(tmp_path / "file" / "x.txt"))
    assert r.returncode == 73 and "cannot write" in r.stderr, r.stderr
    r = cli("compile", "vanilla", "--emit", "ir", "-o", str(tmp_path / "new" / "ir.txt"))
    assert r.returncode == 0 and (tmp_path / "new" / "ir.txt").read_text().startswith("cell vanilla")


INTERRUPTED_IMPORT = """
import sys
class Interrupt:  # Ctrl-C arriving while the CLI's modules load
    def find_spec(self, name, path=None, target=None):
        if name == "lstmdsl.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
import numpy  # (not yet loaded: `import lstmdsl.entry` alone must not load it)
from lstmdsl.entry import entry
entry()
"""


def test_ctrl_c_while_the_package_loads_exits_130_without_a_traceback():
    r = subprocess.run([sys.executable, "-c", "import sys, lstmdsl.entry; print('numpy' in sys.modules)"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.stdout.strip() == "False", r.stderr
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 130 and r.stderr == "", r.stderr
    # the package's names and the modules it used to load eagerly are still its attributes, loaded on first use
    r = subprocess.run([sys.executable, "-c", "import lstmdsl; print(len(lstmdsl.resources.shipped_specs()) > 10, "
                        "lstmdsl.reference.__name__, lstmdsl.Schedule.__name__, lstmdsl.nn.__name__)"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.stdout.split() == ["True", "lstmdsl.reference", "Schedule", "lstmdsl.nn"], r.stderr


@pytest.mark.parametrize("name", ["cifg", "zoneout_lstm"])
def test_training_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, name):
    """zoneout_lstm: its masks' generator is in the checkpoint (numpy backend), so the resumed run draws the masks
    the uninterrupted one drew (it drew others before 2026-12-04, found in review)."""
    from lstmdsl.train import Interrupted, TrainConfig, run

    cfg = TrainConfig(name, "digits", epochs=3, hidden_size=12, lr=0.02, batch=16, max_train=160, seed=5,
                      optimizer="adam")
    whole = run(cfg, tmp_path / "whole", log=None)
    with pytest.raises(Interrupted, match="epoch 2, batch 3.*--resume"):
        run(cfg, tmp_path / "cut", log=None, stop_after=13)  # 10 batches per epoch: stops inside epoch 2
    resumed = run(cfg, tmp_path / "cut", log=None, resume=True)
    a, b = (np.load(tmp_path / d / "layer.npz") for d in ("whole", "cut"))
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert resumed["history"] == [dict(h, seconds=r["seconds"]) for h, r in zip(whole["history"],
                                                                                 resumed["history"])]
    with pytest.raises(UsageError, match="differs in lr"):
        run(TrainConfig(**{**cfg.__dict__, "lr": 0.5}), tmp_path / "cut", log=None, resume=True)


def test_a_checkpoint_of_the_wrong_contents_or_of_an_edited_spec_is_refused_on_resume(tmp_path):
    """A readable checkpoint.npz whose contents are not a run's (a parameter missing or of another shape, the
    progress of the wrong type, an optimizer moment of another shape, a NaN parameter) is damaged: exit 66, not an
    internal error or a broadcast; the spec edited since the checkpoint: another run, exit 64 (it once went on
    training the old weights in the new cell, or failed with KeyError)."""
    from lstmdsl.errors import InputFileError
    from lstmdsl.train import TrainConfig, run

    spec = tmp_path / "my.cell"
    spec.write_text("cell my { input x; state h; h' = tanh(W x + R h + b); output h' }")
    cfg = TrainConfig(str(spec), "digits", epochs=2, hidden_size=8, lr=0.02, batch=16, max_train=40, seed=5,
                      optimizer="adam")
    run(TrainConfig(**{**cfg.__dict__, "epochs": 1}), tmp_path / "run", log=None)
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    good = dict(np.load(checkpoint))
    state = json.loads(str(good["state"]))
    damaged = {"no W": {k: v for k, v in good.items() if k != "param/l0.W"},
               "W of another shape": {**good, "param/l0.W": good["param/l0.W"][:, :1]},
               "a NaN parameter": {**good, "param/l0.b": np.full_like(good["param/l0.b"], np.nan)},
               "a moment of another shape": {**good, **{k: v[:1] for k, v in good.items() if k.startswith("opt/m/")}},
               "epoch -5": {**good, "state": np.array(json.dumps({**state, "epoch": -5}))},
               "a NaN running sum": {**good, "state": np.array(json.dumps({**state, "total": float("nan")}))},
               "no Adam moments": {k: v for k, v in good.items() if not k.startswith("opt/m/")},
               "history a string": {**good, "state": np.array(json.dumps({**state, "history": "x"}))},
               "state a list": {**good, "state": np.array(json.dumps([1, 2]))},
               # (these six were internal errors or misleading messages, found by fuzzing on 2026-12-04)
               "history of numbers": {**good, "state": np.array(json.dumps({**state, "history": [1]}))},
               "history entries without their figures": {**good, "state": np.array(json.dumps(
                   {**state, "history": [{"x": 1}]}))},
               "a loss a string": {**good, "state": np.array(json.dumps({**state, "losses": ["a"]}))},
               "batch 10**9": {**good, "state": np.array(json.dumps({**state, "batch": 10**9}))},
               "an order of floats": {**good, "order": np.array([1.0, 0.0])},
               "a negative step count": {**good, **{k: np.array(-5) for k in good if k == "opt/steps"}},
               "a NaN moment": {**good, **{k: np.full_like(v, np.nan) for k, v in good.items()
                                           if k.startswith("opt/v/")}},
               # (these three trained on into a NaN loss, or ended "diverged" with exit 0: a review, 2026-12-06)
               "a negative second moment": {**good, **{k: -np.ones_like(v) for k, v in good.items()
                                                       if k.startswith("opt/v/")}},
               "a parameter past float32's range": {**good, "param/l0.W": np.full(good["param/l0.W"].shape, 1e300)},
               "a NaN loss": {**good, "state": np.array(json.dumps({**state, "losses": [float("nan")]}))},
               "a running sum past float's range": {**good, "state": np.array(json.dumps({**state, "total": 10**400}))},
               # (the optimizer's saved settings would have overridden the run's --lr: a review, 2026-12-06)
               "an lr that is not the run's": {**good, "opt/hyper/lr": np.array(50.0)},
               "SGD's state": {**good, "opt/kind": np.array("SGD")}}
    for what, arrays in damaged.items():
        np.savez(checkpoint, **arrays)
        with pytest.raises(InputFileError, match="checkpoint.npz is damaged.*start again with --overwrite instead of"):
            run(cfg, tmp_path / "run", log=None, resume=True)
        print(what, "refused")
    np.savez(checkpoint, **good)
    spec.write_text("cell my { input x; state h; h' = relu(W x + R h + b); output h' }")
    with pytest.raises(UsageError, match="spec .* has changed"):
        run(cfg, tmp_path / "run", log=None, resume=True)
    spec.write_text("cell my { input x; state h; h' = tanh(W x + R h + b); output h' }")
    assert run(cfg, tmp_path / "run", log=None, resume=True)["history"][0] == state["history"][0]


def test_resuming_with_fewer_epochs_than_the_run_has_is_a_usage_error_not_damage(tmp_path):
    """A finished run of 2 epochs resumed with --epochs 1 is refused as a usage mistake (exit 64, saying how many
    epochs to give), not as a damaged checkpoint (its advice, to start again, led to losing the run); resumed with
    its own 2 it says there is nothing to train."""
    import io

    from lstmdsl.train import TrainConfig, run

    cfg = TrainConfig("vanilla", "digits", epochs=2, hidden_size=4, lr=0.02, batch=16, max_train=32, seed=5)
    run(cfg, tmp_path / "run", log=None)
    with pytest.raises(UsageError, match="has trained 2 epochs, more than --epochs 1; give --epochs 2 or more"):
        run(TrainConfig(**{**cfg.__dict__, "epochs": 1}), tmp_path / "run", log=None, resume=True)
    log = io.StringIO()
    run(cfg, tmp_path / "run", log=log, resume=True)
    assert "has trained its 2 epochs already: nothing to train" in log.getvalue()
    r = cli("train", "vanilla", "--task", "digits", "--backend", "numpy", "-H", "4", "--batch", "16", "--max-train",
            "32", "--seed", "5", "--lr", "0.02", "--epochs", "1", "--out", str(tmp_path / "run"), "--resume")
    assert r.returncode == 64 and "give --epochs 2 or more" in r.stderr and "damaged" not in r.stderr, r.stderr


def test_a_run_resumes_from_its_spec_named_another_way(tmp_path):
    """The checkpoint keeps the spec's text: a run begun from a shipped spec's name resumes from its path or from
    the standard input (`-`), and text that differs is still another run's."""
    from lstmdsl.resources import shipped_specs

    args = ("--task", "digits", "--backend", "numpy", "-H", "4", "--batch", "16", "--max-train", "32", "--lr",
            "0.02", "--out", str(tmp_path / "run"))
    assert cli("train", "vanilla", *args, "--epochs", "1").returncode == 0
    path = str(shipped_specs()["vanilla"])
    r = cli("train", path, *args, "--epochs", "2", "--resume")
    assert r.returncode == 0, r.stderr
    text = open(path).read()
    r = subprocess.run([sys.executable, "-m", "lstmdsl", "train", "-", *args, "--epochs", "3", "--resume"],
                       input=text, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "lstmdsl", "train", "-", *args, "--epochs", "4", "--resume"],
                       input=text.replace("tanh(c')", "sigmoid(c')"), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 64 and "(the standard input's spec has changed since)" in r.stderr, r.stderr
    r = cli("train", "peephole", *args, "--epochs", "4", "--resume")  # (another cell: not "changed since")
    assert r.returncode == 64 and "which the spec peephole (cell peephole) is not" in r.stderr, r.stderr


def test_sigterm_leaves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    args = ["train", "vanilla", "--task", "digits", "--backend", "numpy", "--epochs", "6", "-H", "24",
            "--max-train", "600", "--batch", "8", "--seed", "2"]
    whole = cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([sys.executable, "-m", "lstmdsl", *args, "--out", str(tmp_path / "cut")],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "cut" / "checkpoint.npz"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err, err
    resumed = cli(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (np.load(tmp_path / d / "layer.npz") for d in ("whole", "cut"))
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_parameters_are_saved_before_a_late_failure(tmp_path, monkeypatch):
    from lstmdsl import train

    def broken(*a, **k):
        raise RuntimeError("the test split is unreadable")
    calls = []
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda m, split, b: broken() if split == "test" else
                        calls.append(split) or real(m, split, b))
    with pytest.raises(RuntimeError):
        train.run(train.TrainConfig("vanilla", "digits", epochs=1, hidden_size=8, max_train=64), tmp_path, log=None)
    assert (tmp_path / "layer.npz").is_file() and (tmp_path / "checkpoint.npz").is_file()


# ------------------------------------------------------------------------------- disposable caches

@pytest.mark.parametrize("damage", ["truncate", "garbage", "directory", "unwritable"])
def test_damaged_caches_are_rebuilt_or_skipped(tmp_path, damage):
    cache = tmp_path / "cache"
    env = {"LSTMDSL_CACHE": str(cache)}
    code = ("import lstmdsl; from lstmdsl.program import build_program; from lstmdsl.schedule import Schedule; "
            "s = lstmdsl.parse('peephole'); print(len(build_program(s.cell, Schedule()).source))")

    def run():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT), **env), timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stdout

    good = run()
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert any("grammar" in p.name for p in entries) and any(p.parent.name == "cuda" for p in entries)
    for p in entries:
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif damage == "garbage":
            p.write_bytes(os.urandom(64))
        elif damage == "directory":
            p.unlink()
            p.mkdir()
    if damage == "unwritable":  # a file where the cache folder should be
        env["LSTMDSL_CACHE"] = str(tmp_path / "blocker")
        (tmp_path / "blocker").write_text("a file")
    assert run() == good
    if damage in ("truncate", "garbage"):
        assert run() == good  # and again, from what was written back


def test_two_processes_writing_one_cache_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), LSTMDSL_CACHE=str(tmp_path))
    code = ("import lstmdsl; from lstmdsl.program import build_program; from lstmdsl.schedule import Schedule; "
            "print(len(build_program(lstmdsl.parse('fgr').cell, Schedule()).source))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_damaged_chorale_cache_is_rebuilt_and_an_unwritable_one_skipped(tmp_path, monkeypatch, capsys):
    pytest.importorskip("music21")
    from lstmdsl import data

    fake = ({"low": 40, "names": {"train": ["a"], "valid": ["b"], "test": ["c"]},
             "counts": {"train": 1, "valid": 1, "test": 1}, "frame": 0.5},
            {s: [np.ones((3, 5), np.uint8)] for s in ("train", "valid", "test")})
    monkeypatch.setattr(data, "_parse_chorales", lambda corpus, frame: fake)
    monkeypatch.setenv("LSTMDSL_CACHE", str(tmp_path))
    first = data.chorales()
    (path,) = tmp_path.glob("chorales-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    assert data.chorales().pitches == first.pitches == 5
    assert "damaged" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    monkeypatch.setenv("LSTMDSL_CACHE", str(blocker))
    assert data.chorales().pitches == 5
    assert "not cached" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["narrow", "empty", "flat", "zero counts", "not 0/1", "low", "names"])
def test_a_chorale_cache_that_loads_but_was_changed_is_rebuilt(tmp_path, monkeypatch, capsys, damage):
    """helper-99's audit: rolls of another width, empty or 1-D, no pieces in a split, values past 1, a MIDI range
    past 127 or names that do not match were trained on or failed as internal errors; now parsed again."""
    pytest.importorskip("music21")
    import json

    from lstmdsl import data
    from lstmdsl.files import write_npz

    meta = {"low": 40, "names": {"train": ["a", "d"], "valid": ["b"], "test": ["c"]},
            "counts": {"train": 2, "valid": 1, "test": 1}, "frame": 0.5}
    rolls = {"train": [np.ones((3, 5), np.uint8), np.zeros((2, 5), np.uint8)], "valid": [np.ones((4, 5), np.uint8)],
             "test": [np.ones((1, 5), np.uint8)]}
    parsed = []
    monkeypatch.setattr(data, "_parse_chorales", lambda corpus, frame: parsed.append(1) or (meta, rolls))
    monkeypatch.setenv("LSTMDSL_CACHE", str(tmp_path))
    data.chorales()
    (path,) = tmp_path.glob("chorales-*.npz")
    bad_meta, bad = json.loads(json.dumps(meta)), {s: list(r) for s, r in rolls.items()}
    if damage == "narrow":
        bad["train"][1] = np.zeros((2, 4), np.uint8)
    elif damage == "empty":
        bad["valid"][0] = np.zeros((0, 5), np.uint8)
    elif damage == "flat":
        bad["test"][0] = np.ones(5, np.uint8)
    elif damage == "zero counts":
        bad_meta["counts"] = {"train": 0, "valid": 0, "test": 0}
    elif damage == "not 0/1":
        bad["train"][0] = np.full((3, 5), 7, np.uint8)
    elif damage == "low":
        bad_meta["low"] = 125
    else:
        bad_meta["names"]["train"] = ["a"]
    write_npz(path, {"meta": np.array(json.dumps(bad_meta)), **{f"{s}/{k}": r for s, rs in bad.items()
                                                               for k, r in enumerate(rs)}}, compressed=True)
    got = data.chorales()
    assert "damaged" in capsys.readouterr().err and len(parsed) == 2
    assert got.low == 40 and [r.shape for r in got.rolls["train"]] == [(3, 5), (2, 5)]
    assert data.chorales().low == 40 and len(parsed) == 2  # rebuilt: the next run reads it


def test_the_tests_never_write_into_the_users_cache():
    assert "lstmdsl-test-cache-" in os.environ["LSTMDSL_CACHE"]


# ------------------------------------------------------------------------ clear errors for bad input

@pytest.mark.parametrize("kwargs,message", [
    (dict(seed=-1), "seed must be a non-negative integer, got -1"),
    (dict(seed="abc"), "seed must be a non-negative integer, got 'abc'"),
    (dict(seed=1.5), "seed must be a non-negative integer, got 1.5"),
])
def test_api_seeds(kwargs, message):
    with pytest.raises(UsageError, match=message):
        lstmdsl.compile("vanilla", 4, 6, **kwargs)


def test_api_takes_numpy_types():
    layer = lstmdsl.compile("vanilla", np.int64(4), np.int32(6), forget_bias=np.float32(1), dtype=np.float32,
                            seed=np.uint8(3))
    assert layer.dtype == np.float32 and float(layer.parameters()["l0.b_f"][0]) == 1.0
    assert lstmdsl.compile("vanilla", 4, 6, dtype=np.dtype("float64")).dtype == np.float64


@pytest.mark.parametrize("spec,error,message", [
    (None, UsageError, "got NoneType"),
    ("", UsageError, "the spec is empty"),
    (".", InputFileError, "is a folder, not a spec file"),
    ("/dev/zero", InputFileError, "larger than 16 MiB: not a spec file"),  # (an endless file: it hung once)
])
def test_api_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        lstmdsl.compile(spec, 4, 6)


def test_bad_state_dicts_and_saved_files(tmp_path):
    layer = lstmdsl.compile("vanilla", 3, 4)
    bad = {k: np.array(["a"] * v.size).reshape(v.shape) for k, v in layer.state_dict().items()}
    with pytest.raises(UsageError, match="has dtype <U1; parameters are numbers"):
        layer.load_state_dict(bad)
    with pytest.raises(UsageError, match="a state dict is a dict of arrays by parameter name .*, got list"):
        layer.load_state_dict([1, 2])  # (it listed every parameter as missing)
    before = layer.state_dict()
    with pytest.raises(UsageError, match="past float32's range"):  # (1e300 once became inf, with only a warning)
        layer.load_state_dict({k: np.full(v.shape, 1e300) for k, v in before.items()})
    assert all(np.array_equal(v, before[k]) for k, v in layer.state_dict().items())  # nothing loaded
    layer.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as f:
        files = {k: f[k] for k in f.files}
    meta = json.loads(str(files["__meta__"]))
    del meta["sizes"]
    np.savez(tmp_path / "nosizes.npz", **{**files, "__meta__": np.array(json.dumps(meta))})
    with pytest.raises(InputFileError, match="metadata lacks or garbles sizes"):
        lstmdsl.load(tmp_path / "nosizes.npz")
    meta = json.loads(str(files["__meta__"]))
    np.savez(tmp_path / "three.npz", **{**files, "__meta__": np.array(json.dumps({**meta, "directions": 3}))})
    with pytest.raises(InputFileError, match="metadata lacks or garbles directions"):  # (loaded as one, once)
        lstmdsl.load(tmp_path / "three.npz")
    meta = json.loads(str(files["__meta__"]))  # (found by fuzzing on 2026-12-04: a KeyError, a SpecError at
    # <string>, a process killed for memory)
    no_proj = {**meta, "sizes": [{k: v for k, v in b.items() if k != "proj"} for b in meta["sizes"]]}
    huge = {**meta, "num_layers": 10**9}
    for name, m in (("noproj", no_proj), ("huge", huge)):
        np.savez(tmp_path / f"{name}.npz", **{**files, "__meta__": np.array(json.dumps(m))})
        with pytest.raises(InputFileError, match="metadata lacks or garbles sizes"):
            lstmdsl.load(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "badspec.npz", **{**files, "__meta__": np.array(json.dumps({**meta, "spec": "cell x {"}))})
    with pytest.raises(InputFileError, match="badspec.npz is damaged: the spec saved in it does not parse"):
        lstmdsl.load(tmp_path / "badspec.npz")
    with pytest.raises(InputFileError, match="badspec.npz is damaged: the spec saved in it does not parse"):
        layer.load(tmp_path / "badspec.npz")  # (Layer.load too: it raised the SpecError at <string>)
    # (a review, 2026-12-06: a spec saved as a name or a path was read from elsewhere; a metadata cell that is not
    # the spec's gave "holds cell 'vanilla', which is not this layer's cell 'vanilla'"; a NaN parameter through
    # Layer.load was a UsageError where lstmdsl.load's is a damaged file)
    peephole = str(lstmdsl.resources.shipped_specs()["peephole"])
    for name, m, message in (("named", {**meta, "spec": "gru"}, "its metadata lacks or garbles spec"),
                             ("path", {**meta, "spec": peephole}, "its metadata lacks or garbles spec"),
                             ("renamed", {**meta, "cell": "gru"}, "its metadata names cell 'gru', its spec cell "
                                                                  "'vanilla'")):
        np.savez(tmp_path / f"{name}.npz", **{**files, "__meta__": np.array(json.dumps(m))})
        for load in (lstmdsl.load, layer.load):
            with pytest.raises(InputFileError, match=f"{name}.npz is damaged: {message}"):
                load(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "nan.npz", **{**files, "param:l0.W_i": np.full(files["param:l0.W_i"].shape, np.nan)})
    with pytest.raises(InputFileError, match="nan.npz is damaged: l0.W_i contains NaN"):
        layer.load(tmp_path / "nan.npz")
    edited = lstmdsl.compile(lstmdsl.resources.shipped_specs()["vanilla"].read_text().replace("tanh(c')",
                                                                                             "tanh(c') * 2"), 3, 4)
    edited.save(tmp_path / "edited.npz")
    with pytest.raises(UsageError, match="holds cell 'vanilla', whose equations differ from this layer's"):
        layer.load(tmp_path / "edited.npz")
    (tmp_path / "random.npz").write_bytes(os.urandom(300))
    with pytest.raises(InputFileError) as info:
        lstmdsl.load(tmp_path / "random.npz")
    assert "allow_pickle" not in str(info.value) and "not a file saved by lstmdsl" in str(info.value)


@pytest.mark.parametrize("args,code,first", [
    (["run", "vanilla", "--seed", "-1"], 64, "a seed is a non-negative integer, got -1"),
    (["train", "vanilla", "--task", "digits", "--seed", "-1"], 64, "a seed is a non-negative integer, got -1"),
    (["check", "nope.cell", "--json"], 66, None),
    (["check", "cell c {\n input x\n}", "--json"], 65, None),
    (["run", "vanilla", "--steps", "x", "--json"], 64, None),
])
def test_cli_errors(args, code, first):
    r = cli(*args)
    assert r.returncode == code, r.stderr
    if first:
        assert first in r.stderr
    if "--json" in args:
        out = json.loads(r.stdout)
        assert out["exit_code"] == code and out["error"]
        if code == 65:
            assert out["diagnostics"][0]["line"] == 1 and out["diagnostics"][0]["column"] == 6


def test_proj_size_on_every_command_that_builds_a_layer(tmp_path):
    r = cli("run", "lstmp", "--backend", "numpy", "-T", "3", "-B", "2")
    assert r.returncode == 0 and "PASS" in r.stdout
    r = cli("train", "lstmp", "--task", "digits", "--backend", "numpy", "-H", "8", "-P", "3", "--epochs", "1",
            "--max-train", "32", "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    assert lstmdsl.load(tmp_path / "t" / "layer.npz").sizes[0]["proj"] == 3


def test_help_texts_state_the_defaults():
    for command in ("run", "train", "check", "compile", "bench"):
        r = cli(command, "--help")
        assert r.returncode == 0
        assert "(default:" in r.stdout, command


# hypothesis: arbitrary values for every argument; only lstmdsl's documented errors may come out

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True), st.text(max_size=8),
                st.lists(st.integers(0, 3), max_size=3), st.just(np.float32(2)), st.just(np.zeros(3)),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
SPECS = st.one_of(ANY, st.sampled_from(["vanilla", "gru", "lstmp", "cell c {}", "nope.cell"]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=SPECS, input_size=ANY, hidden_size=ANY, num_layers=ANY, proj_size=ANY, backend=ANY, dtype=ANY,
       schedule=ANY, seed=ANY, forget_bias=ANY, bidirectional=ANY, dropout=ANY, dropconnect=ANY)
def test_compile_raises_only_lstmdsl_errors(spec, input_size, hidden_size, num_layers, proj_size, backend, dtype,
                                           schedule, seed, forget_bias, bidirectional, dropout, dropconnect):
    try:
        lstmdsl.compile(spec, input_size, hidden_size, num_layers, proj_size=proj_size, backend=backend,
                        dtype=dtype, schedule=schedule, seed=seed, forget_bias=forget_bias,
                        bidirectional=bidirectional, dropout=dropout, dropconnect=dropconnect)
    except LstmdslError:
        pass


ARRAYS = st.one_of(ANY, st.builds(lambda s, d: np.zeros(s, d), st.lists(st.integers(0, 4), max_size=4).map(tuple),
                                  st.sampled_from([np.float32, np.float64, np.int32, np.bool_])))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(x=ARRAYS, state=st.one_of(ANY, st.dictionaries(st.sampled_from(["h", "c", "z"]), ARRAYS, max_size=3)),
       dy=ARRAYS, train=st.booleans(), saved=st.dictionaries(st.text(max_size=6), ARRAYS, max_size=3),
       lengths=st.one_of(ANY, ARRAYS), noise=st.one_of(ANY, st.dictionaries(
           st.sampled_from(["l0.dropout1", "l0.dropconnect.R_i", "x"]), ARRAYS, max_size=2)))
def test_forward_backward_and_loading_raise_only_lstmdsl_errors(tmp_path_factory, x, state, dy, train, saved, lengths,
                                                                noise):
    layer = lstmdsl.compile("recurrent_dropout", 3, 4, dropconnect=0.5)
    for call in (lambda: layer.forward(x, state, train=train), lambda: layer.backward(dy, state),
                 lambda: layer.forward(np.zeros((2, 2, 3), np.float32), lengths=lengths, noise=noise),
                 lambda: layer.load_state_dict(saved), lambda: layer.load_state_dict(x)):
        try:
            call()
        except LstmdslError:
            pass
    path = tmp_path_factory.mktemp("f") / "saved.npz"
    try:
        np.savez(path, **{k or "x": v for k, v in saved.items()}) if isinstance(saved, dict) else None
        lstmdsl.load(path)
    except LstmdslError:
        pass
    except (TypeError, ValueError):  # numpy itself refusing to write the fuzzed arrays
        pass


CLI_VALUES = st.one_of(st.text(alphabet="-0123456789.abcxe", max_size=6), st.sampled_from(["0", "-1", "1e9", "nan",
                                                                                           "inf", "2", "x"]))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(["run", "check", "compile"]),
       options=st.lists(st.tuples(st.sampled_from(["-I", "-H", "-P", "-B", "-T", "-L", "--seed", "--dtype",
                                                   "--schedule", "--emit", "--backend", "--lengths", "--dropout",
                                                   "--dropconnect"]), CLI_VALUES), max_size=4))
def test_cli_options_give_documented_exit_codes(command, options):
    # sizes up to 64: a valid large one (`-T 99999`) is a long run on the reference, not a case of option handling
    assume(not any(flag in ("-I", "-H", "-P", "-B", "-T", "-L") and value.isdigit() and int(value) > 64
                   for flag, value in options))
    args = [command, "gru"] + [a for pair in options for a in pair]
    if command == "run":
        args += ["--backend", "numpy"]  # the numpy reference: fast, and the same checks of the options
    try:
        code = main(args)
    except SystemExit as e:  # argparse's errors exit 64 themselves
        code = e.code
    assert code in (0, 1, 64, 65, 66, 69, 73), (args, code)


def test_a_run_folder_with_a_folder_where_a_file_goes_an_empty_out_and_a_folder_named_as_a_spec(tmp_path, capsys,
                                                                                                  monkeypatch):
    """train refuses, before training, an --out that holds a folder named layer.npz (it trained, then failed at the
    end with 73) and an empty --out (it used the default folder); a folder named like a shipped spec in the
    working directory does not hide that spec."""
    from lstmdsl.cli import main

    (tmp_path / "run" / "layer.npz").mkdir(parents=True)
    args = ["train", "vanilla", "--task", "digits", "--epochs", "1", "-H", "8", "--max-train", "20", "--backend",
            "numpy", "--overwrite"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 73
    assert "holds a folder named layer.npz" in capsys.readouterr().err
    assert main([*args, "--out", " "]) == 64
    assert "--out is empty" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vanilla").mkdir()
    assert main(["check", "vanilla"]) == 0
    assert "cell vanilla" in capsys.readouterr().out


def test_sizes_past_the_memory_free_here_are_refused_before_anything_is_made():
    """A layer whose parameters (or a stack whose bookkeeping) cannot fit the memory free here: a UsageError naming
    the sizes to lower, before the allocation (past it, the out-of-memory killer stopped the process without a word:
    `run vanilla -H 30000` and `-L 10000000`, found by fuzzing on 2026-12-04); in the CLI exit 64, no traceback."""
    with pytest.raises(UsageError, match="parameters and their gradients would keep about .* GiB .* lower the hidden size"):
        lstmdsl.compile("vanilla", 4, 10**6)
    with pytest.raises(UsageError, match="layers' bookkeeping would keep .* lower num_layers"):
        lstmdsl.compile("vanilla", 4, 8, 10**12)
    r = cli("run", "vanilla", "-H", "2000000", "--backend", "numpy")
    assert r.returncode == 64 and "Traceback" not in r.stderr and "GiB of memory free here" in r.stderr, r.stderr


@pytest.mark.parametrize("text", [None, 3, b"no hoist input"])
def test_parse_schedule_refuses_what_is_not_text(text):
    with pytest.raises(UsageError, match="schedule text must be a string"):
        lstmdsl.parse_schedule(text)


def test_a_cell_without_parameters_compiles():
    """(The parameters' memory check took the largest of none: an internal error, caught in review.)"""
    layer = lstmdsl.compile("cell np { input x; state h : input; h' = tanh(x + h); output h' }", 8, 8)
    y, _ = layer.forward(np.ones((2, 1, 8), np.float32))
    assert y.shape == (2, 1, 8) and not layer.parameters()


def test_free_memory_counts_a_containers_reclaimable_cache_and_never_goes_below_zero(tmp_path, monkeypatch):
    """A cgroup v2 limit: its usage counts the file cache, whose inactive part is reclaimed first (a container that
    had read many files sat near its limit and refused a small layer, in review); usage past the limit is none free,
    not a negative amount."""
    from pathlib import Path

    from lstmdsl import errors

    root = tmp_path / "cgroup"
    root.mkdir()
    real = Path

    def fake(*parts):
        return root.joinpath(*parts[1:]) if parts and str(parts[0]) == "/sys/fs/cgroup" else real(*parts)

    monkeypatch.setattr(errors, "Path", fake)
    (root / "memory.max").write_text(str(8 << 30))
    (root / "memory.current").write_text(str((8 << 30) - (50 << 20)))
    (root / "memory.stat").write_text(f"anon {1 << 30}\ninactive_file {6 << 30}\n")
    errors.check_free_memory(1 << 30, "this", "it")  # (6 GiB of cache to reclaim: fits)
    (root / "memory.stat").write_text("anon 1\ninactive_file 0\n")
    with pytest.raises(UsageError, match="about 1.0 GiB at these sizes, more than the 50 MiB of memory free"):
        errors.check_free_memory(1 << 30, "this", "it")
    (root / "memory.current").write_text(str(9 << 30))
    with pytest.raises(UsageError, match="more than the 0 MiB of memory free"):
        errors.check_free_memory(1, "this", "it")


def test_compile_refuses_to_write_over_its_own_spec(tmp_path):
    """`compile my.cell --emit ir -o my.cell` wrote the IR over the user's spec and exited 0 (a review, 2026-12-06)."""
    spec = tmp_path / "my.cell"
    spec.write_text("cell my { input x; state h; h' = tanh(W x + R h + b); output h' }")
    before = spec.read_text()
    r = cli("compile", str(spec), "--emit", "ir", "-o", str(tmp_path / "." / "my.cell"))
    assert r.returncode == 64 and "is the spec itself" in r.stderr, r.stderr
    assert spec.read_text() == before
    assert cli("compile", str(spec), "--emit", "ir", "-o", str(tmp_path / "my.ir")).returncode == 0


def test_a_spec_named_dash_is_read_from_the_standard_input_once(tmp_path):
    """`lstmdsl check -` said "no spec file '-'" (helper-99's audit); now - reads the spec from the standard input,
    once, so a command that parses it again (train) gets the same text; an empty or non-UTF-8 input is refused."""
    text = "# a comment matplotlib would read as math: $\\foo{$\n" + (ROOT / "specs" / "vanilla.cell").read_text()

    def run(*args, stdin):
        r = subprocess.run([sys.executable, "-m", "lstmdsl", *args], input=stdin, capture_output=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert b"Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stderr.decode()

    assert run("check", "-", stdin=text.encode())[0] == 0
    assert run("train", "-", "--task", "digits", "--epochs", "1", "-H", "4", "--max-train", "20", "--out",
               str(tmp_path / "run"), stdin=text.encode())[0] == 0
    assert (tmp_path / "run" / "loss.png").is_file()  # (titled by the spec's name, not its text)
    assert json.loads((tmp_path / "run" / "history.json").read_text())["spec_name"] == "vanilla"
    assert run("compile", "-", "--emit", "ir", "-o", str(tmp_path / "a.ir"), stdin=text.encode())[0] == 0
    assert run("check", "-", stdin=b"") == (64, "lstmdsl: error: the standard input held no spec (`-` reads the "
                                              "spec from it)\n")
    code, err = run("check", "-", stdin=b"\xff")
    assert code == 66 and "not UTF-8" in err
    code, err = run("check", "-", stdin=b"vanilla")  # (text, not the shipped spec's name)
    assert code == 65 and "expected 'cell'" in err
    code, err = run("check", "-", stdin=b"cell x {")
    assert code == 65 and "unexpected end of text" in err


def test_a_saved_layer_keeps_its_schedule(tmp_path):
    """Layer.save kept no schedule, so lstmdsl.load rebuilt the spec's: a tf32 or bf16 layer came back in fp32 (a
    review, 2026-12-06). Text given to load applies over the saved schedule; a garbled one is damage."""
    layer = lstmdsl.compile("vanilla", 3, 4, schedule="no fuse gates; precision tf32; no hoist input", seed=0)
    layer.save(tmp_path / "a.npz")
    again = lstmdsl.load(tmp_path / "a.npz")
    assert again.schedule == layer.schedule
    over = lstmdsl.load(tmp_path / "a.npz", schedule="precision fp32")
    assert (over.schedule.precision, over.schedule.fuse_gates, over.schedule.hoist_input) == ("fp32", False, False)
    with np.load(tmp_path / "a.npz") as f:
        files = {k: f[k] for k in f.files}
    meta = json.loads(str(files["__meta__"]))
    np.savez(tmp_path / "b.npz", **{**files, "__meta__": np.array(json.dumps({**meta, "schedule": "precision fp64"}))})
    with pytest.raises(InputFileError, match="b.npz is damaged: its metadata lacks or garbles schedule"):
        lstmdsl.load(tmp_path / "b.npz")
    del meta["schedule"]  # (a file saved before: the spec's schedule)
    np.savez(tmp_path / "c.npz", **{**files, "__meta__": np.array(json.dumps(meta))})
    assert lstmdsl.load(tmp_path / "c.npz").schedule == lstmdsl.parse("vanilla").schedule


def test_a_saved_layer_draws_its_masks_on_from_where_it_was_saved(tmp_path):
    """The masks' generator was not saved: a reloaded zoneout layer's first training forward differed from the
    saved layer's next one (a review, 2026-12-06). A state that is not one is damage."""
    layer = lstmdsl.compile("zoneout_lstm", 3, 4, seed=3)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    layer.forward(x)
    layer.save(tmp_path / "a.npz")
    again = lstmdsl.load(tmp_path / "a.npz")
    assert np.array_equal(again.forward(x)[0], layer.forward(x)[0])
    with np.load(tmp_path / "a.npz") as f:
        files = {k: f[k] for k in f.files}
    meta = json.loads(str(files["__meta__"]))
    meta["noise"]["state"] = {"x": 1}
    np.savez(tmp_path / "b.npz", **{**files, "__meta__": np.array(json.dumps(meta))})
    with pytest.raises(InputFileError, match="b.npz is damaged: its masks' generator state"):
        lstmdsl.load(tmp_path / "b.npz")


# ------------------------------------------------- a review's bad inputs (helper-120, 2026-12-08)

def test_an_unwritable_stderr_loses_neither_the_result_nor_the_exit_code(tmp_path):
    """stderr on a full disk, or closed: the notes are dropped, stdout's result and the exit code stand (the first
    note's failed write had been an internal error, exit 1, the result lost)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "lstmdsl", "run", "vanilla", "-T", "2", "-H", "2", "-I", "2"],
                           stdout=subprocess.PIPE, stderr=full, text=True, env=env, timeout=300)
        assert r.returncode == 0 and "gradient" in r.stdout, r.stdout
        bad = tmp_path / "bad.cell"
        bad.write_text("cell x {\n input x\n state h\n h2 = tanh(W x + R h)\n output h\n}\n")
        r = subprocess.run([sys.executable, "-m", "lstmdsl", "check", str(bad)], stdout=subprocess.PIPE, stderr=full,
                           env=env, timeout=300)
        assert r.returncode == 65
        r = subprocess.run([sys.executable, "-m", "lstmdsl", "run", "vanilla", "--bogus"], stdout=subprocess.PIPE,
                           stderr=full, env=env, timeout=300)
        assert r.returncode == 64  # (a usage error's message goes to stderr too: it had exited 1)
    r = subprocess.run([sys.executable, "-m", "lstmdsl", "check", "vanilla"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, env=env, timeout=300, pass_fds=(), close_fds=True,
                       preexec_fn=lambda: os.close(2))
    assert r.returncode == 0 and b"vanilla" in r.stdout


def test_names_too_long_and_spec_files_with_braces(tmp_path):
    """A name past the system's limit is a file error (66, 73), not an internal one; an existing file whose name
    holds a brace is read as a file, not taken for spec text."""
    long = "a" * 300
    assert cli("check", f"./{long}.cell").returncode == 66
    assert cli("check", "a/" * 3000).returncode == 66
    r = cli("train", "vanilla", "--task", "digits", "--out", str(tmp_path / long))
    assert r.returncode == 73 and "cannot write into --out" in r.stderr
    for bad in (lambda: lstmdsl.parse(long), lambda: lstmdsl.load(long)):
        with pytest.raises(InputFileError, match="too long"):
            bad()
    braced = tmp_path / "my{1}.cell"
    braced.write_text((ROOT / "specs" / "vanilla.cell").read_text())
    assert lstmdsl.parse(str(braced)).name == "vanilla"
    r = cli("check", str(braced))
    assert r.returncode == 0 and "cell vanilla" in r.stdout


def test_sigterm_stops_any_command_as_ctrl_c_does():
    """SIGTERM exits 130 (the README's exit codes), as `train` did already; the other commands died with 143."""
    proc = subprocess.Popen([sys.executable, "-m", "lstmdsl", "run", "vanilla", "-T", "20000", "-H", "128", "-I",
                             "128", "-B", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "note:" in proc.stderr.readline()  # (the run has begun: its long reference run follows)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in proc.stderr.read()


def test_optimizers_refuse_non_finite_gradients_and_leave_the_parameters():
    layer = lstmdsl.compile("vanilla", 3, 4)
    before = {k: v.copy() for k, v in layer.parameters().items()}
    grads = {k: np.zeros_like(v) for k, v in before.items()}
    grads["l0.b_f"] = np.full_like(grads["l0.b_f"], np.inf)
    for opt in (lstmdsl.optim.SGD(layer.parameters(), lr=0.1), lstmdsl.optim.Adam(layer.parameters())):
        with pytest.raises(lstmdsl.optim.NonFiniteGradients, match="gradient of l0.b_f holds NaN or infinite"):
            opt.step(grads)
    assert all(np.array_equal(v, before[k]) for k, v in layer.parameters().items())
    huge = {k: np.full_like(v, 3e38) for k, v in before.items()}  # (finite: a float32 sum of them is not)
    lstmdsl.optim.SGD(layer.parameters(), lr=1e-30).step(huge)
    wide = lstmdsl.compile("vanilla", 3, 4, dtype="float64")
    huge = {k: np.full_like(v, 1e308) for k, v in wide.parameters().items()}  # (a float64 sum overflows too)
    lstmdsl.optim.SGD(wide.parameters(), lr=1e-300).step(huge)


def test_a_schedule_made_by_hand_is_checked_and_cli_options_are_named_as_given():
    for kw, message in ((dict(precision="fp8"), "precision must be one of fp32, tf32, bf16, fp16, got 'fp8'"),
                        (dict(persistent="maybe"), "persistent must be 'auto', 'on' or 'off'"),
                        (dict(fuse_gates="no"), "fuse_gates must be True or False")):
        with pytest.raises(UsageError, match=message):
            lstmdsl.Schedule(**kw)
    with pytest.raises(UsageError, match="precision bf16 applies to float32 layers"):
        lstmdsl.compile("vanilla", 3, 4, dtype="float64", schedule="precision bf16")
    for args, option in ((["run", "vanilla", "--heads", "2"], "--heads"), (["train", "vanilla", "--task", "digits",
                                                                             "-P", "3"], "--proj-size")):
        r = cli(*args)
        assert r.returncode == 64 and f"{option} was given but cell 'vanilla'" in r.stderr and "note:" not in r.stderr


def test_train_reports_non_finite_gradients_as_divergence(monkeypatch, tmp_path):
    """An optimizer step refused for NaN or infinite gradients (lstmdsl.optim.NonFiniteGradients) stops a training
    run as a diverged loss does: Diverged, exit 1, with the epoch and batch (helper-124: untested)."""
    from lstmdsl import optim
    from lstmdsl.train import Diverged, TrainConfig, run

    def poisoned(self, grads):
        optim._check(self.params, {k: g * np.inf for k, g in grads.items()})

    monkeypatch.setattr(optim.Adam, "step", poisoned)
    cfg = TrainConfig("vanilla", "digits", epochs=1, hidden_size=6, lr=0.02, batch=16, max_train=32, seed=5,
                      optimizer="adam")
    with pytest.raises(Diverged, match=r"epoch 1, batch 1 of 2: the gradient of .* holds NaN or infinite") as e:
        run(cfg, tmp_path / "run", log=None)
    assert e.value.exit_code == 1
