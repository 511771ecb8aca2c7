"""The command line: lstmdsl check | compile | run | train | bench | specs (the parser: cli_args.py).

Results go to stdout, warnings and progress to stderr; --json prints one JSON object instead.
Exit codes: 0 ok, 1 a numerical check failed, 64 bad usage, 65 the spec has errors, 66 a file cannot be
read, 69 a backend is not available, 70 an internal error (a bug: please report it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from . import cli_args
from .api import Spec, compile, layer_sizes, parse
from .errors import (EXIT_CHECK_FAILED, EXIT_SOFTWARE, BackendUnavailable, InputFileError, LstmdslError, SpecError,
                     SpecWarning, OutputFileError, UsageError, check_free_memory)
from .describe import cell_io, describe
from .files import (CheckedStdout, QuietStderr, StdoutFailed, dumps, exists, output_dir, stop_on_sigterm,
                    write_text)
from .grad import format_grad
from .ir import format_cell
from .planformat import format_plan, traffic_per_step
from .program import build_program
from .cli_args import build_parser, schedule_of
from .resources import shipped_specs

GRAD_TOLERANCE = 1e-5  # float64 central differences with eps = 1e-6 land near 1e-9


def proj_default(spec: Spec, hidden: int, proj: int | None) -> int | None:
    """The projection size a command uses: --proj-size, or half the hidden size for a spec using proj."""
    if proj is None and spec.uses_size("proj"):
        return max(1, hidden // 2)
    return proj


# ------------------------------------------------------------------------------------------ check

def _size_options(args, spec: Spec) -> None:
    """--heads and --proj-size refused, by those names, for a cell without that size (before any note or work)."""
    if getattr(args, "heads", None) is not None and not spec.uses_size("heads"):
        raise UsageError(f"--heads was given but cell '{spec.name}' has no block-diagonal matrix (no 'heads' line)")
    if getattr(args, "proj_size", None) is not None and not spec.uses_size("proj"):
        raise UsageError(f"--proj-size was given but cell '{spec.name}' has no size 'proj'")


def _optional_sizes(args, spec: Spec, purpose: str) -> dict[str, int] | None:
    """The size binding of one layer when --input-size and --hidden-size are given, else None (the options
    that need a size of the cell's are checked either way)."""
    _size_options(args, spec)  # (refused with sizes given: so without them too)
    if args.input_size is None and args.hidden_size is None:
        return None
    if args.input_size is None or args.hidden_size is None:
        raise UsageError(f"give both --input-size and --hidden-size {purpose}")
    return layer_sizes(spec, args.input_size, args.hidden_size, proj_default(spec, args.hidden_size, args.proj_size),
                       1, num_heads=args.heads)[0]


def cmd_check(args) -> int:
    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    sizes = _optional_sizes(args, spec, "to count FLOPs and parameters")
    d = describe(spec, sizes)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"cell {d['cell']} ({d['file']}): ok")
    print(f"  input       {cell_io(d['input'])}")
    print(f"  states      {', '.join(cell_io(s) for s in d['states'])}")
    print(f"  output      {cell_io(d['output'])}")
    print(f"  gates       {', '.join(d['gates']) or '(none)'}")
    if d["regularisers"]:
        print("  regularise  " + ", ".join(f"{r['kind']} p={r['p']:g} ({r['mask']}, {r['size']})"
                                           for r in d["regularisers"]) + "  (in training; expectations in evaluation)")
    print("  values      " + ", ".join(f"{v['name']} = {v['op']}(...)" for v in d["values"]))
    print(f"  parameters  {len(d['parameters'])}")
    for p in d["parameters"]:
        print(f"    {p['name']:<8} {p['kind']:<6} [{', '.join(p['shape'])}]")
    print(f"  FLOPs per step and sequence: {d['flops_per_step']}")
    if sizes:
        bound = ", ".join(f"{k}={v}" for k, v in d["sizes"].items())
        print(f"    at {bound}: {d['flops_per_step_value']:,} FLOPs; {d['parameter_count']:,} parameters")
    print(f"  schedule    {d['schedule']}")
    return 0


# ---------------------------------------------------------------------------------------- compile

