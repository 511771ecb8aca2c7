"""Stage 3: scheduling. Each pass does what it says to the plan, and every spec under every schedule
computes the same forward and backward results as the reference (the plan run on numpy, float64)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import lstmdsl
from lstmdsl import reference
from lstmdsl.grad import differentiate
from lstmdsl.masks import LENGTH, with_lengths
from lstmdsl.passes import PIPELINE, make_plan, schedule_plan
from lstmdsl.passes.calls import _block_barriers
from lstmdsl.passes.overlay import overlay_holds
from lstmdsl.passes.persistent import BACKWARD_LIMITS, HEADS_BACKWARD_LIMITS
from lstmdsl.plan import Copy, Gemm, Kernel, VectorGrad, WeightGrad
from lstmdsl.planformat import format_plan
from lstmdsl.planrun import plan_backward, plan_forward
from lstmdsl.planverify import PlanError, verify
from lstmdsl.program import build_program
from lstmdsl.schedule import Schedule, parse_schedule

from conftest import SPECS, extra_sizes

SWITCHES = [switch for switch, _ in PIPELINE]
SCHEDULES = [Schedule(**dict(zip(SWITCHES, bits))) for bits in itertools.product([False, True], repeat=len(SWITCHES))]


def plan_for(name, **switches):
    spec = lstmdsl.parse(name)
    return schedule_plan(spec.cell, spec.grad, Schedule(**switches))


@pytest.mark.parametrize("name", SPECS)
def test_every_schedule_matches_the_reference(name):
    check_every_schedule(name)


@pytest.mark.parametrize("name", ["vanilla", "gru", "layernorm", "zoneout_lstm"])
def test_every_schedule_with_the_length_mask(name):
    check_every_schedule(name, masked=True)


def test_every_schedule_with_block_diagonal_matrices():
    check_every_schedule("slstm", num_heads=3)
    check_every_schedule("slstm", masked=True, num_heads=2)


def check_every_schedule(name, masked=False, num_heads=None, **fields):
    """fields: Schedule fields set in every schedule (fold_projection=True: tests/test_projection.py)."""
    T, B, I, H = 4, 3, 5, 6
    layer = lstmdsl.compile(name, input_size=I, hidden_size=H, dtype="float64", seed=11, num_heads=num_heads,
                            **extra_sizes(name))
    rng = np.random.default_rng(5)
    for p in layer.parameters().values():
        p[...] = rng.uniform(-0.7, 0.7, p.shape)
    params = {k.split(".", 1)[1]: v for k, v in layer.parameters().items()}
    sizes = layer.sizes[0]
    xs = rng.standard_normal((T, B, I))
    state = {s.name: rng.standard_normal((B, sizes[s.size])) for s in layer.cell.states}
    steps = {z.name: rng.uniform(0, 2, (T, B, sizes[z.size])) for z in layer.cell.noise}  # any mask values
    cell, grad = layer.cell, layer.spec.grad
    if masked:
        cell = with_lengths(cell)
        grad = differentiate(cell)
        steps[LENGTH] = (np.arange(T)[:, None] < np.array([4, 1, 2])[None]).astype(float)[:, :, None]
    ys, final, tape = reference.layer_forward(cell, params, sizes, xs, state, steps=steps)
    dys = rng.standard_normal(ys.shape)
    dfinal = {k: rng.standard_normal(v.shape) for k, v in final.items()}
    want_grads = {k: np.zeros_like(v) for k, v in params.items()}
    want_dx, want_d0 = reference.layer_backward(cell, grad, params, sizes, tape, dys, dfinal, want_grads)
    for schedule in SCHEDULES:
        schedule = dataclasses.replace(schedule, **fields)
        plan = make_plan(cell, grad, schedule, "float64", trace=lambda _, p: verify(p))
        got_ys, got_final, saved = plan_forward(plan, params, sizes, xs, state, steps)
        what = f"{name} under '{schedule.describe()}'"
        np.testing.assert_allclose(got_ys, ys, rtol=1e-12, atol=1e-13, err_msg=what)
        for k in final:
            np.testing.assert_allclose(got_final[k], final[k], rtol=1e-12, atol=1e-13, err_msg=what)
        if plan.forward.loop.persistent is not None:  # the persistent kernel's stages compute the same
            p_ys, p_final, _ = plan_forward(plan, params, sizes, xs, state, steps, persistent=True)
            np.testing.assert_allclose(p_ys, ys, rtol=1e-12, atol=1e-13, err_msg=what + " (persistent)")
            for k in final:
                np.testing.assert_allclose(p_final[k], final[k], rtol=1e-12, atol=1e-13, err_msg=what + " (persistent)")
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        dx, d0 = plan_backward(plan, params, sizes, saved, dys, dfinal, grads)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-11, atol=1e-12, err_msg=what)
        for k in want_d0:
            np.testing.assert_allclose(d0[k], want_d0[k], rtol=1e-11, atol=1e-12, err_msg=what)
        for k in want_grads:
            np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-11, atol=1e-12, err_msg=f"{what}: d{k}")
        forced = make_plan(cell, grad, dataclasses.replace(schedule, persistent="on"), "float64")
        if forced.backward.loop.persistent is not None:  # the backward's persistent stages compute the same
            verify(forced)
            grads = {k: np.zeros_like(v) for k, v in params.items()}
            dx, d0 = plan_backward(forced, params, sizes, saved, dys, dfinal, grads, persistent=True)
            np.testing.assert_allclose(dx, want_dx, rtol=1e-11, atol=1e-12, err_msg=what + " (persistent)")
            for k in want_grads:
                np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-11, atol=1e-12,
                                           err_msg=f"{what}: d{k} (persistent)")


def gemms(ops):
    return [op for op in ops if isinstance(op, Gemm)]


def test_base_plan_is_one_op_per_node():
    plan = plan_for("vanilla", fuse_gates=False, hoist_input=False, fuse_pointwise=False, batch_weight_grads=False)
    assert len(gemms(plan.forward.loop.body)) == 8
    assert all(len(op.nodes) == 1 for op in plan.forward.loop.body if isinstance(op, Kernel))
    assert plan.forward.before == () and plan.backward.after == ()
    assert all(where == "loop" for where, _ in plan.weight_grads + plan.vector_grads)
    assert (plan.forward.loop.direction, plan.backward.loop.direction) == ("forward", "reverse")


def test_gate_fusion_makes_one_gemm_per_operand():
    plan = plan_for("vanilla", fuse_gates=True, hoist_input=False, fuse_pointwise=False, batch_weight_grads=False)
    fwd = gemms(plan.forward.loop.body)
    assert [g.matrices for g in fwd] == [("W_i", "W_f", "W_z", "W_o"), ("R_i", "R_f", "R_z", "R_o")]
    bwd = gemms(plan.backward.loop.body)
    assert sorted(g.matrices for g in bwd) == [("R_o", "R_z", "R_f", "R_i"), ("W_o", "W_z", "W_f", "W_i")]
    assert not any(g.accumulate for g in bwd)
    assert sorted(w.matrices for _, w in plan.weight_grads) == [("R_o", "R_z", "R_f", "R_i"),
                                                                 ("W_o", "W_z", "W_f", "W_i")]


def test_input_hoisting_moves_the_input_products_out_of_the_loop():
    plan = plan_for("peephole", fuse_gates=True, hoist_input=True, fuse_pointwise=True, batch_weight_grads=True)
    assert [g.matrices for g in plan.forward.before] == [("W_i", "W_f", "W_z", "W_o")]
    assert [g.matrices for g in gemms(plan.backward.after)] == [("W_o", "W_z", "W_f", "W_i")]
    assert all(plan.forward.nodes[g.inputs[0]].op != "input" for g in gemms(plan.forward.loop.body))


def test_pointwise_fusion_leaves_one_kernel_between_gemms():
    plan = plan_for("vanilla")
    assert [type(op).__name__ for op in plan.forward.loop.body] == ["Gemm", "Kernel"]
    assert [type(op).__name__ for op in plan.backward.loop.body] == ["Kernel", "Gemm"]


def test_pointwise_fusion_moves_gemms_ahead_of_kernels_they_do_not_read():
    """GEMMs whose operands come from the step before run first and the pointwise work after them is one
    kernel: FGR's four products (of h, i, f and o) sat between the gates' partial sums, four kernels a
    step; the length mask's 1 - m, computed before the product, was a kernel of its own. A backward's sum
    of products stays after the kernel that computes its gradients (not splitting it in two); a backward
    kernel that reads none of the GEMMs before it moves ahead of them (FGR's last kernel: 6 launches, 5)."""
    kinds = lambda body: [type(op).__name__ for op in body]  # noqa: E731
    fgr = plan_for("fgr")
    assert kinds(fgr.forward.loop.body) == ["Gemm"] * 4 + ["Kernel"]
    assert kinds(fgr.backward.loop.body) == ["Kernel"] + ["Gemm"] * 4
    base = plan_for("fgr", fuse_pointwise=False)  # the same nodes, only in another order
    assert sorted(i for op in fgr.forward.loop.body if isinstance(op, Kernel) for i in op.nodes) == \
        sorted(i for op in base.forward.loop.body if isinstance(op, Kernel) for i in op.nodes)
    # a backward sum whose first GEMM's operand is ready before the kernels that compute the others' (heads
    # keep one sum's GEMMs apart; the mean a row reduction): moved alone, it broke sum folding
    text = ("cell d { input x; state h; heads R, Q, U; a = tanh(W x + R h); b = sigmoid(U a); "
            "h' = a * b + Q h + mean(a); output h' }")
    cell = lstmdsl.parse(text).cell
    for c in (cell, with_lengths(cell)):
        for schedule in SCHEDULES:
            build_program(c, schedule)  # (its plan is verified)
    for name in ("vanilla", "peephole", "gru"):
        spec = lstmdsl.parse(name)
        masked = with_lengths(spec.cell)
        plain = schedule_plan(spec.cell, spec.grad, Schedule())
        plan = schedule_plan(masked, differentiate(masked), Schedule())
        assert kinds(plan.forward.loop.body) == kinds(plain.forward.loop.body)
        assert kinds(plan.backward.loop.body) == kinds(plain.backward.loop.body)


@pytest.mark.parametrize("name,forward_ops", [
    ("gru", ["Gemm", "Kernel", "Gemm", "Kernel"]),  # R_n (r * h): r * h is computed in the step
    ("lstmp", ["Gemm", "Kernel", "Gemm"]),  # h' = P (o * tanh(c')): the projection ends the step
])
def test_stage_splitting_for_products_of_values_computed_in_the_step(name, forward_ops):
    plan = plan_for(name)
    assert [type(op).__name__ for op in plan.forward.loop.body] == forward_ops


def test_row_fusion_makes_one_launch_of_the_kernels_that_reductions_split():
    spec = lstmdsl.parse("layernorm")
    for schedule, launches in ((spec.schedule, 2), (parse_schedule("no fuse rows", spec.schedule), 13)):
        plan = make_plan(spec.cell, spec.grad, schedule)
        body = plan.forward.loop.body
        assert sum(not getattr(op, "joins", False) for op in body) == launches
    kernels = [op for op in body if isinstance(op, Kernel)]
    plan = make_plan(spec.cell, spec.grad, spec.schedule)
    first, *rest = [op for op in plan.forward.loop.body if isinstance(op, Kernel)]
    assert first.launch.kind == "rows" and not first.joins and all(op.joins for op in rest)
    assert len(rest) + 1 == len(kernels)
    vanilla = lstmdsl.parse("vanilla")  # no reduction: nothing to join
    assert not any(getattr(op, "joins", False) for op in make_plan(vanilla.cell, vanilla.grad, vanilla.schedule)
                   .forward.loop.body)


@pytest.mark.parametrize("name,masked", [("gru", False), ("mgu", False), ("gru_torch", False), ("vanilla", True)])
def test_sum_folding_adds_the_pointwise_part_of_a_state_gradient_inside_the_gemm(name, masked):
    spec = lstmdsl.parse(name)
    cell = with_lengths(spec.cell) if masked else spec.cell
    grad = differentiate(cell)
    folded = make_plan(cell, grad, spec.schedule).backward.loop.body
    plain = make_plan(cell, grad, parse_schedule("no fold sums", spec.schedule)).backward.loop.body
    launches = [sum(not isinstance(op, Copy) for op in body) for body in (folded, plain)]
    assert launches[0] == launches[1] - 1
    last = [op for op in folded if isinstance(op, Gemm)][-1]
    assert last.init is not None and last.call.accumulate and not isinstance(folded[-1], Kernel)
    assert last is folded[-1] or all(isinstance(op, Copy) for op in folded[folded.index(last) + 1:])


def test_batching_weight_gradients():
    plan = plan_for("gru")
    assert plan.weight_grads and all(where == "after" for where, _ in plan.weight_grads + plan.vector_grads)
    assert not any(isinstance(op, (WeightGrad, VectorGrad)) for op in plan.backward.loop.body)


def test_format_plan_shows_types_storage_and_launches():
    spec = lstmdsl.parse("vanilla")
    text = format_plan(make_plan(spec.cell, spec.grad, spec.schedule), {"input": 32, "hidden": 64})
    assert "forward (forward in time): 2 launches per step" in text
    assert "backward (reverse in time)" in text
    assert "C[T*B, 256] = x[t] @ weights:weight_ih^T -> gemm0[t];  k = 32; types f32 x f32 -> f32, compute fp32" in text
    assert "C[B, 256] = hist_h[t] @ weights:weight_hh^T -> gemm1[t]" in text
    assert "gemm0        f32  [T, B, 256]  (inference C; C: one chunk's steps, a ring, where a forward-only" in text
    assert "in place: the forward writes the activations it keeps over the input products" in text
    assert "launch: grid (ceil(max(64) / 128), B), 128 threads" in text
    assert "saved per step for the backward pass" in text


def test_verify_runs_after_every_pass_and_catches_broken_plans():
    spec = lstmdsl.parse("gru")
    seen = []
    plan = make_plan(spec.cell, spec.grad, Schedule(fuse_recurrent=True), trace=lambda name, p: (verify(p),
                                                                                              seen.append(name)))
    assert seen == ["base", "fuse_gates", "hoist_input", "fuse_pointwise", "fuse_recurrent", "fuse_rows",
                    "batch_weight_grads", "fold_sums", "persistent", "storage", "calls", "projection", "fanout", "wavefront",
                    "chunks", "overlay"]
    body = plan.forward.loop.body
    swapped = plan.forward.with_body(body[1:] + body[:1])  # the first op moved after the ones reading it
    with pytest.raises(PlanError, match="reads %"):
        verify(dataclasses.replace(plan, forward=swapped))
    twice = plan.forward.with_body(body + body[-1:])
    with pytest.raises(PlanError, match="computed twice"):
        verify(dataclasses.replace(plan, forward=twice))
    joined = plan.forward.with_body([dataclasses.replace(body[0], joins=True)] + list(body[1:]))
    with pytest.raises(PlanError, match="joins the launch"):
        verify(dataclasses.replace(plan, forward=joined))
    with pytest.raises(PlanError, match="loop direction"):
        verify(dataclasses.replace(plan, backward=dataclasses.replace(
            plan.backward, loop=dataclasses.replace(plan.backward.loop, direction="sideways"))))
    st = plan.storage
    gin = next(b for b in st.buffers if b.name.startswith("gin"))
    bad_alias = dataclasses.replace(st, buffers=tuple(dataclasses.replace(b, alias="x") if b is gin else b
                                                      for b in st.buffers))
    with pytest.raises(PlanError, match="shares memory"):
        verify(dataclasses.replace(plan, storage=bad_alias))
    (g,) = [op for op in plan.backward.after if isinstance(op, WeightGrad)][:1]
    mistyped = dataclasses.replace(g, call=dataclasses.replace(g.call, c_type="f64"))
    after = tuple(mistyped if op is g else op for op in plan.backward.after)
    with pytest.raises(PlanError, match="declared types"):
        verify(dataclasses.replace(plan, backward=dataclasses.replace(plan.backward, after=after)))


@pytest.mark.parametrize("name", SPECS)
def test_dx_takes_dys_memory_where_the_backward_is_done_with_dy_first(name):
    """passes/overlay.py: under the default schedule every shipped spec forms dx after its backward loop, from the
    hoisted input's gradients, and reads dy only in the loop: dx over dy (Buffer.over), said by --emit plan; under
    `no hoist input` the loop adds into dx at each step, and dx keeps its own memory. planverify refuses an overlay
    whose conditions do not hold."""
    spec = lstmdsl.parse(name)
    plan = make_plan(spec.cell, spec.grad, Schedule())
    assert plan.storage.buffer("dx").over == "dy" and overlay_holds(plan) is None
    assert [b.name for b in plan.storage.buffers if b.over] == ["dx"]
    assert "takes dy's memory" in format_plan(plan, {"input": 7, "hidden": 7, "proj": 3, "heads": 1})
    stepwise = make_plan(spec.cell, spec.grad, Schedule(hoist_input=False))
    assert stepwise.storage.buffer("dx").over is None
    assert overlay_holds(stepwise) == "the backward touches dx before its loop ends"
    forged = dataclasses.replace(stepwise.storage, buffers=tuple(
        dataclasses.replace(b, over="dy") if b.name == "dx" else b for b in stepwise.storage.buffers))
    with pytest.raises(PlanError, match="takes dy's memory, which it cannot: the backward touches dx"):
        verify(dataclasses.replace(stepwise, storage=forged))
    # dy read after the loop (a forged GEMM reading it as its A operand): no overlay
    g = next(op for op in plan.backward.after if isinstance(op, (WeightGrad, VectorGrad)))
    reads_dy = dataclasses.replace(g, call=dataclasses.replace(g.call, a=dataclasses.replace(g.call.a, name="dy")))
    late = dataclasses.replace(plan, backward=dataclasses.replace(plan.backward, after=plan.backward.after + (reads_dy,)))
    assert overlay_holds(late) == "the backward reads dy after its loop"


# the default schedule but LSTMP's projection unfolded: these tests forge and count the input products' GEMMs and
# rings, which a folded forward has more of (its Fold and first products, v's ring: tests/test_projection.py)
UNFOLDED = Schedule(fold_projection=False)


@pytest.mark.parametrize("name", SPECS)
def test_a_forward_only_workspace_keeps_the_states_but_the_output_in_a_ring(name):
    """storage.inference_rings: in inference a step reads only its own state and writes its update, so every
    state's history but the output's (the layer's y) is a ring of two areas there (an LSTM's c: T + 1 areas in
    training, 2 in inference); in half precision a state the steps carry in fp32 has its ring already. planverify
    refuses a GEMM outside the loop over all steps of a buffer that inference keeps two areas of."""
    spec = lstmdsl.parse(name)
    for schedule in (Schedule(), parse_schedule("precision bf16")):
        plan = make_plan(spec.cell, spec.grad, schedule)
        output = {s.name for s, u in zip(spec.cell.states, spec.cell.updates) if u == spec.cell.output}
        for s in spec.cell.states:
            b = plan.storage.buffer(f"hist_{s.name}")
            rings = {r.name for r in plan.storage.buffers}
            want = "T+1" if s.name in output else "1" if f"ring_{s.name}" in rings else "2"
            assert (b.steps, b.inference) == ("T+1", want), (s.name, b)
    plan = make_plan(spec.cell, spec.grad, UNFOLDED)
    plan = dataclasses.replace(plan, chunks=None, storage=dataclasses.replace(plan.storage, buffers=tuple(
        dataclasses.replace(b, inference="T") if b.inference == "C" else b for b in plan.storage.buffers)))
    verify(plan)  # (without chunks: the input products of all steps)
    g = plan.forward.before[0]
    ring = next((b.name for b in plan.storage.buffers if b.inference == "2"), None)
    if ring is not None:
        forged = dataclasses.replace(g, call=dataclasses.replace(g.call, c=dataclasses.replace(g.call.c, name=ring)))
        with pytest.raises(PlanError, match="all steps of a buffer that keeps one or two"):
            verify(dataclasses.replace(plan, forward=dataclasses.replace(plan.forward, before=(forged,))))


@pytest.mark.parametrize("name", SPECS)
def test_a_forward_only_workspace_may_keep_one_chunk_of_the_input_products(name):
    """passes/wavefront.py plan_chunks: where the forward can run chunk by chunk (only input GEMMs before the loop,
    nothing after it) the buffers they write are of inference "C" (plan.Chunks: one chunk's steps, a ring, in a
    forward-only workspace whose products would take 64 MiB or more), said by --emit plan; not under `no hoist
    input` (no GEMM before the loop). planverify refuses a forged one."""
    spec = lstmdsl.parse(name)
    plan = make_plan(spec.cell, spec.grad, UNFOLDED)
    rings = [b.name for b in plan.storage.buffers if b.inference == "C"]
    assert plan.chunks is not None and rings == [op.call.c.name for op in plan.forward.before]
    assert "a forward-only workspace runs its forward in 16 chunks" in format_plan(plan, {"input": 7, "hidden": 7,
                                                                                          "proj": 3, "heads": 1})
    stepwise = make_plan(spec.cell, spec.grad, Schedule(hoist_input=False))
    assert stepwise.chunks is None and not [b for b in stepwise.storage.buffers if b.inference == "C"]
    forged = dataclasses.replace(stepwise.storage, buffers=tuple(
        dataclasses.replace(b, inference="C") if b.name.startswith("gemm") else b for b in stepwise.storage.buffers))
    with pytest.raises(PlanError, match="keeps one chunk's steps in inference, which it cannot"):
        verify(dataclasses.replace(stepwise, storage=forged, chunks=plan.chunks))


def test_the_chunks_cost_model():
    """plan.Chunks.steps: in a stack's wavefront its chunks, ceil(T / 16) steps; a layer alone at least 16384 rows
    a chunk; where the products of all T steps take 64 MiB or more, and only where that makes chunks of 2 steps
    or more, fewer than T."""
    from lstmdsl.loops import Chunks, Wavefront

    c, w = Chunks(), Wavefront()
    assert c.steps(1000, 4000 << 20, 256, w.steps(1000)) == 63 == w.steps(1000)
    assert c.steps(1000, 4000 << 20, 256) == 64 and c.steps(1000, 1000 << 20, 64) == 256
    assert c.steps(100, 64 << 20, 256, w.steps(100)) == 7 and c.steps(100, (64 << 20) - 1, 256, w.steps(100)) == 0
    assert c.steps(100, 400 << 20, 256) == 64 and c.steps(100, 400 << 20, 96) == 0
    assert c.steps(17, 1 << 30, 1 << 14, w.steps(17)) == 2 and c.steps(16, 1 << 30, 1 << 14, w.steps(16)) == 0
    assert c.steps(1, 1 << 30, 1 << 14) == 0
    assert c.steps(1000, 1 << 30, 256, Wavefront(chunks=4).steps(1000)) == 250  # (the wavefront's own chunks)


def test_verify_catches_broken_mixed_precision_plans():
    """planverify rejects what the mixed-precision passes must never produce: inconsistent types, an alias
    between types, a GEMM over the aligned width without the zero padding it relies on, a padded stack
    in unaligned storage, all steps of a one- or two-area buffer read after the loop."""
    import dataclasses

    from lstmdsl.plan import WeightGrad
    from lstmdsl.planverify import PlanError, verify
    from lstmdsl.program import build_program
    from lstmdsl.schedule import parse_schedule

    plan = build_program(lstmdsl.parse("vanilla").cell, parse_schedule("precision fp16")).plan
    verify(plan)
    st = plan.storage

    def with_buffer(name, **kw):
        return dataclasses.replace(plan, storage=dataclasses.replace(st, buffers=tuple(
            dataclasses.replace(b, **kw) if b.name == name else b for b in st.buffers)))

    def with_after(fn):
        after = tuple(fn(op) for op in plan.backward.after)
        return dataclasses.replace(plan, backward=dataclasses.replace(plan.backward, after=after))

    wg = lambda op: dataclasses.replace(op, call=dataclasses.replace(op.call, padded=("n",))) \
        if isinstance(op, WeightGrad) else op  # noqa: E731
    broken = {
        "types": dataclasses.replace(plan, compute="f64"),
        "alias": with_buffer("gemm0", dtype="f32"),
        "unaligned": dataclasses.replace(plan, storage=dataclasses.replace(st, align=1)),
        "padded weight gradient": with_after(wg),
        "ring after the loop": with_buffer("gemm0", steps="2"),  # the weight gradients read all its steps (gin0 in place)
    }
    for what, bad in broken.items():
        with pytest.raises(PlanError):
            verify(bad)
            pytest.fail(what)


@pytest.mark.parametrize("name", ["vanilla", "gru", "lstmp", "slstm", "layernorm"])
def test_half_parameters_get_their_weight_gradients_in_half_where_they_are_batched(name):
    """build_program(half_params=True) (the torch module's .half()): the batched weight-gradient GEMMs write the
    weight stacks' gradients in the half type, one rounding of an fp32 sum over all steps; the vector gradients
    stay f32; a plan that adds the weight gradients step by step (`no batch weights`) keeps them f32, as does a
    layer with float32 masters; verify checks the gradient type."""
    import dataclasses

    from lstmdsl.plan import VectorGrad, WeightGrad
    from lstmdsl.planverify import PlanError, verify
    from lstmdsl.program import build_program
    from lstmdsl.schedule import parse_schedule

    spec = lstmdsl.parse(name)

    def types(schedule, half_params=True):
        plan = build_program(spec.cell, parse_schedule(schedule, spec.schedule), half_params=half_params).plan
        weights = {(op.call.a_type, op.call.b_type, op.call.c_type) for _, op in plan.backward.ops()
                   if isinstance(op, WeightGrad)}
        vectors = {op.call.c_type for _, op in plan.backward.ops() if isinstance(op, VectorGrad)}
        return plan, weights, vectors

    plan, weights, vectors = types("precision bf16")
    assert plan.grad_type == "bf16" and weights == {("bf16", "bf16", "bf16")} and vectors <= {"f32"}
    assert types("precision fp16; persistent")[1] == {("f16", "f16", "f16")}
    assert types("precision bf16; no batch weights")[0].grad_type == ""
    assert types("precision bf16; no batch weights")[1] == {("bf16", "bf16", "f32")}
    assert types("precision bf16", half_params=False)[1] == {("bf16", "bf16", "f32")}
    assert types("precision tf32")[0].grad_type == ""
    with pytest.raises(PlanError, match="weight gradients in f16"):
        verify(dataclasses.replace(plan, grad_type="f16"))
    stepwise = types("precision bf16; no batch weights")[0]
    with pytest.raises(PlanError, match="added up step by step"):
        verify(dataclasses.replace(stepwise, grad_type="bf16"))


def test_persistent_is_a_mode_with_its_own_directives():
    from lstmdsl.errors import SpecError
    from lstmdsl.schedule import parse_schedule

    assert Schedule().persistent == "auto"
    assert [parse_schedule(t).persistent for t in ("persistent", "no persistent", "persistent; persistent auto")] == \
        ["on", "off", "auto"]
    for s in (Schedule(), parse_schedule("persistent"), parse_schedule("no persistent")):
        assert parse_schedule(s.describe()) == s
    with pytest.raises(SpecError, match="did you mean 'persistent'"):
        parse_schedule("persistnt")


def test_verify_catches_broken_persistent_stages():
    import dataclasses

    from lstmdsl.planverify import PlanError

    spec = lstmdsl.parse("gru")
    plan = make_plan(spec.cell, spec.grad, Schedule(persistent="on"))
    pers = plan.forward.loop.persistent
    assert len(pers.stages) == 2
    verify(plan)

    def with_stages(stages):
        loop = dataclasses.replace(plan.forward.loop, persistent=dataclasses.replace(pers, stages=stages))
        return dataclasses.replace(plan, forward=dataclasses.replace(plan.forward, loop=loop))

    for broken, message in ((pers.stages[::-1], "before a stage computes it"), (pers.stages[:1], "differently"),
                            (pers.stages + pers.stages[1:], "twice")):
        with pytest.raises(PlanError, match=message):
            verify(with_stages(broken))
    unstored = (pers.stages[0], dataclasses.replace(pers.stages[1], writes=()))
    with pytest.raises(PlanError, match="do not store"):
        verify(with_stages(unstored))


@pytest.mark.parametrize("name,stages", [("vanilla", 2), ("peephole", 2), ("lstmp", 4), ("fgr", 5), ("gru", 4),
                                         ("zoneout_lstm", 2), ("gru_torch", 2), ("layernorm", None), ("slstm", 2)])
def test_the_backward_has_a_persistent_kernel_where_its_gemms_are_sums_of_transposed_products(name, stages):
    """Each per-step GEMM of the backward a stage of its own (a matvec_t: the state's gradient through the
    transposed matrices), the sLSTM's four GEMMs of one sum (block-diagonal matrices, which gate fusion keeps
    apart where they are not stored head by head) one stage, and a GEMM that adds its products to a sum its
    kernel began (sum folding's init: GRU, zoneout, PyTorch's GRU) a stage of the products and that addition;
    not a row reduction (layer norm). Under `persistent auto` only where the forward's cost model has a kernel
    for a single-stage cell (vanilla, peephole, zoneout, PyTorch's GRU, the sLSTM with its own rule; not
    two-stage LSTMP or GRU), in fp32 and in bf16, with the backward's rules of each; and it verifies."""
    single = ("vanilla", "peephole", "slstm", "zoneout_lstm", "gru_torch")
    spec = lstmdsl.parse(name)
    auto = make_plan(spec.cell, spec.grad, Schedule())
    back = auto.backward.loop.persistent
    assert (back is not None) == (name in single), name
    if back is not None:
        verify(auto)
        assert not back.forced and back.work == (HEADS_BACKWARD_LIMITS if name == "slstm" else BACKWARD_LIMITS)["fp32"]
    half = make_plan(spec.cell, spec.grad, Schedule(precision="bf16")).backward.loop.persistent
    assert (half is not None) == (name in single), name
    limits = HEADS_BACKWARD_LIMITS if name == "slstm" else BACKWARD_LIMITS
    assert half is None or half.work == limits["bf16"]
    for schedule in (Schedule(persistent="on"),):
        plan = make_plan(spec.cell, spec.grad, schedule)
        verify(plan)
        pers = plan.backward.loop.persistent
        assert (pers is None) == (stages is None), name
        if pers is not None:
            assert len(pers.stages) == stages and pers.forced
            gemms = list(dict.fromkeys(i for op in plan.backward.loop.body if isinstance(op, Gemm) for i in op.outputs))
            assert [i for k in pers.stages for i in k.nodes if i in gemms] == gemms  # (each GEMM's sum, in order)
            assert len([i for k in pers.stages for i in k.nodes if plan.backward.nodes[i].op == "matvec_t"]) == len(gemms)
    if stages is not None:
        text = format_plan(make_plan(spec.cell, spec.grad, Schedule(persistent="on")))
        assert f"{name}_bwd_persistent_reverse of 256 threads" in text


def test_format_plan_prints_the_persistent_stages_and_rule():
    ln = lstmdsl.parse("layernorm")  # row reductions: no kernel under `persistent auto`
    auto = format_plan(make_plan(ln.cell, ln.grad, Schedule()), {"input": 8, "hidden": 16})
    assert "no persistent schedule: `persistent auto` has one only for cells of one or two stages" in auto
    assert "layernorm_fwd_persistent" not in auto
    spec = lstmdsl.parse("gru")  # two stages: the rules measured with it
    auto = format_plan(make_plan(spec.cell, spec.grad, Schedule()), {"input": 8, "hidden": 16})
    assert ("when a step's multiply-adds over the batch are 524288-67108864 at B <= 1 or 8388608-67108864 at "
            "B <= 64 or 1-67108864 at B <= 64 where all the weights fit one block") in auto
    assert "gru_bwd_persistent" not in auto  # (two stages: the backward kernel only where forced)
    forced = format_plan(make_plan(spec.cell, spec.grad, Schedule(persistent="on")))
    assert "always (the schedule says persistent)" in forced
    assert "gru_fwd_persistent of 256 threads" in forced and forced.count("    stage kernel gru_fwd_p") == 2
    vanilla = lstmdsl.parse("vanilla")
    rule = format_plan(make_plan(vanilla.cell, vanilla.grad, Schedule()))
    assert ("or the persistent schedule, when a step's multiply-adds over the batch are 1-67108864 at B <= 16 or "
            "1-67108864 at B <= 64 in a layer of one direction or "
            "1-33554432 at B <= 64 in a direction of a bidirectional layer whose grid takes its 1/2 of the "
            "multiprocessors or 1-67108864 at B <= 256 where all the weights fit one block and the weights fit") in rule
    assert "when a step's multiply-adds over the batch are 4194304-67108864 at B <= 4" in rule  # (the backward's)
    assert "a grid of several blocks hands it on in tagged words instead, with no grid barrier" in rule
    assert "the block's products as tiles of 4 rows x 4 batch rows" in rule
    half = format_plan(make_plan(vanilla.cell, vanilla.grad, Schedule(precision="fp16")))  # measured: HALF_LIMITS
    assert ("or the persistent schedule, when a step's multiply-adds over the batch are 262144-4194304 at B <= 1 or "
            "524288-1048576 at B <= 4 or 2097152-67108864 at 2 <= B <= 16 or 1-16384 a batch row at B <= 64 where all "
            "the weights fit one block and "
            "the weights fit") in half
    assert "tensor-core tiles of 16 x 8 over the gates' rows together" in half and "tagged words instead" in half
    assert "persistent" not in format_plan(make_plan(spec.cell, spec.grad, Schedule(persistent="off"))).split(
        "element type")[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stack_reads_its_input_in_place_where_the_storage_allows(precision):
    """Storage.stack_input: every shipped spec's x buffer holds only the input and its output is whole rows of a
    buffer kept for all steps, so a stack's layer reads the layer below's y in place; an output that is part of
    a row, or of another type than x, is copied."""
    from lstmdsl.passes.storage import _stack_input
    from lstmdsl.plan import Slot

    from lstmdsl.resources import shipped_specs

    for name in SPECS:
        spec = lstmdsl.parse(shipped_specs()[name].read_text())
        plan = make_plan(spec.cell, spec.grad, Schedule(precision=precision))
        st = plan.storage
        assert st.stack_input, name
        buffers = {b.name: b for b in st.buffers}
        f_slots, b_slots = dict(st.forward), dict(st.backward)
        y = next(t for t in st.outputs if t.what == "y")
        assert not _stack_input(plan, buffers, f_slots, b_slots, Slot(y.buffer, ("one",), y.first))
        other = {**buffers, "x": dataclasses.replace(buffers["x"], dtype="f64")}
        assert not _stack_input(plan, other, f_slots, b_slots, Slot(y.buffer, (), y.first))
        assert "in a stack, a layer's x is the layer below's y, in place" in format_plan(plan)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_lstm_keeps_its_gates_and_their_gradients_over_the_input_products(precision):
    """Storage.in_place: the vanilla LSTM's four gates are written over W x_t, each over the product it is
    computed from, and the backward writes the gates' gradients over the gates: one [T, B, 4H] buffer where
    there were three (gemm0, the gates, gin0). The GRU, whose input products feed more than one node,
    keeps its buffers and the alias of gemm0 with its gradients."""
    from lstmdsl.codegen import kernel_descs, render
    from lstmdsl.planverify import PlanError

    spec = lstmdsl.parse("vanilla")
    plan = make_plan(spec.cell, spec.grad, Schedule(precision=precision))
    st = plan.storage
    fwd = [(v, p) for where, v, p in st.in_place if where == "forward"]
    assert fwd == [(8, 3), (14, 9), (20, 15), (26, 21)]
    assert {p for where, _, p in st.in_place if where == "backward"} == {"gin0"}
    names = {b.name for b in st.buffers}
    assert "gin0" not in names and not any(n.startswith("v") for n in names)
    assert {s.gin for s in st.stacks} == {"gemm0"} and st.buffer("gemm0").alias is None
    f_slots = st.slots("forward")
    assert all(f_slots[v][0] == f_slots[p][0] for v, p in fwd)
    cuda = render(plan, kernel_descs(plan))
    head = cuda.split("vanilla_fwd0(")[1].split("{")[0]
    assert "const float* in3," in head or "const lstmdsl_bf16* in3," in head  # gemm0: no __restrict__
    assert "__restrict__ in2," in head  # hist_c[t]: written only at t + 1

    moved_wrong = dataclasses.replace(st, in_place=(("forward", 8, 9),) + st.in_place[1:])
    with pytest.raises(PlanError, match="another thread or op may still read"):
        verify(dataclasses.replace(plan, storage=moved_wrong))

    gru = lstmdsl.parse("gru")
    plan = make_plan(gru.cell, gru.grad, Schedule(precision=precision))
    assert not plan.storage.in_place and plan.storage.buffer("gemm0").alias == "gin0"

    # a gate a weight gradient multiplies (U a) stays in its own buffer; a forged move of it is refused
    from unusual_specs import UNUSUAL

    odd = lstmdsl.parse(UNUSUAL["multiplied_gate"])
    plan = make_plan(odd.cell, odd.grad, Schedule(precision=precision))
    a = next(op.v for _, op in plan.backward.ops() if isinstance(op, WeightGrad) and op.matrices == ("U",))
    assert a not in {v for _, v, _ in plan.storage.in_place}
    host = plan.storage.slots("forward")[next(i for i, n in enumerate(plan.forward.nodes) if n.op == "matvec"
                                              and n.attr == "W")][0]
    slots = dict(plan.storage.forward)
    slots[a] = (host,)
    forged = dataclasses.replace(plan.storage, forward=tuple(sorted(slots.items())),
                                 in_place=plan.storage.in_place + (("forward", a, -1),))
    with pytest.raises(PlanError, match="weight gradient multiplies"):
        verify(dataclasses.replace(plan, storage=forged))


def test_in_half_precision_an_lstm_keeps_its_cell_state_history_in_the_half_type():
    """The step carries c in fp32 in a ring of two areas and also stores it, rounded, in a half-precision
    history that only the backward reads: the initial state goes into both, the final state comes from the
    ring. States used through exp, division or a comparison in the backward (the sLSTM's c and n, a layer
    norm of c), GEMM operands (h) and every state in fp32 keep their fp32 history."""
    from lstmdsl.passes.storage import half_histories

    spec = lstmdsl.parse("vanilla")
    plan = make_plan(spec.cell, spec.grad, Schedule(precision="bf16"))
    st = plan.storage
    assert half_histories(plan) == {"c"}
    ring, hist = st.buffer("ring_c"), st.buffer("hist_c")
    assert (ring.dtype, ring.steps, ring.inference) == ("f32", "2", "2")
    assert (hist.dtype, hist.steps, hist.inference) == ("bf16", "T+1", "1")
    assert [t.buffer for t in st.inputs if t.what == "state:c"] == ["ring_c", "hist_c"]
    assert [t.buffer for t in st.outputs if t.what == "state:c"] == ["ring_c"]
    f_slots, b_slots = st.slots("forward"), st.slots("backward")
    leaf = next(i for i, n in enumerate(plan.forward.nodes) if n.op == "state" and n.attr == "c")
    assert f_slots[leaf][0].buffer == "ring_c"
    reads = {b_slots[i][0].buffer for i, n in enumerate(plan.backward.nodes)
             if n.op == "fwd" and n.attr in (leaf, spec.cell.updates[1])}
    assert reads == {"hist_c"}
    assert "ring_c" not in {b.name for b in make_plan(spec.cell, spec.grad, Schedule()).storage.buffers}
    for name in ("slstm", "layernorm", "gru"):
        other = lstmdsl.parse(name)
        assert not half_histories(make_plan(other.cell, other.grad, Schedule(precision="fp16"))) & {"c", "n", "h"}


def test_wavefront_is_a_mode_and_every_shipped_spec_can_run_one():
    from lstmdsl.errors import SpecError
    from lstmdsl.passes.wavefront import wavefront_blocker
    from lstmdsl.plan import Wavefront
    from lstmdsl.resources import shipped_specs

    assert Schedule().wavefront == "auto"
    assert [parse_schedule(t).wavefront for t in ("wavefront", "no wavefront", "wavefront; wavefront auto")] == \
        ["on", "off", "auto"]
    for s in (parse_schedule("wavefront; no persistent"), parse_schedule("no wavefront")):
        assert parse_schedule(s.describe()) == s
    with pytest.raises(SpecError, match="did you mean 'wavefront'"):
        parse_schedule("wavefrnt")
    with pytest.raises(SpecError, match="wavefront takes 'no' before it or 'auto' after it"):
        parse_schedule("wavefront now")
    for name in shipped_specs():
        spec = lstmdsl.parse(name)
        plan = make_plan(spec.cell, spec.grad, Schedule())
        assert plan.wavefront is not None and not plan.wavefront.forced and plan.wavefront.chunks == 16, name
        assert plan.wavefront.backward == (name in ("np", "recurrent_dropout", "slstm", "vanilla", "zoneout_lstm")), name
        assert make_plan(spec.cell, spec.grad, Schedule(wavefront="on")).wavefront.forced
    spec = lstmdsl.parse("vanilla")
    off = make_plan(spec.cell, spec.grad, Schedule(wavefront="off"))
    assert off.wavefront is None and wavefront_blocker(off) == "the schedule says 'no wavefront'"
    assert "the layers run one after the other: the schedule says 'no wavefront'" in format_plan(off)
    on = make_plan(spec.cell, spec.grad, Schedule())
    text = format_plan(on)
    assert "the forward as a layer wavefront, its layers on the stepwise loop, unless the schedule says persistent: " \
        "the sequence in 16 chunks" in text
    assert "the weights fit in the blocks' shared memory (in a stack, the wavefront below wins)" in text
    assert [Wavefront().steps(T) for T in (1, 16, 17, 100, 1000)] == [1, 1, 2, 7, 63]
    # a forward with work after its loop, or without its x in place, cannot run chunk by chunk
    after = dataclasses.replace(on, forward=dataclasses.replace(on.forward, after=on.forward.before))
    copied = dataclasses.replace(on, storage=dataclasses.replace(on.storage, stack_input=False))
    assert "work after its loop" in wavefront_blocker(after)
    assert "a copy of the layer below's y" in wavefront_blocker(copied)
    with pytest.raises(PlanError, match="a wavefront it cannot run: a layer's x is a copy"):
        verify(copied)


def test_a_persistent_step_ends_at_a_block_barrier_only_where_the_next_stage_touches_its_own_elements():
    """The calls pass (Persistent.block_barriers): in the vanilla LSTM's backward kernel the product stage (dh from
    all the gates' gradients) is followed by the next step's pointwise stage, which reads dh and writes only its
    own elements: a block barrier there, the grid barrier after the pointwise stage kept (the products read its
    gradients whole). Where that stage wrote into the area the products read whole (a slow block could still be
    staging it), or read dh at other columns, the grid barrier stays; never two block barriers in a row; none in a
    forward whose second stage has products (GRU) or in a kernel of one stage."""
    spec = lstmdsl.parse("vanilla")
    plan = make_plan(spec.cell, spec.grad, parse_schedule("persistent", spec.schedule))
    phase = plan.backward
    pointwise, products = phase.loop.persistent.stages
    assert phase.loop.persistent.block_barriers == _block_barriers(plan, phase, (pointwise, products)) == (1,)
    operand = products.reads[0][1]  # (read at step t; the pointwise stage writes at step t - 1: a reverse loop)
    (u, _), *rest = pointwise.writes
    into = dataclasses.replace(pointwise, writes=((u, dataclasses.replace(operand, step=operand.step + 1)),
                                                  *rest))
    assert _block_barriers(plan, phase, (into, products)) == ()
    (v, dh), = products.writes
    reads = tuple((a, dataclasses.replace(s, col=("hidden",)) if s.buffer == dh.buffer else s)
                  for a, s in pointwise.reads)
    assert reads != pointwise.reads
    assert _block_barriers(plan, phase, (dataclasses.replace(pointwise, reads=reads), products)) == ()
    assert plan.forward.loop.persistent.block_barriers == ()  # (one stage: its hand-off is the exchange)
    text = format_plan(plan)  # --emit plan says where (the stages counted from 1)
    assert "a grid barrier after each stage but stage 2 (a block barrier there" in text
    assert text.count("a block barrier there") == 1
    gru = lstmdsl.parse("gru")
    assert make_plan(gru.cell, gru.grad, parse_schedule("persistent", gru.schedule)).forward.loop.persistent \
        .block_barriers == ()
    for name in SPECS:
        spec = lstmdsl.parse(name)
        for text in ("persistent", "persistent; no fold sums"):
            plan = make_plan(spec.cell, spec.grad, parse_schedule(text, spec.schedule))
            for pers in (plan.forward.loop.persistent, plan.backward.loop.persistent):
                n = len(pers.stages) if pers else 0
                assert all((k + 1) % n not in pers.block_barriers for k in (pers.block_barriers if pers else ()))
