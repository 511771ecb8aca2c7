"""torch's current CUDA stream and device as lstmdsl's ops see them (lstmdsl/torch/ops.py)."""

from __future__ import annotations

import torch
from torch import Tensor

_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # the handle, without a Stream object


def current_stream(x: Tensor) -> int:
    if _RAW_STREAM is not None:
        return _RAW_STREAM(x.device.index)
    return torch.cuda.current_stream(x.device).cuda_stream


class on_device:
    """x's CUDA device as the current one for the block (a no-op when it already is)."""

    def __init__(self, x: Tensor):
        self.index = x.device.index
        self.saved = None

    def __enter__(self):
        current = torch.cuda.current_device()
        if current != self.index:
            self.saved = current
            torch.cuda.set_device(self.index)

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.cuda.set_device(self.saved)