def cmd_compile(args) -> int:
    if args.output is not None and not args.output.strip():
        raise UsageError("-o is empty: give a file name (or leave -o out for stdout)")
    if args.output and _same_file(args.output, args.spec):
        raise UsageError(f"-o {args.output} is the spec itself: give another file name")  # (it was overwritten)
    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    schedule = schedule_of(args, spec)  # (checked whatever is emitted: a bad --schedule is an error, not ignored)
    sizes = _optional_sizes(args, spec, "to print numeric shapes")  # (the sizes too: --emit plan uses them)
    if args.emit == "ast":
        text = _format_ast(spec.ast)
    elif args.emit == "ir":
        text = format_cell(spec.cell)
    elif args.emit == "grad":
        text = format_grad(spec.cell, spec.grad)
    else:
        program = build_program(spec.cell, schedule, args.dtype)
        if args.emit == "cuda":
            text = program.source
        else:
            text = format_plan(program.plan, sizes, args.batch if sizes else None)
            if sizes:
                if args.batch < 1:
                    raise UsageError(f"--batch must be a positive integer, got {args.batch}")
                for phase, t in traffic_per_step(program.plan, program.kernels, sizes, args.batch).items():
                    text += (f"\n  {phase} bytes per step at B={args.batch}: "
                             f"{t['gemm'] + t['kernels']:,} ({t['gemm']:,} in GEMMs, {t['kernels']:,} in kernels "
                             "and copies)")
    if args.output:  # (through a temporary file: a failed write leaves no half file; OutputFileError, exit 73)
        write_text(args.output, text + "\n")
    else:
        print(text)
    return 0


