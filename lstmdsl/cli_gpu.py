"""The commands that need a GPU: `lstmdsl run` on the CUDA backend (timed, then checked against the
float64 reference) and `lstmdsl bench` (against cuDNN and PyTorch, or a profile of one layer)."""

from __future__ import annotations

import sys

import numpy as np

from .api import compile, layer_sizes
from .errors import EXIT_CHECK_FAILED, BackendUnavailable, UsageError
from .files import dumps
from .spec import Spec, parse


def run_cuda(args, spec: Spec, schedule) -> int:
    """Forward and backward on the GPU, timed, then checked against the float64 reference with the same
    parameters (check.compare)."""
    from .runtime import check_available

    check_available()  # a clear BackendUnavailable, before anything imports CuPy
    import cupy

    from .check import compare, random_case
    from .timing import time_gpu

    layer = compile(spec, args.input_size, args.hidden_size, args.layers, backend="cuda", schedule=schedule,
                    dtype=args.dtype, proj_size=args.proj_size, seed=args.seed, bidirectional=args.bidirectional,
                    dropout=args.dropout, dropconnect=args.dropconnect, num_heads=args.heads)
    x, state, dy, dstate = random_case(layer, args.steps, args.batch, args.seed)
    x_d, dy_d = cupy.asarray(x), cupy.asarray(dy)
    state_d = {k: cupy.asarray(v) for k, v in state.items()}
    lengths = args.lengths

    def train():
        layer.forward(x_d, state_d, lengths=lengths)
        layer.backward(dy_d)

    fwd = time_gpu(lambda: layer.forward(x_d, state_d, train=False, lengths=lengths), repeat=5, warmup=1)
    trn = time_gpu(train, repeat=5, warmup=1)
    check = compare(layer, x, state, dy, dstate, lengths)
    rows = [{"tensor": k, "rel_error": e} for k, e in check.errors.items()]
    result = {"cell": spec.name, "backend": "cuda", "device": cupy.cuda.runtime.getDeviceProperties(0)["name"]
              .decode(), "schedule": schedule.describe(),
              "shape": {"steps": args.steps, "batch": args.batch, "input": args.input_size,
                        "hidden": args.hidden_size, "layers": args.layers, "output": layer.output_size},
              "bidirectional": args.bidirectional, "dropout": args.dropout, "dropconnect": args.dropconnect,
              "lengths": None if lengths is None else [int(v) for v in lengths],
              "forward_ms": fwd["ms"], "train_ms": trn["ms"],
              "host_us_per_step": {"forward": 1e3 * fwd["host_ms"] / args.steps,
                                   "train": 1e3 * trn["host_ms"] / args.steps},
              "check": {"against": "numpy reference, float64", "tolerance": check.tolerance,
                        "max_rel_error": check.worst, "tensors": rows}, "ok": check.ok}
    if args.json:
        print(dumps(result))
        return 0 if check.ok else EXIT_CHECK_FAILED
    print(f"cell {spec.name} on {result['device']} ({schedule.describe()}): T={args.steps} B={args.batch} "
          f"I={args.input_size} H={args.hidden_size} L={args.layers}{args.layer_note}")
    print(f"  forward   {fwd['ms']:9.3f} ms on the GPU, host {result['host_us_per_step']['forward']:.1f} us per step")
    print(f"  training  {trn['ms']:9.3f} ms on the GPU, host {result['host_us_per_step']['train']:.1f} us per step")
    print("  largest relative errors against the float64 reference:")
    for r in sorted(rows, key=lambda r: -r["rel_error"])[:6]:
        print(f"    {r['tensor']:<24} {r['rel_error']:.2e}")
    print(f"  {'PASS' if check.ok else 'FAIL'}: largest relative error {check.worst:.2e} "
          f"(tolerance {check.tolerance:.0e})")
    return 0 if check.ok else EXIT_CHECK_FAILED


def cmd_bench(args) -> int:
    from .bench import HEADS_DEFAULT
    from .cli_args import schedule_of
    from .runtime import check_available

    spec = parse(args.spec)  # (the spec, the schedule and the sizes first: their errors hold without a GPU too)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    schedule_of(args, spec)  # (--schedule against --precision, as run and compile check them)
    precision = _precision(args)
    if args.heads is not None and not spec.uses_size("heads"):
        raise UsageError(f"--heads was given but cell '{spec.name}' has no block-diagonal matrix (no 'heads' line)")
    for name in ("batch", "hidden_size", "steps", "layers", "repeat"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    layer_sizes(spec, args.hidden_size, args.hidden_size, args.hidden_size // 2 if spec.uses_size("proj") else None,
                args.layers, 1, (args.heads or HEADS_DEFAULT) if spec.uses_size("heads") else None)  # (the sizes' own)
    check_available()  # (past every check of the arguments: a wrong one is 64 without a GPU too)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailable("lstmdsl bench compares against PyTorch: pip install 'lstmdsl[torch]'") from None
    from .bench import COMPETITORS, bench_case
    if args.profile:
        return _profile(args, spec)
    competitors = tuple(c for c in COMPETITORS if not (args.no_compile and c == "compile"))
    modes = ("forward", "train") if args.mode == "both" else (args.mode,)
    rows = [bench_case(spec, args.batch, args.hidden_size, args.steps, args.layers, mode,
                       precision, args.repeat, competitors, args.schedule, log=sys.stderr,
                       num_heads=args.heads)
            for mode in modes]
    if args.json:
        print(dumps(rows))
        return 0
    print(f"{spec.name}: B={args.batch} I=H={args.hidden_size} T={args.steps} L={args.layers}, "
          f"{precision}; median of {args.repeat} CUDA-event timings")
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


def _precision(args) -> str:
    if args.tf32 and args.precision not in (None, "tf32"):
        raise UsageError(f"--tf32 and --precision {args.precision} disagree; give one of them")
    return args.precision or ("tf32" if args.tf32 else "fp32")


def _profile(args, spec: Spec) -> int:
    import cupy

    from .bench import HEADS_DEFAULT

    precision = _precision(args)
    text = f"{args.schedule + '; ' if args.schedule else ''}precision {precision}"
    extra = {"proj_size": args.hidden_size // 2} if spec.uses_size("proj") else {}
    if spec.uses_size("heads"):
        extra["num_heads"] = args.heads or HEADS_DEFAULT
    layer = compile(spec, args.hidden_size, args.hidden_size, args.layers, backend="cuda", schedule=text, **extra)
    x = cupy.asarray(np.random.default_rng(0).standard_normal((args.steps, args.batch, args.hidden_size)),
                     dtype=np.float32)
    p = layer.profile(x, args.repeat)
    if args.json:
        print(dumps(p))
        return 0
    busy = sum(p["parts_ms"].values())
    print(f"{spec.name}: B={args.batch} I=H={args.hidden_size} T={args.steps} L={args.layers}, {precision}; "
          f"one forward and one training step")
    print(f"  {'part (op by op, CUDA events, no graphs)':<50} {'ms':>8} {'share':>7} {'calls':>6}")
    for kind, ms in sorted(p["parts_ms"].items()):
        print(f"  {kind:<50} {ms:>8.3f} {100 * ms / busy:>6.1f}% {p['parts_calls'][kind]:>6}")
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
