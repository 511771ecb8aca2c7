"""The descriptions code generation makes of kernels (codegen.py) and the runtime reads: small frozen
records of a kernel's parameters, statements and launch (KernelDesc), of a persistent kernel's
(PersistentDesc) and of the copies that add (AddDesc). A KernelArg says how the runtime fills it (ArgBind),
so the contract between code generation and the runtime is typed."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import Launch, Slot


@dataclass(frozen=True, slots=True)
class ArgBind:
    """How the runtime fills a kernel argument: kind "batch" (B), "size" (the size `name`), "vector"
    (the vector parameter `name`), "weights" (the stack `name` from row `offset`), "ldw" (that stack's
    leading dimension), "ptr" / "ld" (the address at the current step / the leading dimension of `slot`).
    "dim" (the sum of the sizes `offset`: a slot's block and period, Slot.interleave). A persistent kernel's
    besides: "steps" (T), "barrier" (its counter), "exchange" (its exchange area: Persistent.exchange) and
    "exchanging" (whether this launch uses it), "cached", "stage_rows" and "split" (its launch), and per slot "ptr0"
    (the address at step 0), "stride" (elements between steps, 0 for one area) and "ring" (the ring's
    length, or 0)."""

    kind: str
    name: str = ""
    offset: tuple[str, ...] = ()
    slot: Slot | None = None


@dataclass(frozen=True, slots=True)
class KernelArg:
    ctype: str
    name: str
    bind: ArgBind


@dataclass(frozen=True, slots=True)
class KernelDesc:
    name: str
    args: tuple[KernelArg, ...]
    consts: tuple[str, ...]  # statements every thread runs first: constants, and per-row scalars
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (size parameter, statements), one per size
    launch: Launch
    reduce: tuple | None = None  # a reduction: (kind, ((load expression, size parameter), ...), divisor, stores)
    stages: tuple["KernelDesc", ...] = ()  # row fusion: the stages one block per row runs, barriers between
    preloads: tuple[tuple[str, int, str, str], ...] = ()  # a persistent product stage's item loads issued first:
    # (the size bound of j, "" for a per-row scalar; node; load expression in b and j; the slot's C type)

    @property
    def warp(self) -> bool:
        return self.launch.per_block != self.launch.threads

    kind = "kernel"


@dataclass(frozen=True, slots=True)
class StepArea:
    """The area of step t + step in one buffer, kept by a persistent kernel in variable `name` and moved on
    after every step (modulo <buffer>_m in a ring; <buffer>_s elements apart, 0 for a one-area buffer: the
    ring and stride arguments, named after the buffer's first slot). Every slot of the buffer at that step
    offset shares it: the vanilla forward's twelve slots have five areas (each area kept was about five
    instructions a step, ncu)."""

    name: str
    step: int
    buffer: str


@dataclass(frozen=True, slots=True)
class StepPointer:
    """A slot's address at step t inside a persistent kernel: name_0 (its address at step 0) plus its area's
    elements."""

    ctype: str
    name: str
    area: StepArea


@dataclass(frozen=True, slots=True)
class CachedWeights:
    """The rows of a fused product's weights one block keeps in shared memory: rows j0 .. j0 + J of w<node>
    (J = ceil(`widest` / blocks), j0 = block * J), `cols` wide, of C type `ctype`."""

    node: int | str  # the product's node, or "<node>_<m>": the m-th matrix of a sum of transposed products
    ctype: str
    rows: str  # size parameter: the rows kept (the matrix's rows, or its columns where transposed)
    cols: str  # size parameter: their length
    widest: str  # the C expression of the stage's widest size: its elements are spread over the blocks by it
    widths: tuple[str, ...]  # the stage's sizes (the widest is their maximum)
    transposed: bool = False  # w<node> is the transpose: its columns j0 .. j0 + J are kept, as rows
    heads: tuple[str, ...] = ()  # a block-diagonal matrix (ir.Param.heads): the arguments of its rows and
    # columns per head; stored as its blocks stacked by rows, its rows are kept expanded to `cols`, zero
    # off the diagonal blocks (in the persistent kernel's shared memory only: runtime/persistent.py)
    order: tuple[int, int] = ()  # a stack stored head by head (WeightStack.interleave): the matrix's place in it
    # and its count of matrices; w<node> is the stack's head-by-head copy from its first row


@dataclass(frozen=True, slots=True)
class StagedOperand:
    """A product's operand a stage of a persistent kernel copies into shared memory at each step (sh<node>:
    `stage_rows` batch rows at a time, `cols` wide), so its products read it from there."""

    node: int
    ctype: str
    cols: str  # size parameter
    heads: tuple[str, ...] = ()  # stored head by head (Slot.interleave: the backward's gates' gradients of a
    # stack stored so): the arguments of its block and period (stage_operand gathers it)


@dataclass(frozen=True, slots=True)
class Product:
    """One matrix's products in a stage of a persistent kernel (templates: block_products): P<node>[b][r] =
    row j0 + r of the matrix w<node> (`rows` rows, `cols` columns) times row b of the staged operand
    sh<operand>, for the block's rows and the staged batch rows, before the stage's pointwise work reads
    them. A stage's products of the same weight and operand types are computed together (one call)."""

    node: int | str  # as CachedWeights.node
    operand: int
    rows: str  # size parameter
    cols: str  # size parameter
    wtype: str  # C types of the weights and of the operand
    xtype: str


