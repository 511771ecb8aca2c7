"""The command line: output on stdout, diagnostics on stderr, meaningful exit codes, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lstmdsl.cli import main

from conftest import has_gpu

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None):
    """Run `python -m lstmdsl` as a user would, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "lstmdsl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_check_prints_states_parameters_gates_and_flops(capsys):
    assert main(["check", "peephole", "--input-size", "32", "--hidden-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "cell peephole" in out and "states      h : hidden, c : hidden" in out
    assert "gates       i, f, o" in out
    assert "W_i      matrix [hidden, input]" in out and "p_o      vector [hidden]" in out
    assert "FLOPs per step and sequence: 8*hidden^2 + 8*hidden*input + 23*hidden" in out
    # 2*(4*64*32 + 4*64*64) matvec FLOPs + 23*64 elementwise
    assert "50,624 FLOPs; 25,024 parameters" in out
    assert main(["check", "vanilla", "-I", "2000000000", "-H", "2000000000"]) == 0  # (exact: no 64-bit wrap)
    assert "64,000,000,034,000,000,000 FLOPs; 32,000,000,008,000,000,000 parameters" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # (30e9 printed negative counts once; sizes past 2^31 - 1 are refused)
        main(["check", "vanilla", "-I", "30000000000", "-H", "30000000000"])
    assert stop.value.code == 64 and "expected at most 2147483647" in capsys.readouterr().err


def test_check_counts_a_reductions_flops_with_sizes_bound(capsys, tmp_path):
    """A row reduction's per-row result has no size to bind (once KeyError 'one', exit 70, with -I and -H): a
    reduction costs one FLOP per element it reads, arithmetic on per-row values one per row."""
    assert main(["check", "layernorm", "-I", "4", "-H", "8"]) == 0
    out = capsys.readouterr().out
    assert "one" not in out.split("FLOPs per step")[1] and "FLOPs; " in out
    spec = tmp_path / "r.cell"
    spec.write_text("cell r { input x; state h; a = mean(h); h' = tanh(W x + R h + b) * max(a, 0.5); output h' }")
    assert main(["check", str(spec), "-I", "4", "-H", "8"]) == 0
    out = capsys.readouterr().out  # matvecs 2*8*4 + 2*8*8, 4 ops of hidden size, mean 8, max 1
    assert "FLOPs per step and sequence: 2*hidden^2 + 2*hidden*input + 5*hidden + 1" in out
    assert "at input=4, hidden=8: 233 FLOPs" in out


def test_check_json(capsys):
    assert main(["check", "gru", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cell"] == "gru" and d["gates"] == ["r", "u"]
    assert [p["name"] for p in d["parameters"]][:3] == ["W_r", "R_r", "b_r"]
    assert d["states"] == [{"name": "h", "size": "hidden"}]


def test_check_names_the_declared_output(tmp_path, capsys):
    f = tmp_path / "o.cell"
    f.write_text("cell c {\n  input x\n  state h\n  h' = tanh(W x + R h)\n  output h\n}\n")
    assert main(["check", str(f)]) == 0
    captured = capsys.readouterr()
    assert "output      h : hidden" in captured.out
    assert "warning: the output 'h' is the state's value at the start of the step" in captured.err


def test_check_needs_both_sizes(capsys):
    assert main(["check", "gru", "--hidden-size", "8"]) == 64
    assert "give both --input-size and --hidden-size" in capsys.readouterr().err


def test_run_reference_with_gradient_check(capsys):
    assert main(["run", "cifg", "--layers", "2", "--steps", "4", "--batch", "2", "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert "cell cifg on numpy, float32" in captured.out and "PASS" in captured.out
    assert "l1.R_z" in captured.out


def test_run_checks_gradients_on_two_layers_of_a_deep_stack(capsys):
    """The finite-difference check runs at small sizes, two layers at most (its cost grows with the square of
    the layers: a fuzzed `-L` once kept CI busy for over ten minutes); the stack itself runs all of them."""
    assert main(["run", "gru", "-L", "6", "-T", "2", "-B", "1", "-H", "3", "--backend", "numpy", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    layers = {r["tensor"].split(".")[0] for r in d["gradient_check"]["tensors"] if r["tensor"].startswith("l")}
    assert d["ok"] and d["shape"]["layers"] == 6 and layers == {"l0", "l1"}, layers


def test_run_bidirectional_lengths_and_dropout(capsys):
    assert main(["run", "zoneout_lstm", "-L", "2", "-T", "5", "-B", "3", "--bidirectional", "--dropout", "0.3",
                 "--lengths", "5,1,3", "--backend", "numpy", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] and d["bidirectional"] and d["lengths"] == [5, 1, 3] and d["shape"]["output"] == 64
    assert "l1_reverse.R_z" in {r["tensor"] for r in d["gradient_check"]["tensors"]}
    assert main(["run", "gru", "-T", "4", "-B", "3", "--lengths", "random", "--backend", "numpy"]) == 0
    assert "lengths 4," in capsys.readouterr().out


def test_run_says_first_that_a_huge_stack_takes_long(capsys, monkeypatch):
    """From cli.LONG_RUN layer-steps on (here lowered to 12), `run` says so on stderr before it builds anything; the
    JSON on stdout stays whole."""
    from lstmdsl import cli

    monkeypatch.setattr(cli, "LONG_RUN", 12)
    assert main(["run", "gru", "-L", "3", "-T", "2", "-B", "1", "-H", "3", "--bidirectional", "--backend", "numpy",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "note: 12 layer-steps (3 layers x 2 steps x 2 directions)" in captured.err and "a long run" in captured.err
    assert json.loads(captured.out)["ok"]
    assert main(["run", "gru", "-L", "5", "-T", "2", "-B", "1", "-H", "3", "--backend", "numpy"]) == 0
    assert "layer-steps" not in capsys.readouterr().err


def test_run_json(capsys):
    assert main(["run", "lstmp", "--proj-size", "3", "--json", "--dtype", "float64", "--backend", "numpy"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is True and d["backend"] == "numpy" and d["shape"]["output"] == 3
    assert d["gradient_check"]["max_rel_error"] < 1e-5


@pytest.mark.skipif(has_gpu(), reason="checks what happens without a GPU")
def test_run_without_gpu_says_so(capsys):
    assert main(["run", "gru", "--steps", "3"]) == 0
    captured = capsys.readouterr()
    assert "no GPU here" in captured.err and "running the numpy reference" in captured.err


def test_compile_emits_stages(tmp_path, capsys):
    assert main(["compile", "gru", "--emit", "ir"]) == 0
    assert "matvec(R_n" in capsys.readouterr().out
    assert main(["compile", "gru", "--emit", "grad"]) == 0
    assert "matvec_t([R_n], " in capsys.readouterr().out
    assert main(["compile", "gru", "--emit", "plan", "-I", "8", "-H", "16", "--schedule", "no hoist input"]) == 0
    out = capsys.readouterr().out
    assert "no hoist input" in out and "C[B, 48] = x[t] @ weights:weight_ih^T -> gemm0[t];  k = 8" in out
    assert main(["compile", "vanilla", "--emit", "plan", "-I", "512", "-H", "512", "-B", "64"]) == 0
    out = capsys.readouterr().out
    # recurrent GEMM: 4 * (64*512 + 2048*512 + 64*2048) bytes = 4,849,664; the kernel reads the 4 hoisted
    # and 4 recurrent GEMM outputs, c and 4 biases, and writes i, f, z, o, c', h' (tanh(c') is computed
    # again in the backward, not kept): 4 * (64*512*(9 + 6) + 4*512) = 1,974,272
    assert ("forward bytes per step at B=64: 6,823,936 (4,849,664 in GEMMs, 1,974,272 in kernels and copies)"
            in out)
    assert main(["compile", "gru", "--emit", "cuda"]) == 0
    assert 'extern "C" __global__ void gru_fwd0(' in capsys.readouterr().out
    assert main(["compile", "gru", "--emit", "ast"]) == 0
    assert "CellAST gru" in capsys.readouterr().out
    out = tmp_path / "ir.txt"
    assert main(["compile", "gru", "-o", str(out)]) == 0
    assert out.read_text().startswith("cell gru")


def test_specs_lists_every_shipped_spec(capsys):
    assert main(["specs"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()  # (titles aligned after the longest name; cut at the colon before the reference)
    assert len({ln.index(ln.split()[1]) for ln in lines}) == 1 and "recurrent_dropout  Recurrent dropout" in out
    assert "cifg" in out and "Greff" not in out
    for name in ("vanilla", "peephole", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr", "gru", "lstmp"):
        assert name in out


def test_spec_error_exit_65_with_caret_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.cell"
    bad.write_text("cell c {\n  input x\n  state h\n  h' = tanh(W x + R h) + sigmod(b)\n  output h'\n}\n")
    r = run_cli("check", str(bad))
    assert r.returncode == 65
    assert r.stdout == ""
    assert r.stderr.splitlines()[:4] == [
        f"{bad}:4:26: error: unknown function 'sigmod'",
        "      h' = tanh(W x + R h) + sigmod(b)",
        "                             ^^^^^^",
        "hint: did you mean 'sigmoid'?",
    ]
    assert "Traceback" not in r.stderr


def test_warnings_go_to_stderr(tmp_path, capsys):
    f = tmp_path / "w.cell"
    f.write_text("cell c {\n  input x\n  state h\n  u = tanh(h)\n  h' = tanh(W x)\n  output h'\n}\n")
    assert main(["check", str(f)]) == 0
    captured = capsys.readouterr()
    assert "warning: 'u' is computed but never used" in captured.err
    assert "warning: state 'h' is never read" in captured.err  # only the unused u reads it
    assert "warning:" not in captured.out


@pytest.mark.parametrize("args,code,message", [
    (["check", "missing.cell"], 66, "no spec file 'missing.cell'"),
    pytest.param(["run", "vanilla", "--backend", "cuda"], 69, "CUDA", id="cuda-without-gpu",
                 marks=pytest.mark.skipif(has_gpu(), reason="a machine without a GPU")),
    (["run", "vanilla", "--steps", "0"], 64, "argument --steps/-T: expected a positive integer, got 0"),
    (["run", "vanilla", "--hidden-size", "-3"], 64, "argument --hidden-size/-H: expected a positive integer, got -3"),
    (["run", "vanilla", "--schedule", "hoist everything"], 65, "unknown schedule directive 'hoist everything'"),
    (["compile", "vanilla", "--schedule", "precision bf17"], 65, "precision is one of fp32, tf32, bf16, fp16"),
    (["compile", "vanilla", "--emit", "grad", "--schedule", "hoist everything"], 65, "unknown schedule directive"),
    (["check", "lstmp", "-I", "4", "-H", "6", "-P", "0"], 64, "expected a positive integer, got 0"),
    (["frobnicate"], 64, "invalid choice"),
    (["run", "vanilla", "--batch", "two"], 64, "expected a positive integer, got 'two'"),
    (["run", "vanilla", "-B", "2", "--lengths", "3,4,5"], 64, "--lengths needs 2 lengths"),
    (["run", "vanilla", "--lengths", "3,x"], 64, "expected 'random' or comma-separated integers"),
    (["run", "vanilla", "--dropout", "1"], 64, "expected a probability in [0, 1), got 1"),
    (["train", "vanilla", "--task", "chorales", "--bidirectional"], 64, "--bidirectional does not suit chorales"),
    # (a reduced precision beside float64 is refused on every backend, as the plan refuses it)
    (["run", "vanilla", "--dtype", "float64", "--precision", "bf16", "--backend", "numpy"], 64,
     "precision bf16 applies to float32 layers"),
    (["compile", "vanilla", "--emit", "ir", "--dtype", "float64", "--schedule", "precision tf32"], 64,
     "precision tf32 applies to float32 layers"),
    (["compile", "vanilla", "--emit", "plan", "--schedule", "precision bf16", "--precision", "fp16"], 64,
     "--precision fp16 and --schedule's 'precision bf16' disagree: give one"),
    (["compile", "vanilla", "--schedule", "precision fp32", "--precision", "fp16"], 64,
     "--precision fp16 and --schedule's 'precision fp32' disagree"),  # (the spec's own precision, named)
    (["compile", "vanilla", "-o", ""], 64, "-o is empty"),
    (["compile", "vanilla", "-o", str(ROOT / "README.md" / "k.ir")], 73, "README.md is a file, not a folder"),
])
def test_exit_codes(args, code, message):
    r = run_cli(*args)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("lstmdsl ")
    r = run_cli("--help")
    assert r.returncode == 0 and "check" in r.stdout and "shipped spec" in r.stdout


def test_closed_stdout_is_not_an_internal_error():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(f"{sys.executable} -m lstmdsl compile fgr --emit grad | head -1", shell=True,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.startswith("backward step of cell fgr")
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_check_lists_exponential_gates(capsys):
    """sLSTM's input and forget gates are exponentials of their pre-activations, not sigmoids."""
    assert main(["check", "slstm"]) == 0
    gates = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("gates"))
    assert set(gates.split(None, 1)[1].split(", ")) == {"i", "f", "o"}


def test_a_warning_is_one_line_for_the_user(monkeypatch, capsys):
    """A warning raised while a command runs (a `persistent` that a loop cannot take, a kernel compiled for its
    shape that failed) is written as one line, without Python's file and line; whoever records warnings around
    main() (pytest.warns, logging.captureWarnings) still gets them, and the format is restored afterwards."""
    import warnings

    import lstmdsl.cli as cli

    def warns(args):
        warnings.warn("lstmdsl: cell 'x': its forward runs the stepwise loop", stacklevel=2)
        for text in ("lstmdsl: cell 'x': a note", "a warning from elsewhere"):
            print(warnings.formatwarning(text, RuntimeWarning, "file.py", 1), end="", file=sys.stderr)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "check", warns)
    before = warnings.formatwarning
    with pytest.warns(UserWarning, match="its forward runs the stepwise loop"):
        assert main(["check", "vanilla"]) == 0
    assert capsys.readouterr().err == "lstmdsl: cell 'x': a note\nlstmdsl: warning: a warning from elsewhere\n"
    assert warnings.formatwarning is before


@pytest.mark.parametrize("debug,traceback_shown", [("", False), ("0", False), ("false", False), ("1", True)])
def test_an_internal_error_is_exit_70_with_its_traceback_only_on_request(monkeypatch, capsys, debug, traceback_shown):
    """A bug in lstmdsl (here a command that raises RuntimeError) says so, exit 70; LSTMDSL_DEBUG=1 shows the
    traceback, and 0 or false do not (any value once did)."""
    import lstmdsl.cli as cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "check", broken)
    monkeypatch.setenv("LSTMDSL_DEBUG", debug)
    assert main(["check", "vanilla"]) == 70
    err = capsys.readouterr().err
    assert "internal error (a bug in lstmdsl)" in err and ("Traceback" in err) == traceback_shown


@pytest.mark.parametrize("args,code,message", [
    (["bench", "no_such_spec"], 66, "no spec file 'no_such_spec'"),
    (["bench", "vanilla", "--schedule", "bogus"], 65, "bogus"),
    (["bench", "vanilla", "--heads", "2"], 64, "has no block-diagonal matrix"),
    # (these three were exit 69 here, the GPU's absence checked before them; a review, 2026-12-06)
    (["bench", "vanilla", "--tf32", "--precision", "bf16"], 64, "--tf32 and --precision bf16 disagree"),
    (["bench", "vanilla", "--precision", "bf16", "--schedule", "precision fp16"], 64, "'precision fp16' disagree"),
    (["bench", "slstm", "--heads", "3", "-H", "16"], 64, "not a multiple of 3"),
])
def test_bench_reports_a_bad_spec_or_schedule_before_a_missing_gpu(capsys, args, code, message):
    """On a machine without CuPy these said only that the GPU is missing (exit 69) and hid the error a user can fix
    here; with a GPU they are the same errors."""
    assert main(args) == code
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["check", "vanilla", "--heads", "2"], "--heads was given but cell 'vanilla' has no block-diagonal matrix"),
    (["check", "vanilla", "-P", "3"], "--proj-size was given but cell 'vanilla' has no size 'proj'"),
    (["compile", "vanilla", "--heads", "2", "--emit", "ir"], "has no block-diagonal matrix"),
    (["compile", "slstm", "--emit", "cuda", "--heads", "3", "-H", "8", "-I", "4"], "num_heads = 3 blocks"),
])
def test_options_the_cell_cannot_take_are_refused_with_sizes_or_without(capsys, args, message):
    """check and compile refused these with -I and -H given and let them pass without (exit 0), and `--emit ir`
    or `cuda` never looked at the sizes."""
    assert main(args) == 64
    assert message in capsys.readouterr().err


HEADS_ON_INPUT = "cell hw2 {\n input x\n state h\n heads W\n h' = tanh(W x + R h + b)\n output h'\n}\n"


def test_heads_on_the_input_run_and_train_at_sizes_they_divide(tmp_path, capsys):
    """A block-diagonal matrix on the input: `run`'s small gradient check once took 5 inputs for any -I (refused at
    -I 8 --heads 2 as "input is 5"), and `train`'s early size check 1."""
    f = tmp_path / "hw2.cell"
    f.write_text(HEADS_ON_INPUT)
    for heads in ("2", "4"):
        assert main(["run", str(f), "-I", "8", "-H", "8", "--heads", heads, "-B", "2", "-T", "3", "--backend",
                     "numpy"]) == 0
        assert "PASS" in capsys.readouterr().out
    assert main(["train", str(f), "--task", "digits", "--heads", "2", "-H", "8", "--epochs", "1", "--max-train",
                 "16", "--backend", "numpy", "--out", str(tmp_path / "run")]) == 0
    assert main(["train", str(f), "--task", "digits", "--heads", "3", "-H", "9", "--epochs", "1", "--backend",
                 "numpy", "--out", str(tmp_path / "other")]) == 64  # (the digits' 8 inputs: before the data)
    assert "side 'input' is 8, not a multiple of 3" in capsys.readouterr().err


def test_the_gradient_check_compares_tiny_gradients_on_the_functions_scale(capsys):
    """At H = 1 a norm's weights get gradients of a few 1e-6 (its epsilon's) beside 0.35 elsewhere; the central
    difference, accurate to a fraction of the whole function's scale, once failed them at 5e-5 relative. A tensor
    whose sampled gradients are all zero both ways is named: nothing was compared there."""
    for seed in range(5):
        assert main(["run", "rmsnorm", "-I", "1", "-H", "1", "-B", "1", "-T", "1", "--seed", str(seed), "--backend",
                     "numpy"]) == 0, capsys.readouterr().out
        capsys.readouterr()
    assert main(["run", "indrnn", "-I", "1", "-H", "1", "-B", "1", "-T", "1", "--backend", "numpy"]) == 0
    assert "is zero, both ways: the check says nothing about them" in capsys.readouterr().out


def test_the_gradient_check_still_fails_a_wrong_tiny_gradient(monkeypatch):
    """The floor does not hide a wrong gradient: rmsnorm's W_i at H = 1 (about 5e-9 beside 0.3) given as -0.5 times
    itself fails the check."""
    import lstmdsl
    from lstmdsl.gradcheck import gradient_check

    layer_type = type(lstmdsl.compile("rmsnorm", 1, 1, dtype="float64"))
    right = layer_type.grads
    monkeypatch.setattr(layer_type, "grads", lambda self: {k: -0.5 * v if k == "l0.W_i" else v
                                                             for k, v in right(self).items()})
    rows = {r.tensor: r for r in gradient_check(lstmdsl.parse("rmsnorm"), 1, 1, 1, 1)}
    assert rows["l0.W_i"].max_abs_grad < 1e-6 and rows["l0.W_i"].rel_error > 1e-5, rows["l0.W_i"]


def test_the_gradient_check_passes_small_gradients_that_rounding_hides_at_its_first_step():
    """A saturated tanh (tanh(... + 6)): gradients of 2e-6 beside a loss of about 1, which central differences at
    eps = 1e-6 missed by 6e-5 (a FAIL of a correct spec; a review found it in a chain of 300 additions, 2026-12-06);
    the larger steps tried then agree to 1e-6."""
    import lstmdsl
    from lstmdsl.gradcheck import gradient_check

    rows = gradient_check(lstmdsl.parse("cell sat {\n input x\n state h\n h' = tanh(W x + R h + b + 6)\n"
                                        " output h'\n}\n"), 2, 2, 1, 2)
    assert max(r.rel_error for r in rows) < 2e-6, rows
    assert min(r.max_abs_grad for r in rows) < 1e-5, rows


def test_spec_warnings_reach_train_and_api_users(tmp_path, capsys):
    """A typo that makes a new parameter: `train` prints the spec's warnings as check and run do, and the API
    (parse, compile, the torch module) issues them as lstmdsl.SpecWarning, naming the user's line."""
    import warnings

    import lstmdsl

    f = tmp_path / "typo.cell"
    f.write_text("cell typo {\n input x\n state h\n gate = sigmoid(W x + R h + b)\n h' = gate * tanh(U x + gat)\n"
                 " output h'\n}\n")
    assert main(["train", str(f), "--task", "digits", "-H", "4", "--epochs", "1", "--max-train", "16", "--backend",
                 "numpy", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.count("'gat' is not defined") == 1 and "did you mean 'gate'?" in err  # (once: not also as Python's)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lstmdsl.compile(str(f), 3, 4)
    mine = [w for w in caught if issubclass(w.category, lstmdsl.SpecWarning)]
    assert mine and "'gat' is not defined" in str(mine[0].message) and mine[0].filename == __file__


def test_a_failed_write_to_stdout_is_exit_73_not_an_internal_error(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for command in ("specs", "check vanilla", "check vanilla --json"):
        r = subprocess.run(f"{sys.executable} -m lstmdsl {command} > /dev/full", shell=True, capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 73, (command, r.stderr)
        assert "cannot write to standard output: No space left on device" in r.stderr and "internal" not in r.stderr
    # an error whose --json object cannot be written still says the error, with its own exit code
    r = subprocess.run(f"{sys.executable} -m lstmdsl check nosuch --json > /dev/full", shell=True, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 66 and "no spec file 'nosuch'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # stdout closed at start (Python's sys.stdout is None): the result would be lost, so it is an output error (it
    # wrote nothing and exited 0 until 2026-12-08), but not where the result goes to a file
    r = subprocess.run(f"{sys.executable} -m lstmdsl specs >&-", shell=True, capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 73 and "standard output is closed" in r.stderr and "internal" not in r.stderr, r.stderr
    r = subprocess.run(f"{sys.executable} -m lstmdsl compile vanilla --emit ir -o {tmp_path / 'k.ir'} >&-", shell=True,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and (tmp_path / "k.ir").read_text().startswith("cell"), r.stderr
