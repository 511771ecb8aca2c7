"""PyTorch adapter: a torch.nn.Module whose forward and backward run lstmdsl's generated kernels.

    from lstmdsl.torch_adapter import LSTMDSL
    rnn = LSTMDSL("peephole", input_size=32, hidden_size=64, num_layers=2)   # on the current CUDA device
    y, state = rnn(x)             # x: CUDA tensor [T, B, 32]; state: {name: [L, B, size]}
    loss(y).backward()            # gradients of x, the initial state and every parameter
    torch.optim.Adam(rnn.parameters(), lr=1e-3).step()

The module's parameters are torch Parameters that share memory with the layer's CuPy arrays (DLPack, no
copies), so torch optimizers update the arrays the kernels read. Inputs and outputs cross through
DLPack too, and the kernels run on torch's current CUDA stream. Limits: the module stays on the device
it was created on (do not .to() it elsewhere). The layer keeps the activations of its latest forward
only: a backward() through an older forward() (after another forward() of the same module, as
torch.autograd.gradcheck does) first runs that forward again from its saved inputs, with the
parameters as they are at that moment.
"""

from __future__ import annotations

import contextlib

import torch

from . import api
from .errors import UsageError

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


@contextlib.contextmanager
def _torch_stream():
    """Make torch's current CUDA stream CuPy's current stream."""
    import cupy

    current = torch.cuda.current_stream()
    try:
        stream = cupy.cuda.Stream.from_external(current)
    except (AttributeError, TypeError):  # older CuPy, or a torch stream without the stream protocol
        stream = cupy.cuda.ExternalStream(current.cuda_stream)
    with stream:
        yield


def _cupy(t: torch.Tensor):
    import cupy

    return cupy.from_dlpack(t.detach().contiguous())


class _Run(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x, *rest):
        layer = module.layer
        states = rest[:len(layer.cell.states)]
        with _torch_stream():
            y, final = layer.forward(_cupy(x), {s.name: _cupy(t) for s, t in zip(layer.cell.states, states)})
        module._generation += 1
        ctx.module, ctx.generation = module, module._generation
        ctx.save_for_backward(x, *states)
        return (torch.from_dlpack(y),) + tuple(torch.from_dlpack(final[s.name]) for s in layer.cell.states)

    @staticmethod
    def backward(ctx, dy, *dfinal):
        module = ctx.module
        layer = module.layer
        with _torch_stream():
            if ctx.generation != module._generation:  # the layer holds a newer forward's activations
                x, *states = ctx.saved_tensors
                layer.forward(_cupy(x), {s.name: _cupy(t) for s, t in zip(layer.cell.states, states)})
                module._generation += 1
                ctx.generation = module._generation
            layer.zero_grad()
            shapes = layer.state_shapes(dy.shape[1])
            dstate = {s.name: _cupy(d if d is not None else dy.new_zeros(shapes[s.name]))
                      for s, d in zip(layer.cell.states, dfinal)}
            dx = layer.backward(_cupy(dy), dstate)
            d0 = layer.initial_state_grads()
            grads = layer.grads()
        return ((None, torch.from_dlpack(dx)) + tuple(torch.from_dlpack(d0[s.name]) for s in layer.cell.states)
                + tuple(torch.from_dlpack(grads[name]).clone() for name in module._names))


class LSTMDSL(torch.nn.Module):
    """A compiled spec as a torch module (CUDA backend), for training inside an ordinary torch loop."""

    def __init__(self, spec, input_size: int, hidden_size: int, num_layers: int = 1, *, proj_size=None,
                 schedule=None, dtype: torch.dtype = torch.float32, seed: int = 0, forget_bias=None):
        super().__init__()
        if dtype not in _DTYPES:
            raise UsageError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.layer = api.compile(spec, input_size, hidden_size, num_layers, proj_size=proj_size, backend="cuda",
                                 dtype=_DTYPES[dtype], schedule=schedule, seed=seed, forget_bias=forget_bias)
        self._names = list(self.layer.parameters())
        self._generation = 0
        for name, array in self.layer.parameters().items():  # shared memory: the kernels read these
            self.register_parameter(name.replace(".", "_"), torch.nn.Parameter(torch.from_dlpack(array)))

    def forward(self, x: torch.Tensor, state: dict | None = None):
        """x [T, B, input] -> (y [T, B, output], final state {name: [L, B, size]})."""
        if not isinstance(x, torch.Tensor) or not x.is_cuda or x.dim() != 3:
            raise UsageError("x must be a 3-D CUDA tensor [T, B, input_size]")
        shapes = self.layer.state_shapes(x.shape[1])
        if state is None:
            state = {n: x.new_zeros(s) for n, s in shapes.items()}
        if not isinstance(state, dict) or set(state) != set(shapes):
            raise UsageError(f"state must be a dict with the keys {sorted(shapes)}")
        names = [s.name for s in self.layer.cell.states]
        params = [getattr(self, n.replace(".", "_")) for n in self._names]
        y, *final = _Run.apply(self, x, *(state[n] for n in names), *params)
        return y, dict(zip(names, final))
