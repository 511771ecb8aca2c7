"""The modules of lstmdsl.torch: RNN (any spec), LSTM and GRU, with torch.nn.LSTM's conventions."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from torch import nn

from ..api import check_forget_bias, check_schedule, check_seed
from ..errors import UsageError
from ..ir import HEADS, ROW
from ..layer import is_gain, layer_sizes
from ..schedule import Schedule
from ..spec import Spec, parse
from .layout import NNLayout, reset_nn
from .names import lstmdsl_state_dict, nn_kind, suffix, torch_state_dict
from .ops import Runner
from .ops import forward as run_forward
from .ops import value_type as _value_type
from .checks import initial_states
from .packing import length_mask, packing
from .pair import run_pair
from .weights import CopyInto

_WARNED_CPU = []


def _bool(name: str, v) -> bool:  # (as nn.LSTM takes flags: 1 and 0 too, nn.LSTM(bidirectional=1) runs)
    if not isinstance(v, (bool, np.bool_)) and not (isinstance(v, (int, np.integer)) and v in (0, 1)):
        raise UsageError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def _is_bias(name: str) -> bool:
    return name == "b" or name.startswith("b_")


class RNN(nn.Module):
    """A recurrent layer stack of any spec, with torch.nn.LSTM's arguments and conventions, its parameters named
    after the spec's (weight_ih_l{k}, weight_hh_l{k}, b_i_l{k}, ...; LSTM and GRU take torch.nn's).

    spec: a shipped spec's name, a .cell path, spec text or a Spec. bias=False makes the bias vectors (b,
    b_*) zeros that are not trained. proj_size > 0 binds the spec's size `proj`. schedule: directive text
    or a Schedule. seed: draw the initial parameters as lstmdsl.compile(seed=...) does; without it they
    come from torch's generator, uniform in +-1/sqrt(hidden_size) as torch.nn.LSTM's. forget_bias: the
    initial value of b_f. dropconnect: in training mode, each recurrent weight (the matrices whose operand
    depends on the previous step's state) is zeroed with this probability and the rest scaled by 1/(1-p),
    one mask per call (Wan et al. 2013; Haste's and AWD-LSTM's weight drop). The spec's own dropout(...)
    and zoneout(...) draw their masks in training mode too; all masks come from torch's generator.
    num_heads: the blocks of the spec's block-diagonal matrices (its `heads` line, e.g. the sLSTM's heads).
    """

    _nn_names = False  # (LSTM and GRU: torch.nn's parameters where the cell is one torch.nn has)

    def __init__(self, spec, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, schedule: Schedule | str | None = None, seed: int | None = None,
                 forget_bias: float | None = None, dropconnect: float = 0.0, num_heads: int | None = None):
        super().__init__()
        self.spec = spec if isinstance(spec, Spec) else parse(spec)
        cell = self.spec.cell
        schedule = check_schedule(schedule, self.spec)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise UsageError(f"proj_size must be a non-negative integer, got {proj_size!r}")
        seed = None if seed is None else check_seed(seed)
        forget_bias = check_forget_bias(self.spec, forget_bias)  # (compile's checks: a GRU has no b_f)
        if dtype not in (None, torch.float32, torch.float64, *_HALF.values()):
            raise UsageError(f"dtype must be torch.float32, float64, bfloat16 or float16, got {dtype!r}")
        if not (isinstance(dropout, numbers.Real) and 0 <= dropout <= 1) or isinstance(dropout, bool):  # (numpy's too)
            raise UsageError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if not (isinstance(dropconnect, numbers.Real) and 0 <= dropconnect < 1) or isinstance(dropconnect, bool):
            raise UsageError(f"dropconnect must be a probability in [0, 1), got {dropconnect!r}")
        self.dropconnect = float(dropconnect)
        if dropout > 0 and num_layers == 1:  # (torch.nn.LSTM's warning, word for word)
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                          stacklevel=3)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = _bool("bias", bias), _bool("batch_first", batch_first)
        self.bidirectional, self.dropout, self.proj_size = _bool("bidirectional", bidirectional), float(dropout), proj_size
        D = 2 if self.bidirectional else 1
        sizes = layer_sizes(self.spec, input_size, hidden_size, proj_size or None, num_layers, D, num_heads)
        self.num_heads = sizes[0].get(HEADS)
        self.output_size = sizes[-1][cell.output_size]
        self.state_sizes = {s.name: sizes[0][s.size] for s in cell.states}
        split = D == 2 or (self.dropout > 0 and num_layers > 1)
        groups = [[(k, d)] for k in range(num_layers) for d in range(D)] if split else [[(k, 0) for k in range(num_layers)]]
        self._groups = []  # (runner, [(layer, direction)], [parameter names])
        self.overlap_directions = True  # on CUDA, outside torch.compile: the two directions run at once
        self._connected: dict = {}  # DropConnect's masked weight stacks (see _connect)
        self._packing_cache = None  # (batch_sizes, device, dtype) and packing's tensors for the last packed batch
        self._seed, self._forget_bias = seed, forget_bias  # (reset_parameters draws them again the same way)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        kind = nn_kind(self) if self._nn_names else None
        self._nn = None  # LSTM and GRU on a cell torch.nn has: torch.nn's parameters (layout.py)
        self._bias_buffers: dict = {}  # (layout.NNLayout.values: the gates' summed biases, by layer and direction)
        for members in groups:
            runner = Runner(cell, self.spec.grad, schedule, [sizes[k] for k, _ in members],
                            "reverse" if members[0][1] else "forward", beside=D == 2)
            if kind is not None:
                self._nn = NNLayout.of(kind, hidden_size, [s.name for s in runner.slots if s.kind == "vector"])
            names = []
            for j, (k, d) in enumerate(members):
                sfx = suffix(k, d)
                for name, shape in self._nn.parameters(runner, j, sfx, self.bias) if self._nn else []:
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                for slot in runner.slots:
                    name = (NNLayout.name(slot.name) if self._nn and slot.kind == "stack" else slot.name) + sfx
                    t = torch.empty(runner.shape(slot, j), **factory)
                    if slot.kind == "vector" and _is_bias(slot.name) and not self.bias:
                        self.register_buffer(name, t, persistent=False)
                    elif not self._nn:
                        self.register_parameter(name, nn.Parameter(t))
                    names.append(name)  # (under torch.nn's names, a bias vector is made from two: _op_tensors)
            self._groups.append((runner, members, names))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws the parameters again, as at construction (torch.nn.LSTM's reset_parameters): uniform in
        +-1/sqrt(hidden_size) from torch's generator, gains 1, b_f = forget_bias where given; with seed= the
        spec's initialisation from that seed, so the same values again. Without bias, the biases stay zero."""
        seed, forget_bias = getattr(self, "_seed", None), getattr(self, "_forget_bias", None)
        rng = np.random.default_rng(seed) if seed is not None else None
        bound = 1.0 / math.sqrt(self.hidden_size)
        if self._nn is not None:
            return reset_nn(self, rng, bound, forget_bias)
        for runner, members, names in self._groups:
            tensors = self._tensors(names)
            initial = runner.initial(rng, np.float64 if tensors[0].dtype == torch.float64 else np.float32, forget_bias)
            tensors = iter(tensors)  # (each member's slots in turn, as __init__ named them)
            with torch.no_grad():
                for j in range(len(members)):
                    for slot, value in zip(runner.slots, initial[j]):
                        t = next(tensors)
                        if value is not None:
                            t.copy_(torch.from_numpy(value))
                        else:
                            t.uniform_(-bound, bound)
                            if slot.kind == "vector" and is_gain(slot.name):
                                t.fill_(1.0)
                            if forget_bias is not None and slot.name == "b_f":
                                t.fill_(forget_bias)
                        if slot.kind == "vector" and _is_bias(slot.name) and not self.bias:
                            t.zero_()

    def _own_names(self) -> dict[tuple[int, int], list[str]]:
        """Each (layer, direction)'s parameters' names, in the order they were registered (torch.nn's under its
        names, else the spec's slots'; bias buffers not)."""
        per = {}
        for runner, members, names in self._groups:
            n = len(runner.slots)
            for j, (k, d) in enumerate(members):  # (names: each member's slots in turn)
                sfx = suffix(k, d)
                per[(k, d)] = [nm for nm, _ in self._nn.parameters(runner, j, sfx, self.bias)] if self._nn else \
                    [nm for s, nm in zip(runner.slots, names[j * n:(j + 1) * n])
                     if not (s.kind == "vector" and _is_bias(s.name) and not self.bias)]
        return dict(sorted(per.items()))

    @property
    def all_weights(self) -> list[list[torch.Tensor]]:
        """Each layer's and direction's parameters ([layer 0, layer 0 reverse, layer 1, ...]), as torch.nn.LSTM's
        all_weights lists them: in torch.nn's order under its names (LSTM and GRU), else in the spec's parameter
        order (weight_ih, weight_hh, then its vectors)."""
        return [self._tensors(names) for names in self._own_names().values()]

    @property
    def _flat_weights_names(self) -> list[str]:  # (torch.nn.LSTM's, which some code reads)
        return [n for names in self._own_names().values() for n in names]

    @property
    def _flat_weights(self) -> list[torch.Tensor]:
        return self._tensors(self._flat_weights_names)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if "_nn" not in self.__dict__:  # (pickled before LSTM and GRU took torch.nn's names: they keep the spec's)
            self._nn, self._bias_buffers = None, {}
        for runner, _, _ in self._groups:  # (a module pickled before its runners kept `beside`)
            if self.bidirectional and not runner.beside:
                runner.mark_beside()

    def extra_repr(self) -> str:  # (LSTM and GRU of torch.nn's cells as torch.nn's: LSTM(3, 4, proj_size=2, ...))
        nn_cell = getattr(self, "_nn", None) is not None
        s = ("" if nn_cell else f"{self.spec.name}, ") + f"{self.input_size}, {self.hidden_size}"
        for name, default in (("proj_size", 0), ("num_layers", 1 if nn_cell else None), ("bias", True),
                              ("batch_first", False), ("dropout", 0.0), ("bidirectional", False), ("dropconnect", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def flatten_parameters(self) -> None:
        """A no-op, for code written for torch.nn.LSTM: the weight stacks are already contiguous."""

    def __prepare_scriptable__(self):  # (torch.jit.script asks every module first, a model's submodules too)
        raise UsageError("torch.jit.script cannot compile lstmdsl's modules (TorchScript is not supported); "
                         "torch.compile and torch.export take them")

    # -- forward
    def forward(self, input, hx=None, lengths=None):
        """input [T, B, input_size] ([B, T, ...] with batch_first, or unbatched [T, input_size]) ->
        (output [T, B, D * output], final state): a tuple in the spec's state order ((h_n, c_n) for an
        LSTM), or one tensor for a single-state cell; each [D * num_layers, B, size]. A PackedSequence input gives a
        PackedSequence output. lengths (not torch.nn.LSTM's): each sequence's length in a padded batch, B integers
        in 1..T on the CPU, as pack_padded_sequence takes them: the same results as that batch packed (output zero
        past each end), without packing it."""
        packed = input if isinstance(input, nn.utils.rnn.PackedSequence) else None
        if lengths is not None and (packed is not None or not isinstance(input, torch.Tensor) or input.dim() != 3):
            raise UsageError("lengths goes with a padded batch, a 3-D tensor (a PackedSequence has its own)")
        if packed is not None:  # padded time-major in the packed (sorted) order: see packing.py
            self._packing_cache, (rows, mask) = packing(packed, self._packing_cache)
            T, B = len(packed.batch_sizes), int(packed.batch_sizes[0])
            data = packed.data
            # (index_copy_ in place: the out-of-place index_copy would copy the zeros first)
            input = data.new_zeros((T * B, *data.shape[1:])).index_copy_(0, rows, data).view(T, B, *data.shape[1:])
        if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3):
            raise UsageError(f"input must be a 2-D (unbatched) or 3-D tensor, got "
                             f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
        batched = input.dim() == 3
        x = input.transpose(0, 1) if batched and self.batch_first and packed is None else input
        x = x if batched else x.unsqueeze(1)
        if x.shape[-1] != self.input_size or x.shape[0] < 1:  # (an empty batch is torch.nn.LSTM's too: below)
            raise UsageError(f"input has shape {list(input.shape)}; expected {self.input_size} features and at least "
                             "one step")
        first = self._tensors(self._groups[0][2][:1])[0]
        if x.device != first.device:  # (before autocast's question about x's device type, which fails on some)
            raise UsageError(f"the input is on {x.device}, but the parameters are on {first.device}; move one of them")
        pdtype = first.dtype
        out_dtype = x.dtype
        half = pdtype if pdtype in _HALF.values() else None  # half parameters (.half()): half GEMMs, float32 state
        if pdtype == torch.float32:  # mixed precision: from a half-precision input, or the schedule
            half = x.dtype if x.dtype in _HALF.values() else _HALF.get(self._groups[0][0].schedule.precision)
        if torch.is_autocast_enabled(x.device.type):
            # what torch.nn.LSTM returns there: on CUDA its autocast wrapper runs cuDNN in float16, whatever
            # the autocast type; elsewhere the autocast type
            out_dtype = torch.float16 if x.is_cuda else torch.get_autocast_dtype(x.device.type)
            if pdtype == torch.float32 and torch.get_autocast_dtype(x.device.type) in _HALF.values():
                half = torch.get_autocast_dtype(x.device.type)  # computed in the autocast type (mixed precision)
            x = x.to(pdtype)
        elif x.dtype != pdtype and not (half is not None and x.dtype == half):
            raise UsageError(f"input has dtype {x.dtype} but the parameters are {pdtype}; convert one of them "
                             "(or run under torch.autocast)")
        if half is not None and x.is_cuda:  # mixed precision: the half-precision input, float32 master weights
            x = x.to(half)
        if not x.is_cuda and not _WARNED_CPU and not torch.compiler.is_compiling():  # (a warning breaks fullgraph)
            _WARNED_CPU.append(True)
            warnings.warn("lstmdsl.torch: CPU tensors run on the numpy reference, which is slow; move the module "
                          "and its inputs to a CUDA device for the generated kernels", stacklevel=2)
        states = initial_states(self, hx, x, batched, input.dtype)
        steps = []
        if packed is not None and packed.sorted_indices is not None:  # nn.LSTM's order of hx: the batch's own
            states = [s.index_select(1, packed.sorted_indices) for s in states]
        if lengths is not None:  # (the padding zeroed: a NaN there would reach the states and the weight gradients)
            mask = length_mask(lengths, x.shape[0], x.shape[1], x.device, _value_type(x))
            x = x.masked_fill(mask == 0, 0)
        if packed is not None or lengths is not None:
            steps = [mask.to(_value_type(x))]
        if x.shape[1] == 0:  # no sequence: empty outputs, as torch.nn.LSTM gives, still in autograd's graph
            zero = sum(t.reshape(-1)[:0].sum() for t in [x, *states, *self.parameters()])
            D = 2 if self.bidirectional else 1
            y = x.new_zeros((x.shape[0], 0, D * self.output_size)) + zero
            final = [x.new_zeros((D * self.num_layers, 0, self.state_sizes[s.name])) + zero for s in self.spec.cell.states]
        else:
            y, final = self._run(x, states, steps)
        if lengths is not None:  # (past the end y holds the state there: masks.with_lengths(held=True))
            y = y * mask.to(y.dtype)
        if packed is not None:
            if packed.unsorted_indices is not None:
                final = [f.index_select(1, packed.unsorted_indices) for f in final]
            data = y.to(out_dtype).reshape(T * B, -1).index_select(0, rows)
            out = nn.utils.rnn.PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            return out, self._final([f.to(out_dtype) for f in final])
        if not batched:
            y, final = y.squeeze(1), [f.squeeze(1) for f in final]
        if batched and self.batch_first:
            y = y.transpose(0, 1)
        return y.to(out_dtype), self._final([f.to(out_dtype) for f in final])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """torch.nn.LSTM's and GRU's state dicts load too (names.torch_state_dict renames them first), and into LSTM
        and GRU, whose names are torch.nn's, state dicts saved under lstmdsl's names (names.lstmdsl_state_dict)."""
        (lstmdsl_state_dict if self._nn is not None else torch_state_dict)(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _final(final: list[torch.Tensor]):
        return tuple(final) if len(final) > 1 else final[0]

    def _tensors(self, names: list[str]) -> list[torch.Tensor]:
        """Parameters (and bias buffers) by name: plain ones from the module's dicts, those that torch's
        parametrizations, pruning or weight norm put in their place as the module's attributes."""
        params, buffers = self._parameters, self._buffers
        return [params[n] if n in params else buffers[n] if n in buffers else getattr(self, n) for n in names]

    def _op_tensors(self, runner: Runner, members: list, names: list[str]) -> list[torch.Tensor]:
        """A group's tensors in the order the ops take them: under torch.nn's names (self._nn) each layer's bias
        vectors made from bias_ih and bias_hh (layout.NNLayout.values)."""
        if self._nn is None or not self.bias:
            return self._checked(runner, names, self._tensors(names))
        out, n = [], len(runner.slots)
        for j, member in enumerate(members):
            sfx = suffix(*member)
            vectors = iter(self._nn.values(*self._tensors(["bias_ih" + sfx, "bias_hh" + sfx]), self._bias_buffers,
                                           member))
            own = names[j * n:(j + 1) * n]
            out += [next(vectors) if s.kind == "vector" else self._tensors([nm])[0] for s, nm in zip(runner.slots, own)]
        return self._checked(runner, names, out)

    def _checked(self, runner: Runner, names: list[str], out: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors `out` (named `names`), each of the shape its runner's ops take (a tensor put in place by hand
        may not be: the op would refuse it too, but by its slot and its layer within the group, not by the
        module's name)."""
        if list(map(torch.Tensor.size, out)) != runner.param_shapes:
            n, t, want = next((n, t, w) for n, t, w in zip(names, out, runner.param_shapes) if t.shape != w)
            raise UsageError(f"{n} has shape {list(t.shape)}; this module's {n} is {list(want)}")
        return out

    def _noise(self, runner: Runner, x: torch.Tensor) -> list[torch.Tensor]:
        """The masks of the spec's regularisers (dropout(...), zoneout(...)) for each layer of a runner: drawn
        from torch's generator in training mode (module.train()), their expectations in evaluation."""
        out = []
        T, B = x.shape[:2]
        for bound in runner.sizes:
            for z in runner.noise:
                shape = (T, B, 1 if z.size == ROW else bound[z.size])
                if self.training:
                    out.append(z.training(torch.rand(shape, device=x.device)).to(_value_type(x)))
                else:
                    out.append(torch.full(shape, z.evaluation(), device=x.device, dtype=_value_type(x)))
        return out

    def _connect(self, runner: Runner, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """DropConnect in training mode: each recurrent weight stack times a fresh mask (autograd carries the
        gradient through the product). Outside torch.compile the products land in buffers of the module's
        own, two per stack used in turn, so the runtime sees the same addresses every other call and
        replays its CUDA graphs (a forward whose buffer was overwritten before its backward raises torch's
        in-place error, never a wrong gradient)."""
        if not (self.training and self.dropconnect > 0):
            return tensors
        out, n = list(tensors), len(runner.slots)
        keep = 1.0 / (1.0 - self.dropconnect)
        persistent = not torch.compiler.is_compiling()
        for k in range(len(runner.sizes)):
            for i in runner.recurrent:
                t = out[k * n + i]
                masked = t * ((torch.rand(t.shape, device=t.device) >= self.dropconnect) * keep).to(t.dtype)
                if persistent:
                    key = (runner.handle, k, i, t.device, t.dtype)
                    if key not in self._connected:
                        with torch.inference_mode(False):  # (not inference tensors: a later call writes them)
                            self._connected[key] = [torch.empty_like(t), torch.empty_like(t), 0]
                    ring = self._connected[key]
                    buffer, ring[2] = ring[ring[2]], 1 - ring[2]
                    masked = CopyInto.apply(masked, [buffer])
                out[k * n + i] = masked
        return out

    def _overlap(self, x: torch.Tensor) -> bool:
        """Whether a bidirectional layer's two directions are issued together on two streams (pair.py): in eager
        calls on CUDA with overlap_directions on, outside a CUDA-graph capture."""
        return x.is_cuda and self.overlap_directions and not torch.compiler.is_compiling() and \
            not torch.cuda.is_current_stream_capturing()

    def _run(self, x: torch.Tensor, states: list[torch.Tensor], steps: list[torch.Tensor]):
        D = 2 if self.bidirectional else 1
        groups = [(runner, members, self._connect(runner, self._op_tensors(runner, members, names)))
                  for runner, members, names in self._groups]
        train = torch.is_grad_enabled() and (x.requires_grad or any(s.requires_grad for s in states)
                                             or any(p.requires_grad for _, _, ts in groups for p in ts))
        if len(groups) == 1:  # the whole stack in one call
            runner, _, tensors = groups[0]
            out = run_forward(x, states, tensors, runner.handle, train, steps + self._noise(runner, x))
            return out[0], out[1:]
        finals = [[None] * (D * self.num_layers) for _ in self.state_sizes]
        # the beside engines (Runner.engine) in eager calls, a CUDA-graph capture of them included (it must replay
        # the engines its warm-up calls made: no workspace is allocated while capturing); under torch.compile or
        # with overlap_directions off, the serial ones (every multiprocessor)
        eager = self.overlap_directions and not torch.compiler.is_compiling()
        overlap = D == 2 and self._overlap(x)
        layer_in = x
        for k in range(self.num_layers):
            units = []
            for runner, members, tensors in groups[k * D:(k + 1) * D]:
                (_, d), = members
                h0 = [s[k * D + d:k * D + d + 1] for s in states]
                unit_steps = steps + self._noise(runner, layer_in)  # drawn on this stream, before any fork
                units.append((h0, tensors, unit_steps, runner.handle if eager else runner.serial_handle))
            outs = run_pair(layer_in, units, train) if overlap else [
                run_forward(layer_in, h0, tensors, handle, train, unit_steps)
                for h0, tensors, unit_steps, handle in units]
            for d, out in enumerate(outs):
                for j, f in enumerate(out[1:]):
                    finals[j][k * D + d] = f
            outs = [out[0] for out in outs]
            layer_in = torch.cat(outs, dim=2) if D == 2 else outs[0]
            if self.dropout > 0 and k < self.num_layers - 1:
                layer_in = nn.functional.dropout(layer_in, self.dropout, self.training)
        return layer_in, [torch.cat(f, dim=0) for f in finals]


_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> the torch type of inputs and outputs


class LSTM(RNN):
    """torch.nn.LSTM's arguments and behaviour, computed by lstmdsl: the vanilla spec (gate order i, f, z, o
    = torch's i, f, g, o), or LSTMP with proj_size > 0, with torch.nn.LSTM's parameters (layout.py). spec= picks
    another spec with states (h, c), which keeps its own parameters' names."""

    mode = "LSTM"
    _nn_names = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, spec=None, **kw):
        if isinstance(proj_size, int) and isinstance(hidden_size, int) and 0 < hidden_size <= proj_size:
            # (as torch.nn.LSTM refuses it: a projection is to fewer units)
            raise UsageError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                             f"hidden_size={hidden_size}")
        spec = spec or ("lstmp" if proj_size else "vanilla")
        spec = spec if isinstance(spec, Spec) else parse(spec)
        if len(spec.cell.states) != 2:  # (h_n, c_n) would unpack into the wrong tensors, or fail obscurely
            raise UsageError(f"LSTM takes a spec with two states (h, c); '{spec.name}' has "
                             f"{', '.join(s.name for s in spec.cell.states)}: use lstmdsl.torch.RNN(spec, ...) "
                             "(or GRU for PyTorch's GRU)")
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, **kw)


class GRU(RNN):
    """torch.nn.GRU's arguments and behaviour, computed by lstmdsl's gru_torch spec (PyTorch's formulation:
    the reset gate acts after the recurrent product), with torch.nn.GRU's parameters (layout.py)."""

    mode = "GRU"
    _nn_names = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, spec="gru_torch", proj_size: int = 0, **kw):  # (proj_size: the cell's own error)
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, **kw)

