"""The trainable layer, whatever runs it: sizes and names, parameters and gradients, their state dicts and
files, and the checks of every array a caller hands in. The backends subclass it: NumpyLayer (the
reference, numpy_layer.py) and CudaLayer (the generated kernels, runtime/layer.py).

Parameters are named "l{layer}.{name}" (l0.W_i, l1.b_f, ...). States are dicts name -> [L, B, size].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .arrays import HALF_ARRAYS, array_module, to_numpy
from .errors import InputFileError, UsageError, check_free_memory
from .files import write_npz
from .ir import HEADS, ROW, SIZES, Cell, Noise, per_head
from .saved import read_saved
from .schedule import Schedule
from .spec import Spec, parse_quietly


_HALF_PRECISION = {t: p for p, t in HALF_ARRAYS.items()}  # a half array type of x and dy -> its precision


def _named(dtype) -> str:
    """A dtype as the layer's messages name it: uint16 as bfloat16 bits."""
    return f"{dtype} (bfloat16 bits: lstmdsl.arrays.to_bf16_bits)" if dtype == np.uint16 else str(dtype)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def layer_sizes(spec: Spec, input_size: int, hidden_size: int, proj_size: int | None,
                num_layers: int, directions: int = 1, num_heads: int | None = None) -> list[dict[str, int]]:
    """The size binding of each layer: layer k > 0 takes the output of layer k - 1 as its input (both
    directions' outputs side by side when there are two). num_heads: the blocks of the spec's
    block-diagonal matrices (`heads` in the spec; default 1), bound as "heads" with each size per head
    ("hidden/heads")."""
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
    if num_heads is not None and not spec.uses_size(HEADS):
        raise UsageError(f"num_heads was given but cell '{spec.name}' has no block-diagonal matrix (no 'heads' line)")
    num_heads = _positive_int("num_heads", num_heads) if num_heads is not None else 1
    check_free_memory(num_layers * 1024, f"a stack of {num_layers} layers' bookkeeping", "num_layers (-L)")
    sizes = []
    for k in range(num_layers):
        bound = {"input": input_size, "hidden": hidden_size, "proj": proj_size}
        if k > 0:
            bound["input"] = directions * sizes[-1][spec.cell.output_size]
        if spec.uses_size(HEADS):
            bound[HEADS] = num_heads
            for p in (p for p in spec.cell.params if p.heads):
                for side in (p.shape[0], p.cols):
                    if bound[side] % num_heads:
                        raise UsageError(f"matrix {p.name} is block-diagonal with num_heads = {num_heads} blocks, "
                                         f"but its side '{side}' is {bound[side]}{' in layer ' + str(k) if k else ''}, "
                                         f"not a multiple of {num_heads}")
            bound.update({per_head(s): bound[s] // num_heads for s in SIZES
                          if bound[s] is not None and bound[s] % num_heads == 0})
        sizes.append(bound)
    for state in spec.cell.states:  # states of all layers are stacked into one [L, B, size] array
        per_layer = {b[state.size] for b in sizes}
        if len(per_layer) > 1:
            raise UsageError(f"state '{state.name}' has size {state.size}, which differs between the layers of "
                             f"the stack ({', '.join(map(str, sorted(per_layer)))}); use one layer, or sizes "
                             "that agree")
    return sizes


def is_gain(name: str) -> bool:
    """Gains (vectors named g or g_*, as a normalisation's scale) start at 1, not at random."""
    return name == "g" or name.startswith("g_")


PARAMETER_SIZES = "the hidden size, the input size (the projection size, where the spec has one) or the layers"


def init_params(cell: Cell, sizes: dict[str, int], rng: np.random.Generator, dtype,
                forget_bias: float | None = None) -> dict[str, np.ndarray]:
    """Every parameter uniform in [-1/sqrt(hidden), 1/sqrt(hidden)], as torch.nn.LSTM initialises, except
    the gains (vectors g, g_*: ones); with forget_bias, the vector b_f (the forget gate's bias, by the
    specs' naming) is set to that value. Sizes whose draws cannot fit the memory free here are refused first."""
    shapes = [tuple(sizes[s] for s in p.shape) for p in cell.params]
    largest = max(map(math.prod, shapes), default=0)  # (its float64 draw, before the cast)
    check_free_memory(sum(math.prod(s) for s in shapes) * np.dtype(dtype).itemsize + largest * 8,
                      "a layer's parameters", PARAMETER_SIZES)
    bound = 1.0 / math.sqrt(sizes["hidden"])
    params = {p.name: rng.uniform(-bound, bound, shape).astype(dtype) for p, shape in zip(cell.params, shapes)}
    for p in cell.params:
        if p.kind == "vector" and is_gain(p.name):
            params[p.name][...] = 1
    if forget_bias is not None:
        params["b_f"][...] = forget_bias
    return params


