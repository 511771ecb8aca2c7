"""Workspaces: the buffers of one layer for one (T, B), allocated as the plan's storage says, and the
address arithmetic of slots."""

from __future__ import annotations

import numpy as np

from ..plan import ELEMENT_TYPES, Storage
from .device import empty, zero_columns

POISON = False  # tests set this: new buffers start as NaN, so a read of anything no op wrote shows up
NUMPY_TYPES = {"f32": np.float32, "f64": np.float64, "bf16": np.uint16, "f16": np.float16}  # bf16: its bits


def fill_value(dtype: str, value: float):
    """`value` as an element of NUMPY_TYPES[dtype] (bf16: the upper half of the float32's bits, rounded to
    nearest even; NaN stays a NaN)."""
    if dtype != "bf16":
        return value
    bits = int(np.array(value, np.float32).view(np.uint32))
    if np.isnan(value):
        return 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


class Workspace:
    def __init__(self, storage: Storage, sizes: dict[str, int], T: int, B: int, train: bool, stream: int,
                 share: list["Workspace"] = (), given: dict | None = None, own: frozenset = frozenset(),
                 chunk=None):
        """A forward-only workspace (train=False) has no backward buffers, and one step of the values that
        only the backward reads. Buffers are allocated and filled on `stream`, the one the work runs on.
        share: the workspaces of the layers below in a stack. The layers' backward passes run one at a
        time, and a training-only buffer holds nothing from one layer's backward to the next layer's (nor
        from the forward: see Buffer.alias), so each takes the memory of such a buffer of the same shape
        there: a stack's backward buffers cost one layer's, not L layers'. given: buffers that are memory
        the caller already has (a stack's x: the layer below's y, Storage.stack_input), used where their
        shape and type are this workspace's. own: training buffers it keeps its own of all the same (a
        stack whose backward runs as a wavefront: its layers' rings and scratch are in use at once). chunk: in a
        forward-only workspace with buffers of inference "C" (Plan.chunks), a function of the workspace (its sizes
        set) giving the steps per chunk its forward runs in (self.chunk; those buffers then a ring of that many
        steps), or 0 for all T at once."""
        self.T, self.B, self.train = T, B, train
        self.env = dict(sizes, B=B, one=1, **{"T*B": T * B})
        self.align = storage.align
        buffers = [b for b in storage.buffers if train or b.inference is not None]
        self.width = {b.name: self.span(b.width) for b in buffers}  # the leading dimension
        self.item = {b.name: ELEMENT_TYPES[b.dtype] for b in buffers}
        kind = {b.name: b.steps if train else b.inference for b in buffers}
        chunked = [name for name, k in kind.items() if k == "C"]
        self.chunk = chunk(self, chunked) if chunked and chunk is not None else 0  # steps per chunk (0: all T)
        self.steps = {name: {"1": 1, "T": T, "T+1": T + 1, "2": 2, "C": self.chunk or T}[k] for name, k in kind.items()}
        self.ring = {name: self.steps[name] for name, k in kind.items() if k == "2" or k == "C" and self.chunk}
        self.dtype = {b.name: b.dtype for b in buffers}
        self.rows = {b.name: self.dim(b.rows) if b.rows else B for b in buffers}  # (Buffer.rows: a matrix)
        self.arrays = {}
        over = {b.name: b.over for b in buffers if train and b.over and self.overlays(b, storage.buffer(b.over))}
        self.overlaid = frozenset(over)  # buffers in another's memory (Buffer.over): zeroed after the loop
        for b in buffers:
            if train and (b.alias or b.name in over):
                continue
            shape = (self.steps[b.name], self.rows[b.name], self.width[b.name])
            mine = (given or {}).get(b.name)
            if mine is not None and mine.shape == shape and mine.dtype == NUMPY_TYPES[b.dtype]:
                self.arrays[b.name] = mine
                continue
            if train and b.inference is None and b.name not in own:
                same = next((w.arrays[b.name] for w in share if b.name in w.arrays and b.name not in w.overlaid
                             and w.arrays[b.name].shape == shape and w.arrays[b.name].dtype == NUMPY_TYPES[b.dtype]),
                            None)  # (not a buffer that lives in another's memory there: dx over dy)
                if same is not None:
                    self.arrays[b.name] = same
                    continue
            fill = b.fill if b.fill is not None else (np.nan if POISON else None)
            fill = None if fill is None else fill_value(b.dtype, fill)
            self.arrays[b.name] = empty(shape, NUMPY_TYPES[b.dtype], fill, stream)
            if self.width[b.name] > self.dim(b.width):  # the padding of aligned rows: zero, and never written
                zero_columns(self.arrays[b.name], self.dim(b.width), stream)
        for b in buffers:
            if train and (b.alias or b.name in over):  # the same shape and type: see Buffer.alias and .over
                self.arrays[b.name] = self.arrays[b.alias or over[b.name]]
        self.base = {name: a.data.ptr for name, a in self.arrays.items()}
        self.graphs: dict[tuple, object] = {}  # (phase, addresses of what it reads) -> its CUDA graph
        self.regions: dict[str, dict] = {}  # "in" / "out" -> the caller's transfers: (address, pitch, rows, width)
        self.pinned = False  # a graph captured by someone else (torch) holds its addresses
        self.stream = stream
        self.persistent: dict[str, object] = {}  # phase -> its persistent launch at these sizes, or None (Engine)
        self.whole_persistent: bool | None = None  # every phase it runs persistent (Issue.whole_persistent)
        self.persistent_function: dict[str, int] = {}  # phase -> its kernel compiled for these sizes, where it
        # runs one (Persistent.specialises; else the program's general kernel)
        self.special_pending: dict[str, object] = {}  # phase -> the compile of that kernel under way (specialise.Job)
        self.tuned: set[tuple[str, bool, bool]] = set()  # (phase, fanned out, wavefront) whose GEMM shapes were timed
        # (Engine._tune, cublas.tune; with the fan, its lanes' handles made)
        self.wave: int | None = None  # a stack's first layer: steps per chunk of its wavefront, 0 for none
        # (Engine.wave_steps; None until decided)
        self.counter: int | None = None  # the persistent kernels' barrier counter (one uint32), when they run
        self.counter_array = None
        self.exchange_arrays: dict[str, object] = {}  # phase -> its persistent grid's exchange area (Persistent.exchange)

    def overlays(self, b, host) -> bool:
        """Whether buffer b takes host's memory here (Buffer.over): one shape, type and unpadded width."""
        return (self.steps[b.name], self.width[b.name], b.dtype, self.dim(b.width)) == \
            (self.steps[host.name], self.width[host.name], host.dtype, self.dim(host.width))

    def dim(self, expr) -> int:
        """The value of a sum of symbolic sizes ("B" and "one" included)."""
        return sum(self.env[s] for s in expr)

    def span(self, expr) -> int:
        """The elements a row of this width takes: rounded up to Storage.align (the leading dimension)."""
        return -(-self.dim(expr) // self.align) * self.align

    def address(self, buffer: str, step: int, col: tuple[str, ...] = ()) -> int:
        """Address of row 0 at column col of a buffer at a step (a one-step buffer has one area for all)."""
        step = 0 if self.steps[buffer] == 1 else step % self.ring[buffer] if buffer in self.ring else step
        return self.base[buffer] + self.item[buffer] * (step * self.B * self.width[buffer] + self.dim(col))

    def region(self, t) -> tuple[int, int, int, int, str]:
        """(address, pitch, rows, width in elements, element type) of a transfer's region (plan.Transfer)."""
        step = {"all": t.first, "0": 0, "T": self.T}[t.step]
        rows = self.T * self.B if t.step == "all" else self.B
        return self.address(t.buffer, step, t.col), self.pitch(t.buffer), rows, self.dim((t.size,)), self.dtype[t.buffer]

    def pitch(self, buffer: str) -> int:
        return self.item[buffer] * self.width[buffer]

    def nbytes(self, buffer: str) -> int:
        return self.item[buffer] * self.steps[buffer] * self.rows[buffer] * self.width[buffer]
