"""Stage 3: the Plan, everything that runs for one layer, and every decision about how it runs.

A plan has two phases, forward and backward, each over one node graph (the Cell IR's nodes, and the
StepGrad's nodes). A phase is the work before the time loop, the loop (a Loop op: its body runs once per
step, forward or reverse in time) and the work after it. Within a step the ops respect data dependence,
so a matrix product whose operand is computed inside the step (GRU's r * h) sits between two pointwise
kernels: that is stage splitting.

The ops say what is computed:
  Gemm        forward: outputs[k] = v @ W_k^T for the operand v; backward: outputs[0] = sum_k g_k @ W_k
  Kernel      the pointwise nodes it computes, in order
  WeightGrad  dW_k += g_k^T v (per step inside the loop, or over all T*B rows after it)
  VectorGrad  d vector += the sum over rows of a backward node
  Copy        a value whose producer writes only its first slot, copied to another slot
  Fold        before the forward loop: the product W P of two weight stacks, which a folded projection's GEMM
              reads (Gemm.first and Gemm.ahead: passes/projection.py)
`base_plan` builds the plan with nothing fused or hoisted; the scheduling passes in passes/ rewrite it
(passes/__init__.py lists them in one PIPELINE). Then the lowering passes decide how it runs:
  types       the element type of every value (Plan.dtype, Buffer.dtype) and the compute type of GEMMs
  storage     the buffers, where every value lives (slots), the weight stacks, the Copy ops
  calls       for every GEMM-like op its GemmCall (operands, shapes, types); for every kernel its name,
              launch shape and what it reads and writes (then fanout: a step's GEMMs that run at once)
The runtime only executes what the plan says; planformat.format_plan prints all of it (`lstmdsl compile --emit
plan`) and `verify` checks its invariants (tests run it after every pass).

Shapes (per layer, B = batch, T = steps): a value of size n is [B, n] in a step, [T, B, n] when kept.
Sizes stay symbolic ("input", "hidden", "proj"; "B" and "T*B" count rows; "one" is 1) until the runtime
binds them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from .grad import StepGrad
from .ir import LEAF_OPS, Cell, Node
from .loops import Chunks, GemmWorkspace, Persistent, Wavefront  # noqa: F401 (part of the Plan, kept in loops.py)
from .ops import OPS
from .schedule import Schedule

ELEMENT_TYPES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2}  # element type -> bytes
HALF_TYPES = ("bf16", "f16")  # stored in half precision, computed on in fp32
COMPUTE_TYPES = ("fp32", "tf32", "f64")  # what a GEMM accumulates and multiplies in


# ------------------------------------------------------------------------------------------ storage

@dataclass(frozen=True, slots=True)
class Buffer:
    """[steps, B, width] elements of one type. steps: "1" one area reused at every step, "T" one per step,
    "T+1" a history (area t holds a state at the start of step t, t + 1 its update), "2" a ring of two
    areas (step t's is t mod 2); inference may also be "C": a ring of one chunk's steps (Plan.chunks) where a
    forward-only workspace runs chunk by chunk, else T."""

    name: str
    dtype: str
    width: tuple[str, ...]  # the row width is the sum of these sizes
    steps: str
    inference: str | None = None  # its steps in a forward-only workspace; None: training only
    alias: str | None = None  # in training it uses this buffer's memory (it is dead before that one lives)
    zero: bool = False  # set to zero before the backward phase (gradients are added into it)
    fill: float | None = None  # a constant buffer, filled once when the workspace is made (the ones)
    over: str | None = None  # in training it takes this buffer's memory where the workspace's sizes make them one
    # shape (dx over dy: that one is dead, read last in the loop, before this one is first written, after it;
    # zeroed after the loop then, not before the backward: passes/overlay.py)
    rows: tuple[str, ...] = ()  # () for B rows; else a matrix of this many rows, one step ("1"): the product of
    # two weight stacks that a folded projection's GEMMs read (Fold)


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a value lives: row b of step t is buffer[t + step, b, col : col + size]."""

    buffer: str
    col: tuple[str, ...] = ()  # the column offset is the sum of these sizes
    step: int = 0
    accumulate: bool = False  # written with += (the buffer starts at zero)
    interleave: tuple[tuple[str, ...], tuple[str, ...]] = ()  # (block, period): the value's elements in blocks
    # of `block`, one every `period` columns (element j at col + (j / block) * period + j % block): one
    # matrix's rows in a stack stored head by head (WeightStack.interleave); () for contiguous


@dataclass(frozen=True, slots=True)
class WeightStack:
    """The matrices applied to one operand, stored as one [sum of rows, cols] array (so a fused GEMM reads
    them as one matrix), and the buffer of their incoming gradients, side by side in the same order."""

    name: str  # weight_ih (on the input), weight_h<state> (on a state), or the matrices' names
    operand: int  # forward node
    matrices: tuple[str, ...]
    rows: tuple[str, ...]  # each matrix's rows (a size)
    cols: str  # as stored: per head ("hidden/heads") for block-diagonal matrices
    gin: str  # the buffer of the incoming gradients g_k, [.., sum of rows]
    dtype: str
    heads: bool = False  # block-diagonal matrices (ir.Param.heads), each its own batch of per-block GEMMs
    padded: bool = False  # its rows are Storage.align-padded (the half copies the GEMMs read; not the masters)
    interleave: str | None = None  # the GEMMs read and write the stack head by head: for each block of this
    # many rows, that block of every matrix in turn (so one head's rows of all the matrices are adjacent and a
    # block-diagonal stack is one strided batch over the heads). The layer keeps the matrices in order and
    # the GEMMs read a permuted copy (runtime.layer.interleave_rows); their gradients are permuted back.


@dataclass(frozen=True, slots=True)
class Transfer:
    """A value the caller hands in or takes out: `what` is "x", "y", "state:<name>", "dy", "dx",
    "dstate:<name>"; it is buffer[step] (step: "all" = the T steps from `first`, else one index, "T"
    meaning the last) at `col`, `size` wide."""

    what: str
    buffer: str
    size: str
    col: tuple[str, ...] = ()
    step: str = "all"  # "all" | "0" | "T"
    first: int = 0  # for "all": the first of the T steps


@dataclass(frozen=True, slots=True)
class Storage:
    buffers: tuple[Buffer, ...]
    forward: tuple[tuple[int, tuple[Slot, ...]], ...]  # forward node -> its slots (reads use the first)
    backward: tuple[tuple[int, tuple[Slot, ...]], ...]
    stacks: tuple[WeightStack, ...]
    inputs: tuple[Transfer, ...]  # forward: x, initial states; backward: dy, final-state gradients
    outputs: tuple[Transfer, ...]  # forward: y, final states; backward: dx, initial-state gradients
    align: int = 1  # every buffer row, and every row of a padded stack, starts at a multiple of this many
    # elements (16 bytes for half types: the tensor cores' alignment at any hidden size)
    stack_input: bool = False  # in a stack, layer k + 1's x buffer is layer k's y region, not a copy of it:
    # x holds nothing else and no op writes it, and y is whole rows of a buffer kept for all steps, of x's type
    in_place: tuple[tuple[str, int, int | str], ...] = ()  # ("forward", v, p): activation v is written over
    # the hoisted product p's slot; ("backward", g, gin): gradient g, which belonged in buffer gin, is written
    # over the forward values of its buffer (passes/in_place.py). A backward consumes the
    # activations: another backward needs the forward run again.

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def slots(self, phase: str) -> dict[int, tuple[Slot, ...]]:
        return dict(self.forward if phase == "forward" else self.backward)

    def stack(self, name: str) -> WeightStack:
        for s in self.stacks:
            if s.name == name:
                return s
        raise KeyError(name)

    def stack_of(self, matrix: str) -> WeightStack:
        for s in self.stacks:
            if matrix in s.matrices:
                return s
        raise KeyError(matrix)


# --------------------------------------------------------------------------------- how ops are run

@dataclass(frozen=True, slots=True)
class Operand:
    """A row-major matrix in memory. space: "buffer" (a slot of a workspace buffer: `name`, column `offset`,
    step offset `step`), "weights" / "grads" (a weight stack or its gradient, from row `offset`),
    "vector_grad" (a vector parameter's gradient, as a [1, n] row), "ones" (the constant buffer)."""

    space: str
    name: str
    offset: tuple[str, ...] = ()
    step: int = 0


@dataclass(frozen=True, slots=True)
class GemmCall:
    """C[m, n] (+)= op(A) @ op(B), row-major; m, n, k are sums of symbolic sizes ("B", "T*B" and "one"
    count rows). Inside the loop, buffer operands move with the step; before or after it they start at
    step 0 and cover all steps."""

    m: tuple[str, ...]
    n: tuple[str, ...]
    k: tuple[str, ...]
    a: Operand
    trans_a: bool
    b: Operand
    trans_b: bool
    c: Operand
    accumulate: bool
    a_type: str
    b_type: str
    c_type: str
    compute: str
    heads: str | None = None  # a batch of GEMMs, one per block of a block-diagonal matrix: the size counting them
    padded: tuple[str, ...] = ()  # "k" / "n": that dimension runs over the aligned row (Storage.align), whose
    # padding is zero in both operands (a whole buffer row, a padded stack's zero columns)
    strides: tuple[tuple[str | int, ...], ...] = ()  # per operand (a, b, c): elements between blocks, a product
    # of sizes and integer factors (the number of matrices of an interleaved stack; 0: the same block for all)


@dataclass(frozen=True, slots=True)
class Launch:
    """kind "elements": one thread per (row b, element j), or one warp per element when the kernel computes
    matrix-vector products itself: grid (ceil(max size / per_block), B), `threads` threads per block.
    kind "rows" (a reduction, or kernels fused by rows): one block of `threads` threads per row b, grid
    (B, 1), each thread striding over the features."""

    threads: int
    per_block: int
    sizes: tuple[str, ...]
    rows: str = "B"
    kind: str = "elements"


# --------------------------------------------------------------------------------------------- ops

@dataclass(frozen=True, slots=True)
class Gemm:
    kind: str  # "forward": outputs[k] = inputs[0] @ W_k^T;  "backward": outputs[0] = sum_k inputs[k] @ W_k
    matrices: tuple[str, ...]  # the row blocks, stacked in this order when there are several
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    accumulate: bool = False  # backward: add into outputs[0] (another GEMM of the same sum wrote it first)
    call: GemmCall | None = None
    init: int | None = None  # backward: outputs[0] = add(init, the products), init already in its slot (sum folding)
    first: bool = False  # before the loop: the products of the loop's first step only, over B rows, issued at
    # that step (t = 0 forward, T - 1 reverse): a folded projection's (passes/projection.py)
    ahead: str = ""  # in the loop: the products of the NEXT step, through this projection matrix P: outputs[k] =
    # v @ (W_k P)^T = (P v) @ W_k^T, where the next step's state is P v (inputs[0] = v; the GEMM reads the
    # Fold's product of the stacks, W P)


@dataclass(frozen=True, slots=True)
class Kernel:
    """Pointwise nodes computed in order (matvec nodes: fused products), or one reduction over the
    features of each row (a stage of its own: see reduces)."""

    nodes: tuple[int, ...]
    name: str = ""
    launch: Launch | None = None
    reads: tuple[tuple[int, Slot], ...] = ()  # values it loads (node, the slot it reads)
    writes: tuple[tuple[int, Slot], ...] = ()  # values it stores
    joins: bool = False  # runs inside the previous kernel's launch (row fusion), after a block-wide barrier


@dataclass(frozen=True, slots=True)
class WeightGrad:
    """dW_k += g_k^T v for each block."""

    matrices: tuple[str, ...]
    g: tuple[int, ...]  # backward node of each block's incoming gradient, [B, rows_k]
    v: int  # forward node of the operand, [B, cols]
    call: GemmCall | None = None


@dataclass(frozen=True, slots=True)
class VectorGrad:
    """d vector += the sum over the rows (the batch, or all steps' rows after the loop) of a backward node."""

    name: str
    node: int
    call: GemmCall | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """dst (+)= src for `size` columns: per step in the loop, for all T steps before or after it."""

    node: int
    src: Slot
    dst: Slot
    size: str
    dtype: str = "f32"  # the source's element type
    dst_type: str = ""  # the destination's, where it differs (a converting copy)


@dataclass(frozen=True, slots=True)
class Fold:
    """Before the forward loop: the product of two weight stacks, W P, into a one-step buffer of W's rows
    (Buffer.rows) that the loop's `ahead` GEMM reads (passes/projection.py). Recomputed at every forward, so
    it is never stale (an optimizer's step, DropConnect's masked copies)."""

    stack: str  # W, the stack applied to the state
    through: str  # P, the projection matrix whose product is that state
    buffer: str
    call: GemmCall | None = None


Op = Union[Gemm, Kernel, WeightGrad, VectorGrad, Copy, Fold]


def reduces(phase: "Phase", op) -> bool:
    """A kernel that reduces the features of rows: it runs alone, one block per row."""
    return isinstance(op, Kernel) and any(phase.nodes[i].op in OPS and OPS[phase.nodes[i].op].reduction
                                          for i in op.nodes)


@dataclass(frozen=True, slots=True)
class Loop:
    """The time loop: the body runs once per step, t = 0 .. T-1 (forward) or T-1 .. 0 (reverse).
    persistent: the same steps as one launch (Persistent), where its cost model says so. fanout: runs of
    consecutive GEMMs of the body (their indices) that run at once, each on a stream of its own (passes/fanout.py)."""

    body: tuple[Op, ...] = ()
    direction: str = "forward"
    persistent: Persistent | None = None
    fanout: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Phase:
    nodes: tuple[Node, ...]
    before: tuple[Op, ...] = ()  # once, for all steps, before the loop
    loop: Loop = Loop()
    after: tuple[Op, ...] = ()  # once, for all steps, after the loop

    def ops(self):
        """(where, op) for every op in order; where is "before", "loop" or "after"."""
        for op in self.before:
            yield "before", op
        for op in self.loop.body:
            yield "loop", op
        for op in self.after:
            yield "after", op

    def with_body(self, body) -> "Phase":
        return replace(self, loop=replace(self.loop, body=tuple(body)))


@dataclass(frozen=True, slots=True)
class Plan:
    cell: Cell
    grad: StepGrad
    schedule: Schedule
    forward: Phase
    backward: Phase
    dtype: str = "f32"  # the element type of values, parameters and gradients (the types pass sets it)
    compute: str = "fp32"  # the GEMMs' compute type
    operand_type: str = "f32"  # GEMM operands and weight stacks: dtype, or a half type (mixed precision)
    grad_type: str = ""  # the weight stacks' gradients where not dtype: operand_type, for half parameters (the
    # torch module's .half(), whose gradients are half); vector gradients stay dtype (passes/types.py)
    storage: Storage | None = None  # set by the storage pass
    wavefront: Wavefront | None = None  # how a stack of this plan's layers runs its forward (the wavefront
    # pass sets it where the forward can run chunk by chunk)
    chunks: Chunks | None = None  # when a forward-only workspace runs chunk by chunk, its buffers of inference "C"
    # a ring of one chunk's steps (the chunks pass, passes/wavefront.py plan_chunks, where the forward can)
    gemm_workspace: GemmWorkspace = GemmWorkspace()  # the cuBLAS workspace of its GEMMs, by batch and type

    @property
    def saved(self) -> tuple[int, ...]:
        """Forward values the backward pass reads, kept for every step ([T, B, size] each)."""
        read = {n.attr for n in self.backward.nodes if n.op == "fwd"}
        read |= {op.v for _, op in self.backward.ops() if isinstance(op, WeightGrad)}
        return tuple(sorted(read))

    @property
    def weight_grads(self) -> tuple[tuple[str, WeightGrad], ...]:
        return tuple((w, op) for w, op in self.backward.ops() if isinstance(op, WeightGrad))

    @property
    def vector_grads(self) -> tuple[tuple[str, VectorGrad], ...]:
        return tuple((w, op) for w, op in self.backward.ops() if isinstance(op, VectorGrad))

    def kernels(self) -> tuple[Kernel, ...]:
        """Every Kernel op, forward then backward, in order (named by the calls pass)."""
        return tuple(op for phase in (self.forward, self.backward) for _, op in phase.ops()
                     if isinstance(op, Kernel))


def base_plan(cell: Cell, grad: StepGrad, schedule: Schedule, direction: str = "forward") -> Plan:
    """The plan with no optimisation: one op per node, in node order (which is topological), and the
    parameter gradients formed step by step. direction: the forward loop's ("reverse": a layer that reads
    its sequence backwards in time); the backward loop runs the other way."""
    forward = []
    for i, n in enumerate(cell.nodes):
        if n.op == "matvec":
            forward.append(Gemm("forward", (n.attr,), n.args, (i,)))
        elif n.op not in LEAF_OPS:
            forward.append(Kernel((i,)))
    backward = []
    for i, n in enumerate(grad.nodes):
        if n.op == "matvec_t":
            backward += [Gemm("backward", (m,), (g,), (i,), accumulate=k > 0)
                         for k, (m, g) in enumerate(zip(n.attr, n.args))]
        elif n.op not in LEAF_OPS:
            backward.append(Kernel((i,)))
    backward += [WeightGrad((m,), (g,), v) for m, g, v in grad.d_matrices]
    backward += [VectorGrad(name, node) for name, node in grad.d_vectors]
    return Plan(
        cell=cell, grad=grad, schedule=schedule,
        forward=Phase(cell.nodes, loop=Loop(tuple(forward), direction)),
        backward=Phase(grad.nodes, loop=Loop(tuple(backward), "reverse" if direction == "forward" else "forward")),
    )
