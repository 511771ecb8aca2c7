"""The Python API: parse a spec, compile it into a trainable layer.

    spec = lstmdsl.parse("specs/peephole.cell")          # a path, spec text, or a shipped spec's name
    layer = lstmdsl.compile(spec, input_size=32, hidden_size=64, num_layers=2)
    y, state = layer.forward(x)                          # x [T, B, 32] -> y [T, B, 64]
    dx = layer.backward(dy)                              # accumulates layer.grads()

Parameters are named "l{layer}.{name}" (l0.W_i, l1.b_f, ...). States are dicts name -> [L, B, size].
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import reference
from .errors import Diagnostic, InputFileError, Source, UsageError
from .grad import StepGrad, differentiate
from .ir import Cell, verify
from .lower import lower
from .optim import array_module
from .resources import shipped_specs
from .schedule import Schedule, apply_directives, parse_schedule
from .syntax import CellAST, deepest_statement, parse_cell, too_deep

BACKENDS = ("numpy", "cuda")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Spec:
    """A checked spec: its AST, Cell IR, schedule (from the spec's block) and warnings."""

    ast: CellAST
    cell: Cell
    schedule: Schedule
    warnings: tuple[Diagnostic, ...]

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def source(self) -> Source:
        return self.ast.source

    @functools.cached_property
    def grad(self) -> StepGrad:
        return differentiate(self.cell)

    def uses_size(self, size: str) -> bool:
        c = self.cell
        return (any(n.size == size for n in c.nodes) or any(size in p.shape for p in c.params)
                or any(s.size == size for s in c.states))


def _read_spec(path_or_text: str | Path) -> tuple[str, str]:
    """(text, filename) for a path, spec text, or the name of a shipped spec."""
    if isinstance(path_or_text, Path) or ("{" not in path_or_text and "\n" not in path_or_text):
        path = Path(path_or_text)
        shipped = shipped_specs()
        if not path.exists() and str(path_or_text) in shipped:
            path = shipped[str(path_or_text)]
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise InputFileError(f"no spec file '{path}' (shipped specs: {', '.join(shipped)})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise InputFileError(f"cannot read spec file '{path}': {err}") from None
    return path_or_text, "<string>"


def parse(path_or_text: str | Path) -> Spec:
    """Parse and check a spec. Raises SpecError (with every error found) or InputFileError."""
    text, filename = _read_spec(path_or_text)
    tree = parse_cell(text, filename)
    try:
        lowered = lower(tree)
    except RecursionError:
        raise too_deep(tree.source, deepest_statement(tree)) from None
    verify(lowered.cell)
    schedule = apply_directives(Schedule(), tree.schedule or (), tree.source)
    return Spec(tree, lowered.cell, schedule, lowered.warnings)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def layer_sizes(spec: Spec, input_size: int, hidden_size: int, proj_size: int | None,
                num_layers: int) -> list[dict[str, int]]:
    """The size binding of each layer: layer k > 0 takes the output of layer k - 1 as its input."""
    input_size = _positive_int("input_size", input_size)
    hidden_size = _positive_int("hidden_size", hidden_size)
    num_layers = _positive_int("num_layers", num_layers)
    if spec.uses_size("proj") and proj_size is None:
        raise UsageError(f"cell '{spec.name}' uses the size 'proj': give proj_size "
                         "(--proj-size on the command line)")
    if proj_size is not None:
        if not spec.uses_size("proj"):
            raise UsageError(f"proj_size was given but cell '{spec.name}' has no size 'proj'")
        proj_size = _positive_int("proj_size", proj_size)
    sizes = []
    for k in range(num_layers):
        bound = {"input": input_size, "hidden": hidden_size, "proj": proj_size}
        if k > 0:
            bound["input"] = sizes[-1][spec.cell.output_size]
        sizes.append(bound)
    for state in spec.cell.states:  # states of all layers are stacked into one [L, B, size] array
        per_layer = {b[state.size] for b in sizes}
        if len(per_layer) > 1:
            raise UsageError(f"state '{state.name}' has size {state.size}, which differs between the layers of "
                             f"the stack ({', '.join(map(str, sorted(per_layer)))}); use one layer, or sizes "
                             "that agree")
    return sizes


def init_params(cell: Cell, sizes: dict[str, int], rng: np.random.Generator, dtype,
                forget_bias: float | None = None) -> dict[str, np.ndarray]:
    """Every parameter uniform in [-1/sqrt(hidden), 1/sqrt(hidden)], as torch.nn.LSTM initialises; with
    forget_bias, the vector b_f (the forget gate's bias, by the specs' naming) is set to that value."""
    bound = 1.0 / math.sqrt(sizes["hidden"])
    params = {p.name: rng.uniform(-bound, bound, tuple(sizes[s] for s in p.shape)).astype(dtype)
              for p in cell.params}
    if forget_bias is not None:
        params["b_f"][...] = forget_bias
    return params


def _to_numpy(a) -> np.ndarray:
    return a.get() if type(a).__module__.split(".")[0] == "cupy" else np.array(a)


class Layer:
    """A compiled spec: a stack of `num_layers` layers of one cell, with parameters and gradients."""

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str, seed: int,
                 forget_bias: float | None = None):
        self.spec = spec
        self.cell = spec.cell
        self.sizes = sizes
        self.num_layers = len(sizes)
        self.schedule = schedule
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self._params = [init_params(self.cell, s, rng, self.dtype, forget_bias) for s in sizes]
        self._grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in self._params]
        self._tapes = None
        self._initial_state_grads = None

    # -- sizes and names
    @property
    def input_size(self) -> int:
        return self.sizes[0]["input"]

    @property
    def output_size(self) -> int:
        return self.sizes[-1][self.cell.output_size]

    def state_shapes(self, batch: int) -> dict[str, tuple[int, int, int]]:
        return {s.name: (self.num_layers, batch, self.sizes[0][s.size]) for s in self.cell.states}

    def parameters(self) -> dict[str, np.ndarray]:
        """Name -> parameter array (the live arrays: updating them in place updates the layer)."""
        return {f"l{k}.{name}": a for k, p in enumerate(self._params) for name, a in p.items()}

    def grads(self) -> dict[str, np.ndarray]:
        """Name -> accumulated gradient, same names and shapes as parameters()."""
        return {f"l{k}.{name}": a for k, g in enumerate(self._grads) for name, a in g.items()}

    def zero_grad(self) -> None:
        for g in self._grads:
            for a in g.values():
                a.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> a numpy copy of each parameter (from either backend)."""
        return {k: _to_numpy(v) for k, v in self.parameters().items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameter values in (numpy or CuPy arrays); names, shapes and finiteness are checked first."""
        params = self.parameters()
        if not isinstance(state, dict) or set(state) != set(params):
            got = set(state) if isinstance(state, dict) else set()
            raise UsageError(f"the state dict does not match this layer's parameters (missing: "
                             f"{sorted(set(params) - got)}, unexpected: {sorted(got - set(params))})")
        values = {k: _to_numpy(v) for k, v in state.items()}
        for k, v in values.items():
            if v.shape != params[k].shape:
                raise UsageError(f"{k} has shape {list(v.shape)} in the state dict, {list(params[k].shape)} here")
            if not np.all(np.isfinite(v)):
                raise UsageError(f"{k} contains NaN or infinite values")
        for k, v in values.items():
            params[k][...] = array_module(params[k]).asarray(v.astype(self.dtype))

    def save(self, path) -> None:
        """Write the parameters and what is needed to rebuild the layer (spec text, sizes) to a .npz file."""
        meta = {"format": "lstmdsl-layer-1", "spec": self.spec.source.text, "cell": self.cell.name,
                "sizes": self.sizes, "num_layers": self.num_layers, "dtype": str(self.dtype)}
        try:
            np.savez(path, __meta__=np.array(json.dumps(meta)),
                     **{f"param:{k}": v for k, v in self.state_dict().items()})
        except OSError as err:
            raise InputFileError(f"cannot write {path}: {err.strerror or err}") from None

    def load(self, path) -> None:
        """Load parameters saved by save() into this layer (the same cell and sizes)."""
        meta, state = read_saved(path)
        if meta["cell"] != self.cell.name or parse(meta["spec"]).cell != self.cell:
            raise UsageError(f"{path} holds cell '{meta['cell']}', which is not this layer's cell '{self.cell.name}'")
        if meta["sizes"] != self.sizes:
            raise UsageError(f"{path} holds sizes {meta['sizes']}, this layer has {self.sizes}")
        self.load_state_dict(state)

    def initial_state_grads(self) -> dict[str, np.ndarray]:
        """Gradients of the initial states ([L, B, size] each) from the last backward()."""
        if self._initial_state_grads is None:
            raise UsageError("initial_state_grads() needs a backward() first")
        return self._initial_state_grads

    # -- validation
    def _check_array(self, what: str, a, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise UsageError(f"{what} must be a numpy array on the numpy backend, got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise UsageError(f"{what} has dtype {a.dtype}, but the layer computes in {self.dtype}; "
                             f"convert it with .astype(numpy.{self.dtype})")
        if a.shape != shape:
            raise UsageError(f"{what} has shape {list(a.shape)}, expected {list(shape)}")
        if not np.all(np.isfinite(a)):
            raise UsageError(f"{what} contains NaN or infinite values")
        return a

    def _check_state(self, what: str, state, batch: int) -> dict[str, np.ndarray]:
        shapes = self.state_shapes(batch)
        if not isinstance(state, dict) or set(state) != set(shapes):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise UsageError(f"{what} must be a dict with the keys {sorted(shapes)}, got {got}")
        return {k: self._check_array(f"{what}[{k!r}]", state[k], shapes[k]) for k in shapes}

    # -- forward and backward
    def forward(self, x: np.ndarray, state: dict | None = None, *, train: bool = True):
        """x [T, B, input] -> (y [T, B, output], final state {name: [L, B, size]}).

        state defaults to zeros. With train=False nothing is kept for backward().
        """
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise UsageError("x must be a 3-D numpy array [T, B, input_size], got "
                             + (f"shape {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__))
        T, B = x.shape[:2]
        self._check_array("x", x, (T, B, self.input_size))
        if T < 1 or B < 1:
            raise UsageError(f"x must have at least one step and one sequence, got shape {list(x.shape)}")
        if state is None:
            state = {k: np.zeros(s, self.dtype) for k, s in self.state_shapes(B).items()}
        state = self._check_state("state", state, B)
        finals, tapes = {s.name: [] for s in self.cell.states}, []
        h = x
        for k in range(self.num_layers):
            h, final, tape = reference.layer_forward(
                self.cell, self._params[k], self.sizes[k], h, {n: a[k] for n, a in state.items()}, keep=train)
            tapes.append(tape)
            for n, a in final.items():
                finals[n].append(a)
        self._tapes = tapes if train else None
        self._shape = (T, B)
        return h, {n: np.stack(a) for n, a in finals.items()}

    def backward(self, dy: np.ndarray, dstate: dict | None = None) -> np.ndarray:
        """dL/dy [T, B, output] (and optionally dL/d final state) -> dL/dx [T, B, input].

        Adds every parameter's gradient into grads(); initial_state_grads() holds dL/d initial state.
        """
        if self._tapes is None:
            raise UsageError("backward() needs a forward() with train=True first")
        T, B = self._shape
        dy = self._check_array("dy", dy, (T, B, self.output_size))
        if dstate is None:
            dstate = {k: np.zeros(s, self.dtype) for k, s in self.state_shapes(B).items()}
        dstate = self._check_state("dstate", dstate, B)
        d_initial = {s.name: [None] * self.num_layers for s in self.cell.states}
        grad = self.spec.grad
        for k in reversed(range(self.num_layers)):
            dy, d0 = reference.layer_backward(self.cell, grad, self._params[k], self.sizes[k], self._tapes[k],
                                              dy, {n: a[k] for n, a in dstate.items()}, self._grads[k])
            for n, a in d0.items():
                d_initial[n][k] = a
        self._initial_state_grads = {n: np.stack(a) for n, a in d_initial.items()}
        return dy


def read_saved(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, parameters) of a file written by Layer.save, with clear errors for anything else."""
    try:
        with np.load(path, allow_pickle=False) as f:
            files = dict(f.items())
    except FileNotFoundError:
        raise InputFileError(f"no such file: {path}") from None
    except Exception as err:  # not a zip, truncated, not numpy
        raise InputFileError(f"{path} is not a readable .npz file ({type(err).__name__}: {err})") from None
    try:
        meta = json.loads(str(files.pop("__meta__")))
        assert meta["format"] == "lstmdsl-layer-1"
    except Exception:
        raise InputFileError(f"{path} was not written by lstmdsl's Layer.save (no valid metadata)") from None
    return meta, {k.removeprefix("param:"): v for k, v in files.items()}


def load(path, backend: str = "numpy", schedule: Schedule | str | None = None) -> Layer:
    """Rebuild a layer saved with Layer.save: its spec, sizes and parameters."""
    meta, state = read_saved(path)
    first = meta["sizes"][0]
    layer = compile(meta["spec"], first["input"], first["hidden"], meta["num_layers"], proj_size=first["proj"],
                    backend=backend, dtype=meta["dtype"] if backend == "numpy" else "float32", schedule=schedule)
    layer.load_state_dict(state)
    return layer


def compile(spec: Spec | str | Path, input_size: int, hidden_size: int, num_layers: int = 1, *,
            proj_size: int | None = None, backend: str = "numpy", dtype: str = "float32",
            schedule: Schedule | str | None = None, seed: int = 0, forget_bias: float | None = None) -> Layer:
    """Compile a spec into a trainable Layer.

    schedule: a Schedule, or directive text applied over the spec's own schedule block.
    forget_bias: initial value of the forget gate's bias b_f (1.0 is a common choice; Gers et al. 2000).
    backend "numpy" runs the reference (numpy arrays); "cuda" the generated kernels (CuPy arrays, float32).
    """
    if not isinstance(spec, Spec):
        spec = parse(spec)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if str(dtype) not in DTYPES:
        raise UsageError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if isinstance(schedule, str):
        schedule = parse_schedule(schedule, spec.schedule)
    elif schedule is None:
        schedule = spec.schedule
    elif not isinstance(schedule, Schedule):
        raise UsageError(f"schedule must be a Schedule or directive text, got {type(schedule).__name__}")
    sizes = layer_sizes(spec, input_size, hidden_size, proj_size, num_layers)
    if forget_bias is not None:
        if not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise UsageError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if not any(p.name == "b_f" and p.kind == "vector" for p in spec.cell.params):
            raise UsageError(f"forget_bias needs a forget-gate bias vector named b_f; cell '{spec.name}' has none")
    if backend == "cuda":
        from .runtime import CudaLayer  # imports CuPy: only when asked for

        return CudaLayer(spec, sizes, schedule, str(dtype), seed, forget_bias)
    return Layer(spec, sizes, schedule, str(dtype), seed, forget_bias)
