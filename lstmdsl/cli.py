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

from . import __version__
from .api import Spec, compile, layer_sizes, parse
from .errors import (EXIT_CHECK_FAILED, EXIT_SOFTWARE, EXIT_USAGE, BackendUnavailable, LstmdslError, SpecError,
                     UsageError)
from .grad import format_grad
from .ir import format_cell
from .codegen import kernel_descs, make_layout, render, traffic_per_step
from .passes import make_plan
from .plan import format_plan
from .resources import shipped_specs
from .schedule import parse_schedule
from .syntax import OutputDecl

GRAD_TOLERANCE = 1e-5  # float64 central differences with eps = 1e-6 land near 1e-9


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2; we use sysexits' EX_USAGE
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _sizes_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--input-size", "-I", type=int, default=None if not required else 16,
                   help="size of the input x (default 16 for run)")
    p.add_argument("--hidden-size", "-H", type=int, default=None if not required else 32,
                   help="the hidden size (default 32 for run)")
    p.add_argument("--proj-size", "-P", type=int, default=None, help="the projection size, for specs using proj")


def build_parser() -> argparse.ArgumentParser:
    shipped = ", ".join(shipped_specs())
    parser = _Parser(prog="lstmdsl", description="LSTM variants written as equations, compiled to kernels.",
                     epilog=f"SPEC is a .cell file or the name of a shipped spec: {shipped}")
    parser.add_argument("--version", action="version", version=f"lstmdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("check", help="check a spec; print its states, parameters, gates and FLOPs")
    p.add_argument("spec")
    _sizes_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("compile", help="print a stage of the compilation")
    p.add_argument("spec")
    p.add_argument("--emit", choices=("ast", "ir", "grad", "plan", "cuda"), default="ir",
                   help="ast: the parsed spec; ir: the Cell IR; grad: the derived backward step; "
                        "plan: the scheduled GEMMs and kernels; cuda: the generated CUDA source")
    p.add_argument("--batch", "-B", type=int, default=1, help="batch size for the bytes per step of --emit plan")
    p.add_argument("--schedule", help="schedule directives over the spec's, e.g. 'no fuse gates'")
    _sizes_args(p)
    p.add_argument("-o", "--output", help="write to this file instead of stdout")

    p = sub.add_parser("run", help="run forward and backward on random data and check the gradients")
    p.add_argument("spec")
    _sizes_args(p, required=True)
    p.add_argument("--batch", "-B", type=int, default=4)
    p.add_argument("--steps", "-T", type=int, default=10)
    p.add_argument("--layers", "-L", type=int, default=1)
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                   help="auto: the GPU when there is one, else the numpy reference")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--schedule", help="schedule directives over the spec's, e.g. 'no hoist input'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("train", help="train a spec on a task that ships with a package (chorales, digits)")
    p.add_argument("spec")
    p.add_argument("--task", required=True, choices=("chorales", "digits"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden-size", "-H", type=int, default=128)
    p.add_argument("--layers", "-L", type=int, default=1)
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "momentum", "nesterov"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", "-B", type=int, default=32)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm limit (0: no clipping)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training sequences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for parameters, history and plot "
                   "(default: lstmdsl-train-SPEC-TASK)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    p = sub.add_parser("bench", help="time a spec against cuDNN and the same cell in PyTorch (needs a GPU, torch)")
    p.add_argument("spec")
    p.add_argument("--batch", "-B", type=int, default=64)
    p.add_argument("--hidden-size", "-H", type=int, default=512, help="hidden size (the input size is the same)")
    p.add_argument("--steps", "-T", type=int, default=100)
    p.add_argument("--layers", "-L", type=int, default=1)
    p.add_argument("--mode", choices=("forward", "train", "both"), default="both")
    p.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores (default: strict fp32)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile (slow to compile)")
    p.add_argument("--schedule", help="schedule directives over the spec's")
    p.add_argument("--profile", action="store_true",
                   help="break one forward and one training step of lstmdsl into its parts instead")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    sub.add_parser("specs", help="list the shipped specs")
    return parser


# ------------------------------------------------------------------------------------------ check

def _poly(terms: dict[tuple[str, ...], int]) -> str:
    def mono(key):
        parts = []
        for s in sorted(set(key)):
            n = key.count(s)
            parts.append(s if n == 1 else f"{s}^{n}")
        return "*".join(parts)
    items = sorted(terms.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    return " + ".join((f"{c}*{mono(k)}" if c != 1 else mono(k)) for k, c in items if c) or "0"


def flops_per_step(spec: Spec) -> dict[tuple[str, ...], int]:
    """FLOPs of one step for one sequence, as a polynomial in the sizes: a matvec is 2*rows*cols,
    every elementwise operator (a function counts as one) one per element."""
    terms: dict[tuple[str, ...], int] = {}
    for n in spec.cell.nodes:
        if n.op == "matvec":
            key = tuple(sorted(spec.cell.param(n.attr).shape))
            terms[key] = terms.get(key, 0) + 2
        elif n.op not in ("input", "state", "param", "const"):
            terms[(n.size,)] = terms.get((n.size,), 0) + 1
    return terms


def _describe(spec: Spec, sizes: dict[str, int] | None) -> dict:
    cell = spec.cell
    named = {nid: name for name, nid in cell.names}
    gates = [named[i] for i in sorted(named) if cell.nodes[i].op in ("sigmoid", "hard_sigmoid")]
    values = [{"name": named[i], "op": cell.nodes[i].op, "size": cell.nodes[i].size} for i in sorted(named)]
    flops = flops_per_step(spec)
    out = {
        "cell": cell.name,
        "file": spec.source.filename,
        "input": {"name": cell.input, "size": "input"},
        "states": [{"name": s.name, "size": s.size} for s in cell.states],
        "output": {"name": next(s.name for s in spec.ast.stmts if isinstance(s, OutputDecl)),
                   "size": cell.output_size},
        "parameters": [{"name": p.name, "kind": p.kind, "shape": list(p.shape)} for p in cell.params],
        "gates": gates,
        "values": values,
        "flops_per_step": _poly(flops),
        "schedule": spec.schedule.describe(),
        "warnings": [w.render() for w in spec.warnings],
    }
    if sizes:
        out["sizes"] = {k: v for k, v in sizes.items() if v is not None}
        out["flops_per_step_value"] = sum(c * int(np.prod([sizes[s] for s in k])) for k, c in flops.items())
        out["parameter_count"] = sum(int(np.prod([sizes[s] for s in p.shape])) for p in cell.params)
    return out


def _optional_sizes(args, spec: Spec, purpose: str) -> dict[str, int] | None:
    """The size binding of one layer when --input-size and --hidden-size are given, else None."""
    if args.input_size is None and args.hidden_size is None:
        return None
    if args.input_size is None or args.hidden_size is None:
        raise UsageError(f"give both --input-size and --hidden-size {purpose}")
    return layer_sizes(spec, args.input_size, args.hidden_size, args.proj_size, 1)[0]


def cmd_check(args) -> int:
    spec = parse(args.spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    sizes = _optional_sizes(args, spec, "to count FLOPs and parameters")
    d = _describe(spec, sizes)
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


def cell_io(v: dict) -> str:
    return f"{v['name']} : {v['size']}"


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
        plan = make_plan(spec.cell, spec.grad, schedule)
        if args.emit == "cuda":
            text = render(plan, *kernel_descs(plan, make_layout(plan)))
        else:
            sizes = _optional_sizes(args, spec, "to print numeric shapes")
            text = format_plan(plan, sizes)
            if sizes:
                if args.batch < 1:
                    raise UsageError(f"--batch must be a positive integer, got {args.batch}")
                descs = kernel_descs(plan, make_layout(plan))  # the CUDA backend's kernels
                for phase, t in traffic_per_step(plan, descs, sizes, args.batch).items():
                    text += (f"\n  {phase} bytes per step at B={args.batch} (fp32): "
                             f"{t['gemm'] + t['kernels']:,} ({t['gemm']:,} in GEMMs, {t['kernels']:,} in kernels)")
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
    for name in ("batch", "steps", "layers"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    backend, note = _choose_backend(args.backend, "running the numpy reference on the CPU, float64 gradient check")
    if backend == "cuda":
        try:
            return _run_cuda(args, spec, schedule)
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


CUDA_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2}


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


def _run_cuda(args, spec: Spec, schedule) -> int:
    """Forward and backward on the GPU, checked against the float64 reference with the same parameters."""
    from .runtime import check_available

    check_available()  # a clear BackendUnavailable, before anything imports CuPy
    import cupy

    kw = dict(proj_size=args.proj_size, seed=args.seed)
    layer = compile(spec, args.input_size, args.hidden_size, args.layers, backend="cuda", schedule=schedule,
                    dtype=args.dtype, **kw)
    ref = compile(spec, args.input_size, args.hidden_size, args.layers, dtype="float64", **kw)
    for name, a in ref.parameters().items():
        a[...] = cupy.asnumpy(layer.parameters()[name])
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.steps, args.batch, args.input_size)).astype(args.dtype)
    state = {k: (0.5 * rng.standard_normal(s)).astype(args.dtype) for k, s in ref.state_shapes(args.batch).items()}
    dy = rng.standard_normal((args.steps, args.batch, layer.output_size)).astype(args.dtype)
    x_d, dy_d = cupy.asarray(x), cupy.asarray(dy)
    state_d = {k: cupy.asarray(v) for k, v in state.items()}

    def forward():
        return layer.forward(x_d, state_d)

    def train():
        layer.forward(x_d, state_d)
        layer.backward(dy_d)

    from .bench import time_gpu

    fwd, trn = time_gpu(forward, repeat=5, warmup=1), time_gpu(train, repeat=5, warmup=1)
    fwd_ms, fwd_host, trn_ms, trn_host = fwd["ms"], fwd["host_ms"], trn["ms"], trn["host_ms"]
    layer.zero_grad()
    y, final = layer.forward(x_d, state_d)
    dx = layer.backward(dy_d)
    y_ref, final_ref = ref.forward(x.astype(np.float64), {k: v.astype(np.float64) for k, v in state.items()})
    dx_ref = ref.backward(dy.astype(np.float64))
    pairs = [("y", y, y_ref), ("dx", dx, dx_ref)]
    pairs += [(f"final {k}", final[k], final_ref[k]) for k in final]
    pairs += [(f"d initial {k}", layer.initial_state_grads()[k], ref.initial_state_grads()[k]) for k in final]
    pairs += [(f"d {k}", layer.grads()[k], ref.grads()[k]) for k in ref.grads()]
    rows = []
    for what, got, want in pairs:
        got = cupy.asnumpy(got).astype(np.float64)
        err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        rows.append({"tensor": what, "rel_error": err if np.all(np.isfinite(got)) else float("inf")})
    worst = max(r["rel_error"] for r in rows)
    tol = 1e-10 if args.dtype == "float64" else CUDA_TOLERANCE[schedule.precision]
    ok = worst <= tol
    result = {"cell": spec.name, "backend": "cuda", "device": cupy.cuda.runtime.getDeviceProperties(0)["name"]
              .decode(), "schedule": schedule.describe(),
              "shape": {"steps": args.steps, "batch": args.batch, "input": args.input_size,
                        "hidden": args.hidden_size, "layers": args.layers, "output": layer.output_size},
              "forward_ms": fwd_ms, "train_ms": trn_ms,
              "host_us_per_step": {"forward": 1e3 * fwd_host / args.steps, "train": 1e3 * trn_host / args.steps},
              "check": {"against": "numpy reference, float64", "tolerance": tol, "max_rel_error": worst,
                        "tensors": rows}, "ok": ok}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if ok else EXIT_CHECK_FAILED
    print(f"cell {spec.name} on {result['device']} ({schedule.describe()}): T={args.steps} B={args.batch} "
          f"I={args.input_size} H={args.hidden_size} L={args.layers}")
    print(f"  forward   {fwd_ms:9.3f} ms on the GPU, host {result['host_us_per_step']['forward']:.1f} us per step")
    print(f"  training  {trn_ms:9.3f} ms on the GPU, host {result['host_us_per_step']['train']:.1f} us per step")
    print("  largest relative errors against the float64 reference:")
    for r in sorted(rows, key=lambda r: -r["rel_error"])[:6]:
        print(f"    {r['tensor']:<16} {r['rel_error']:.2e}")
    print(f"  {'PASS' if ok else 'FAIL'}: largest relative error {worst:.2e} (tolerance {tol:.0e})")
    return 0 if ok else EXIT_CHECK_FAILED


def cmd_train(args) -> int:
    from pathlib import Path

    from .train import TrainConfig, run

    spec = parse(args.spec)
    backend, note = _choose_backend(args.backend, "training on the numpy reference on the CPU")
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.lr <= 0 or args.clip < 0:
        raise UsageError("--lr must be positive and --clip non-negative")
    if args.max_train is not None and args.max_train < 1:
        raise UsageError(f"--max-train must be a positive integer, got {args.max_train}")
    cfg = TrainConfig(spec=str(args.spec), task=args.task, epochs=args.epochs, hidden_size=args.hidden_size,
                      layers=args.layers, optimizer=args.optimizer, lr=args.lr, batch=args.batch, backend=backend,
                      clip=args.clip, seed=args.seed, max_train=args.max_train)
    out = Path(args.out or f"lstmdsl-train-{spec.name}-{args.task}")
    result = run(cfg, out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{spec.name} on {args.task} ({backend}): test {result['metric']} {result['test']:.4f}; "
              f"{result['seconds_per_epoch']:.1f} s per epoch; saved in {out}/")
    return 0


def cmd_bench(args) -> int:
    from .runtime import check_available

    check_available()
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailable("lstmdsl bench compares against PyTorch: pip install 'lstmdsl[torch]'") from None
    from .bench import COMPETITORS, bench_case

    spec = parse(args.spec)
    for name in ("batch", "hidden_size", "steps", "layers", "repeat"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.profile:
        return _profile(args, spec)
    competitors = tuple(c for c in COMPETITORS if not (args.no_compile and c == "compile"))
    modes = ("forward", "train") if args.mode == "both" else (args.mode,)
    rows = [bench_case(spec, args.batch, args.hidden_size, args.steps, args.layers, mode,
                       "tf32" if args.tf32 else "fp32", args.repeat, competitors, args.schedule, log=sys.stderr)
            for mode in modes]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{spec.name}: B={args.batch} I=H={args.hidden_size} T={args.steps} L={args.layers}, "
          f"{'tf32' if args.tf32 else 'fp32'}; median of {args.repeat} CUDA-event timings")
    print(f"  {'mode':<8} {'competitor':<10} {'ms':>9} {'(min..max)':>18} {'x cuDNN':>8} {'memory MiB':>11}")
    for row in rows:
        cudnn = row["results"].get("cudnn", {}).get("ms")
        for name, r in row["results"].items():
            if "error" in r:
                print(f"  {row['mode']:<8} {name:<10} {r['error']}")
                continue
            ratio = f"{r['ms'] / cudnn:.2f}" if cudnn else "-"
            print(f"  {row['mode']:<8} {name:<10} {r['ms']:>9.3f} {r['min_ms']:>8.3f}..{r['max_ms']:<8.3f} "
                  f"{ratio:>8} {r['memory'] / 2**20:>11.1f}")
    return 0


def _profile(args, spec: Spec) -> int:
    import cupy

    precision = "tf32" if args.tf32 else "fp32"
    text = f"{args.schedule + '; ' if args.schedule else ''}precision {precision}"
    extra = {"proj_size": args.hidden_size // 2} if spec.uses_size("proj") else {}
    layer = compile(spec, args.hidden_size, args.hidden_size, args.layers, backend="cuda", schedule=text, **extra)
    x = cupy.asarray(np.random.default_rng(0).standard_normal((args.steps, args.batch, args.hidden_size)),
                     dtype=np.float32)
    p = layer.profile(x, args.repeat)
    if args.json:
        print(json.dumps(p, indent=2))
        return 0
    busy = sum(p["parts_ms"].values())
    print(f"{spec.name}: B={args.batch} I=H={args.hidden_size} T={args.steps} L={args.layers}, {precision}; "
          f"one forward and one training step")
    print(f"  {'part (op by op, CUDA events, no graphs)':<50} {'ms':>8} {'share':>7}")
    for kind, ms in sorted(p["parts_ms"].items()):
        print(f"  {kind:<50} {ms:>8.3f} {100 * ms / busy:>6.1f}%")
    print(f"  {'GPU busy (sum of the parts)':<50} {busy:>8.3f}")
    print(f"  (the host needs {p['host_issue_ms_without_graphs']:.3f} ms to issue this run without graphs; "
          f"the GPU was held {p['held_ms']:.1f} ms meanwhile)")
    g = p["graphs"]
    if busy > 1.5 * g["train"]["ms"]:
        print("  note: the parts add up to clearly more than the graphed training step: the GPU's launch queue "
              "filled while it was held, so some parts include waiting for the host; read the shares with care")
    print(f"  with CUDA graphs (the normal run): forward {g['forward']['ms']:.3f} ms, training "
          f"{g['train']['ms']:.3f} ms; host time to issue {g['forward']['host_ms']:.3f} / "
          f"{g['train']['host_ms']:.3f} ms")
    return 0


def cmd_specs(args) -> int:
    for name, path in shipped_specs().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{name:<10} {first}")
    return 0


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "run": cmd_run, "train": cmd_train, "bench": cmd_bench,
            "specs": cmd_specs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LstmdslError as err:
        print(err if isinstance(err, SpecError) else f"lstmdsl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (`lstmdsl ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception:  # a bug in lstmdsl: say so, with the traceback only on request
        if os.environ.get("LSTMDSL_DEBUG"):
            traceback.print_exc()
        print("lstmdsl: internal error (a bug in lstmdsl); run again with LSTMDSL_DEBUG=1 for the traceback "
              "and please report it", file=sys.stderr)
        return EXIT_SOFTWARE


def entry() -> None:
    sys.exit(main())
