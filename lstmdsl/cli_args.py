"""The command line's grammar: the argparse parser of every command, and the types of its arguments (each
refuses a bad value with a message that says what was expected, and exit code 64)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace

import numpy as np

from .errors import EXIT_USAGE, UsageError
from .passes.types import check_precision
from .resources import shipped_specs
from .schedule import PRECISIONS, parse_schedule
from .spec import read_spec_text
from .version import __version__

JSON_ERRORS = False  # --json was given: errors go to stdout as a JSON object too


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, where it has one: not "(default: None)" after a help that says
    what happens without it."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kw)

    def error(self, message):  # argparse exits with 2; we use sysexits' EX_USAGE
        if JSON_ERRORS:
            print(json.dumps({"error": f"{self.prog}: {message}", "kind": "UsageError", "exit_code": EXIT_USAGE}))
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def joined_lengths(argv: list[str]) -> list[str]:
    """`--lengths -1,2,3` as `--lengths=-1,2,3`: argparse takes a value that starts with '-' (and is not one
    negative number) for an option and says only 'expected one argument'; _lengths then says what is wrong with
    it. Only numbers and commas are joined (`--lengths --json` stays a missing value), after --lengths or an
    abbreviation of it."""
    out = []
    for a in argv:
        if out and len(out[-1]) > 4 and "--lengths".startswith(out[-1]) and re.fullmatch(r"-\d[\d,\s-]*", a):
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def _count(text: str) -> int:
    """An argument that counts something: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    if value > 2**31 - 1:  # (no array dimension, step count or epoch count is larger)
        raise argparse.ArgumentTypeError(f"expected at most {2**31 - 1}, got {value}")
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


def _lengths(text: str):
    """--lengths: 'random' or a comma-separated list of integers."""
    if text == "random":
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'random' or comma-separated integers such as 10,7,3, "
                                         f"got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every length must be at least 1, got {text}")
    return values


def _probability(text: str) -> float:
    value = _number(0, strict=False)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text}")
    return value


def _layer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bidirectional", action="store_true",
                   help="each layer also reads its input in reverse time (outputs side by side)")
    p.add_argument("--dropout", type=_probability, default=0.0,
                   help="dropout between stacked layers, in training (as torch.nn.LSTM's)")
    p.add_argument("--dropconnect", type=_probability, default=0.0,
                   help="DropConnect on the recurrent matrices, in training (one mask per call)")


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the CUDA backend's GEMM precision (the schedule directive; default: the spec's, fp32): "
                        "fp32 strict, tf32 tensor cores, bf16 / fp16 half-precision operands and weights with "
                        "fp32 accumulation, state and master weights")


def _sizes_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--input-size", "-I", type=_count, default=None if not required else 16,
                   help="size of the input x")
    p.add_argument("--hidden-size", "-H", type=_count, default=None if not required else 32,
                   help="the hidden size")
    p.add_argument("--proj-size", "-P", type=_count, default=None,
                   help="the projection size, for specs using proj (default: half the hidden size)")
    p.add_argument("--heads", type=_count, default=None,
                   help="blocks of the spec's block-diagonal matrices (its 'heads' line; default 1)")