def _format_ast(tree) -> str:
    lines = [f"CellAST {tree.name}"]
    for s in tree.stmts:
        lines.append(f"  {s.span.line}:{s.span.col} {s!r}" if hasattr(s, "span") else f"  {s!r}")
    for d in tree.schedule or ():
        lines.append(f"  {d.span.line}:{d.span.col} schedule {' '.join(d.words)}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- run

def layer_note(args) -> str:
    """The layer options of `run` in its first line."""
    parts = ["bidirectional"] * args.bidirectional + [f"dropout {args.dropout:g}"] * (args.dropout > 0) + \
        [f"dropconnect {args.dropconnect:g}"] * (args.dropconnect > 0)
    if args.lengths is not None:
        parts.append(f"lengths {','.join(map(str, args.lengths))}")
    return ", " + ", ".join(parts) if parts else ""


def _small_sizes(args) -> dict:
    """The sizes of the small float64 gradient check: input 5, hidden 6, projection 4 at most; with heads, at
    most 3 of them and every size a multiple of their count (a block-diagonal matrix may stand on any of the
    sizes: on the input too)."""
    heads = None if args.heads is None else min(args.heads, 3)
    fit = (lambda n: n) if heads is None else (lambda n: heads * -(-n // heads))  # noqa: E731
    return {"input_size": fit(min(args.input_size, 5)), "hidden_size": fit(min(args.hidden_size, 6)),
            "proj_size": fit(min(args.proj_size, 4)) if args.proj_size else None, "num_heads": heads}


# the options that set a command's sizes, for "lower ..." in errors about memory
SIZE_OPTIONS = {"run": "-T, -B, -H or -L", "train": "-H, -L or --batch", "bench": "-T, -B, -H or -L"}


LONG_RUN = 50_000  # layer-steps of `lstmdsl run` from which it says first that it takes long (the reference: 20,000
# took 11 s on the 2-core development machine, -L 2000; -L 100000 built for minutes without a word)


def cmd_run(args) -> int:
    from .gradcheck import gradient_check

    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    _size_options(args, spec)
    schedule = schedule_of(args, spec)
    args.proj_size = proj_default(spec, args.hidden_size, args.proj_size)
    args.lengths = cli_args.run_lengths(args.lengths, args.steps, args.batch, args.seed)
    args.layer_note = layer_note(args)
    steps = args.layers * args.steps * (2 if args.bidirectional else 1)
    if steps >= LONG_RUN:  # (said first: the build and the reference take minutes, and nothing else is printed)
        print(f"note: {steps:,} layer-steps ({args.layers} layers x {args.steps} steps"
              f"{' x 2 directions' if args.bidirectional else ''}) to run forward and backward, and the float64 "
              "reference's on the CPU: a long run", file=sys.stderr)
    backend, note = _choose_backend(args.backend, "running the numpy reference on the CPU, float64 gradient check")
    if backend == "cuda":
        try:
            from .cli_gpu import run_cuda

            return run_cuda(args, spec, schedule)
        except BackendUnavailable as err:  # a spec beyond the CUDA backend: auto falls back
            if args.backend != "auto":
                raise
            backend = "numpy"
            note = f"the CUDA backend cannot run this spec ({err}): running the numpy reference on the CPU"
    note = _precision_note(note, backend, schedule.precision)
    if note and not args.json:
        print(f"note: {note}", file=sys.stderr)
    layer = compile(spec, args.input_size, args.hidden_size, args.layers, proj_size=args.proj_size,
                    backend=backend, dtype=args.dtype, schedule=schedule, seed=args.seed,
                    bidirectional=args.bidirectional, dropout=args.dropout, dropconnect=args.dropconnect,
                    num_heads=args.heads)
    if backend == "numpy":
        check_free_memory(layer.tape_bytes(args.steps, args.batch), "the numpy reference's forward and backward",
                          SIZE_OPTIONS["run"])
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.steps, args.batch, args.input_size)).astype(args.dtype)
    with np.errstate(all="ignore"):  # (a spec that divides by zero: said below, without numpy's warnings)
        t0 = time.perf_counter()
        y, state = layer.forward(x, lengths=args.lengths)
        t1 = time.perf_counter()
        dx = layer.backward(np.ones_like(y))
        t2 = time.perf_counter()
        # (small sizes, two layers at most: its loss, a forward of every layer, is evaluated twice per sampled
        # element of every layer's tensors, a cost growing with the square of the layers; a fuzzed -L kept a CI
        # test busy for over ten minutes)
        small = _small_sizes(args)
        rows = gradient_check(spec, small.pop("input_size"), small.pop("hidden_size"), min(args.batch, 3),
                              min(args.steps, 5), min(args.layers, 2), seed=args.seed,
                              bidirectional=args.bidirectional, dropout=args.dropout,
                              lengths=args.lengths is not None, dropconnect=args.dropconnect, **small)
        output_rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    errors = [r.rel_error for r in rows]
    worst = float("nan") if any(np.isnan(errors)) else max(errors)
    finite = bool(np.all(np.isfinite(y))) and bool(np.all(np.isfinite(dx)))
    ok = worst <= GRAD_TOLERANCE and finite
    result = {
        "cell": spec.name, "backend": backend, "note": note, "dtype": args.dtype,
        "schedule": schedule.describe(),
        "shape": {"steps": args.steps, "batch": args.batch, "input": args.input_size,
                  "hidden": args.hidden_size, "layers": args.layers, "output": layer.output_size},
        "bidirectional": args.bidirectional, "dropout": args.dropout, "dropconnect": args.dropconnect,
        "lengths": None if args.lengths is None else [int(v) for v in args.lengths],
        "forward_ms": 1e3 * (t1 - t0), "backward_ms": 1e3 * (t2 - t1),
        "output_rms": output_rms, "finite": finite,
        "gradient_check": {"dtype": "float64", "tolerance": GRAD_TOLERANCE, "max_rel_error": worst,
                           "tensors": [r.__dict__ for r in rows]},
        "ok": ok,
    }
    if args.json:
        print(dumps(result))
    else:
        print(f"cell {spec.name} on {backend}, {args.dtype}: T={args.steps} B={args.batch} "
              f"I={args.input_size} H={args.hidden_size} L={args.layers}{args.layer_note}")
        print(f"  forward   {result['forward_ms']:9.2f} ms   y [{args.steps}, {args.batch}, {layer.output_size}],"
              f" rms {result['output_rms']:.4f}")
        print(f"  backward  {result['backward_ms']:9.2f} ms   dx and {len(layer.grads())} parameter gradients")
        print("  gradient check (float64 central differences, small sizes" +
              (", its own lengths including 1 and T" if args.lengths is not None else "") + "):")
        w = max(12, *(len(r.tensor) for r in rows))
        print(f"    {'tensor':<{w}} {'coords':>6} {'max |grad|':>11} {'rel error':>10}")
        for r in rows:
            print(f"    {r.tensor:<{w}} {r.coordinates:>6} {r.max_abs_grad:>11.3e} {r.rel_error:>10.2e}")
        if not finite:
            print("  FAIL: the output or its gradient has NaN or infinite values (does the spec divide by zero, "
                  "or overflow at these sizes?)")
        else:
            print(f"  {'PASS' if ok else 'FAIL'}: largest relative error {worst:.2e} (tolerance {GRAD_TOLERANCE:.0e})")
        zero = [r.tensor for r in rows if r.max_abs_grad == 0 and r.rel_error == 0]
        if zero:  # (a dead ReLU, a gate the loss does not reach at these sizes): nothing was compared there
            print(f"  note: every sampled gradient of {', '.join(zero)} is zero, both ways: the check says nothing "
                  "about {}".format("it" if len(zero) == 1 else "them"))
    return 0 if ok else EXIT_CHECK_FAILED


def _choose_backend(requested: str, fallback: str) -> tuple[str, str | None]:
    """(backend, note): "auto" is the GPU when one is usable, else the reference, with a note saying so."""
    if requested != "auto":
        return requested, None
    from .runtime import check_available

    try:
        check_available()
        return "cuda", None
    except BackendUnavailable as err:
        return "numpy", f"no GPU here ({err}): {fallback}"


def cmd_train(args) -> int:
    from .train import RUN_FILES, TrainConfig, check_config, run

    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    _size_options(args, spec)
    backend, note = _choose_backend(args.backend, "training on the numpy reference on the CPU")
    cfg = TrainConfig(spec=str(args.spec), task=args.task, epochs=args.epochs, hidden_size=args.hidden_size,
                      layers=args.layers, optimizer=args.optimizer, lr=args.lr, batch=args.batch, backend=backend,
                      clip=args.clip, seed=args.seed, max_train=args.max_train,
                      proj_size=proj_default(spec, args.hidden_size, args.proj_size), bidirectional=args.bidirectional,
                      dropout=args.dropout, dropconnect=args.dropconnect, num_heads=args.heads,
                      precision=args.precision)
    # the sizes, checked before the data: the digits' 8 inputs (the chorales' pitches are known from their data:
    # a block-diagonal matrix on the input meets them when the model is built)
    compile(spec, 8 if args.task == "digits" else cfg.num_heads or 1, args.hidden_size, args.layers,
            proj_size=cfg.proj_size, num_heads=cfg.num_heads)
    check_config(cfg)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: go on from the checkpoint, or start again")
    if args.out is not None and not args.out.strip():
        raise UsageError("--out is empty: give a folder (or leave --out out for the default)")
    out = args.out or f"lstmdsl-train-{spec.name}-{args.task}"
    if args.resume and not exists(out):  # (output_dir would make the folder: a typo left one behind)
        raise InputFileError(f"--resume: there is no run in {out} (no such folder)")
    out = output_dir(out, "--out")  # before any long work
    kept = [name for name in RUN_FILES if exists(Path(out) / name)]
    if kept and not args.resume and not args.overwrite:  # (repeating a command must not lose a run)
        raise UsageError(f"--out {out} holds a run already ({', '.join(kept)}): pass --resume to go on from its "
                         "checkpoint, --overwrite to start again over it, or another --out")
    note = _precision_note(note, backend, args.precision or spec.schedule.precision)  # (the option, else the spec's)
    if note:
        print(f"note: {note}", file=sys.stderr)
    result = run(cfg, Path(out), resume=args.resume)
    losses = [h["loss"] for h in result["history"]]
    # (the tasks' losses start at a few nats: one past 1e6, or ten times the first epoch's, has diverged)
    if losses and (not np.isfinite(losses[-1]) or losses[-1] > min(1e6, 10 * max(losses[0], 1e-3))):
        print(f"note: the training loss went from {losses[0]:.4g} to {losses[-1]:.4g}: the run diverged; try a "
              f"smaller --lr (this one: {cfg.lr:g}) or --clip", file=sys.stderr)
    if args.json:
        print(dumps(result))
    else:
        print(f"{spec.name} on {args.task} ({backend}): test {result['metric']} {result['test']:.4f}; "
              f"{result['seconds_per_epoch']:.1f} s per epoch; saved in {out}/")
    return 0


def cmd_bench(args) -> int:
    from .cli_gpu import cmd_bench as run

    return run(args)


def cmd_specs(args) -> int:
    """Each shipped spec's name and what it is: its leading comment's title (up to the colon before the
    reference, which `lstmdsl check NAME` and the file give), names aligned on the longest."""
    specs = shipped_specs()
    width = max(map(len, specs))
    for name, path in specs.items():
        lines = path.read_text().splitlines()
        comment = " ".join(ln[1:].strip() for ln in lines[:next((k for k, ln in enumerate(lines)
                                                                  if not ln.startswith("#")), len(lines))])
        print(f"{name:<{width}}  {comment.split(': ', 1)[0].rstrip(':.')}")
    return 0


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "run": cmd_run, "train": cmd_train, "bench": cmd_bench,
            "specs": cmd_specs}


