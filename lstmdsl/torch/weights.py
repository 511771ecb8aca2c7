"""What the GEMMs of a torch-driven Engine read and write in place of a layer's parameters: half-precision
copies of the weight stacks (mixed precision; half parameters are read as they are, their vectors from float32
copies), copies with their rows permuted where a stack is stored head by head (WeightStack.interleave), and
the gradients of those put back in the matrices' order. The copies stay at one address per parameter, so CUDA
graphs replay."""

from __future__ import annotations

import torch
from torch import Tensor

from ..layer import interleave_rows

_ELEMENT = {"bf16": torch.bfloat16, "f16": torch.float16}


class GemmWeights:
    def __init__(self, slots, sizes: list[dict[str, int]]):
        self.slots, self.sizes = slots, sizes  # (ops.ParamSlot per parameter of a layer; the layers' sizes)
        self._copies: dict[tuple, Tensor] = {}  # (source's address, shape, device, type) -> its copy
        self._orders: dict[tuple, Tensor] = {}  # (stack, layer, device) -> its row order, where stored head by head
        self._limit = 64  # copies kept before they are all dropped

    def read(self, params: list[Tensor], plan) -> list[Tensor]:
        """The parameters, each weight stack replaced by its half-precision copy where the plan wants one,
        and by a copy with its rows permuted where it is stored head by head; refreshed now."""
        half, stacks = plan.operand_type, {s.name: s for s in plan.storage.stacks}
        out, n = list(params), len(self.slots)
        self._limit = max(self._limit, 4 * len(params) + 64)  # (room for every copy one call makes, and DropConnect's)
        for j, p in enumerate(params):
            slot = self.slots[j % n]
            a = plan.storage.align if slot.kind == "stack" and stacks[slot.name].padded else 1
            if slot.kind == "stack" and half in _ELEMENT and (p.dtype != _ELEMENT[half] or p.shape[1] % a):
                # (rows padded for the tensor cores; a half parameter of the GEMMs' type and width is read as it is)
                out[j] = self._copy((p.data_ptr(), tuple(p.shape), p.device, half), lambda: torch.zeros(
                    (p.shape[0], -(-p.shape[1] // a) * a), device=p.device, dtype=_ELEMENT[half]))
                out[j][:, :p.shape[1]].copy_(p.detach())
            elif slot.kind == "vector" and p.dtype in _ELEMENT.values():  # (the pointwise kernels read float32)
                out[j] = self._copy((p.data_ptr(), tuple(p.shape), p.device, "f32"),
                                    lambda: torch.empty(p.shape, device=p.device, dtype=torch.float32))
                out[j].copy_(p.detach())
            if slot.kind == "stack" and stacks[slot.name].interleave:
                src = out[j].detach()
                dst = self._copy(("ordered", src.data_ptr(), tuple(src.shape), src.dtype), lambda: torch.empty_like(src))
                out[j] = torch.index_select(src, 0, self.order(stacks[slot.name], j // n, p.device), out=dst)
        return out

    def reorder_grads(self, plan, grads: list[Tensor]) -> None:
        """The gradients of stacks stored head by head, which the GEMMs wrote in that order, back in the
        matrices' order (in place)."""
        n = len(self.slots)
        for j, g in enumerate(grads):
            slot = self.slots[j % n]
            if slot.kind == "stack" and plan.storage.stack(slot.name).interleave:
                order = self.order(plan.storage.stack(slot.name), j // n, g.device)
                g.copy_(torch.empty_like(g).index_copy_(0, order, g))

    def order(self, stack, k: int, device) -> Tensor:
        """Layer k's row order of a stack stored head by head (lstmdsl.layer.interleave_rows), on device."""
        key = (stack.name, k, device)
        if key not in self._orders:
            self._orders[key] = torch.from_numpy(interleave_rows(
                len(stack.matrices), self.sizes[k][stack.rows[0]], self.sizes[k][stack.interleave])).to(device)
        return self._orders[key]

    def _copy(self, key: tuple, make) -> Tensor:
        if key not in self._copies:
            if len(self._copies) > self._limit:  # (stale copies: of parameters no longer read)
                self._copies.clear()
            with torch.inference_mode(False):  # (made in inference mode, a later training call could not write it)
                self._copies[key] = make()
        return self._copies[key]


class GradBuffers:
    """The gradient buffers a Runner's backward writes: at fixed addresses (the backward's CUDA graph writes
    them), views of one flat tensor per element type, so zeroing them and copying them out are one operation
    per type (the zeroing a memset, not torch's zero_, a fill kernel: probes/module_host_h200.txt). The weight
    stacks' gradients have the plan's gradient type (half for half parameters: Plan.grad_type), the others
    float32 (float64 in float64); each starts 16-byte aligned (_span); copied out in the parameters' type."""

    def __init__(self, slots):
        self.slots = slots
        self._made: dict[tuple, tuple] = {}  # (device, types) -> (flats by type, views, types)
        self.flats: dict[torch.dtype, Tensor] = {}  # the last zeroed() call's, which copied_out() copies
        self.types: tuple = ()  # (each parameter's gradient type, in that call)

    def zeroed(self, params: list[Tensor], plan, values: torch.dtype, stream: int) -> list[Tensor]:
        """The buffers for params, zeroed on `stream`; values: the type of the values (ops.value_type)."""
        from ..runtime import device

        stacks = _ELEMENT[plan.grad_type] if plan.grad_type else values
        types = tuple(stacks if self.slots[j % len(self.slots)].kind == "stack" else values for j in range(len(params)))
        key = (params[0].device, types)
        if key not in self._made:
            flats = {t: torch.empty(sum(_span(p) for p, u in zip(params, types) if u == t), device=params[0].device,
                                    dtype=t) for t in set(types)}
            self._made[key] = (flats, self._views(flats, params, types), types)
        self.flats, views, self.types = self._made[key]
        for flat in self.flats.values():
            device.zero(flat.data_ptr(), flat.numel() * flat.element_size(), stream)
        return views

    def copied_out(self, params: list[Tensor], grads: list[Tensor], views: bool) -> list[Tensor]:
        """Copies of the gradients in the parameters' type: views of one copy per flat buffer where views (eager
        autograd takes them; a custom op's outputs must not alias each other), else one tensor each."""
        if not views:
            return [g.to(p.dtype, copy=True) for g, p in zip(grads, params)]
        copies = {t: f.to(params[0].dtype, copy=True) for t, f in self.flats.items()}
        return self._views(copies, params, self.types)

    @staticmethod
    def _views(flats: dict, params: list[Tensor], types: tuple) -> list[Tensor]:
        start = dict.fromkeys(flats, 0)
        out = []
        for p, t in zip(params, types):
            out.append(flats[t][start[t]:start[t] + p.numel()].view(p.shape))
            start[t] += _span(p)
        return out


def _span(p: Tensor) -> int:
    """The elements a gradient takes in its flat buffer: p's, rounded up to 8, so each starts 16-byte aligned (or
    more) as cuBLAS's fastest kernels want."""
    return -(-p.numel() // 8) * 8


class CopyInto(torch.autograd.Function):
    """value copied into a buffer (handed over in a list, so it is no input of the function and stays a
    plain tensor), returned as a view of the buffer; the gradient passes straight to value (DropConnect's
    masked weight stacks, at one address per call in turn: see modules.RNN._connect)."""

    @staticmethod
    def forward(ctx, value, holder):
        buffer, = holder
        buffer.copy_(value)
        return buffer.view(buffer.shape)

    @staticmethod
    def backward(ctx, grad):
        return grad, None
