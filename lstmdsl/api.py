"""The Python API: parse a spec, compile it into a trainable layer, load a saved one.

    spec = lstmdsl.parse("specs/peephole.cell")          # a path, spec text, or a shipped spec's name
    layer = lstmdsl.compile(spec, input_size=32, hidden_size=64, num_layers=2)
    y, state = layer.forward(x)                          # x [T, B, 32] -> y [T, B, 64]
    dx = layer.backward(dy)                              # accumulates layer.grads()

Parameters are named "l{layer}.{name}" (l0.W_i, l1.b_f, ...). States are dicts name -> [L, B, size].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputFileError, UsageError, warn_caller
from .layer import PARAMETER_SIZES, Layer, layer_sizes
from .saved import read_saved
from .numpy_layer import NumpyLayer
from .passes.types import check_precision
from .schedule import Schedule, parse_schedule
from .spec import Spec, parse

BACKENDS = ("numpy", "cuda")
DTYPES = ("float32", "float64")

__all__ = ["BACKENDS", "DTYPES", "Layer", "Spec", "compile", "layer_sizes", "load", "parse"]


def check_seed(seed) -> int:
    """A seed for numpy's generator: a non-negative integer (numpy integers too)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_forget_bias(spec: Spec, forget_bias) -> float | None:
    """The initial forget-gate bias: None, or a finite number for a cell with a bias vector b_f."""
    if forget_bias is None:
        return None
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float, np.integer, np.floating)) \
            or not math.isfinite(forget_bias):
        raise UsageError(f"forget_bias must be a finite number, got {forget_bias!r}")
    if not any(p.name == "b_f" and p.kind == "vector" for p in spec.cell.params):
        raise UsageError(f"forget_bias needs a forget-gate bias vector named b_f; cell '{spec.name}' has none")
    return float(forget_bias)


def check_schedule(schedule, spec: Spec | None) -> Schedule | None:
    """A schedule as the caller gives it: directive text (parsed over the spec's own schedule), a Schedule, or
    None (the spec's schedule; None without a spec)."""
    if isinstance(schedule, str):
        return parse_schedule(schedule, spec.schedule if spec is not None else None)
    if schedule is None:
        return spec.schedule if spec is not None else None
    if not isinstance(schedule, Schedule):
        raise UsageError(f"schedule must be a Schedule or directive text, got {type(schedule).__name__}")
    return schedule


def load(path, backend: str = "numpy", schedule: Schedule | str | None = None) -> Layer:
    """Rebuild a layer saved with Layer.save: its spec, sizes, element type, schedule and parameters. schedule:
    directive text applied over the saved schedule, or a Schedule in its place (files saved before 2026-12-06
    hold none: the spec's schedule is theirs)."""
    if backend not in ("numpy", "cuda"):  # (the caller's arguments first: past them, a refusal is the file's)
        raise UsageError(f"unknown backend {backend!r}; choose numpy or cuda")
    check_schedule(schedule, None)
    meta, state = read_saved(path)
    first = meta["sizes"][0]
    try:
        layer = compile(meta["spec"], first["input"], first["hidden"], meta["num_layers"], proj_size=first["proj"],
                        num_heads=first.get("heads"), backend=backend, dtype=meta["dtype"],
                        schedule=_saved_schedule(meta, schedule),
                        bidirectional=meta.get("directions", 1) == 2, dropout=meta.get("dropout", 0.0),
                        dropconnect=meta.get("dropconnect", 0.0))
        layer.load_state_dict(state)
    except UsageError as err:  # (sizes, dtype or options the saved spec cannot take: edited by hand, or damaged)
        raise InputFileError(f"{path}: its saved settings do not fit its spec or the options given ({err}); was the "
                             "file edited?") from None
    noise = meta.get("noise")  # (the masks' generator where saved from this backend: the draws go on as they would)
    if isinstance(noise, dict) and noise.get("backend") == backend and noise.get("state") is not None:
        try:
            layer.set_noise_state(noise["state"])
        except (ValueError, TypeError, KeyError) as err:  # (a generator's state that is not one)
            raise InputFileError(f"{path} is damaged: its masks' generator state ({err})") from None
    return layer


def _saved_schedule(meta: dict, given) -> Schedule | str | None:
    """The schedule a file was saved with (read_saved has checked that it parses), with the text given applied
    over it; without a saved one (an older file), what was given (compile applies text over the spec's)."""
    if "schedule" not in meta or isinstance(given, Schedule):
        return given
    return parse_schedule(given or "", parse_schedule(meta["schedule"]))


def _warm_up() -> None:
    from .errors import BackendUnavailable
    from .runtime import check_available, warmup
    from .runtime.device import current_device

    try:
        check_available()
    except BackendUnavailable:
        return  # (CudaLayer says so, after the arguments are checked)
    warmup.start(current_device(), _warm)


