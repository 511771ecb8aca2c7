"""Stage 4: storage layout and generated CUDA. Without a GPU: the layout gives every value the kernels
exchange a slot, the source is deterministic, and every spec's kernels compile with nvcc for sm_90
without register spills (CI runs this; the GPU tests run them)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import lstmdsl
from lstmdsl.codegen import backward_roots, forward_roots, kernel_descs, make_layout, render
from lstmdsl.passes import make_plan
from lstmdsl.plan import Gemm, Kernel
from lstmdsl.schedule import Schedule

from conftest import SPECS

SCHEDULES = {"default": Schedule(), "unfused": Schedule(False, False, False, False),
             "fused-recurrent": Schedule(fuse_recurrent=True)}


def build(name, schedule=Schedule()):
    spec = lstmdsl.parse(name)
    plan = make_plan(spec.cell, spec.grad, schedule)
    layout = make_layout(plan)
    return plan, layout, kernel_descs(plan, layout)


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize("name", SPECS)
def test_every_exchanged_value_has_a_slot(name, schedule):
    plan, layout, _ = build(name, schedule)
    for phase, slots, roots in ((plan.forward, layout.forward, forward_roots(plan)),
                                (plan.backward, layout.backward, backward_roots(plan))):
        computed = {i for op in phase.step if isinstance(op, Kernel) for i in op.nodes}
        for op in phase.before + phase.step + phase.after:
            if isinstance(op, Gemm):
                assert all(i in slots for i in op.inputs + op.outputs), op
            else:
                for i in op.nodes:
                    for a in phase.nodes[i].args:
                        if a not in op.nodes and phase.nodes[a].op not in ("param", "const"):
                            assert a in slots, (i, a)
        for r in roots:
            if phase.nodes[r].op not in ("param", "const"):
                assert r in slots or r not in computed
    for s in layout.buffers.values():
        assert s.steps in ("1", "T", "T+1")


def test_incoming_gradients_sit_in_weight_stack_order():
    plan, layout, _ = build("vanilla")
    x = next(i for i, n in enumerate(plan.cell.nodes) if n.op == "input")
    assert layout.stacks[x] == ("W_i", "W_f", "W_z", "W_o")
    g_of = {m: g for m, g, v in plan.grad.d_matrices if v == x}
    cols = [next(s.col for s in layout.backward[g_of[m]] if s.buffer == layout.gin[x]) for m in layout.stacks[x]]
    assert cols == [(), ("hidden",), ("hidden", "hidden"), ("hidden", "hidden", "hidden")]


def test_states_live_in_histories_and_the_output_is_a_view():
    plan, layout, _ = build("peephole")
    h_update = plan.cell.updates[0]
    assert layout.forward[h_update][0].buffer == "hist_h" and layout.forward[h_update][0].step == 1
    assert layout.buffers["hist_h"].steps == "T+1"
    assert plan.cell.output == h_update


def test_rendering_is_deterministic():
    a = render(*build("fgr")[0:1], *build("fgr")[2])
    b = render(*build("fgr")[0:1], *build("fgr")[2])
    assert a == b and "extern \"C\" __global__ void fgr_fwd0(" in a


def test_fused_recurrent_kernels_use_one_warp_per_element():
    plan, _, (fwd, _) = build("vanilla", Schedule(fuse_recurrent=True))
    assert [type(op).__name__ for op in plan.forward.step] == ["Kernel"]
    assert fwd[0].warp and sum(a.bind[0] == "matrix" for a in fwd[0].args) == 4
    source = render(plan, fwd, ())
    assert "warp_sum(" in source and "if (lane == 0) out" in source


def test_one_kernel_per_kernel_op():
    plan, _, (fwd, bwd) = build("gru")
    assert len(fwd) == sum(isinstance(op, Kernel) for op in plan.forward.step) == 2
    assert len(bwd) == sum(isinstance(op, Kernel) for op in plan.backward.step) == 3


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("schedule,dtype", [(s, "float32") for s in SCHEDULES.values()] + [(Schedule(), "float64")],
                         ids=list(SCHEDULES) + ["float64"])
def test_all_kernels_compile_for_sm90_without_spills(schedule, dtype, tmp_path):
    sources = []
    for name in SPECS:
        plan, _, (fwd, bwd) = build(name, schedule)
        sources.append(render(plan, fwd, bwd, dtype))
    cu = tmp_path / "kernels.cu"
    cu.write_text("\n".join(sources))
    r = subprocess.run(["nvcc", "-arch=sm_90", "-c", "-Xptxas", "-v", "-o", str(tmp_path / "k.o"), str(cu)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    report = r.stderr
    functions = re.findall(r"Compiling entry function '(\w+)'", report)
    assert len(functions) == sum(len(s.split("__global__")) - 1 for s in sources)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report
