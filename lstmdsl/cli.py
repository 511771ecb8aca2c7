"""The command line: lstmdsl check | compile | run | specs.

Results go to stdout, warnings and progress to stderr; --json prints one JSON object instead.
Exit codes: 0 ok, 1 a numerical check failed, 64 bad usage, 65 the spec has errors, 66 a file cannot be
read, 69 a backend is not available, 70 an internal error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

from .version import __version__
from .api import Spec, compile, layer_sizes, parse
from .errors import (EXIT_CHECK_FAILED, EXIT_SOFTWARE, EXIT_USAGE, BackendUnavailable, LstmdslError, SpecError,
                     UsageError)
from .codegen import traffic_per_step
from .describe import cell_io, describe
from .grad import format_grad
from .ir import format_cell
from .plan import format_plan
from .program import build_program
from .resources import shipped_specs
from .schedule import parse_schedule

GRAD_TOLERANCE = 1e-5  # float64 central differences with eps = 1e-6 land near 1e-9


_JSON_ERRORS = False  # --json was given: errors go to stdout as a JSON object too


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message):  # argparse exits with 2; we use sysexits' EX_USAGE
        if _JSON_ERRORS:
            print(json.dumps({"error": f"{self.prog}: {message}", "kind": "UsageError", "exit_code": EXIT_USAGE}))
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _count(text: str) -> int:
    """An argument that counts something: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {value}")
    return value


def _number(low: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value == value or value in (float("inf"), float("-inf")) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


def _sizes_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--input-size", "-I", type=_count, default=None if not required else 16,
                   help="size of the input x")
    p.add_argument("--hidden-size", "-H", type=_count, default=None if not required else 32,
                   help="the hidden size")
    p.add_argument("--proj-size", "-P", type=_count, default=None,
                   help="the projection size, for specs using proj (default: half the hidden size)")


