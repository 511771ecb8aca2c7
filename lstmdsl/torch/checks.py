"""What lstmdsl's ops check of the tensors they are given before anything reads them: shapes (the kernels trust
them: a wrong one would read past a tensor's end), element types and devices. The modules build what they hand
the ops; these checks are for everything else that calls torch.ops.lstmdsl.* (and a tensor put in a module's
place by hand)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UsageError
from ..ir import ROW

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_HALF = {torch.bfloat16: ("bf16", "bf16"), torch.float16: ("fp16", "f16")}  # input type -> precision, element type


def value_type(x: Tensor) -> torch.dtype:
    """The type of the values beside an input x (states in and out, masks, gradient buffers): x's own, float32
    beside a half-precision x."""
    return torch.float32 if x.dtype in _HALF else x.dtype


def check_inputs(r, x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor]) -> str:
    """The element type of the values: a half-precision x beside float32 parameters (mixed precision) or beside
    parameters of its own type (half parameters, .half() or .bfloat16()) computes with float32 values. The
    shapes are checked first: the kernels trust them (a wrong one would read past a tensor's end)."""
    if x.dim() != 3 or x.shape[2] != r.input_size:
        raise UsageError(f"the input has shape {list(x.shape)}; expected [T, B, {r.input_size}]")
    if list(map(Tensor.size, params)) != r.param_shapes:  # (a call's host time: map, not a generator)
        n = len(r.slots)
        for i, (p, s) in enumerate(zip(params, r.param_shapes)):
            if p.shape != s:
                raise UsageError(f"parameter {r.slots[i % n].name} of layer {i // n} has shape {list(p.shape)}; "
                                 f"expected {list(s)}")
        raise UsageError(f"expected {len(r.param_shapes)} parameter tensors, got {len(params)}")
    _steps(r, x, steps)
    if h0:
        shapes = r.state_shapes(x.shape[1])
        for name, h, s in zip(r.state_names, h0, shapes):
            if h.shape != s:
                raise UsageError(f"the initial state {name} has shape {list(h.shape)}; expected {list(s)}")
        if len(h0) != len(shapes):
            raise UsageError(f"expected {len(shapes)} initial states, got {len(h0)}")
    pdtype = x.dtype if x.dtype not in _HALF else torch.float32
    if pdtype not in _DTYPES or any(p.dtype != pdtype for p in params) and any(p.dtype != x.dtype for p in params):
        raise UsageError(f"lstmdsl computes in float32 or float64 with the input and every parameter of one "
                         f"type, or in bfloat16 or float16 with a half-precision input beside float32 parameters "
                         f"(mixed precision) or beside parameters of its own type; got input {x.dtype} and "
                         f"parameters {sorted({str(p.dtype) for p in params})}")
    if any(p.device != x.device for p in params):
        raise UsageError(f"the input is on {x.device} but parameters are on "
                         f"{sorted({str(p.device) for p in params if p.device != x.device})}")
    if x.is_cuda and x.shape[1] > 65535:
        raise UsageError(f"the CUDA backend takes at most 65535 sequences per call, got {x.shape[1]}; split the batch")
    return _DTYPES[pdtype]


def _steps(r, x: Tensor, steps: list[Tensor]) -> None:
    """The per-step inputs: the length mask [T, B, 1], then each layer's regulariser masks [T, B, n]."""
    if not steps and not r.noise:
        return
    T, B = x.shape[:2]
    mask, noise = r.split_steps(steps)
    if mask is not None and mask.shape != (T, B, 1):
        raise UsageError(f"the length mask has shape {list(mask.shape)}; expected [{T}, {B}, 1]")
    for k, bound in enumerate(r.sizes):
        for z in r.noise:
            want = (T, B, 1 if z.size == ROW else bound[z.size])
            if noise[f"l{k}.{z.name}"].shape != want:
                raise UsageError(f"the mask of {z.name} in layer {k} has shape {list(noise[f'l{k}.{z.name}'].shape)}; "
                                 f"expected {list(want)}")


def check_gradients(r, x: Tensor, dy: Tensor, dhn: list[Tensor | None]) -> None:
    """The backward's incoming gradients: dy as the forward's y, each given final state's as the state."""
    T, B = x.shape[:2]
    if dy.shape != (T, B, r.output_size):
        raise UsageError(f"the output's gradient has shape {list(dy.shape)}; expected [{T}, {B}, {r.output_size}]")
    for name, d, s in zip(r.state_names, dhn, r.state_shapes(B)):
        if d is not None and d.shape != s:
            raise UsageError(f"the final state {name}'s gradient has shape {list(d.shape)}; expected {list(s)}")


def initial_states(self, hx, x: Tensor, batched: bool, given: torch.dtype) -> list[Tensor]:
    """A module's (self's) initial states in the spec's order, each [D * L, B, size]; none for zeros (hx None).
    given: the caller's input type (x's before autocast and mixed precision converted it)."""
    names = list(self.state_sizes)
    D = 2 if self.bidirectional else 1
    B = x.shape[1]
    if hx is None:  # zeros, which the runtime writes itself
        return []
    if isinstance(hx, dict):
        if set(hx) != set(names):
            raise UsageError(f"the initial state dict must have the keys {names}, got {sorted(hx)}")
        hx = [hx[n] for n in names]
    elif isinstance(hx, Tensor):
        hx = [hx]
    elif not isinstance(hx, (tuple, list)):
        raise UsageError(f"the initial state must be a tensor, a tuple of tensors ({', '.join(names)}) or a dict, "
                         f"got {type(hx).__name__}")
    hx = list(hx)
    if len(hx) != len(names) or not all(isinstance(h, Tensor) for h in hx):
        raise UsageError(f"the initial state must be {len(names)} tensor(s), in the order {tuple(names)}")
    types = {x.dtype, value_type(x)}  # (and under autocast, which casts states too, its types)
    types |= {torch.float32, *_HALF} if torch.is_autocast_enabled(x.device.type) else set()
    out = []
    for n, h in zip(names, hx):
        want = (D * self.num_layers, *([B] if batched else []), self.state_sizes[n])
        if tuple(h.shape) != want:
            raise UsageError(f"initial state '{n}' has shape {list(h.shape)}, expected {list(want)}")
        if h.dtype not in types or h.device != x.device:  # (neither rounded nor moved silently)
            raise UsageError(f"initial state '{n}' is {h.dtype} on {h.device}, but the input is {given} on "
                             f"{x.device}; convert or move one of them")
        out.append((h if batched else h.unsqueeze(1)).to(value_type(x)))
    return out