@dataclass(frozen=True, slots=True)
class PersistentDesc:
    """A persistent kernel: the stages (KernelDescs: "elements" one thread per (b, j), "warp" one warp, a
    row reduction or row group one block per row) run in order at every step, a grid barrier after each."""

    name: str
    args: tuple[KernelArg, ...]
    stages: tuple[KernelDesc, ...]
    widest: tuple[str, ...]  # per stage: the C expression of its widest size (a stage of rows: "")
    widths: tuple[tuple[str, ...], ...]  # per stage: the sizes it spreads over the blocks (rows: ())
    pointers: tuple[StepPointer, ...]
    areas: tuple[StepArea, ...]  # the pointers' areas, one per buffer and step offset
    cached: tuple[CachedWeights, ...]
    staged: tuple[tuple[StagedOperand, ...], ...]  # per stage: the operands of its products
    threads: int
    reverse: bool
    products: tuple[tuple[tuple[Product, ...], ...], ...] = ()  # per stage: its products, by types
    real_bytes: int = 4  # sizeof(real): the products' area in shared memory is in it
    stage_pointers: tuple[tuple[StepPointer, ...], ...] = ()  # per stage: the addresses it uses
    forwarded: tuple[int, ...] = ()  # staged operands its items also store on chip (Persistent.forwards)
    exchanged: StagedOperand | None = None  # the operand a grid hands on in tagged words (Persistent.exchange)
    block_barriers: tuple[int, ...] = ()  # stages followed by a block barrier, not a grid one (Persistent's)
    kind = "persistent"

    def shape_args(self) -> tuple[KernelArg, ...]:
        """The arguments a kernel compiled for one launch's shape takes as constants (SHAPE_KINDS)."""
        return tuple(a for a in self.args if a.bind.kind in SHAPE_KINDS)


# A persistent launch's arguments fixed by its shape (the batch, the sizes, the buffers' widths, step strides and
# rings, runtime/persistent.PersistentRun's choices): constants in a kernel compiled for that shape
# (plan.Persistent.specialises, codegen.render_persistent). The widths, strides and rings as constants too were
# 0.87-0.98x the time of the batch, sizes and choices alone at 14 of 16 shapes (benchmarks/specialise.py --wide)
SHAPE_KINDS = ("batch", "size", "ld", "dim", "cached", "stage_rows", "split", "exchanging", "stride", "ring")


@dataclass(frozen=True, slots=True)
class AddDesc:
    """dst[b * ld_dst + j] += src[b * ld_src + j] for j < n, b < rows: the copies that add into a slot."""

    name: str
    ctype: str
