"""The persistent schedule's choices, on the CPU: the plan's cost model (plan.Persistent) and the launch
shape the runtime derives from it at bound sizes (runtime/persistent.py), with the device's limits given."""

from __future__ import annotations

import pytest

import lstmdsl
from lstmdsl.plan import Persistent
from lstmdsl.planformat import format_plan
from lstmdsl.program import build_program
from lstmdsl.runtime import device, persistent
from lstmdsl.schedule import Schedule, parse_schedule

from unusual_specs import HEADS_ON_INPUT

H200 = (132, 227 * 1024)  # multiprocessors, shared memory one block may have


class _Workspace:
    def __init__(self, B, T, **sizes):
        self.B, self.T, self.env = B, T, dict(sizes, B=B, one=1)


STATIC = 128  # the kernel's static shared memory (a row reduction's partial sums)


@pytest.fixture
def h200(monkeypatch):
    monkeypatch.setattr(device, "on_chip", lambda: H200)
    monkeypatch.setattr(device, "shared_budget", lambda fn: H200[1] - STATIC)
    # two blocks of up to 100 KB fit one multiprocessor, one block of more, none past the budget
    monkeypatch.setattr(device, "co_resident", lambda fn, threads, shared: 2 if shared <= 100_000 else
                        1 if shared <= H200[1] - STATIC else 0)


class _FakeDriver:
    """libcuda's attribute calls: a static size per kernel, and every limit set."""

    def __init__(self):
        self.limits = []

    def cuFuncGetAttribute(self, out, attribute, function):
        out._obj.value = STATIC
        return 0

    def cuFuncSetAttribute(self, function, attribute, value):
        self.limits.append(value.value)
        return 0


def test_the_shared_memory_limit_is_raised_once_and_leaves_room_for_static_memory(monkeypatch):
    """One kernel serves every workspace: its limit is set once, to what a block may opt in to less its
    static shared memory, and never lowered by a smaller batch (a later larger launch would fail)."""
    fake = _FakeDriver()
    monkeypatch.setattr(device, "_driver", lambda: fake)
    monkeypatch.setattr(device, "on_chip", lambda: H200)
    monkeypatch.setattr(device, "_BUDGETS", {})
    assert device.shared_budget(7) == device.shared_budget(7) == H200[1] - STATIC
    assert fake.limits == [H200[1] - STATIC]
    assert device.co_resident(7, 256, H200[1]) == 0  # past the budget: no driver call, no fit