def build_parser() -> argparse.ArgumentParser:
    shipped = ", ".join(shipped_specs())
    parser = Parser(prog="lstmdsl", description="LSTM variants written as equations, compiled to kernels.",
                     epilog=f"SPEC is a .cell file or the name of a shipped spec: {shipped}")
    parser.add_argument("--version", action="version", version=f"lstmdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("check", help="check a spec; print its states, parameters, gates and FLOPs")
    p.add_argument("spec", help="a .cell file, a shipped spec's name or - (the standard input)")
    _sizes_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (errors too)")

    p = sub.add_parser("compile", help="print a stage of the compilation")
    p.add_argument("spec", help="a .cell file, a shipped spec's name or - (the standard input)")
    p.add_argument("--emit", choices=("ast", "ir", "grad", "plan", "cuda"), default="ir",
                   help="ast: the parsed spec; ir: the Cell IR; grad: the derived backward step; "
                        "plan: the scheduled GEMMs and kernels; cuda: the generated CUDA source")
    p.add_argument("--batch", "-B", type=_count, default=1, help="batch size for the bytes per step of --emit plan")
    p.add_argument("--schedule", help="schedule directives over the spec's, e.g. 'no fuse gates'")
    _precision_arg(p)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="element type of the plan and kernels")
    _sizes_args(p)
    p.add_argument("-o", "--output", help="write to this file instead of stdout")

    p = sub.add_parser("run", help="run forward and backward on random data and check the gradients")
    p.add_argument("spec", help="a .cell file, a shipped spec's name or - (the standard input)")
    _sizes_args(p, required=True)
    p.add_argument("--batch", "-B", type=_count, default=4, help="sequences per batch")
    p.add_argument("--steps", "-T", type=_count, default=10, help="time steps")
    p.add_argument("--layers", "-L", type=_count, default=1, help="stacked layers")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                   help="auto: the GPU when there is one, else the numpy reference")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="element type")
    p.add_argument("--schedule", help="schedule directives over the spec's, e.g. 'no hoist input'")
    _precision_arg(p)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the parameters and the random data")
    _layer_args(p)
    p.add_argument("--lengths", type=_lengths, default=None,
                   help="the sequences' lengths: 'random' (in [1, T]) or one integer per sequence, e.g. 10,7,3")
    p.add_argument("--json", action="store_true", help="print one JSON object (errors too)")

    p = sub.add_parser("train", help="train a spec on a task that ships with a package (chorales, digits)")
    p.add_argument("spec", help="a .cell file, a shipped spec's name or - (the standard input)")
    p.add_argument("--task", required=True, choices=("chorales", "digits"), help="the task")
    p.add_argument("--epochs", type=_count, default=10, help="passes over the training split")
    p.add_argument("--hidden-size", "-H", type=_count, default=128, help="the hidden size")
    p.add_argument("--proj-size", "-P", type=_count, default=None,
                   help="the projection size, for specs using proj (default: half the hidden size)")
    p.add_argument("--heads", type=_count, default=None,
                   help="blocks of the spec's block-diagonal matrices (its 'heads' line; default 1)")
    p.add_argument("--layers", "-L", type=_count, default=1, help="stacked layers")
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "momentum", "nesterov"),
                   help="the optimizer")
    p.add_argument("--lr", type=_number(0, strict=True), default=1e-3, help="learning rate")
    p.add_argument("--batch", "-B", type=_count, default=32, help="sequences per batch")
    p.add_argument("--clip", type=_number(0, strict=False), default=1.0,
                   help="global gradient-norm limit (0: no clipping)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                   help="auto: the GPU when there is one, else the numpy reference")
    _precision_arg(p)
    p.add_argument("--max-train", type=_count, default=None, help="use only the first N training sequences")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the parameters and the batch order")
    p.add_argument("--out", default=None, help="folder for parameters, history, plot and checkpoints "
                   "(default: lstmdsl-train-SPEC-TASK)")
    _layer_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (left by an interrupted or finished run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over a run already in --out (without it, a run there is an error)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (errors too)")

    p = sub.add_parser("bench", help="time a spec against cuDNN and the same cell in PyTorch (needs a GPU, torch)")
    p.add_argument("spec", help="a .cell file, a shipped spec's name or - (the standard input)")
    p.add_argument("--batch", "-B", type=_count, default=64, help="sequences per batch")
    p.add_argument("--hidden-size", "-H", type=_count, default=512, help="hidden size (the input size is the same)")
    p.add_argument("--steps", "-T", type=_count, default=100, help="time steps")
    p.add_argument("--layers", "-L", type=_count, default=1, help="stacked layers")
    p.add_argument("--heads", type=_count, default=None,
                   help="blocks of the spec's block-diagonal matrices (default 4, xLSTM's, for specs with heads)")
    p.add_argument("--mode", choices=("forward", "train", "both"), default="both", help="what is timed")
    _precision_arg(p)
    p.add_argument("--tf32", action="store_true", help="the same as --precision tf32")
    p.add_argument("--repeat", type=_count, default=20, help="timed calls per competitor")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile (slow to compile)")
    p.add_argument("--schedule", help="schedule directives over the spec's")
    p.add_argument("--profile", action="store_true",
                   help="break one forward and one training step of lstmdsl into its parts instead")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (errors too)")

    sub.add_parser("specs", help="list the shipped specs")
    return parser


def schedule_of(args, spec):
    """The spec's schedule with --schedule's directives and then --precision applied (refused beside --dtype
    float64 on every backend, as the plan refuses it)."""
    if args.schedule and args.precision:  # (both given and apart: a mistake, not a choice to make silently)
        said = {parse_schedule(args.schedule, replace(spec.schedule, precision=p)).precision for p in ("fp32", "bf16")}
        said = said.pop() if len(said) == 1 else args.precision  # (one answer: the text names a precision)
        if said != args.precision:
            raise UsageError(f"--precision {args.precision} and --schedule's 'precision {said}' disagree: give one")
    text = "; ".join(t for t in (args.schedule, args.precision and f"precision {args.precision}") if t)
    schedule = parse_schedule(text, spec.schedule) if text else spec.schedule
    check_precision(getattr(args, "dtype", "float32"), schedule.precision)
    return schedule


def spec_from_stdin(args) -> None:
    """A spec given as `-` is read from the standard input, once: the commands then take its text."""
    if getattr(args, "spec", None) != "-":
        return
    text = read_spec_text(sys.stdin.buffer, "<stdin>") if sys.stdin is not None else ""
    if not text.strip():
        raise UsageError("the standard input held no spec (`-` reads the spec from it)")
    args.spec = text if "\n" in text else text + "\n"  # (spec text, never a path or a shipped name: _read_spec)


def run_lengths(lengths, T: int, B: int, seed: int):
    """--lengths as an array [B] (or None): 'random' draws them in [1, T], the first sequence full."""
    if lengths is None:
        return None
    if lengths == "random":
        out = np.random.default_rng(seed + 7).integers(1, T + 1, B)
        out[0] = T
        return out
    if len(lengths) != B or max(lengths) > T:
        raise UsageError(f"--lengths needs {B} lengths (one per sequence, --batch) of at most {T} steps (--steps), "
                         f"got {','.join(map(str, lengths))}")
    return np.array(lengths)
