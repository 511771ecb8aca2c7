"""Variable-length batches for lstmdsl.torch's modules, both as the length mask [T, B, 1] the ops take (1 while
step t is inside sequence b: ops.py, masks.py): a PackedSequence's rows placed in the padded layout (packing), or a
padded batch's own lengths (length_mask: the module's `lengths=`, which spares torch's packing and unpacking)."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn

from ..errors import UsageError


def packing(packed: nn.utils.rnn.PackedSequence, cached) -> tuple[tuple, tuple[torch.Tensor, torch.Tensor]]:
    """(the cache's new entry, (rows, mask)) of a packed batch, on its device: rows [N] the row of each packed entry
    in the padded [T * B] layout (packed order: longest sequence first, as cuDNN runs a packed batch), and the
    length mask [T, B, 1]. Unpacking and repacking are then one index_copy and one index_select, where torch's
    pad/pack functions loop over the steps on the host and read the indices back from the device. Built from
    batch_sizes (on the CPU), copied without blocking the host; `cached`, the entry of the module's last packed
    batch (or None), is returned as it is where the batch_sizes, device and type are the same."""
    data, sizes = packed.data, packed.batch_sizes
    if not isinstance(sizes, torch.Tensor) or sizes.device.type != "cpu" or sizes.dtype != torch.int64:
        raise UsageError(f"the PackedSequence's batch_sizes must be an int64 tensor on the CPU, got "
                         f"{sizes.dtype if isinstance(sizes, torch.Tensor) else type(sizes).__name__}"
                         f"{' on ' + str(sizes.device) if isinstance(sizes, torch.Tensor) else ''}: build it with "
                         "torch.nn.utils.rnn.pack_padded_sequence")
    key = (tuple(sizes.shape), sizes.numpy().tobytes(), data.device, data.dtype)  # (with the shape: [[2]] is no [2])
    if cached is not None and cached[0] == key and len(cached[1][0]) == len(data):
        return cached, cached[1]
    if (sizes.dim() != 1 or len(sizes) == 0 or int(sizes.sum()) != len(data) or int(sizes.min()) < 1
            or bool((sizes[1:] > sizes[:-1]).any())):  # (a hand-made one: torch's own are always right)
        raise UsageError(f"the PackedSequence's batch_sizes {sizes.tolist()} do not describe its data "
                         f"({len(data)} rows): build it with torch.nn.utils.rnn.pack_padded_sequence")
    T, B = len(sizes), int(sizes[0])
    starts = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(T), sizes)
    rows = _to(step * B + torch.arange(len(step)) - torch.repeat_interleave(starts, sizes), data.device)
    mask = torch.zeros(T * B, device=data.device, dtype=data.dtype).index_fill_(0, rows, 1.0).view(T, B, 1)
    return (key, (rows, mask)), (rows, mask)


def length_mask(lengths, T: int, B: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The length mask [T, B, 1] of a padded batch of B sequences of T steps: `lengths` is what
    torch.nn.utils.rnn.pack_padded_sequence takes, B integers in 1..T as a list or a tensor on the CPU (checked on
    the host, so that a bad length is an error here and not wrong numbers, without waiting for the device; numpy's
    integers too), and the mask is made there and copied without blocking the host."""
    if isinstance(lengths, torch.Tensor):
        if lengths.device.type != "cpu":
            raise UsageError(f"lengths is on {lengths.device}; give it on the CPU, as pack_padded_sequence takes it "
                             "(its values are checked on the host)")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise UsageError(f"lengths must hold integers, got {lengths.dtype}")
        values = lengths.to(torch.int64)
    else:
        try:
            items = list(lengths)
        except TypeError:
            raise UsageError(f"lengths must be a list or a CPU tensor of integers, got {type(lengths).__name__}") \
                from None
        try:  # (Python's and numpy's integers, as pack_padded_sequence takes them; not bools)
            values = torch.tensor([operator.index(v) for v in items if not isinstance(v, (bool, np.bool_))],
                                  dtype=torch.int64)
        except TypeError:
            values = None
        except (OverflowError, RuntimeError, ValueError):  # (past int64: "Overflow when unpacking long")
            raise UsageError(f"lengths must be in 1..{T} (the input's steps), got {items!r}") from None
        if values is None or len(values) != len(items):
            raise UsageError(f"lengths must hold integers, got {items!r}")
    if tuple(values.shape) != (B,):
        raise UsageError(f"lengths has shape {list(values.shape)}; the input is a batch of {B} sequences "
                         f"(one length each)")
    if torch.compiler.is_compiling():  # (checked where the graph runs: a host check here would break the graph)
        torch._assert_async(((values >= 1) & (values <= T)).all(), f"lengths must be in 1..{T} (the input's steps)")
    elif B and (int(values.min()) < 1 or int(values.max()) > T):
        raise UsageError(f"lengths must be in 1..{T} (the input's steps), got {int(values.min())}.."
                         f"{int(values.max())}")
    mask = (torch.arange(T)[:, None] < values[None, :]).to(dtype).unsqueeze(2)
    return _to(mask, device)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t (on the CPU) on `device`, copied from pinned memory without blocking the host on CUDA (under torch.compile
    a plain copy: pinning is not traced)."""
    if device.type == "cuda" and not torch.compiler.is_compiling():
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
