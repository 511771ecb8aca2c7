"""Schedule directives: the choices a spec's `schedule { ... }` block, `schedule=` in the API and
`--schedule` on the command line make. A schedule never changes results beyond floating-point tolerance.

Directives are words: `fuse gates`, `hoist input`, `fuse pointwise`, `batch weights`, `fuse recurrent`,
`fold projection` (the default; `no fold projection` keeps LSTMP's three launches a step), `precision fp32|tf32|bf16|fp16`, `persistent` (always the persistent schedule), `no persistent` (never),
`persistent auto` (the cost model decides: the default); `specialise` (every persistent launch runs a kernel
compiled for its batch and sizes, compiled at the first call of a shape), `no specialise` (never: the one
kernel that takes any size), `specialise auto` (the cost model decides, and the kernel is compiled on a thread
of its own while the general one runs: the default); `wavefront` (a stack's layers always
overlap, chunk by chunk), `no wavefront` (never), `wavefront auto` (the cost model decides: the default);
a leading `no` turns a switch off (`no hoist input`). They are applied in order over the defaults, so the
command line can override the spec. The numpy reference computes every schedule the same way; the
switches choose how the CUDA backend schedules the step.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .errors import Diagnostic, Source, SpecError, UsageError
from .syntax import Directive, parse_directives

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True, slots=True)
class Schedule:
    fuse_gates: bool = True  # one GEMM for all matrices that share an operand
    hoist_input: bool = True  # input GEMMs for all steps at once, before the recurrence
    fuse_pointwise: bool = True  # one kernel for the elementwise work between GEMMs
    batch_weight_grads: bool = True  # weight gradients as one GEMM over all steps, after the loop
    fuse_recurrent: bool = False  # forward: the per-step GEMM on a state computed inside the step kernel
    fuse_rows: bool = True  # a step's kernels between two GEMMs, reductions included, as one launch per row
    fold_sums: bool = True  # backward: the pointwise part of a state's gradient added inside the last GEMM
    fold_projection: bool = True  # forward: a state that is a projection P v feeds the next step's GEMM as
    # v @ (W P)^T, one GEMM a step instead of two (passes/projection.py); the projection over all steps after it
    # (on by default: benchmarks/results/projection_*_h200.md)
    precision: str = "fp32"  # fp32 (strict IEEE), tf32 (tensor cores, fp32 accumulate), bf16 or fp16 (GEMM
    # operands and weights in half precision on the tensor cores, fp32 accumulation, state and pointwise math)
    persistent: str = "auto"  # the forward recurrence as one launch with the weights on chip: "auto" (where
    # the cost model, Persistent in plan.py, expects it to be faster), "on" (always), "off" (never)
    specialise: str = "auto"  # a persistent launch's kernel compiled for its shape (Persistent.specialises in
    # plan.py): "auto" (where its cost model says, compiled in the background), "on" (always, compiled at the first
    # call of a shape), "off" (never)
    wavefront: str = "auto"  # a stack's forward with its layers overlapped chunk by chunk (Wavefront in
    # plan.py): "auto" (where its cost model says), "on" (always, over `persistent auto`), "off" (never)

    def __post_init__(self) -> None:
        """A Schedule made by hand (Schedule(precision="fp8")) is checked as directive text is: a value no directive
        gives would fail later, in the planner or in a saved file that would not load (a review, 2026-12-08)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "precision" and v not in PRECISIONS:
                raise UsageError(f"Schedule precision must be one of {', '.join(PRECISIONS)}, got {v!r}")
            if f.name in _MODES and v not in ("auto", "on", "off"):
                raise UsageError(f"Schedule {f.name} must be 'auto', 'on' or 'off', got {v!r}")
            if f.type in (bool, "bool") and not isinstance(v, bool):
                if type(v).__module__ != "numpy" or type(v).__name__ not in ("bool", "bool_"):  # (numpy's bools: taken)
                    raise UsageError(f"Schedule {f.name} must be True or False, got {v!r}")
                object.__setattr__(self, f.name, bool(v))

    def describe(self) -> str:
        """The schedule as directive text, which parse_schedule reads back."""
        words = [("" if getattr(self, field) else "no ") + " ".join(key) for key, field in _SWITCHES.items()]
        modes = [{"auto": f"{name} auto", "on": name, "off": f"no {name}"}[getattr(self, name)]
                 for name in _MODES]
        return "; ".join(words + [f"precision {self.precision}"] + modes)


# directive words -> schedule field; switches take an optional leading "no"
_SWITCHES = {("fuse", "gates"): "fuse_gates", ("hoist", "input"): "hoist_input",
             ("fuse", "pointwise"): "fuse_pointwise", ("batch", "weights"): "batch_weight_grads",
             ("fuse", "recurrent"): "fuse_recurrent", ("fuse", "rows"): "fuse_rows", ("fold", "sums"): "fold_sums",
             ("fold", "projection"): "fold_projection"}
_SWITCHES_TEXT = [" ".join(k) for k in _SWITCHES]
_MODES = ("persistent", "specialise", "wavefront")  # modes: `NAME` (on), `no NAME` (off), `NAME auto`
_MODES_TEXT = [text for name in _MODES for text in (name, f"{name} auto")]
_KNOWN = _SWITCHES_TEXT + [f"precision {p}" for p in PRECISIONS] + _MODES_TEXT


def apply_directives(schedule: Schedule, directives: tuple[Directive, ...], source) -> Schedule:
    """Apply directives in order. Raises SpecError naming each unknown directive."""
    errors = []
    for d in directives:
        words = d.words
        negate = words[0] == "no"
        key = tuple(words[1:] if negate else words)
        if key in _SWITCHES:
            schedule = dataclasses.replace(schedule, **{_SWITCHES[key]: not negate})
        elif len(key) == 1 and key[0] in _MODES:
            schedule = dataclasses.replace(schedule, **{key[0]: "off" if negate else "on"})
        elif len(key) == 2 and key[0] in _MODES and key[1] == "auto" and not negate:
            schedule = dataclasses.replace(schedule, **{key[0]: "auto"})
        elif len(key) == 2 and key[0] == "precision" and not negate and key[1] in PRECISIONS:
            schedule = dataclasses.replace(schedule, precision=key[1])
        else:
            text = " ".join(words)
            if key[:1] and key[0] in _MODES:
                hint = f"{key[0]} takes 'no' before it or 'auto' after it: {key[0]}, no {key[0]}, {key[0]} auto"
            elif key[:1] == ("precision",):
                hint = ("precision is not a switch and takes no 'no'" if negate else "") or \
                    f"precision is one of {', '.join(PRECISIONS)}"
            else:
                close = difflib.get_close_matches(" ".join(key), _SWITCHES_TEXT + _MODES_TEXT, n=1, cutoff=0.5)
                hint = (f"did you mean '{('no ' if negate else '') + close[0]}'?" if close
                        else "known directives: " + ", ".join(_KNOWN) + " (switches take a leading 'no')")
            errors.append(Diagnostic("error", f"unknown schedule directive '{text}'", source, d.span, hint))
    if errors:
        raise SpecError(errors)
    return schedule


def parse_schedule(text: str, base: Schedule | None = None) -> Schedule:
    """Apply schedule text such as "no hoist input; precision tf32" over `base` (default: defaults)."""
    if not isinstance(text, str):
        raise UsageError(f"schedule text must be a string of directives, got {type(text).__name__}")
    if base is not None and not isinstance(base, Schedule):
        raise UsageError(f"base must be a Schedule, got {type(base).__name__}")
    return apply_directives(base or Schedule(), parse_directives(text), Source(text, "<schedule>"))
