"""torch.nn's own parameters for the modules that stand in for torch.nn.LSTM and torch.nn.GRU (LSTM and GRU on the
vanilla, lstmp and gru_torch cells): weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} and weight_hr_l{k},
registered in nn.LSTM's order and drawn as it draws them, so that one seed, optimizer, weight decay and gradient
clipping train the same model as torch.nn's (a review, 2026-12-08: with one bias a gate, plain SGD moved the gates'
effective biases at half nn.LSTM's rate, and the outputs of five steps were 0.39 apart). The cells keep one bias a
gate (the GRU's candidate two, b_in and b_hn: torch's b_hn sits inside r * (W_hn h + b_hn)); the ops take those,
the sums of torch's two written by one add into a buffer of the module's own (GateBiases), at the same address
every call so that the runtime's CUDA graphs replay; autograd gives each of torch's two the gate's gradient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .names import GATES, suffix


@dataclass(frozen=True)
class NNLayout:
    """A cell's parameters under torch.nn's names: `gates` in torch's order (names.GATES), `hidden` units each;
    `vectors`: the cell's bias vectors in the ops' order, each (its name, the gate of bias_ih it takes or -1,
    the gate of bias_hh it takes or -1)."""

    gates: tuple[str, ...]
    hidden: int
    vectors: tuple[tuple[str, int, int], ...]

    @staticmethod
    def of(kind: str, hidden: int, vector_names: list[str]) -> NNLayout:
        gates = GATES[kind]
        vectors = []
        for name in vector_names:
            if name == "b_in":
                vectors.append((name, gates.index("n"), -1))
            elif name == "b_hn":
                vectors.append((name, -1, gates.index("n")))
            else:
                j = gates.index(name[2:])
                vectors.append((name, j, j))
        return NNLayout(gates, hidden, tuple(vectors))

    @staticmethod
    def name(slot: str) -> str:
        """torch.nn's name of a weight stack (before the layer's suffix): LSTMP's projection P is weight_hr."""
        return "weight_hr" if slot == "P" else slot

    @property
    def summed(self) -> bool:
        """Whether each vector is the sum of torch's two biases of its own gate, in gate order (the LSTM's: one add
        makes them all, one cat takes their gradients back)."""
        return len(self.vectors) == len(self.gates) and all(i == h == j for j, (_, i, h) in enumerate(self.vectors))

    def width(self) -> int:
        return len(self.gates) * self.hidden

    def values(self, ih: Tensor, hh: Tensor, holder: dict, key) -> list[Tensor]:
        """The cell's bias vectors (in self.vectors' order) from torch's two biases of one layer and direction:
        in eager calls views of a buffer kept in holder[key], written now; under torch.compile plain tensors."""
        for n, t in (("bias_ih", ih), ("bias_hh", hh)):
            if tuple(t.shape) != (self.width(),):
                raise UsageError(f"{n} has shape {list(t.shape)}; this module's {n} is [{self.width()}] "
                                 f"({len(self.gates)} gates of {self.hidden})")
        if torch.compiler.is_compiling():
            H = self.hidden
            return [(ih[i * H:(i + 1) * H] if i >= 0 else 0) + (hh[h * H:(h + 1) * H] if h >= 0 else 0)
                    for _, i, h in self.vectors]
        # one buffer per pair of sources (a review, 2026-12-08: with one per layer, a forward on other parameters,
        # torch.func.functional_call's, overwrote the sums a pending backward re-reads, and its gradients were wrong),
        # per device and type; not an inference tensor (made in inference mode, it would refuse every later
        # backward), and of the parameters' device whatever a pickle's map_location did to the dict
        key = (key, ih.device, ih.dtype, ih.data_ptr(), hh.data_ptr())
        buffer = holder.get(key)
        if buffer is None or buffer.device != ih.device or buffer.dtype != ih.dtype or buffer.is_inference():
            if len(holder) > 64:  # (buffers of parameters no longer read; a pending backward keeps its own)
                holder.clear()
            with torch.inference_mode(False):
                buffer = holder[key] = torch.empty(len(self.vectors) * self.hidden, dtype=ih.dtype, device=ih.device)
        return list(GateBiases.apply(self, ih, hh, buffer))

    def parameters(self, runner, j: int, sfx: str, bias: bool) -> list[tuple[str, tuple[int, ...]]]:
        """Member j's parameters of a runner (its layer and direction: suffix sfx) as torch.nn registers them,
        (name, shape) in its order: weight_ih, weight_hh, bias_ih, bias_hh (with bias), weight_hr (LSTMP)."""
        stacks = {s.name: runner.shape(s, j) for s in runner.slots if s.kind == "stack"}
        out = [("weight_ih" + sfx, stacks["weight_ih"]), ("weight_hh" + sfx, stacks["weight_hh"])]
        out += [("bias_ih" + sfx, (self.width(),)), ("bias_hh" + sfx, (self.width(),))] if bias else []
        return out + ([("weight_hr" + sfx, stacks["P"])] if "P" in stacks else [])

    def split(self, vectors: list) -> tuple[list, list]:
        """Given values of the cell's bias vectors (numpy arrays), torch's two: each vector in bias_ih where it
        takes bias_ih's gate, else in bias_hh, the rest zero (gate by gate, as lists of arrays)."""
        ih, hh = [None] * len(self.gates), [None] * len(self.gates)
        for (_, i, h), v in zip(self.vectors, vectors):
            if i >= 0:
                ih[i] = v
            else:
                hh[h] = v
        return ih, hh


