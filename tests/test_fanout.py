"""The fan-out pass (passes/fanout.py): which of a step's GEMMs run at once, each on a stream of its own. The
runtime's side (forks and joins, in adversarial orders, against the reference) is in tests/emulated/run_cases.py;
the GPU's in tests/test_gpu.py."""

from __future__ import annotations

import dataclasses

import pytest

import lstmdsl
from lstmdsl.grad import differentiate
from lstmdsl.masks import with_lengths
from lstmdsl.passes import make_plan
from lstmdsl.plan import Gemm
from lstmdsl.planformat import format_plan
from lstmdsl.planverify import PlanError, _check_fanout, verify
from lstmdsl.schedule import Schedule

from conftest import SPECS


def plan_of(name, precision="fp32", lengths=False, direction="forward"):
    spec = lstmdsl.parse(name)
    cell = with_lengths(spec.cell) if lengths else spec.cell
    schedule = dataclasses.replace(spec.schedule, precision=precision)
    return make_plan(cell, differentiate(cell) if lengths else spec.grad, schedule, direction=direction)


def test_fgr_runs_its_four_gemms_at_once_each_way_and_vanilla_has_none_to():
    fgr = plan_of("fgr")
    assert fgr.forward.loop.fanout == ((0, 1, 2, 3),)  # the products of h, i, f and o, then the kernel
    assert fgr.backward.loop.fanout == ((1, 2, 3, 4),)  # the kernel, then the four sums
    vanilla = plan_of("vanilla")
    assert vanilla.forward.loop.fanout == vanilla.backward.loop.fanout == ()
    text = format_plan(fgr)
    assert "GEMMs 1-4 of the step run at once" in text and "GEMMs 2-5 of the step run at once" in text


@pytest.mark.parametrize("name", SPECS)
def test_every_group_is_a_run_of_independent_gemms(name):
    """Checked here apart from planverify's check (which make_plan's callers run): consecutive GEMMs, two
    or more, none block-diagonal, none adding into its output, no two sharing an output or one reading
    another's."""
    for precision in ("fp32", "bf16"):
        for lengths in (False, True):
            for direction in ("forward", "reverse"):
                plan = plan_of(name, precision, lengths, direction)
                verify(plan)
                for phase in (plan.forward, plan.backward):
                    for group in phase.loop.fanout:
                        ops = [phase.loop.body[k] for k in group]
                        assert len(ops) >= 2 and list(group) == list(range(group[0], group[-1] + 1))
                        assert all(isinstance(op, Gemm) and op.call.heads is None and not op.accumulate
                                   and op.init is None and not op.call.accumulate for op in ops)
                        outputs = [o for op in ops for o in op.outputs]
                        assert len(outputs) == len(set(outputs))
                        assert not {i for op in ops for i in op.inputs} & set(outputs)
                        assert len({op.call.c for op in ops}) == len(ops)


def test_verify_catches_broken_groups():
    plan = plan_of("fgr")

    def with_fanout(groups):
        loop = dataclasses.replace(plan.forward.loop, fanout=groups)
        return dataclasses.replace(plan, forward=dataclasses.replace(plan.forward, loop=loop))

    for groups, message in ((((0, 1, 2, 3, 4),), "not a GEMM"), (((0,),), "not a run of two"),
                            (((0, 2),), "not a run of two"), (((0, 1), (1, 2)), "not a run of two")):
        with pytest.raises(PlanError, match=message):
            verify(with_fanout(groups))
    first, second = plan.forward.loop.body[:2]
    reads = dataclasses.replace(second, inputs=first.outputs[:1])  # the second reads the first's product
    loop = dataclasses.replace(plan.forward.loop, body=(first, reads) + plan.forward.loop.body[2:])
    broken = dataclasses.replace(plan, forward=dataclasses.replace(plan.forward, loop=loop))
    with pytest.raises(PlanError, match="reads the other's output"):
        _check_fanout(broken.forward, "forward")  # (the dataflow check would not mind: the first computes it)


def test_a_fans_gemms_each_take_a_cublas_lane_of_their_own(monkeypatch):
    """runtime/fanout.py: the i-th GEMM of a group runs with lanes[i], all different from each other, from the
    phase's own lane and from a wavefront's layers' lanes on the same stream (two GEMMs at once must never
    share a cuBLAS workspace). Its lanes are bookkeeping only: checked without a GPU."""
    from types import SimpleNamespace

    from lstmdsl.program import build_program
    from lstmdsl.runtime import cublas, fanout

    monkeypatch.setattr(cublas, "current_device", lambda: 0)
    monkeypatch.setattr(cublas, "_LANES", {})
    monkeypatch.setattr(fanout.device, "is_capturing", lambda stream: False)
    program = build_program(lstmdsl.parse("fgr").cell, Schedule(persistent="off"))
    engine = SimpleNamespace(program=program, use_fanout=True, parts=None, fan_wave="streams",
                             persistent_run=lambda ws, phase: None)
    ws = SimpleNamespace(tuned=set())
    stream = 7
    fan = fanout.fan(engine, ws, "forward", stream, cublas.lane(stream))
    assert fan is not None and fan.wave == "streams" and len(fan.lanes) == 4 == len(set(fan.lanes))
    assert fan.lanes[0] == cublas.lane(stream)
    assert not set(fan.lanes) & {cublas.lane(stream, k) for k in range(1, cublas.MAX_LANES)}
    assert fanout.fan(SimpleNamespace(**{**vars(engine), "use_fanout": False}), ws, "forward", stream, 0) is None
