"""How a persistent kernel is launched at bound sizes (plan.Persistent says when and with how many blocks;
kerneldesc.PersistentDesc how the kernel lays out its shared memory): the grid, the dynamic shared memory,
whether the weights are cached there, and how many batch rows of the products' operands are staged at a
time. Before a launch, the grid is checked to be co-resident (the occupancy at that shared memory); the
cooperative launch itself refuses a grid that is not (an error, never a hang)."""

from __future__ import annotations

from dataclasses import dataclass

from ..kerneldesc import PersistentDesc
from ..plan import Persistent
from . import cublas, device

ITEM = {"float": 4, "double": 8, "lstmdsl_bf16": 2, "lstmdsl_f16": 2}  # C type -> bytes
MAX_BARRIERS = 2**31  # the barrier's counter counts blocks * stages * T arrivals (templates: grid_barrier)


@dataclass(frozen=True)
class PersistentRun:
    """How a persistent kernel is launched at bound sizes: its blocks, the dynamic shared memory each block
    gets, and whether the weights are cached there (else each step reads them from memory)."""

    blocks: int
    shared: int
    cached: bool
    stage_rows: int  # batch rows of the products' operands staged in shared memory at a time
    exchange: bool = False  # a grid hands its state on in tagged words, with no grid barrier (Persistent.exchanges)
    split: int = 0  # batch rows per block where the grid splits the batch (Persistent.split_rows), else 0


def launch_shape(pers: Persistent, desc: PersistentDesc, function: int, ws,
                 alone: bool = False) -> PersistentRun | None:
    """The launch at a workspace's sizes (ws: its env, B and T), or None where the cost model chooses the
    stepwise loop (decided before the kernel's limits are asked of the driver: at most the device's
    attributes) or where the kernel cannot run. alone: a layer of one direction (Persistent.alone_work). A
    direction of a bidirectional layer whose grid over the elements takes more than its share of the
    multiprocessors (Persistent.multiprocessors: the two directions' grids took turns on them) takes its share
    instead where its weights stay on chip there and as many batch rows are staged at a time; where no rule of a
    full grid holds, a grid on the share under Persistent.beside_work, cached and not split, or else None."""
    count = device.on_chip()[0]
    run = _launch_shape(pers, desc, function, ws, alone, count)
    share = pers.multiprocessors(count, alone)
    if share == count or run is not None and (not run.cached or run.split or run.blocks <= share):
        return run  # (where two full grids' blocks would fit one multiprocessor each: not measured, halved too)
    half = _launch_shape(pers, desc, function, ws, alone, share, beside=True)
    ok = half is not None and half.cached and not half.split and (run is None or half.stage_rows >= run.stage_rows)
    return half if ok else run  # (run None: only a grid on the share, under Persistent.beside_work, is chosen)


