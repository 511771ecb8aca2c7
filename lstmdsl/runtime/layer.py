"""CudaLayer: the Layer API on the GPU, with CuPy arrays (float32 or float64, C-contiguous).

Parameters live in stacks: the matrices applied to one operand are rows of one [sum of rows, cols] array
(the plan's WeightStack; parameters() hands out views), so a fused GEMM reads them as one matrix and
one G^T V updates them. The layer owns its arrays and hands their addresses to the Engine.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import BackendUnavailable, UsageError
from ..layer import Layer, init_params
from ..program import build_program
from ..schedule import Schedule
from ..spec import Spec
from . import device
from .device import check_available, cupy
from .executor import Binding, Engine


class CudaLayer(Layer):
    backend = "cuda"
    array_name = "CuPy array"

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str, seed: int,
                 forget_bias: float | None = None):
        check_available()
        super().__init__(spec, sizes, schedule, dtype)
        for s, u in zip(self.cell.states, self.cell.updates):
            if self.cell.nodes[u].op in ("param", "const"):
                raise BackendUnavailable(f"state '{s.name}' is updated to a parameter or a constant, which the "
                                         "CUDA backend does not support yet")
        if self.cell.nodes[self.cell.output].op in ("param", "const"):
            raise BackendUnavailable("the output is a parameter or a constant, which the CUDA backend does not "
                                     "support yet")
        self.program = build_program(self.cell, schedule, dtype)
        self.engine = Engine(self.program, sizes)
        stacks = self.program.plan.storage.stacks
        rng = np.random.default_rng(seed)
        self._stacks, self._grad_stacks = [], []
        for bound in sizes:
            host = init_params(self.cell, bound, rng, self.dtype, forget_bias)  # the same values as the reference
            params, grads, pstack, gstack = {}, {}, {}, {}
            for s in stacks:
                pstack[s.name] = cupy.asarray(np.concatenate([host[m] for m in s.matrices]))
                gstack[s.name] = cupy.zeros_like(pstack[s.name])
                row = 0
                for m in s.matrices:
                    rows = host[m].shape[0]
                    params[m], grads[m] = pstack[s.name][row:row + rows], gstack[s.name][row:row + rows]
                    row += rows
            for p in self.cell.params:
                if p.kind == "vector":
                    params[p.name] = cupy.asarray(host[p.name])
                    grads[p.name] = cupy.zeros_like(params[p.name])
            self._params.append({p.name: params[p.name] for p in self.cell.params})
            self._grads.append({p.name: grads[p.name] for p in self.cell.params})
            self._stacks.append(pstack)
            self._grad_stacks.append(gstack)
        self._bindings = [self._binding(k) for k in range(self.num_layers)]
        self._shape = None

    def _binding(self, k: int) -> Binding:
        vectors = [p.name for p in self.cell.params if p.kind == "vector"]
        return Binding({n: a.data.ptr for n, a in self._stacks[k].items()},
                       {n: a.data.ptr for n, a in self._grad_stacks[k].items()},
                       {n: self._params[k][n].data.ptr for n in vectors},
                       {n: self._grads[k][n].data.ptr for n in vectors})

    @property
    def use_graphs(self) -> bool:
        return self.engine.use_graphs

    @use_graphs.setter
    def use_graphs(self, value: bool) -> None:
        self.engine.use_graphs = value

    # -- the checks of CuPy arrays
    def _check_kind(self, what: str, a) -> None:
        if not isinstance(a, cupy.ndarray):
            raise UsageError(f"{what} must be a CuPy array on the cuda backend, got {type(a).__name__} "
                             "(use cupy.asarray)")

    def _check_layout(self, what: str, a) -> None:
        if not a.flags.c_contiguous:
            raise UsageError(f"{what} must be C-contiguous (use cupy.ascontiguousarray)")
        if a.device.id != device.current_device():
            raise UsageError(f"{what} is on device {a.device.id}, the layer on device {device.current_device()}")

    def _zeros(self, shape):
        return cupy.zeros(shape, self.dtype)

    # -- forward and backward
    def forward(self, x, state: dict | None = None, *, train: bool = True):
        """x [T, B, input] (CuPy, the layer's dtype) -> (y [T, B, output], final state {name: [L, B, size]})."""
        T, B, state = self._check_input(x, state)
        if B > 65535:  # the kernels put the batch on the grid's y dimension
            raise UsageError(f"the CUDA backend takes at most 65535 sequences per call, got {B}; split the batch")
        y = cupy.empty((T, B, self.output_size), self.dtype)
        final = {n: cupy.empty(s, self.dtype) for n, s in self.state_shapes(B).items()}
        self.engine.forward(T, B, train, self._bindings, x.data.ptr, {n: a.data.ptr for n, a in state.items()},
                            y.data.ptr, {n: a.data.ptr for n, a in final.items()}, device.current_stream())
        self._shape = (T, B) if train else self._shape
        return y, final

    def backward(self, dy, dstate: dict | None = None):
        """dL/dy [T, B, output] (and optionally dL/d final state) -> dL/dx [T, B, input]; adds parameter
        gradients into grads(); initial_state_grads() holds dL/d initial state."""
        if self._shape is None or self.engine.tape is None:
            raise UsageError("backward() needs a forward() with train=True first")
        dstate = self._check_gradient(dy, dstate, self._shape)
        T, B = self._shape
        dx = cupy.empty((T, B, self.input_size), self.dtype)
        d0 = {n: cupy.empty(s, self.dtype) for n, s in self.state_shapes(B).items()}
        self.engine.backward(self._bindings, dy.data.ptr, {n: a.data.ptr for n, a in dstate.items()}, dx.data.ptr,
                             {n: a.data.ptr for n, a in d0.items()}, device.current_stream())
        self._initial_state_grads = d0
        return dx

    def free_workspaces(self) -> None:
        """Drop the cached workspaces and their CUDA graphs (the memory goes back to CuPy's pool; the next
        call allocates and captures again). A pending backward() is dropped too."""
        self.engine.free()
        self._shape = None

    def profile(self, x, repeat: int = 5) -> dict:
        """Where one forward and one training step (forward + backward of sum(y)) spend their time.

        parts: GPU milliseconds by kind of work (input GEMM, recurrent GEMMs, pointwise kernels,
        weight-gradient GEMMs, ...), measured op by op with CUDA events on a run without CUDA graphs.
        While the host issues that run, a spin kernel holds the GPU, so the queue fills first and each
        event pair times the GPU's work, not its wait for the host (if the launch queue fills before
        the spin ends, later parts include some waiting again: held_ms says how long the GPU was held).
        graphs: the normal run (graphs replayed), its GPU time and the host time to issue it.
        """
        from ..timing import spin, time_gpu

        y, _ = self.forward(x)
        ones = cupy.ones_like(y)
        graphs = {"forward": time_gpu(lambda: self.forward(x, train=False), repeat),
                  "train": time_gpu(lambda: (self.forward(x), self.backward(ones)), repeat)}
        saved, self.use_graphs = self.use_graphs, False
        try:
            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            self.forward(x)
            self.backward(ones)
            issue_ms = 1e3 * (time.perf_counter() - t0)  # the host's time to issue the un-graphed run
            cupy.cuda.Device().synchronize()
            self.engine.parts = {}
            held_ms = 2 * issue_ms + 5
            for run in (lambda: self.forward(x), lambda: self.backward(ones)):  # each held apart: shorter queues
                spin(held_ms)
                run()
                cupy.cuda.Device().synchronize()
            parts = {kind: sum(cupy.cuda.get_elapsed_time(s, e) for s, e in events)
                     for kind, events in self.engine.parts.items()}
        finally:
            self.engine.parts, self.use_graphs = None, saved
        self.zero_grad()
        return {"parts_ms": parts, "host_issue_ms_without_graphs": issue_ms, "held_ms": held_ms, "graphs": graphs}