def build_parser() -> argparse.ArgumentParser:
    shipped = ", ".join(shipped_specs())
    parser = _Parser(prog="lstmdsl", description="LSTM variants written as equations, compiled to kernels.",
                     epilog=f"SPEC is a .cell file or the name of a shipped spec: {shipped}")
    parser.add_argument("--version", action="version", version=f"lstmdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("check", help="check a spec; print its states, parameters, gates and FLOPs")
    p.add_argument("spec", help="a .cell file or a shipped spec's name")
    _sizes_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (errors too)")

    p = sub.add_parser("compile", help="print a stage of the compilation")
    p.add_argument("spec", help="a .cell file or a shipped spec's name")
    p.add_argument("--emit", choices=("ast", "ir", "grad", "plan", "cuda"), default="ir",
                   help="ast: the parsed spec; ir: the Cell IR; grad: the derived backward step; "
                        "plan: the scheduled GEMMs and kernels; cuda: the generated CUDA source")
    p.add_argument("--batch", "-B", type=_count, default=1, help="batch size for the bytes per step of --emit plan")
    p.add_argument("--schedule", help="schedule directives over the spec's, e.g. 'no fuse gates'")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="element type of the plan and kernels")
    _sizes_args(p)
    p.add_argument("-o", "--output", help="write to this file instead of stdout")

    p = sub.add_parser("run", help="run forward and backward on random data and check the gradients")
    p.add_argument("spec", help="a .cell file or a shipped spec's name")
    _sizes_args(p, required=True)
    p.add_argument("--batch", "-B", type=_count, default=4, help="sequences per batch")
    p.add_argument("--steps", "-T", type=_count, default=10, help="time steps")
    p.add_argument("--layers", "-L", type=_count, default=1, help="stacked layers")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                   help="auto: the GPU when there is one, else the numpy reference")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="element type")
    p.add_argument("--schedule", help="schedule directives over the spec's, e.g. 'no hoist input'")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the parameters and the random data")
    p.add_argument("--json", action="store_true", help="print one JSON object (errors too)")

    p = sub.add_parser("train", help="train a spec on a task that ships with a package (chorales, digits)")
    p.add_argument("spec", help="a .cell file or a shipped spec's name")
    p.add_argument("--task", required=True, choices=("chorales", "digits"), help="the task")
    p.add_argument("--epochs", type=_count, default=10, help="passes over the training split")
    p.add_argument("--hidden-size", "-H", type=_count, default=128, help="the hidden size")
    p.add_argument("--proj-size", "-P", type=_count, default=None,
                   help="the projection size, for specs using proj (default: half the hidden size)")
    p.add_argument("--layers", "-L", type=_count, default=1, help="stacked layers")
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "momentum", "nesterov"),
                   help="the optimizer")
    p.add_argument("--lr", type=_number(0, strict=True), default=1e-3, help="learning rate")
    p.add_argument("--batch", "-B", type=_count, default=32, help="sequences per batch")
    p.add_argument("--clip", type=_number(0, strict=False), default=1.0,
                   help="global gradient-norm limit (0: no clipping)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                   help="auto: the GPU when there is one, else the numpy reference")
    p.add_argument("--max-train", type=_count, default=None, help="use only the first N training sequences")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the parameters and the batch order")
    p.add_argument("--out", default=None, help="folder for parameters, history, plot and checkpoints "
                   "(default: lstmdsl-train-SPEC-TASK)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (left by an interrupted or finished run)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (errors too)")

    p = sub.add_parser("bench", help="time a spec against cuDNN and the same cell in PyTorch (needs a GPU, torch)")
    p.add_argument("spec", help="a .cell file or a shipped spec's name")
    p.add_argument("--batch", "-B", type=_count, default=64, help="sequences per batch")
    p.add_argument("--hidden-size", "-H", type=_count, default=512, help="hidden size (the input size is the same)")
    p.add_argument("--steps", "-T", type=_count, default=100, help="time steps")
    p.add_argument("--layers", "-L", type=_count, default=1, help="stacked layers")
    p.add_argument("--mode", choices=("forward", "train", "both"), default="both", help="what is timed")
    p.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores (default: strict fp32)")
    p.add_argument("--repeat", type=_count, default=20, help="timed calls per competitor")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile (slow to compile)")
    p.add_argument("--schedule", help="schedule directives over the spec's")
    p.add_argument("--profile", action="store_true",
                   help="break one forward and one training step of lstmdsl into its parts instead")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (errors too)")

    sub.add_parser("specs", help="list the shipped specs")
    return parser


def proj_default(spec: Spec, hidden: int, proj: int | None) -> int | None:
    """The projection size a command uses: --proj-size, or half the hidden size for a spec using proj."""
    if proj is None and spec.uses_size("proj"):
        return max(1, hidden // 2)
    return proj


# ------------------------------------------------------------------------------------------ check

def _optional_sizes(args, spec: Spec, purpose: str) -> dict[str, int] | None:
    """The size binding of one layer when --input-size and --hidden-size are given, else None."""
    if args.input_size is None and args.hidden_size is None:
        return None
    if args.input_size is None or args.hidden_size is None:
        raise UsageError(f"give both --input-size and --hidden-size {purpose}")
    return layer_sizes(spec, args.input_size, args.hidden_size, proj_default(spec, args.hidden_size, args.proj_size),
                       1)[0]


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
    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    if args.emit == "ast":
        text = _format_ast(spec.ast)
    elif args.emit == "ir":
        text = format_cell(spec.cell)
    elif args.emit == "grad":
        text = format_grad(spec.cell, spec.grad)
    else:
        schedule = parse_schedule(args.schedule, spec.schedule) if args.schedule else spec.schedule
        program = build_program(spec.cell, schedule, args.dtype)
        if args.emit == "cuda":
            text = program.source
        else:
            sizes = _optional_sizes(args, spec, "to print numeric shapes")
            text = format_plan(program.plan, sizes)
            if sizes:
                if args.batch < 1:
                    raise UsageError(f"--batch must be a positive integer, got {args.batch}")
                for phase, t in traffic_per_step(program.plan, program.kernels, sizes, args.batch).items():
                    text += (f"\n  {phase} bytes per step at B={args.batch}: "
                             f"{t['gemm'] + t['kernels']:,} ({t['gemm']:,} in GEMMs, {t['kernels']:,} in kernels "
                             "and copies)")
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as err:
            raise UsageError(f"cannot write {args.output}: {err.strerror}") from None
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

def cmd_run(args) -> int:
    from .gradcheck import gradient_check

    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    schedule = parse_schedule(args.schedule, spec.schedule) if args.schedule else spec.schedule
    args.proj_size = proj_default(spec, args.hidden_size, args.proj_size)
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
    if note and not args.json:
        print(f"note: {note}", file=sys.stderr)
    layer = compile(spec, args.input_size, args.hidden_size, args.layers, proj_size=args.proj_size,
                    backend=backend, dtype=args.dtype, schedule=schedule, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.steps, args.batch, args.input_size)).astype(args.dtype)
    t0 = time.perf_counter()
    y, state = layer.forward(x)
    t1 = time.perf_counter()
    dx = layer.backward(np.ones_like(y))
    t2 = time.perf_counter()
    rows = gradient_check(spec, min(args.input_size, 5), min(args.hidden_size, 6), min(args.batch, 3),
                          min(args.steps, 5), args.layers, proj_size=min(args.proj_size, 4) if args.proj_size else None,
                          seed=args.seed)
    worst = max(r.rel_error for r in rows)
    ok = worst <= GRAD_TOLERANCE and bool(np.all(np.isfinite(y))) and bool(np.all(np.isfinite(dx)))
    result = {
        "cell": spec.name, "backend": backend, "note": note, "dtype": args.dtype,
        "schedule": schedule.describe(),
        "shape": {"steps": args.steps, "batch": args.batch, "input": args.input_size,
                  "hidden": args.hidden_size, "layers": args.layers, "output": layer.output_size},
        "forward_ms": 1e3 * (t1 - t0), "backward_ms": 1e3 * (t2 - t1),
        "output_rms": float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))),
        "gradient_check": {"dtype": "float64", "tolerance": GRAD_TOLERANCE, "max_rel_error": worst,
                           "tensors": [r.__dict__ for r in rows]},
        "ok": ok,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"cell {spec.name} on {backend}, {args.dtype}: T={args.steps} B={args.batch} "
              f"I={args.input_size} H={args.hidden_size} L={args.layers}")
        print(f"  forward   {result['forward_ms']:9.2f} ms   y [{args.steps}, {args.batch}, {layer.output_size}],"
              f" rms {result['output_rms']:.4f}")
        print(f"  backward  {result['backward_ms']:9.2f} ms   dx and {len(layer.grads())} parameter gradients")
        print("  gradient check (float64 central differences, small sizes):")
        print(f"    {'tensor':<12} {'coords':>6} {'max |grad|':>11} {'rel error':>10}")
        for r in rows:
            print(f"    {r.tensor:<12} {r.coordinates:>6} {r.max_abs_grad:>11.3e} {r.rel_error:>10.2e}")
        print(f"  {'PASS' if ok else 'FAIL'}: largest relative error {worst:.2e} (tolerance {GRAD_TOLERANCE:.0e})")
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
    from pathlib import Path

    from .files import output_dir
    from .train import TrainConfig, run

    spec = parse(args.spec)
    out = output_dir(args.out or f"lstmdsl-train-{spec.name}-{args.task}", "--out")  # before any long work
    backend, note = _choose_backend(args.backend, "training on the numpy reference on the CPU")
    if note:
        print(f"note: {note}", file=sys.stderr)
    cfg = TrainConfig(spec=str(args.spec), task=args.task, epochs=args.epochs, hidden_size=args.hidden_size,
                      layers=args.layers, optimizer=args.optimizer, lr=args.lr, batch=args.batch, backend=backend,
                      clip=args.clip, seed=args.seed, max_train=args.max_train,
                      proj_size=proj_default(spec, args.hidden_size, args.proj_size))
    compile(spec, 1, args.hidden_size, args.layers, proj_size=cfg.proj_size)  # the sizes, checked before the data
    result = run(cfg, Path(out), resume=args.resume)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{spec.name} on {args.task} ({backend}): test {result['metric']} {result['test']:.4f}; "
              f"{result['seconds_per_epoch']:.1f} s per epoch; saved in {out}/")
    return 0