def main(argv: list[str] | None = None) -> int:
    argv = cli_args.joined_lengths(list(sys.argv[1:] if argv is None else argv))
    cli_args.JSON_ERRORS = "--json" in argv
    before, out, err = warnings.formatwarning, sys.stdout, sys.stderr  # (only the text: whoever records or logs
    warnings.formatwarning = _format_warning                            # warnings still gets them)
    if out is not None:  # (None: Python's stdout where fd 1 was closed at start; print then writes nothing)
        sys.stdout = CheckedStdout(out)
    sys.stderr = QuietStderr(err)  # (a note that cannot be written must not cost the result: usage errors' too)
    restore = None
    try:
        restore = stop_on_sigterm()
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=SpecWarning)  # (the commands print the spec's warnings)
            return _run(args)
    finally:  # (main() also runs inside other programs and the tests)
        warnings.formatwarning, sys.stdout, sys.stderr = before, out, err
        if restore is not None:
            restore()


def _drop_stdout() -> None:
    """Point fd 1 at /dev/null: what stdout's buffer still holds would fail again when Python flushes it at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line for the user, without Python's file and line."""
    text = str(message)
    return (text if text.startswith("lstmdsl") else f"lstmdsl: warning: {text}") + "\n"


def _precision_note(note: str | None, backend: str, precision: str) -> str | None:
    """The backend's note, and the numpy backend's word on a precision other than fp32 (its arithmetic is float32)."""
    return "; ".join(filter(None, (note, backend == "numpy" and precision != "fp32" and
                                   f"precision {precision} applies to the CUDA backend only"))) or None