def _launch_shape(pers: Persistent, desc: PersistentDesc, function: int, ws, alone: bool,
                  multiprocessors: int, beside: bool = False) -> PersistentRun | None:
    env = ws.env
    work = sum(env[c.rows[2:]] * env[c.cols[2:]] for c in desc.cached) * ws.B

    def shared(blocks: int) -> int:
        total = 0
        for c in desc.cached:  # as the kernel lays them out: J rows of _stride elements
            rows = -(-max(env[w] for w in c.widths) // blocks)
            total += -(-rows * _stride(env[c.cols[2:]], c.ctype) * ITEM[c.ctype] // 16) * 16
        return total

    # the cost model's limits: the stepwise loop whatever fits (decided without the driver; the rules for a
    # grid without grid barriers, one block or split_rows, only where the weights could fit one block)
    if not pers.applies(ws.B, work, True, alone=alone, beside=beside) and not (
            pers.applies(ws.B, work, True, True, alone) and shared(1) <= device.on_chip()[1]):
        return None

    def row(blocks: int) -> int:
        """Bytes per staged batch row at that many blocks (the widest stage's): the products' operands (rows
        of _stride elements) and the products themselves (J of them per matrix), as the kernel lays
        them out."""
        out = 0
        for ops, products, widths in zip(desc.staged, desc.products, desc.widths):
            if ops:
                J = -(-max(env[w] for w in widths) // blocks)
                n = sum(len(g) for g in products)
                out = max(out, sum(_stride(env[o.cols[2:]], o.ctype) * ITEM[o.ctype] for o in ops) + n * J * desc.real_bytes)
        return out

    # each operand's and each product's area rounds up to 16 bytes
    slack = 16 * max([len(ops) + sum(len(g) for g in products) for ops, products in zip(desc.staged, desc.products)]
                     + [0])
    limit = device.shared_budget(function)  # what a block may opt in to, less the kernel's static shared memory

    def rows_beside(weights: int, row: int) -> int:
        """Batch rows of the operands that fit beside `weights` bytes (0: not even one)."""
        return ws.B if row == 0 else min(ws.B, max(0, (limit - weights - slack) // row))

    elements = max([env[w] for widths in desc.widths for w in widths] + [ws.B])
    split = pers.split_rows(ws.B, shared(1) + row(1) + slack, limit, multiprocessors)
    if split:  # every block holds all the weights and runs `split` batch rows alone
        blocks = -(-ws.B // split)
        weights, per_row = shared(1), row(1)
        rows = min(split, rows_beside(weights, per_row))
    else:
        blocks = pers.blocks(work, elements, shared(1) + row(1) + slack, limit, multiprocessors)
        weights, per_row = shared(blocks), row(blocks)
        rows = rows_beside(weights, per_row)
    need = weights + (rows * per_row + slack if per_row else 0)
    fits = rows >= 1 and need <= limit and device.co_resident(function, pers.threads, need) * multiprocessors >= blocks
    if not pers.applies(ws.B, work, fits, bool(split) or blocks == 1, alone, beside) \
            or blocks * len(desc.stages) * ws.T >= MAX_BARRIERS:
        return None
    def exchange(blocks: int) -> bool:  # (a grid, with the operand's words a step few enough)
        return desc.exchanged is not None and blocks > 1 and pers.exchanges(ws.B * env[desc.exchanged.cols[2:]])

    if fits:
        return PersistentRun(blocks, need, True, max(rows, 1), not split and exchange(blocks), split)
    # forced, and the weights do not fit: read them from memory, with as many blocks as are co-resident (fewer
    # blocks have more elements each, so more products to keep: the count falls until it settles); not
    # transposed weights (a backward's) or block-diagonal ones, which the kernel reads from shared memory only
    if any(c.transposed or c.heads for c in desc.cached):
        return None
    while True:
        per_row = row(blocks)
        rows = rows_beside(0, per_row)
        need = rows * per_row + slack if per_row else 0
        resident = device.co_resident(function, pers.threads, need) * multiprocessors if rows else 0
        if not resident:
            return None
        if resident >= blocks:
            return PersistentRun(blocks, need, False, rows, exchange(blocks))
        blocks = resident


def _stride(cols: int, ctype: str) -> int:
    """Elements per row of `cols` in a persistent kernel's shared memory (templates: shared_ld): a multiple
    of 4; in half precision a multiple of 16 and 8 more (the tensor-core fragments' k-steps stay inside the
    row, and their eight rows start in different banks)."""
    return -(-cols // 16) * 16 + 8 if ITEM[ctype] == 2 else -(-cols // 4) * 4


def stack_persistent(engine, phase: str) -> Persistent | None:
    """The phase's plan.Persistent for an Engine's layers, or None where a stack's wavefront of stepwise layers
    takes it (plan.Wavefront: in a stack it wins over `persistent auto`, a forced `persistent` over it)."""
    plan = engine.program.plan
    pers = getattr(plan, phase).loop.persistent
    wave = plan.wavefront if 1 < len(engine.sizes) <= cublas.MAX_LANES and engine.use_wavefront else None
    return None if wave is not None and pers is not None and (wave.forced or not pers.forced) else pers


def chunk_steps(engine, ws, names: list[str]) -> int:
    """Steps per chunk of an Engine's forward-only workspace (plan.Chunks: its buffers `names` then a ring of that
    many steps), or 0: where they are small, or where its layer runs the persistent kernel (which reads every step's
    products in its one launch; Engine.persistent_run never chooses it for a workspace that runs in chunks)."""
    if not engine.use_chunks:
        return 0
    plan = engine.program.plan
    wave = plan.wavefront.steps(ws.T) if plan.wavefront is not None and 1 < len(engine.sizes) <= cublas.MAX_LANES \
        and engine.use_wavefront else 0  # (the wavefront's own chunks: Engine.wave_steps keeps it where they agree)
    steps = plan.chunks.steps(ws.T, sum(ws.item[n] * ws.T * ws.B * ws.width[n] for n in names), ws.B, wave)
    pers = stack_persistent(engine, "forward") if engine.use_persistent else None
    if steps and pers is not None and launch_shape(pers, engine.program.kernels[pers.name],
                                                   engine.functions[pers.name], ws, not engine.beside) is not None:
        return 0
    return steps