def cmd_bench(args) -> int:
    from .cli_gpu import cmd_bench as run

    return run(args)


def cmd_specs(args) -> int:
    for name, path in shipped_specs().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{name:<10} {first}")
    return 0


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "run": cmd_run, "train": cmd_train, "bench": cmd_bench,
            "specs": cmd_specs}


def error_json(err: LstmdslError) -> dict:
    """An error as the JSON object --json prints: the message, its kind, the exit code, and for a spec
    error every diagnostic with its file, line and column."""
    out = {"error": str(err), "kind": type(err).__name__, "exit_code": err.exit_code}
    if isinstance(err, SpecError):
        out["diagnostics"] = [{"severity": d.severity, "message": d.message, "file": d.source.filename,
                               "line": d.span.line if d.span else None, "column": d.span.col if d.span else None,
                               "hint": d.hint} for d in err.diagnostics]
    return out


def main(argv: list[str] | None = None) -> int:
    global _JSON_ERRORS
    _JSON_ERRORS = "--json" in (sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LstmdslError as err:
        if getattr(args, "json", False):
            print(json.dumps(error_json(err), indent=2))
        print(err if isinstance(err, SpecError) else f"lstmdsl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (`lstmdsl ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception:  # a bug in lstmdsl: say so, with the traceback only on request
        if getattr(args, "json", False):
            print(json.dumps({"error": "internal error (a bug in lstmdsl)", "kind": "InternalError",
                              "exit_code": EXIT_SOFTWARE}))
        if os.environ.get("LSTMDSL_DEBUG"):
            traceback.print_exc()
        print("lstmdsl: internal error (a bug in lstmdsl); run again with LSTMDSL_DEBUG=1 for the traceback "
              "and please report it", file=sys.stderr)
        return EXIT_SOFTWARE


def entry() -> None:
    sys.exit(main())