def _warm(device: int) -> None:
    from .runtime import cublas

    cublas.warm(device)


def compile(spec: Spec | str | Path, input_size: int, hidden_size: int, num_layers: int = 1, *,
            proj_size: int | None = None, backend: str = "numpy", dtype: str = "float32",
            schedule: Schedule | str | None = None, seed: int = 0, forget_bias: float | None = None,
            bidirectional: bool = False, dropout: float = 0.0, dropconnect: float = 0.0,
            num_heads: int | None = None) -> Layer:
    """Compile a spec into a trainable Layer.

    schedule: a Schedule, or directive text applied over the spec's own schedule block.
    forget_bias: initial value of the forget gate's bias b_f (1.0 is a common choice; Gers et al. 2000).
    backend "numpy" runs the reference (numpy arrays); "cuda" the generated kernels (CuPy arrays).
    dtype "float32" or "float64" (numpy dtypes and their names are accepted).
    bidirectional: each layer also reads its input in reverse time; its output is the two directions'
    side by side ([T, B, 2 * output]), and the next layer reads both, as in torch.nn.LSTM.
    dropout: the probability that a feature of a layer's output is zeroed before the next layer reads it
    (every layer but the last, in training only), as torch.nn.LSTM's dropout. The masks of every
    regulariser (this one, and the spec's dropout(...) and zoneout(...)) come from a generator seeded with
    `seed`: Layer.last_noise() returns the last training forward's.
    dropconnect: DropConnect on the recurrent matrices (those whose operand depends on the previous step's
    state: R_*, and LSTMP's P), Wan et al. 2013, as Haste and AWD-LSTM's weight drop: in each training
    forward every weight is zeroed with this probability and the rest scaled by 1/(1 - p), one mask per
    call; evaluation uses the weights as they are (unless forward(noise=...) gives masks).
    num_heads: the number of diagonal blocks of the spec's block-diagonal matrices (its `heads` line, as
    xLSTM's sLSTM heads); default 1. Their sides must be multiples of it.
    """
    cuda = isinstance(backend, str) and backend == "cuda"
    if cuda:  # cuBLAS starts up on a thread of its own while the spec is parsed (runtime/warmup.py)
        _warm_up()
    try:
        return _compile(spec, input_size, hidden_size, num_layers, proj_size, backend, dtype, schedule, seed,
                        forget_bias, bidirectional, dropout, dropconnect, num_heads)
    finally:  # nothing of the warm-up outlives compile(), whatever it raised: no cuBLAS call of ours during a
        if cuda:  # capture the caller begins next (torch's global mode), none running at the process's exit
            from .runtime import warmup

            warmup.settle()


def _compile(spec, input_size, hidden_size, num_layers, proj_size, backend, dtype, schedule, seed, forget_bias,
             bidirectional, dropout, dropconnect, num_heads) -> Layer:
    if not isinstance(spec, Spec):
        spec = parse(spec)
    seed = check_seed(seed)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(dtype, str):
        try:
            dtype = np.dtype(dtype).name  # numpy.float32 and numpy dtypes name the same types
        except Exception:  # noqa: BLE001 (not a dtype at all: the message below says what is accepted)
            pass
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UsageError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    schedule = check_schedule(schedule, spec)
    check_precision(str(dtype), schedule.precision)  # (as the CLI and the CUDA backend refuse float64 in bf16, say)
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise UsageError(f"bidirectional must be True or False, got {bidirectional!r}")
    directions = 2 if bidirectional else 1
    for name, p in (("dropout", dropout), ("dropconnect", dropconnect)):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p < 1:
            raise UsageError(f"{name} must be a probability in [0, 1), got {p!r}")
    sizes = layer_sizes(spec, input_size, hidden_size, proj_size, num_layers, directions, num_heads)
    if dropout > 0 and len(sizes) == 1:  # (torch.nn.LSTM and lstmdsl.torch warn too)
        warn_caller(f"dropout acts between stacked layers; with num_layers = 1 (-L 1) dropout {float(dropout):g} "
                    "does nothing")
    forget_bias = check_forget_bias(spec, forget_bias)
    try:
        if backend == "cuda":
            from .runtime.layer import CudaLayer  # imports CuPy: only when asked for

            return CudaLayer(spec, sizes, schedule, str(dtype), seed, forget_bias, directions, float(dropout),
                             float(dropconnect))
        return NumpyLayer(spec, sizes, schedule, str(dtype), seed, forget_bias, directions, float(dropout),
                          float(dropconnect))
    except MemoryError as err:  # (past what check_free_memory estimates, or the GPU's memory: CuPy's error is one)
        raise UsageError(f"not enough memory for a layer of these sizes ({err or 'an allocation failed'}): lower "
                         f"{PARAMETER_SIZES}") from None