def shape(spec, schedule, B, H, T=100, phase="forward", alone=True):
    program = build_program(lstmdsl.parse(spec).cell, schedule)
    pers = getattr(program.plan, phase).loop.persistent
    if pers is None:  # `persistent auto` where the cost model can never choose it: no kernel in the plan
        return None
    return persistent.launch_shape(pers, program.kernels[pers.name], 0, _Workspace(B, T, input=H, hidden=H,
                                                                                 proj=max(1, H // 2)), alone)


def test_the_split_rules_count_only_where_all_the_weights_fit_one_block():
    p = Persistent((), work=((16, 1, 1 << 20),), split_work=((256, 1, 1 << 26),))
    assert p.applies(16, 1 << 20, True) and not p.applies(17, 100, True) and p.applies(17, 100, True, split=True)
    assert not p.applies(257, 100, True, split=True) and not p.applies(64, 100, False, split=True)
    assert not Persistent((), work=((16, 1, 1 << 20),)).applies(17, 100, True, split=True)
    rows = Persistent((), row_work=((64, 1, 1 << 14),))  # by a batch row's multiply-adds
    assert rows.applies(64, 64 << 14, True, split=True) and rows.applies(1, 1 << 14, True, split=True)
    assert not rows.applies(1, (1 << 14) + 1, True, split=True) and not rows.applies(65, 65 << 14, True, split=True)
    assert not rows.applies(64, 64 << 14, True) and not rows.applies(4, 4 << 14, False, split=True)


def test_the_cost_model_rule():
    p = Persistent((), work=((16, 0, 1 << 14), (16, (1 << 16) + 1, 1 << 24), (1, 1 << 26, 1 << 27)))
    assert p.applies(16, 1 << 24, True) and not p.applies(17, 100, True) and not p.applies(1, 100, False)
    assert not p.applies(16, (1 << 24) + 1, True) and not p.applies(1, 1 << 16, True) and p.applies(1, 1 << 14, True)
    assert p.applies(1, 1 << 26, True) and not p.applies(2, 1 << 26, True)  # a rule's own batch limit
    assert Persistent((), forced=True).applies(1000, 1 << 40, False)
    assert p.blocks(work=65536, elements=32, one_block_bytes=20_000, shared=H200[1], multiprocessors=132) == 1
    assert p.blocks(work=65537, elements=512, one_block_bytes=20_000, shared=H200[1], multiprocessors=132) == 132
    assert p.blocks(work=100, elements=3, one_block_bytes=10**6, shared=H200[1], multiprocessors=132) == 3


def test_launch_shapes_at_bound_sizes(h200):
    small = shape("vanilla", Schedule(persistent="on"), B=1, H=32)
    assert (small.blocks, small.cached, small.stage_rows) == (1, True, 1)
    two = shape("vanilla", Schedule(persistent="on"), B=2, H=32)  # a row a block (split_rows)
    assert (two.blocks, two.cached, two.stage_rows, two.split) == (2, True, 1, 1)
    wide = shape("vanilla", Schedule(persistent="on"), B=16, H=1024)
    assert wide.blocks == 132 and wide.cached and wide.stage_rows == 16 and wide.shared <= H200[1]
    # 64 MB of weights cannot stay on chip: a forced launch reads them from memory, all rows staged
    huge = shape("vanilla", Schedule(persistent="on"), B=4, H=2048)
    assert not huge.cached and huge.blocks == 132 and huge.stage_rows == 4
    # the operand rows that fit beside the weights are staged a few at a time
    many = shape("vanilla", Schedule(persistent="on"), B=512, H=1024)
    assert many.cached and 1 <= many.stage_rows < 512 and many.shared <= H200[1]


def test_a_direction_beside_another_takes_half_the_multiprocessors_where_its_weights_fit_there(h200):
    """The two directions of a bidirectional layer run at once: each grid on half the multiprocessors (the two then
    resident together) where its weights stay on chip there, else on all of them (the two taking turns)."""
    for B, H in ((1, 512), (16, 256), (16, 512)):
        alone, beside = shape("vanilla", Schedule(), B, H), shape("vanilla", Schedule(), B, H, alone=False)
        assert alone.blocks == H200[0] and beside.blocks == H200[0] // 2 and beside.cached, (B, H)
    back = shape("vanilla", Schedule(persistent="on"), 1, 512, phase="backward", alone=False)  # (the backward too)
    assert back.blocks == H200[0] // 2 and back.cached
    # 16 MB of fp32 weights fit 132 blocks' shared memory, not 66: all the multiprocessors, as alone
    wide, wide_alone = (shape("vanilla", Schedule(), 16, 1024, alone=a) for a in (False, True))
    assert wide.blocks == wide_alone.blocks == H200[0] and wide.cached
    # a grid that splits the batch keeps its blocks (256 x 32: 128 blocks of 2 rows), and a grid that would stage
    # fewer rows at a time on half of them keeps all (16 x 900 forced: 16 rows staged on 132, fewer on 66)
    split, split_alone = (shape("vanilla", Schedule(), 256, 32, alone=a) for a in (False, True))
    assert split.split and (split.blocks, split.split) == (split_alone.blocks, split_alone.split)
    wide = shape("vanilla", Schedule(persistent="on"), 16, 900, alone=False)
    assert wide.blocks == H200[0] and wide.stage_rows == 16
    # in every precision (tf32 runs fp32's kernels; bf16 and fp16 measured too), float32 layers only
    for precision in ("bf16", "fp16", "tf32"):
        run = shape("vanilla", Schedule(precision=precision, persistent="on"), 16, 256, alone=False)
        assert run.blocks == H200[0] // 2, precision
    for precision, dtype, said in (("fp32", "float32", True), ("bf16", "float32", True), ("fp32", "float64", False)):
        schedule = Schedule(precision=precision, persistent="on")  # (float64: no persistent kernel under auto)
        plan = build_program(lstmdsl.parse("vanilla").cell, schedule, dtype=dtype).plan
        assert ("1/2 of the multiprocessors" in format_plan(plan)) == said, (precision, dtype)  # (`--emit plan`)
    one = Persistent((), beside_grids=1)  # (1: every grid on all of them)
    assert one.multiprocessors(132, alone=False) == 132 and Persistent(()).multiprocessors(132, alone=False) == 132
    assert Persistent((), beside_grids=2).multiprocessors(132, alone=False) == 66
    assert Persistent((), beside_grids=2).multiprocessors(132, alone=True) == 132


def test_auto_keeps_the_stepwise_loop_where_the_cost_model_says(h200, monkeypatch):
    """`persistent auto` at fp32: the persistent launch for an LSTM at B <= 16 at every size up to 2^26
    multiply-adds a step (one block to 2^16, then a grid), to B = 64 in a layer of one direction (to 2^25 in the
    directions of a bidirectional layer, each grid on half the multiprocessors), and at 16 < B <= 256 where all
    the weights fit one block (one block, or a grid that splits the batch); the stepwise loop past the limits, for cells of
    several stages or row reductions; tf32 as fp32 (the same kernels); in half precision where a grid runs, at
    B = 1 from 2^18 to 2^22, B <= 4 from 2^19 to 2^20 and B = 2-16 from 2^21 to 2^26, and in one block or a split
    grid at B <= 64
    while a batch row's step is at most 2^14 multiply-adds (passes/persistent.py: LIMITS, SPLIT_LIMITS and
    ROW_LIMITS, as measured)."""
    from lstmdsl.passes.persistent import ALONE_LIMITS, SPLIT_LIMITS

    max_alone = max(b for b, _, _ in ALONE_LIMITS["fp32"])
    max_split = max(b for b, _, _ in SPLIT_LIMITS["fp32"])
    assert shape("vanilla", Schedule(), B=1, H=32) is not None
    assert shape("vanilla", Schedule(), B=1, H=64) is not None  # 2^14: one block, h handed on in shared memory
    assert shape("vanilla", Schedule(), B=1, H=128) is not None  # 2^16
    assert shape("vanilla", Schedule(), B=1, H=256) is not None  # 2^18: a grid
    assert shape("vanilla", Schedule(), B=1, H=1024) is not None  # 2^22
    assert shape("vanilla", Schedule(), B=1, H=8192) is None  # 2^28: past the rules
    assert shape("vanilla", Schedule(), B=4, H=32) is not None  # 2^14
    assert shape("vanilla", Schedule(), B=8, H=256) is not None  # 2^21
    assert shape("vanilla", Schedule(), B=16, H=128) is not None  # 2^20
    assert shape("vanilla", Schedule(), B=16, H=1024) is not None  # 2^26
    assert shape("vanilla", Schedule(), B=16, H=2048) is None  # 2^28
    # past B = 16 only where all the weights fit one block: one block, or a grid that splits the batch
    assert shape("vanilla", Schedule(), B=64, H=16).split == 1  # 2^16
    assert shape("vanilla", Schedule(), B=32, H=64).split == 1  # 2^19
    assert shape("peephole", Schedule(), B=64, H=64).split == 1
    assert shape("vanilla", Schedule(), B=max_split, H=100).split == 2  # 256 rows over 132 blocks
    # past B = 16 a grid over the elements in a layer of one direction, to 2^26 (B = 64, H = 512); in a
    # bidirectional layer's directions a grid on half the multiprocessors, to 2^25 (BESIDE_LIMITS)
    for B, H in ((17, 256), (32, 512), (64, 128), (64, 512)):  # (256 KB of weights and more: not in one block)
        alone, beside = shape("vanilla", Schedule(), B=B, H=H), shape("vanilla", Schedule(), B=B, H=H, alone=False)
        assert alone is not None and alone.blocks > 1 and not alone.split, (B, H)
        if B * 4 * H * H <= 1 << 25:
            assert beside is not None and 1 < beside.blocks <= H200[0] // 2 and not beside.split, (B, H)
        else:
            assert beside is None, (B, H)
    assert shape("vanilla", Schedule(), B=65, H=128, alone=False) is None  # (past B = 64: stepwise either way)
    assert shape("vanilla", Schedule(precision="tf32"), B=32, H=256, alone=False) is not None  # (as fp32)
    assert shape("vanilla", Schedule(precision="bf16"), B=32, H=256, alone=False) is None  # (not measured)
    assert shape("vanilla", Schedule(), B=16, H=512, alone=False) is not None  # (B <= 16: either way)
    assert shape("vanilla", Schedule(), B=64, H=1024) is None  # 2^28
    assert shape("vanilla", Schedule(), B=max_alone + 1, H=256) is None
    assert shape("vanilla", Schedule(persistent="on"), B=max_split + 1, H=32).split == 2  # (forced)
    for precision in ("bf16", "fp16"):
        half = Schedule(precision=precision)
        assert shape("vanilla", half, B=1, H=1024) is not None and shape("vanilla", half, B=4, H=256) is not None
        assert shape("vanilla", half, B=4, H=512) is not None and shape("vanilla", half, B=16, H=256) is not None
        assert shape("vanilla", half, B=2, H=512) is not None and shape("vanilla", half, B=8, H=256) is not None
        # 2^26 (since the products' tiles took the gates' rows together), 2^20, 2^27
        assert shape("vanilla", half, B=16, H=1024) is not None and shape("vanilla", half, B=16, H=128) is None
        assert shape("vanilla", half, B=16, H=1448) is None
        # (from B = 2: B = 1 keeps its own rule, measured to 2^22, H = 1024)
        assert shape("vanilla", half, B=2, H=1024) is not None and shape("vanilla", half, B=1, H=1448) is None
        assert shape("vanilla", half, B=8, H=1024) is not None and shape("vanilla", half, B=17, H=1024) is None
        assert shape("vanilla", half, B=32, H=256) is None  # (ALONE_LIMITS: fp32 only)
        assert shape("vanilla", half, B=2, H=256).blocks > 1
        # one block or a split grid: while a batch row is at most 2^14 multiply-adds a step (H <= 64), to B = 64
        assert shape("vanilla", half, B=1, H=16).blocks == 1 and shape("vanilla", half, B=1, H=64).blocks == 1
        assert shape("vanilla", half, B=2, H=16).split == 1 and shape("vanilla", half, B=64, H=64).split == 1
        for B, H in ((1, 96), (1, 128), (4, 128), (65, 16), (64, 65)):  # a row's products on one multiprocessor
            assert shape("vanilla", half, B=B, H=H) is None, (B, H)
        assert shape("gru", half, B=1, H=16) is None  # (two stages: no half rule; the row rule is single-stage only)
    for B, H in ((1, 256), (16, 1024), (64, 64), (256, 32), (17, 1024)):  # tf32: fp32's rules and launches
        assert shape("vanilla", Schedule(precision="tf32"), B=B, H=H) == shape("vanilla", Schedule(), B=B, H=H), (B, H)
    # (these two: under `persistent auto` their plans have no persistent kernel at all, passes/persistent.py)
    assert shape("gru", Schedule(), B=1, H=256) is None
    assert shape("indrnn", Schedule(), B=1, H=4096) is None  # no products: its kernel would be one block
    # past the limits the driver is not asked anything (a limit it refuses cannot break the call)
    monkeypatch.setattr(device, "shared_budget", lambda fn: pytest.fail("asked the driver"))
    assert shape("vanilla", Schedule(), B=max_split + 1, H=32) is None
    assert shape("vanilla", Schedule(), B=max_alone + 1, H=128) is None  # weights too large for one block
    assert shape("vanilla", Schedule(), B=max_alone + 1, H=128, alone=False) is None  # (past BESIDE_LIMITS too)
    assert shape("layernorm", Schedule(), B=1, H=674) is None


def test_auto_runs_a_cell_of_two_product_stages_where_its_rules_say(h200):
    """GRU and MGU (two stages, each with recurrent products of square matrices: passes/persistent.py,
    STAGED_LIMITS as measured with the GRU): a split grid at B <= 64 where all the weights fit one block,
    B = 1 from 2^19 multiply-adds a step, B <= 64 from 2^23; the stepwise loop elsewhere, and always for
    their backward.
    LSTMP (two stages, with a projection) never."""
    for B, H, chosen in ((1, 512, True), (1, 256, False), (1, 1024, True), (16, 128, True), (64, 128, True),
                         (16, 256, False), (16, 512, True), (64, 256, True), (64, 512, True), (4, 512, False),
                         (128, 64, False), (65, 256, False)):
        run = shape("gru", Schedule(), B=B, H=H)
        assert (run is not None) == chosen, (B, H, run)
        if chosen and H <= 128 and B > 1:
            assert run.split >= 1
    assert shape("mgu", Schedule(), B=16, H=128) is not None and shape("mgu", Schedule(), B=16, H=256) is None
    assert shape("gru", Schedule(), B=1, H=1024, phase="backward") is None
    assert shape("lstmp", Schedule(), B=16, H=96) is None  # (its projection: measured slower)


def test_auto_runs_a_stage_of_several_operands_where_its_rules_say(h200):
    """FGR (one stage of products of h and the three gates: passes/persistent.py, MANY_LIMITS and
    MANY_ALONE_LIMITS as measured): at B = 1 from 2^19 multiply-adds a step, and at B = 4-16 from 2^23 in a
    layer of one direction; the stepwise loop elsewhere, and always for its backward."""
    for B, H, chosen in ((1, 32, False), (16, 32, False), (1, 64, False), (16, 64, False), (1, 128, False),
                         (1, 256, True), (1, 512, True), (1, 1024, False), (2, 512, False), (4, 512, True),
                         (8, 512, True), (16, 256, True), (16, 384, True), (16, 512, True), (16, 128, False),
                         (4, 256, False), (17, 512, False), (64, 256, False), (64, 512, False), (4, 1024, False)):
        # (H = 1024: 53 MB of weights, more than the chip's shared memory)
        run = shape("fgr", Schedule(), B=B, H=H)
        assert (run is not None) == chosen, (B, H, run)
        beside = shape("fgr", Schedule(), B=B, H=H, alone=False)  # a direction of a bidirectional layer
        assert (beside is not None) == (chosen and B == 1), (B, H, beside)
    assert not shape("fgr", Schedule(), B=1, H=512).exchange  # (several operands: the grid barrier)
    assert shape("fgr", Schedule(), B=1, H=1024, phase="backward") is None


def test_no_rules_for_a_loop_with_the_inputs_products_not_measured():
    """Under `no hoist input` the products of x and of h are one stage of two operands (a run of GEMMs that
    read none of each other's products): forced, one stage; under `persistent auto` no kernel (not
    measured), as before the run became one stage."""
    for name in ("vanilla", "peephole", "gru", "indrnn"):
        spec = lstmdsl.parse(name)
        auto = build_program(spec.cell, Schedule(hoist_input=False)).plan
        assert auto.forward.loop.persistent is None and auto.backward.loop.persistent is None, name
    forced = build_program(lstmdsl.parse("vanilla").cell, Schedule(hoist_input=False, persistent="on")).plan
    (stage,) = forced.forward.loop.persistent.stages
    nodes = forced.forward.nodes
    assert {nodes[a].op for i in stage.nodes if nodes[i].op == "matvec" for a in nodes[i].args} == {"input", "state"}


def test_auto_runs_the_backward_kernel_where_its_rules_say(h200):
    """The backward's persistent kernel under `persistent auto` (passes/persistent.py: BACKWARD_LIMITS and
    BACKWARD_SPLIT_LIMITS): at B <= 4 from 2^22 multiply-adds a step (B = 1, H = 1024; B = 4, H = 512), at
    B = 5-16 from 2^20 (below), and at B <= 256 from 2^18 where the grid splits the batch; the stepwise backward
    elsewhere (at B = 16, H = 32 the split grid's rule starts at 2^18: 2^16 there)."""
    for B, H, chosen in ((1, 1024, True), (4, 512, True), (4, 1024, True), (2, 1024, True), (1, 512, False),
                         (4, 256, False), (16, 512, True), (5, 1024, True), (1, 32, False), (17, 512, False),
                         (64, 32, True), (256, 64, True), (64, 100, True), (16, 32, False), (64, 128, False),
                         (257, 32, False)):
        run = shape("vanilla", Schedule(), B=B, H=H, phase="backward")
        assert (run is not None) == chosen, (B, H, run)
        if chosen:  # (a grid that splits the batch at B >= 64, where the weights fit one block)
            assert run.cached and (run.blocks == 132 if B < 64 else run.split >= 1)
    assert shape("vanilla", Schedule(persistent="off"), B=1, H=1024, phase="backward") is None
    assert shape("vanilla", Schedule(persistent="on"), B=16, H=32, phase="backward") is not None  # forced


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_auto_runs_the_half_precision_backward_kernel_where_its_rules_say(h200, precision):
    """bf16 and fp16 (BACKWARD_LIMITS' half-precision rules): at B = 1 from 2^20 to 2^22 multiply-adds a step
    (H = 512, 1024), at B = 2-4 from 2^22 (4 x 512), at B = 5-16 from 2^21 (8 x 256, 16 x 256, 16 x 300, 6 x 512,
    8 x 512, 12 x 512, 16 x 512, 16 x 1024); 1 x 256 (2^18, a tie on the H200), 4 x 256 (2^20) and 6 x 128 and
    16 x 128 (under 2^21, not measured) keep the stepwise backward."""
    for B, H, chosen in ((1, 512, True), (1, 1024, True), (4, 512, True), (2, 1024, True), (16, 512, True),
                         (16, 1024, True), (8, 1024, True), (8, 512, True), (12, 512, True), (1, 256, False),
                         (8, 256, True), (16, 256, True), (16, 300, True), (4, 256, False), (6, 512, True),
                         (6, 128, False), (16, 128, False), (7, 256, False)):
        run = shape("vanilla", Schedule(precision=precision), B=B, H=H, phase="backward")
        assert (run is not None) == chosen, (B, H, run)


def test_auto_runs_the_fp32_backward_kernel_at_middle_batches_and_tf32_only_to_2_24(h200):
    """fp32 (BACKWARD_LIMITS, thirtieth session): at B = 5-16 from 2^20 multiply-adds a step (16 x 128 to
    16 x 1024), beside B <= 4 from 2^22; tf32 takes the same kernels but its stepwise backward's GEMMs run on the
    tensor cores, so its B = 5-16 rule stops at 2^24 (16 x 1024 lost 1.24x there); 8 x 128 (2^19) and 4 x 256 keep
    the stepwise backward in both."""
    for B, H, fp32, tf32 in ((16, 128, True, True), (6, 256, True, True), (8, 512, True, True),
                             (16, 512, True, True), (16, 1024, True, False), (12, 768, True, False),
                             (8, 128, False, False), (4, 256, False, False), (4, 1024, True, True),
                             (1, 1024, True, True)):
        for precision, chosen in (("fp32", fp32), ("tf32", tf32)):
            run = shape("vanilla", Schedule(precision=precision), B=B, H=H, phase="backward")
            assert (run is not None) == chosen, (precision, B, H, run)


def test_a_cell_that_fills_shared_memory_leaves_room_for_the_static_part(h200):
    """layernorm at H = 674, B = 64 needs all but 16 bytes of the opt-in limit: with the static shared
    memory counted it stages fewer rows instead of asking for more than a block may have."""
    run = shape("layernorm", Schedule(persistent="on"), B=64, H=674)
    assert run is not None and run.shared <= H200[1] - STATIC


def _layout_bytes(desc, run, env) -> int:
    """The dynamic shared memory the kernel carves out (templates/persistent.cu.j2, written out again here
    from the template, not from runtime/persistent.py): the cached weights' rows, then the widest of the
    product stages' staging areas (operand rows, then the products), each area rounded up to 16 bytes."""
    item = {"float": 4, "double": 8, "lstmdsl_bf16": 2, "lstmdsl_f16": 2}
    r16, r4 = (lambda n: -(-n // 16) * 16), (lambda n: -(-n // 4) * 4)
    blocks = 1 if run.split else run.blocks  # (a grid that splits the batch: every block all the elements)
    J = lambda widths: -(-max(env[w] for w in widths) // blocks)  # noqa: E731
    weights = sum(r16(J(c.widths) * r4(env[c.cols[2:]]) * item[c.ctype]) for c in desc.cached) if run.cached else 0
    staging = [sum(r16(run.stage_rows * r4(env[o.cols[2:]]) * item[o.ctype]) for o in ops)
               + sum(len(g) for g in products) * r16(run.stage_rows * J(widths) * desc.real_bytes)
               for ops, products, widths in zip(desc.staged, desc.products, desc.widths) if ops]
    return weights + max(staging + [0])


@pytest.mark.parametrize("dtype,precision", [("float32", "fp32"), ("float64", "fp32"), ("float32", "bf16")])
def test_the_launch_gives_the_kernel_all_the_shared_memory_its_layout_takes(h200, dtype, precision):
    """Every shipped spec with a persistent kernel, at sizes that leave every rounding something to do: the
    launch's dynamic shared memory covers the kernel's layout (an f64 product area rounded to 4 elements
    once passed it by 8-16 bytes, which no GPU test noticed)."""
    from conftest import SPECS

    checked = split = 0
    for name in SPECS:
        program = build_program(lstmdsl.parse(name).cell, Schedule(persistent="on", precision=precision), dtype)
        pers = program.plan.forward.loop.persistent
        if pers is None:
            continue
        desc = program.kernels[pers.name]
        for H in (1, 3, 33, 100, 257):
            for B in (1, 3, 17, 64):
                ws = _Workspace(B, 7, input=H, hidden=H, proj=max(1, H // 2))
                env = ws.env
                run = persistent.launch_shape(pers, desc, 0, ws)
                if run is None:
                    continue
                assert run.shared >= _layout_bytes(desc, run, env), (name, dtype, precision, H, B, run)
                checked += 1
                split += bool(run.split)
    assert checked > 100 and split > 20


def test_a_grid_splits_the_batch_where_all_the_weights_fit_one_block(h200):
    """Persistent.split_rows: at B >= 2, a grid whose blocks each hold all the weights runs its share of the
    batch rows alone (no grid barrier, no exchange), where the weights fit one block; at one row one block (or
    past one block's work a grid splitting the elements), and so with weights too large for one block."""
    on = Schedule(persistent="on")
    b64 = shape("vanilla", on, B=64, H=32)
    assert (b64.split, b64.blocks, b64.stage_rows, b64.exchange) == (1, 64, 1, False) and b64.cached
    b300 = shape("vanilla", on, B=300, H=64)  # 3 rows a block: 100 blocks
    assert (b300.split, b300.blocks, b300.stage_rows) == (3, 100, 3)
    assert shape("vanilla", on, B=4, H=32).split == 1 and shape("vanilla", on, B=4, H=32).blocks == 4  # 2^14
    assert shape("vanilla", on, B=1, H=100).split == 0 and shape("vanilla", on, B=1, H=100).blocks == 1
    assert shape("vanilla", on, B=16, H=512).split == 0  # 4 MB of weights: the elements split
    assert shape("vanilla", on, B=1, H=512).split == 0
    assert shape("gru", on, B=16, H=64).split == 1  # stages of several kinds: block barriers between them
    assert shape("vanilla", on, B=64, H=32, phase="backward").split == 1  # (the transposed products too)
    p = Persistent((), split_batch=False)
    assert p.split_rows(64, 1000, H200[1], 132) == 0
    assert Persistent(()).split_rows(64, 1000, H200[1], 132) == 1
    assert Persistent(()).split_rows(264, 1000, H200[1], 132) == 2
    assert Persistent(()).split_rows(4, 1000, H200[1], 132) == 1  # (one block's work: still a row a block)
    assert Persistent(()).split_rows(1, 1000, H200[1], 132) == 0
    assert Persistent(()).split_rows(64, H200[1] + 1, H200[1], 132) == 0  # too large for one block


def test_a_grid_hands_its_state_on_in_tagged_words_only_where_it_pays(h200):
    """Persistent.exchanges: a grid of a one-stage float32 kernel skips the grid barrier (tagged words) when
    a step's words (B x H) fit one round of the staging's loads (4096); one block hands h on in shared memory,
    larger batches keep the barrier, and so do kernels without an exchanged operand (GRU); half precision
    exchanges as float32 does."""
    on = Schedule(persistent="on")
    assert shape("vanilla", on, B=1, H=512).exchange and shape("vanilla", on, B=1, H=512).blocks > 1
    assert shape("vanilla", on, B=4, H=1024).exchange  # 4096 words
    assert not shape("vanilla", on, B=8, H=1024).exchange  # 8192
    assert not shape("vanilla", on, B=16, H=512).exchange
    one = shape("vanilla", on, B=1, H=32)
    assert one.blocks == 1 and not one.exchange
    assert not shape("gru", on, B=1, H=512).exchange
    assert shape("vanilla", Schedule(persistent="on", precision="bf16"), B=1, H=512).exchange
    assert not shape("vanilla", Schedule(persistent="on", precision="fp16"), B=16, H=512).exchange
    p = Persistent((), exchange=3)
    assert p.exchanges(4096) and not p.exchanges(4097) and not Persistent(()).exchanges(1)


def test_which_launches_run_a_kernel_compiled_for_their_shape(h200):
    """`specialise auto` (Persistent.specialises): every launch but a grid that hands its state on in tagged words
    over more than specialise_batch rows; `specialise` every launch, `no specialise` none. The schedule carries
    the choice into both phases' kernels."""
    auto = Persistent(())
    assert auto.specialises(1, 1, 0, False) and auto.specialises(64, 64, 1, False) and auto.specialises(16, 16, 1, False)
    assert auto.specialises(4, 132, 0, True) and auto.specialises(64, 132, 0, False) and auto.specialises(16, 132, 0, False)
    assert not auto.specialises(5, 132, 0, True) and not auto.specialises(16, 132, 0, True)
    assert Persistent((), specialise="on").specialises(256, 132, 0, True)
    assert not Persistent((), specialise="off").specialises(1, 1, 0, False)
    for words, mode in (("", "auto"), ("specialise", "on"), ("no specialise", "off"), ("specialise auto", "auto")):
        program = build_program(lstmdsl.parse("vanilla").cell, lstmdsl.parse_schedule("persistent; " + words))
        assert program.plan.forward.loop.persistent.specialise == mode
        assert program.plan.backward.loop.persistent.specialise == mode
        text = format_plan(program.plan)  # (`--emit plan` says which kernel a launch runs)
        assert {"on": "the schedule says specialise", "off": "the schedule says no specialise",
                "auto": "on a thread of its own"}[mode] in text
    for words in ("precision bf16", "precision fp16", "precision tf32"):  # (tf32's kernels are fp32's)
        plan = build_program(lstmdsl.parse("vanilla").cell, lstmdsl.parse_schedule("persistent; " + words)).plan
        pers = plan.forward.loop.persistent
        assert pers.specialise_auto and pers.specialises(1, 1, 0, False), words
        assert plan.backward.loop.persistent.specialise_auto, words
        assert "only in float32 layers" not in format_plan(plan), words
    half = build_program(lstmdsl.parse("vanilla").cell, lstmdsl.parse_schedule("persistent; specialise; precision bf16"))
    assert half.plan.forward.loop.persistent.specialises(1, 1, 0, False)
    double = build_program(lstmdsl.parse("vanilla").cell, Schedule(persistent="on"), dtype="float64")
    assert not double.plan.forward.loop.persistent.specialise_auto
    assert "only in float32 layers" in format_plan(double.plan)  # (where it was not measured: `--emit plan` says so)
    # the launches of the measured shapes: one block at B = 1, H = 32; a split grid at B = 64, H = 64; a grid at
    # B = 1, H = 512 and B = 4, H = 256 (exchanging), B = 64, H = 128 and B = 16, H = 512 (not): specialised;
    # grids that exchange at B = 8, H = 256 and B = 16, H = 128 and 256: not (1.18-1.41x slower compiled)
    for B, H, want in ((1, 32, True), (64, 64, True), (1, 512, True), (4, 256, True), (64, 128, True),
                       (16, 512, True), (8, 256, False), (16, 128, False), (16, 256, False)):
        run = shape("vanilla", Schedule(persistent="on"), B=B, H=H)
        assert auto.specialises(B, run.blocks, run.split, run.exchange) == want, (B, H, run)
    # half precision: exchanging grids compiled up to B = 8 (8 x 256, 8 x 512: 0.92-0.96x), not at 16 x 256 (1.10x)
    for precision in ("bf16", "fp16"):
        half = Schedule(persistent="on", precision=precision)
        pers = build_program(lstmdsl.parse("vanilla").cell, half).plan.forward.loop.persistent
        for B, H, want in ((8, 256, True), (8, 512, True), (16, 256, False)):
            run = shape("vanilla", half, B=B, H=H)
            assert run.exchange and pers.specialises(B, run.blocks, run.split, run.exchange) == want, (precision, B, H)


def test_float64_keeps_the_stepwise_loop_under_auto():
    """The cost model's rules were measured in float32: a float64 layer has none under `persistent auto` (no
    kernel compiled that never runs), and `persistent` still forces it. (The persistent pass runs before the
    types pass; the layer's element type reaches it from make_plan.)"""
    cell = lstmdsl.parse("vanilla").cell
    assert build_program(cell, Schedule(), dtype="float64").plan.forward.loop.persistent is None
    assert build_program(cell, Schedule(), dtype="float32").plan.forward.loop.persistent is not None
    forced = build_program(cell, Schedule(persistent="on"), dtype="float64").plan.forward.loop.persistent
    assert forced is not None and forced.forced


def test_a_forced_persistent_loop_that_cannot_be_one_says_why():
    """`persistent` where a loop cannot run persistent (passes/persistent.py: why_not_persistent): the layer
    norm's backward (rows reduced in its step), a backward under `no batch weights` (weight gradients in its
    step); --emit plan prints the reason beside the stepwise loop, and
    nothing is said where the loop runs persistent (the sLSTM's block-diagonal matrices too), under `no fold
    sums`, or where the schedule leaves it to auto."""
    from lstmdsl.passes.persistent import why_not_persistent

    def why(name, text="persistent"):
        plan = build_program(lstmdsl.parse(name).cell, parse_schedule(text)).plan
        return why_not_persistent(plan, "forward"), why_not_persistent(plan, "backward"), format_plan(plan)

    fwd, bwd, text = why("layernorm")
    assert fwd is None and "reduces rows" in bwd and "though the schedule says persistent: a kernel" in text
    fwd, bwd, _ = why("vanilla", "persistent; no batch weights")  # (weight gradients in the backward's step)
    assert fwd is None and "accumulates the weight gradients" in bwd
    for name, schedule in (("vanilla", "persistent"), ("gru", "persistent; no fold sums"), ("gru", "persistent"),
                           ("gru", "persistent; no fuse gates"),
                           ("slstm", "persistent auto"), ("slstm", "persistent")):
        fwd, bwd, text = why(name, schedule)
        assert fwd is None and bwd is None and "though the schedule says persistent" not in text, name


def test_block_diagonal_matrices_get_their_own_rules():
    """The sLSTM (block-diagonal recurrent matrices) under `persistent auto`: the forward's kernel by HEADS_LIMITS
    (B <= 16 in every precision), reading the head-by-head copy, and the backward's by HEADS_BACKWARD_LIMITS (tf32
    only to 2^24 multiply-adds a step), whatever the storage (`fuse recurrent` keeps the stacks in order); under
    `persistent` both kernels. A cell whose whole recurrent matrices are stored head by head (they share their
    gradients' buffer with block-diagonal input matrices) gets no kernel under auto: it would read that copy as if
    in order."""
    from lstmdsl.passes.persistent import HEADS_BACKWARD_LIMITS, HEADS_LIMITS

    cell = lstmdsl.parse("slstm").cell
    for text in ("persistent auto", "persistent auto; fuse recurrent"):
        plan = build_program(cell, parse_schedule(text)).plan
        assert plan.forward.loop.persistent.work == HEADS_LIMITS["fp32"] == ((16, 1, 1 << 26),), text
        assert plan.backward.loop.persistent.work == HEADS_BACKWARD_LIMITS["fp32"], text
    for precision in ("tf32", "bf16", "fp16"):
        plan = build_program(cell, Schedule(precision=precision)).plan
        assert plan.forward.loop.persistent.work == ((16, 1, 1 << 26),), precision
        assert plan.backward.loop.persistent.work == ((16, 1, 1 << (24 if precision == "tf32" else 26)),), precision
    forced = build_program(cell, Schedule(persistent="on")).plan
    assert forced.forward.loop.persistent.forced and forced.backward.loop.persistent.forced
    whole = lstmdsl.parse(HEADS_ON_INPUT).cell
    auto = build_program(whole, Schedule()).plan
    assert any(s.interleave for s in auto.storage.stacks if "R_i" in s.matrices)
    assert auto.forward.loop.persistent is None
    assert build_program(whole, Schedule(persistent="on")).plan.forward.loop.persistent is not None
