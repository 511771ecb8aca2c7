"""Stage 3, lowering: projection folding (`fold projection`, passes/projection.py). LSTMP's step runs the kernel
and one GEMM of the next step's products through W P; the plan computes what the reference does under every
schedule; where the pattern does not hold the plan is left as it was, and `--emit plan` says why."""

from __future__ import annotations

import dataclasses

import pytest

import lstmdsl
from lstmdsl.masks import with_lengths
from lstmdsl.passes import make_plan
from lstmdsl.passes.projection import NO_PROJECTION, fold_blocker, folded
from lstmdsl.passes.wavefront import chunk_blocker
from lstmdsl.plan import Fold, Gemm, Kernel
from lstmdsl.planformat import format_plan
from lstmdsl.planverify import PlanError, verify
from lstmdsl.program import build_program
from lstmdsl.schedule import parse_schedule

from test_passes import check_every_schedule


def plan_of(name="lstmp", text="fold projection", dtype="float32", direction="forward", cell=None):
    spec = lstmdsl.parse(name)
    cell = cell or spec.cell
    return build_program(cell, parse_schedule(text, spec.schedule), dtype, direction).plan


def test_every_schedule_with_the_projection_folded_matches_the_reference():
    check_every_schedule("lstmp", fold_projection=True)


# LSTMP whose output is the state read at each step (h, not h'): the loop leaves it unwritten when folded
OUTPUT_OLD = """cell lstmp_old_output {
    input x
    state h : proj, c
    i  = sigmoid(W_i x + R_i h + b_i)
    f  = sigmoid(W_f x + R_f h + b_f)
    z  = tanh(W_z x + R_z h + b_z)
    o  = sigmoid(W_o x + R_o h + b_o)
    c' = f * c + i * z
    h' = P (o * tanh(c'))
    output h
}"""


def test_an_output_of_the_state_read_at_each_step_is_folded_and_matches_the_reference():
    assert folded(plan_of(OUTPUT_OLD))
    check_every_schedule(OUTPUT_OLD, fold_projection=True)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_the_folded_step_is_the_kernel_and_one_gemm_of_the_next_steps_products(direction):
    plan = plan_of(direction=direction)
    assert folded(plan)
    fwd = plan.forward
    kinds = [type(op).__name__ for op in fwd.before]
    assert kinds == ["Gemm", "Fold", "Gemm"] and fwd.before[2].first and fwd.before[2].call.m == ("B",)
    assert [type(op) for op in fwd.loop.body] == [Kernel, Gemm]
    ahead = fwd.loop.body[-1]
    assert ahead.ahead == "P" and ahead.call.b.space == "buffer" and ahead.call.b.name == "folded"
    assert ahead.outputs == fwd.before[2].outputs  # the products the kernel reads, one step ahead
    (project,) = fwd.after
    assert project.matrices == ("P",) and project.call.m == ("T*B",)
    st = plan.storage
    # a forward-only workspace keeps one chunk's steps of v (the projected states formed chunk by chunk), and a
    # stack runs as a wavefront: the Fold and the first products with the first chunk (runtime/issue.py chunk)
    assert st.buffer("folded").rows == ("hidden",) * 4 and st.buffer(project.call.a.name).inference == "C"
    assert plan.chunks is not None and plan.wavefront is not None
    unfolded = plan_of(text="no fold projection", direction=direction)
    assert not folded(unfolded) and len(unfolded.forward.loop.body) == 3
    assert unfolded.backward == plan.backward  # the backward is untouched
    text = format_plan(plan)
    assert "2 launches per step" in text and "fold  weight_hh @ P" in text and "the loop's first step only" in text
    assert "(for the next step: through P, whose product is the next state)" in text
    assert "the projection folded into the step's GEMM" in text


@pytest.mark.parametrize("name, text, why", [
    ("vanilla", "fold projection", "no state of the cell is a projection"),
    ("lstmp", "fold projection; persistent", "a persistent kernel"),
    ("lstmp", "fold projection; precision bf16", "half precision"),
    ("lstmp", "fold projection; no fuse gates", "the step is not one GEMM on the state"),
])
def test_where_the_pattern_does_not_hold_the_plan_is_left_as_it_was_and_says_why(name, text, why):
    plan = plan_of(name, text)
    assert not folded(plan) and why in fold_blocker(plan)
    said = f"no projection folded (`fold projection`): {fold_blocker(plan)}" in format_plan(plan)
    assert said == (name != "vanilla")  # (a cell without a projection: nothing to say)


def test_lengths_keep_the_projection_unfolded():
    """With a length mask the state's update is m * P v + (h - m * h), not the projection's product; a masked
    cell without a projection has nothing to fold, and says nothing of it."""
    spec = lstmdsl.parse("lstmp")
    plan = plan_of(cell=with_lengths(spec.cell))
    assert not folded(plan) and "with lengths, each state's update is held past a sequence's end" in fold_blocker(plan)
    assert "with lengths" in format_plan(plan)
    for name in ("vanilla", "gru"):
        plan = plan_of(name, cell=with_lengths(lstmdsl.parse(name).cell))
        assert fold_blocker(plan) == NO_PROJECTION and "projection folded" not in format_plan(plan)


def test_a_folded_plan_has_nothing_blocking_it():
    plan = plan_of()
    assert folded(plan) and fold_blocker(plan) is None


def test_the_switch_is_on_unless_turned_off_and_reads_back():
    assert parse_schedule("").fold_projection
    schedule = parse_schedule("no fold projection")
    assert not schedule.fold_projection and parse_schedule(schedule.describe()) == schedule
    assert parse_schedule("no fold projection; fold projection").fold_projection
    assert folded(plan_of(text="")) and not folded(plan_of(text="no fold projection"))


def test_every_schedule_with_the_projection_unfolded_matches_the_reference():
    check_every_schedule("lstmp", fold_projection=False)


def test_verify_catches_a_broken_fold():
    plan = plan_of()
    fwd = plan.forward
    (project,) = fwd.after  # the projected states read v one step on: not a chunk's own rows, so no chunks
    shifted = dataclasses.replace(project, call=dataclasses.replace(
        project.call, a=dataclasses.replace(project.call.a, step=1)))
    assert chunk_blocker(dataclasses.replace(plan, forward=dataclasses.replace(fwd, after=(shifted,))))
    with pytest.raises(PlanError, match="chunk"):
        verify(dataclasses.replace(plan, forward=dataclasses.replace(fwd, after=(shifted,))))
    no_first = dataclasses.replace(fwd, before=fwd.before[:2])
    with pytest.raises(PlanError):
        verify(dataclasses.replace(plan, forward=no_first))
    ahead_first = fwd.with_body(fwd.loop.body[::-1])  # the products ahead before the kernel that reads this step's
    with pytest.raises(PlanError, match="reads %"):
        verify(dataclasses.replace(plan, forward=ahead_first))
    fold = next(op for op in fwd.before if isinstance(op, Fold))
    wrong = dataclasses.replace(fold, call=dataclasses.replace(fold.call, trans_b=True))
    with pytest.raises(PlanError, match="Fold"):
        verify(dataclasses.replace(plan, forward=dataclasses.replace(
            fwd, before=tuple(wrong if op is fold else op for op in fwd.before))))
    st = plan.storage
    steps = tuple(dataclasses.replace(b, steps="T") if b.name == "folded" else b for b in st.buffers)
    with pytest.raises(PlanError, match="one only"):
        verify(dataclasses.replace(plan, storage=dataclasses.replace(st, buffers=steps)))