def reset_nn(self, rng, bound: float, forget_bias) -> None:
    """A module's (self's) reset_parameters under torch.nn's names: as torch.nn.LSTM draws them (each parameter in
    turn, uniform in +-bound), or the spec's values from rng (each gate's bias in bias_ih, the GRU's b_hn in
    bias_hh, the rest zero); forget_bias in bias_ih's forget gate, bias_hh's zero there."""
    H = self.hidden_size
    with torch.no_grad():
        if rng is None:
            for p in self.parameters():
                p.uniform_(-bound, bound)
        for runner, members, names in self._groups:
            dtype = np.float64 if self._tensors(names[:1])[0].dtype == torch.float64 else np.float32
            values = runner.initial(rng, dtype, forget_bias) if rng is not None else None
            n = len(runner.slots)
            for j, (k, d) in enumerate(members):
                sfx = suffix(k, d)
                if values is not None:
                    for slot, name, v in zip(runner.slots, names[j * n:(j + 1) * n], values[j]):
                        if slot.kind == "stack":
                            getattr(self, name).copy_(torch.from_numpy(v))
                    if self.bias:
                        for part, name in zip(self._nn.split([v for s, v in zip(runner.slots, values[j])
                                                              if s.kind == "vector"]), ("bias_ih", "bias_hh")):
                            t = getattr(self, name + sfx)
                            for g, v in enumerate(part):
                                t[g * H:(g + 1) * H] = torch.from_numpy(v) if v is not None else 0.0
                if forget_bias is not None and self.bias and "f" in self._nn.gates:
                    f = self._nn.gates.index("f")
                    getattr(self, "bias_ih" + sfx)[f * H:(f + 1) * H] = forget_bias
                    getattr(self, "bias_hh" + sfx)[f * H:(f + 1) * H] = 0.0
        if not self.bias:  # (the zero vectors: only those, not a weight wrapper's buffers, pruning's masks)
            for runner, _, names in self._groups:
                vectors = [s.kind == "vector" for s in runner.slots]
                for j, name in enumerate(names):
                    if vectors[j % len(vectors)]:
                        getattr(self, name).zero_()


class GateBiases(torch.autograd.Function):
    """apply(layout, bias_ih, bias_hh, buffer) -> the cell's bias vectors, views of `buffer` (written through
    its .data: torch's in-place check is on the two parameters, saved here, not on the buffer, which every call
    writes again, so two forwards before one backward stay legal); each of the two gets the gradients of the
    vectors that take it."""

    @staticmethod
    def forward(ctx, layout: NNLayout, ih: Tensor, hh: Tensor, buffer: Tensor):
        H, out = layout.hidden, buffer.data
        with torch.no_grad():
            if layout.summed:
                torch.add(ih, hh, out=out)  # (the LSTM: one add)
            else:
                for j, (_, i, h) in enumerate(layout.vectors):
                    dst = out[j * H:(j + 1) * H]
                    if i >= 0 and h >= 0:
                        torch.add(ih[i * H:(i + 1) * H], hh[h * H:(h + 1) * H], out=dst)
                    else:
                        dst.copy_(ih[i * H:(i + 1) * H] if i >= 0 else hh[h * H:(h + 1) * H])
        ctx.layout = layout
        ctx.save_for_backward(ih, hh)  # (for torch's check that neither changed before the backward)
        return tuple(buffer[j * H:(j + 1) * H] for j in range(len(layout.vectors)))

    @staticmethod
    def backward(ctx, *grads):
        layout, H = ctx.layout, ctx.layout.hidden
        ih, hh = ctx.saved_tensors
        if layout.summed and all(g is not None for g in grads):
            dih = torch.cat(grads)  # (the LSTM; two tensors, not one: an optimizer's in-place work on one
            return None, dih, dih.clone(), None  # parameter's gradient must not reach the other's)
        dih, dhh = torch.zeros_like(ih), torch.zeros_like(hh)
        for (_, i, h), g in zip(layout.vectors, grads):
            if g is None:
                continue
            if i >= 0:
                dih[i * H:(i + 1) * H] += g
            if h >= 0:
                dhh[h * H:(h + 1) * H] += g
        return None, dih, dhh, None
