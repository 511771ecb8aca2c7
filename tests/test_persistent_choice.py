"""The persistent schedule's choices, on the CPU: the plan's cost model (plan.Persistent) and the launch
shape the runtime derives from it at bound sizes (runtime/persistent.py), with the device's limits given."""

from __future__ import annotations

import pytest

import lstmdsl
from lstmdsl.plan import Persistent
from lstmdsl.program import build_program
from lstmdsl.runtime import device, persistent
from lstmdsl.schedule import Schedule

H200 = (132, 227 * 1024)  # multiprocessors, shared memory one block may have


class _Workspace:
    def __init__(self, B, T, **sizes):
        self.B, self.T, self.env = B, T, dict(sizes, B=B, one=1)


@pytest.fixture
def h200(monkeypatch):
    monkeypatch.setattr(device, "on_chip", lambda: H200)
    # two blocks of up to 100 KB fit one multiprocessor, one block of more, none past the limit
    monkeypatch.setattr(device, "co_resident", lambda fn, threads, shared: 2 if shared <= 100_000 else
                        1 if shared <= H200[1] else 0)


def shape(spec, schedule, B, H, T=100):
    program = build_program(lstmdsl.parse(spec).cell, schedule)
    pers = program.plan.forward.loop.persistent
    return persistent.launch_shape(pers, program.kernels[pers.name], 0, _Workspace(B, T, input=H, hidden=H))


def test_the_cost_model_rule():
    p = Persistent((), max_batch=16)
    assert p.applies(16, True) and not p.applies(17, True) and not p.applies(1, False)
    assert Persistent((), max_batch=0, forced=True).applies(1000, False)
    assert p.blocks(work=65536, elements=32, one_block_bytes=20_000, shared=H200[1], multiprocessors=132) == 1
    assert p.blocks(work=65537, elements=512, one_block_bytes=20_000, shared=H200[1], multiprocessors=132) == 132
    assert p.blocks(work=100, elements=3, one_block_bytes=10**6, shared=H200[1], multiprocessors=132) == 3


def test_launch_shapes_at_bound_sizes(h200):
    small = shape("vanilla", Schedule(persistent="on"), B=2, H=32)
    assert (small.blocks, small.cached, small.stage_rows) == (1, True, 2)
    wide = shape("vanilla", Schedule(persistent="on"), B=16, H=1024)
    assert wide.blocks == 132 and wide.cached and wide.stage_rows == 16 and wide.shared <= H200[1]
    # 64 MB of weights cannot stay on chip: a forced launch reads them from memory, all rows staged
    huge = shape("vanilla", Schedule(persistent="on"), B=4, H=2048)
    assert not huge.cached and huge.blocks == 132 and huge.stage_rows == 4
    # the operand rows that fit beside the weights are staged a few at a time
    many = shape("vanilla", Schedule(persistent="on"), B=512, H=1024)
    assert many.cached and 1 <= many.stage_rows < 512 and many.shared <= H200[1]


def test_auto_keeps_the_stepwise_loop_where_the_cost_model_says(h200):
    from lstmdsl.passes.persistent import MAX_BATCH

    auto = shape("vanilla", Schedule(), B=1, H=256)
    assert (auto is not None) == (MAX_BATCH["fp32"] >= 1)
    assert shape("vanilla", Schedule(), B=MAX_BATCH["fp32"] + 1, H=256) is None