def interleave_rows(count: int, rows: int, block: int) -> np.ndarray:
    """The order a stack stored head by head (WeightStack.interleave) takes its rows in: `count` matrices of
    `rows` rows, in blocks of `block`; entry p is the row of the matrices-in-order stack that goes to row p
    (block k of every matrix in turn). Gather with it to permute, scatter with it to permute back."""
    p = np.arange(count * rows)
    head, rest = divmod(p, count * block)
    matrix, r = divmod(rest, block)
    return matrix * rows + head * block + r


def recurrent_matrices(cell: Cell) -> tuple[str, ...]:
    """The matrices whose operand depends on a state (R_i h, R_n (r * h)): DropConnect's weights."""
    recurrent = set()
    names = []
    for i, n in enumerate(cell.nodes):
        if n.op == "state" or any(a in recurrent for a in n.args):
            recurrent.add(i)
        if n.op == "matvec" and n.args[0] in recurrent and n.attr not in names:
            names.append(n.attr)
    return tuple(names)


def length_mask(lengths, T: int, xp, dtype):
    """[T, B, 1]: 1 where step t is inside sequence b (t < lengths[b]), else 0."""
    return (xp.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]


class Layer:
    """A compiled spec: a stack of `num_layers` layers of one cell, each reading its input forward in time,
    or (bidirectional) in both directions with the two outputs side by side, with parameters and gradients.

    Subclasses set self._params and self._grads (per unit, layer-major, direction-minor: name -> array) and
    implement forward and backward; the array checks below serve both, with the hooks _check_kind and
    _check_layout.
    """

    backend = ""
    array_name = "array"  # what the backend's arrays are called in messages

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str,
                 directions: int = 1, dropout: float = 0.0, seed: int = 0, dropconnect: float = 0.0):
        self.spec = spec
        self.cell = spec.cell
        self.sizes = sizes
        self.num_layers = len(sizes)
        self.directions = directions
        self.dropout = float(dropout)  # between stacked layers, as torch.nn.LSTM's
        self.dropconnect = float(dropconnect)  # on the recurrent matrices (Wan et al. 2013), in training
        self.units = [(k, d) for k in range(self.num_layers) for d in range(directions)]
        self.schedule = schedule
        self.dtype = np.dtype(dtype)
        self._params: list[dict] = []
        self._grads: list[dict] = []
        self._initial_state_grads = None
        self._io_dtype = self.dtype  # the last training forward's x and y type (see _half_io)
        self._noise_seed = (seed, 0x6E6F6973)  # the masks' generator: its own stream of the layer's seed
        self._last_noise: dict = {}
        self._evaluation_noise: dict = {}

    # -- sizes and names
    @property
    def input_size(self) -> int:
        return self.sizes[0]["input"]

    @property
    def output_size(self) -> int:
        return self.directions * self.sizes[-1][self.cell.output_size]

    def state_shapes(self, batch: int) -> dict[str, tuple[int, int, int]]:
        """[directions * num_layers, B, size] per state: layer-major, direction-minor, as torch.nn.LSTM."""
        return {s.name: (len(self.units), batch, self.sizes[0][s.size]) for s in self.cell.states}

    # -- regularisers
    def noise_kinds(self) -> dict[str, tuple[Noise, int]]:
        """Every mask a forward reads, by name, with its regulariser and the unit (or layer, for dropout
        between layers) it belongs to: 'l0.dropout1' for the spec's dropout(...) in layer 0, 'l0_reverse.zoneout1',
        'l{k}.between' for the dropout between layer k and layer k + 1, and 'l0.dropconnect.R_i' for the
        DropConnect mask of a recurrent matrix (one per call, the matrix's shape)."""
        out = {}
        for u, _ in enumerate(self.units):
            for z in self.cell.noise:
                out[f"{self.unit_name(u)}.{z.name}"] = (z, u)
            if self.dropconnect > 0:
                for m in recurrent_matrices(self.cell):
                    out[f"{self.unit_name(u)}.dropconnect.{m}"] = (Noise("dropconnect", "dropout", self.dropconnect,
                                                                         ""), u)
        if self.dropout > 0:
            for k in range(self.num_layers - 1):
                out[f"l{k}.between"] = (Noise("between", "dropout", self.dropout, self.cell.output_size), k)
        return out

    def noise_shapes(self, T: int, B: int) -> dict[str, tuple[int, ...]]:
        """The shape of each mask of noise_kinds() for a batch [T, B]: [T, B, n], or a recurrent matrix's."""
        out = {}
        for name, (z, u) in self.noise_kinds().items():
            if z.name == "dropconnect":
                out[name] = tuple(self._params[u][name.rsplit(".", 1)[1]].shape)
                continue
            k = u if z.name == "between" else self.units[u][0]
            width = 1 if z.size == ROW else self.sizes[k][z.size]
            out[name] = (T, B, self.directions * width if z.name == "between" else width)
        return out

    def _dropconnect(self, masks: dict) -> list[dict]:
        """Per unit: recurrent matrix -> its DropConnect mask, for the masks of this forward (none in
        evaluation unless given)."""
        out = [{} for _ in self.units]
        for u, _ in enumerate(self.units):
            for m in recurrent_matrices(self.cell) if self.dropconnect > 0 else ():
                mask = masks.get(f"{self.unit_name(u)}.dropconnect.{m}")
                if mask is not None:
                    out[u][m] = mask
        return out

    def last_noise(self) -> dict:
        """The masks of the last training forward (name -> [T, B, n] array of the backend): hand them to
        forward(noise=...) of another layer (the reference, say) to run it with the same draws."""
        return dict(self._last_noise)

    def noise_state(self):
        """The masks' generator's state (JSON-able), for a checkpoint to resume with the same draws; None where the
        backend cannot give it."""
        return None

    def _noise(self, T: int, B: int, train: bool, noise) -> dict:
        """The masks of a forward: the given ones (checked), fresh draws in training, the regularisers'
        expectations in evaluation."""
        shapes = self.noise_shapes(T, B)
        if noise is not None:
            if not isinstance(noise, dict) or set(noise) != set(shapes):
                got = sorted(noise) if isinstance(noise, dict) else type(noise).__name__
                raise UsageError(f"noise must be a dict with the keys {sorted(shapes)}, got {got}")
            out = {k: self._check_array(f"noise[{k!r}]", noise[k], shapes[k]) for k in shapes}
        elif not shapes:
            out = {}
        elif not train:  # the expectations; DropConnect uses the weights as they are
            key = (T, B)
            if key not in self._evaluation_noise:
                kinds = self.noise_kinds()
                self._evaluation_noise = {key: {k: self._full(s, kinds[k][0].evaluation()) for k, s in shapes.items()
                                                if kinds[k][0].name != "dropconnect"}}
            out = self._evaluation_noise[key]
        else:
            kinds = self.noise_kinds()
            out = {k: kinds[k][0].training(self._uniform(s)).astype(self.dtype) for k, s in shapes.items()}
        if train:
            self._last_noise = out
        return out

    def _uniform(self, shape):
        """Uniform draws in [0, 1) from the layer's mask generator, an array of the backend."""
        raise NotImplementedError

    def _full(self, shape, value: float):
        raise NotImplementedError

    def unit_name(self, u: int) -> str:
        k, d = self.units[u]
        return f"l{k}" + ("_reverse" if d else "")

    def parameters(self) -> dict:
        """Name -> parameter array (the live arrays: updating them in place updates the layer). Names are
        l{k}.{name}, and l{k}_reverse.{name} for the reverse direction of a bidirectional layer."""
        return {f"{self.unit_name(u)}.{name}": a for u, p in enumerate(self._params) for name, a in p.items()}

    def grads(self) -> dict:
        """Name -> accumulated gradient, same names and shapes as parameters()."""
        return {f"{self.unit_name(u)}.{name}": a for u, g in enumerate(self._grads) for name, a in g.items()}

    def zero_grad(self) -> None:
        for g in self._grads:
            for a in g.values():
                a.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> a numpy copy of each parameter (from either backend)."""
        return {k: to_numpy(v) for k, v in self.parameters().items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameter values in (numpy or CuPy arrays); names, shapes and finiteness are checked first."""
        params = self.parameters()
        if not isinstance(state, dict):
            raise UsageError(f"a state dict is a dict of arrays by parameter name (as state_dict() returns), got "
                             f"{type(state).__name__}")
        if set(state) != set(params):
            raise UsageError(f"the state dict does not match this layer's parameters (missing: "
                             f"{sorted(set(params) - set(state))}, unexpected: {sorted(set(state) - set(params))})")
        values = {}
        for k, v in state.items():
            try:
                values[k] = to_numpy(v)
            except Exception:  # noqa: BLE001 (anything numpy cannot read as an array)
                raise UsageError(f"{k} in the state dict is not an array ({type(v).__name__})") from None
            if values[k].dtype.kind not in "fiub":
                raise UsageError(f"{k} in the state dict has dtype {values[k].dtype}; parameters are numbers")
        for k, v in values.items():
            if v.shape != params[k].shape:
                raise UsageError(f"{k} has shape {list(v.shape)} in the state dict, {list(params[k].shape)} here")
            with np.errstate(over="ignore"):  # (a value past the layer's dtype's range becomes inf: refused)
                values[k] = v.astype(self.dtype)
            if not np.all(np.isfinite(values[k])):
                raise UsageError(f"{k} contains NaN or infinite values (or values past {self.dtype}'s range)")
        for k, v in values.items():
            params[k][...] = array_module(params[k]).asarray(v)

    def save(self, path) -> None:
        """Write the parameters and what is needed to rebuild the layer (spec text, sizes) to a .npz archive
        at exactly `path` (no extension is added), atomically: a failed write leaves any old file whole."""
        if not isinstance(path, (str, Path)) or str(path) == "":
            raise UsageError(f"path must be a file name, got {path!r}")
        meta = {"format": "lstmdsl-layer-1", "spec": self.spec.source.text, "cell": self.cell.name,
                "sizes": self.sizes, "num_layers": self.num_layers, "dtype": str(self.dtype),
                "directions": self.directions, "dropout": self.dropout, "dropconnect": self.dropconnect,
                "schedule": self.schedule.describe(),  # (lstmdsl.load rebuilds it: a bf16 layer stays bf16)
                "noise": {"backend": self.backend, "state": self.noise_state()}}  # (its next masks, on its backend)
        write_npz(path, {"__meta__": np.array(json.dumps(meta)),
                         **{f"param:{k}": v for k, v in self.state_dict().items()}})

    def load(self, path) -> None:
        """Load parameters saved by save() into this layer (the same cell and sizes)."""
        meta, state = read_saved(path)
        cell = parse_quietly(meta["spec"]).cell
        if cell != self.cell:
            raise UsageError(f"{path} holds cell '{cell.name}'" + (", whose equations differ from this layer's"
                                                                    if cell.name == self.cell.name else
                                                                    f", which is not this layer's cell '{self.cell.name}'"))
        if meta["sizes"] != self.sizes or meta.get("directions", 1) != self.directions:
            raise UsageError(f"{path} holds sizes {meta['sizes']} in {meta.get('directions', 1)} direction(s), this "
                             f"layer has {self.sizes} in {self.directions}")
        try:
            self.load_state_dict(state)
        except UsageError as err:  # (its cell, sizes and dtype are this layer's: what is wrong is in the file)
            if meta["dtype"] != str(self.dtype):  # (float64 values past float32's range: they do not fit here)
                raise UsageError(f"{path} holds {meta['dtype']} parameters that do not fit this {self.dtype} "
                                 f"layer: {err}") from None
            raise InputFileError(f"{path} is damaged: {err}") from None

    def initial_state_grads(self) -> dict:
        """Gradients of the initial states ([L, B, size] each) from the last backward()."""
        if self._initial_state_grads is None:
            raise UsageError("initial_state_grads() needs a backward() first")
        return self._initial_state_grads

    # -- the checks of what callers hand in
    def _check_kind(self, what: str, a) -> None:
        raise NotImplementedError

    def _check_layout(self, what: str, a) -> None:
        """Backend-specific conditions on an array of the right type, dtype and shape."""

    def _zeros(self, shape):
        raise NotImplementedError

    def _check_array(self, what: str, a, shape: tuple[int, ...], half: bool = False):
        """half: the layer's half-precision array type is taken too where it has one (x and dy: see _half_io)."""
        self._check_kind(what, a)
        io = self._half_io if half else None  # (not compared with None: numpy's dtype("float64") == None)
        if a.dtype != self.dtype and not (io is not None and a.dtype == io):
            xp = "cupy" if self.backend == "cuda" else "numpy"
            takes = (f" (and, as it runs `precision {self.schedule.precision}`, takes {_named(io)})"
                     if io is not None else "")
            only = _HALF_PRECISION.get(a.dtype) if half else None  # (by the whole dtype: '>u2' is not bf16 bits)
            only = (f"; {_named(a.dtype)} arrays are taken only by a float32 layer under `precision {only}`"
                    if only else "")
            hint = (f"lstmdsl.arrays.from_bf16_bits({what}, {xp}.{self.dtype})" if a.dtype == np.uint16 else
                    f".astype({xp}.{self.dtype})")
            raise UsageError(f"{what} has dtype {a.dtype}, but the layer computes in {self.dtype}{takes}{only}; "
                             f"convert it with {hint}")
        if a.shape != shape:
            raise UsageError(f"{what} has shape {list(a.shape)}, expected {list(shape)}")
        self._check_layout(what, a)
        return a

    def _check_state(self, what: str, state, batch: int, zeros: bool = True) -> dict | None:
        """The state checked; None as zeros (or as None where `zeros` is False: the backend zeroes its own
        copy, with no array to allocate and copy in)."""
        shapes = self.state_shapes(batch)
        if state is None:
            return {k: self._zeros(s) for k, s in shapes.items()} if zeros else None
        if not isinstance(state, dict) or set(state) != set(shapes):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise UsageError(f"{what} must be a dict with the keys {sorted(shapes)}, got {got}")
        return {k: self._check_array(f"{what}[{k!r}]", state[k], shapes[k]) for k in shapes}

    def _check_input(self, x, state, lengths=None, zeros: bool = True,
                     train: bool = True) -> tuple[int, int, dict | None, object]:
        """(T, B, state, lengths as an int64 numpy array or None) for forward(x, state, lengths, train), or
        a UsageError saying what is wrong. zeros: see _check_state."""
        if not isinstance(train, (bool, np.bool_)):  # ("no" would be true: a training forward)
            raise UsageError(f"train must be True or False, got {train!r}")
        self._check_kind("x", x)
        if x.ndim != 3:
            raise UsageError(f"x must be a 3-D {self.array_name} [T, B, input_size], got shape {list(x.shape)}")
        T, B = x.shape[:2]
        if T < 1 or B < 1:
            raise UsageError(f"x must have at least one step and one sequence, got shape {list(x.shape)}")
        self._check_array("x", x, (T, B, self.input_size), half=True)
        return T, B, self._check_state("state", state, B, zeros), self._check_lengths(lengths, T, B)

    @property
    def _half_io(self) -> np.dtype | None:
        """The half-precision type x and dy may have besides the layer's: float16 for a float32 layer in `precision
        fp16`, uint16 (bfloat16 bits: arrays.to_bf16_bits) in `precision bf16`, as numpy and CuPy have no bfloat16;
        None otherwise. y and dx then come back in it (x's type; the states stay float32). Under `precision bf16` a
        uint16 array is always read as bfloat16 bits: integer data must be converted to float32 first."""
        return HALF_ARRAYS.get(self.schedule.precision) if self.dtype == np.float32 else None

    def _check_lengths(self, lengths, T: int, B: int):
        if lengths is None:
            return None
        try:
            host = np.asarray(to_numpy(lengths))
        except Exception:  # noqa: BLE001 (not an array of numbers)
            raise UsageError(f"lengths must be {B} integers, got {type(lengths).__name__}") from None
        if host.shape != (B,) or host.dtype.kind not in "iu" and not (host.dtype.kind == "f" and np.all(
                np.isfinite(host)) and np.all(host == np.round(host))):  # (inf equals its rounding)
            raise UsageError(f"lengths must be {B} integers (one per sequence), got shape {list(host.shape)} "
                             f"and dtype {host.dtype}")
        if B and (host.min() < 1 or host.max() > T):
            raise UsageError(f"every length must lie in [1, T] = [1, {T}], got {int(host.min())} .. {int(host.max())}")
        return host.astype(np.int64)  # (on the host for every backend: the CUDA layer makes the mask there)

    def _check_gradient(self, dy, dstate, shape: tuple[int, int], zeros: bool = True) -> dict | None:
        """dstate (zeros when None, or None: see _check_state) after checking dy and dstate against the last
        forward's shape."""
        T, B = shape
        self._check_array("dy", dy, (T, B, self.output_size), half=True)
        if dy.dtype != self._io_dtype:  # (dx comes back in dy's type, which must be the training forward's y's)
            raise UsageError(f"dy has dtype {dy.dtype}, but the training forward's x and y were {self._io_dtype}; "
                             f"give dy in {_named(self._io_dtype)}")
        return self._check_state("dstate", dstate, B, zeros)