def _same_file(a: str, b: str) -> bool:
    """Whether two names are one existing file (b may be spec text: no file, whatever its length)."""
    try:
        return Path(a).is_file() and Path(b).is_file() and Path(a).samefile(b)
    except (OSError, ValueError):
        return False


def _run(args) -> int:
    try:
        try:
            cli_args.spec_from_stdin(args)
            if sys.stdout is None and (args.command != "train" or args.json) and not getattr(args, "output", None):
                raise OutputFileError("standard output is closed, and the result goes there: redirect it to a file "
                                      "(or to /dev/null to drop it)")  # (train's results go to --out)
            code = COMMANDS[args.command](args)
            if sys.stdout is not None:
                sys.stdout.flush()  # (a failed write surfaces here, not at exit)
            return code
        except MemoryError as err:  # (sizes past what check_free_memory estimates: an allocation failed)
            raise UsageError(f"not enough memory for these sizes ({err or 'an allocation failed'}): lower "
                             f"{SIZE_OPTIONS.get(args.command, 'the sizes')}") from None
    except LstmdslError as err:
        if isinstance(err, StdoutFailed):  # (what is left in its buffer would fail again at exit)
            _drop_stdout()
        elif getattr(args, "json", False):
            try:
                print(json.dumps(err.as_json(), indent=2))
            except (StdoutFailed, BrokenPipeError):  # (stdout fails too: the error still goes to stderr)
                _drop_stdout()
        print(err if isinstance(err, SpecError) else f"lstmdsl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (`lstmdsl ... | head`): stop quietly
        _drop_stdout()
        return 1
    except Exception:  # a bug in lstmdsl: say so, with the traceback only on request
        if getattr(args, "json", False):
            with contextlib.suppress(StdoutFailed, BrokenPipeError):
                print(json.dumps({"error": "internal error (a bug in lstmdsl)", "kind": "InternalError",
                                  "exit_code": EXIT_SOFTWARE}))
        debug = os.environ.get("LSTMDSL_DEBUG", "0").strip().lower() not in ("", "0", "false", "no", "off")
        if debug:
            traceback.print_exc()
        print("lstmdsl: internal error (a bug in lstmdsl); " + ("please report it with the traceback above" if debug
              else "run again with LSTMDSL_DEBUG=1 for the traceback and please report it"), file=sys.stderr)
        return EXIT_SOFTWARE
