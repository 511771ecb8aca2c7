"""lstmdsl.torch: any spec as a drop-in peer of torch.nn.LSTM and torch.nn.GRU.

    from lstmdsl.torch import LSTM                 # instead of torch.nn.LSTM: the same arguments
    rnn = LSTM(32, 64, num_layers=2, batch_first=True).cuda()
    y, (h_n, c_n) = rnn(x, (h0, c0))               # shapes exactly as torch.nn.LSTM's
    rnn = lstmdsl.torch.RNN("peephole", 32, 64)    # any spec: the states come back in its order

Forward and backward run as PyTorch custom operators (lstmdsl/torch/ops.py): on CUDA tensors the generated
kernels, on CPU tensors the numpy reference (slowly; a warning says so once). torch.compile sees one
opaque op per call (no graph break); CUDA graphs that torch captures take lstmdsl's work in. Parameters
are ordinary torch Parameters — LSTM's and GRU's torch.nn's own (weight_ih_l0, weight_hh_l0, bias_ih_l0,
bias_hh_l0, weight_hr_l0: layout.py), another spec's one per weight stack (weight_ih_l0 holds the matrices
applied to the input, weight_hh_l0 those applied to h) and one per vector (b_i_l0, ...) — so optimizers, state
dicts, .to(), DDP and autocast treat the module like any other.

Layers and directions: a stack runs in one op call; with dropout between layers, or bidirectional, each
layer and direction is its own call (dropout in between, the reverse direction reading its sequence
backwards, on a side stream: pair.py issues the two directions' launches together). PackedSequence input
runs each sequence to its own end. Mixed precision: under torch.autocast on CUDA (or on a bfloat16/float16
input, or with schedule="precision bf16") the GEMMs run in half precision on half copies of the float32
parameters, the state and gradients in float32. Half-precision parameters (.half(), .bfloat16()): the GEMMs
read them as they are, inputs, outputs and gradients are of their type, the state float32 inside.
"""

from .interop import from_torch, to_torch
from .modules import GRU, LSTM, RNN

__all__ = ["GRU", "LSTM", "RNN", "from_torch", "to_torch"]
