"""Stage 4: storage and generated CUDA. Without a GPU: the storage gives every value the ops exchange a
slot, the calls say how each op runs, the source is deterministic (also across processes), and every
spec's kernels compile with nvcc for sm_90 without register spills (CI runs this; the GPU tests run them)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest

from lstmdsl.codegen import render_conversions, render_draws, render_persistent

import lstmdsl
from lstmdsl.masks import with_lengths
from lstmdsl.plan import Copy, Gemm, Kernel
from lstmdsl.program import build_program
from lstmdsl.schedule import Schedule

from conftest import SPECS

SCHEDULES = {"default": Schedule(), "unfused": Schedule(False, False, False, False),
             "fused-recurrent": Schedule(fuse_recurrent=True)}


def build(name, schedule=Schedule(), dtype="float32", lengths=False):
    cell = lstmdsl.parse(name).cell
    return build_program(with_lengths(cell) if lengths else cell, schedule, dtype)


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize("name", SPECS)
def test_every_exchanged_value_has_a_slot(name, schedule):
    plan = build(name, schedule).plan
    st = plan.storage
    for phase_name, phase in (("forward", plan.forward), ("backward", plan.backward)):
        slots = st.slots(phase_name)
        for _, op in phase.ops():
            if isinstance(op, Gemm):
                assert all(i in slots for i in op.inputs + op.outputs), op
            elif isinstance(op, Kernel):
                for i, s in op.reads:
                    assert s in slots.get(i, ()) or phase.nodes[i].op == "fwd", (i, s)
                for i, s in op.writes:
                    assert s in slots[i]
    assert {b.steps for b in st.buffers} <= {"1", "T", "T+1", "2"}
    # a ring only for a state gradient every step computes (two areas, t mod 2)
    rings = {b.name for b in st.buffers if b.steps == "2"}
    computed = {f"dhist_{s.name}" for s, d in zip(plan.cell.states, plan.grad.d_states) if d is not None}
    assert rings == computed, (rings, computed)


def test_incoming_gradients_sit_in_weight_stack_order():
    plan = build("vanilla").plan
    st = plan.storage
    x = next(i for i, n in enumerate(plan.cell.nodes) if n.op == "input")
    stack = next(s for s in st.stacks if s.operand == x)
    assert stack.name == "weight_ih" and stack.matrices == ("W_i", "W_f", "W_z", "W_o")
    assert next(s for s in st.stacks if s.name == "weight_hh").matrices == ("R_i", "R_f", "R_z", "R_o")
    g_of = {m: g for m, g, v in plan.grad.d_matrices if v == x}
    slots = st.slots("backward")
    cols = [next(s.col for s in slots[g_of[m]] if s.buffer == stack.gin) for m in stack.matrices]
    assert cols == [(), ("hidden",), ("hidden", "hidden"), ("hidden", "hidden", "hidden")]


def test_states_live_in_histories_and_the_output_is_a_view():
    plan = build("peephole").plan
    st = plan.storage
    h_update = plan.cell.updates[0]
    first = st.slots("forward")[h_update][0]
    assert first.buffer == "hist_h" and first.step == 1
    assert st.buffer("hist_h").steps == "T+1"
    assert plan.cell.output == h_update
    y = next(t for t in st.outputs if t.what == "y")
    assert (y.buffer, y.first) == ("hist_h", 1)


def test_gemm_calls_carry_shapes_operands_and_types():
    plan = build("vanilla", Schedule(precision="tf32")).plan
    (hoisted,) = [op for op in plan.forward.before if isinstance(op, Gemm)]
    c = hoisted.call
    assert (c.m, c.n, c.k) == (("T*B",), ("hidden",) * 4, ("input",))
    assert (c.a.space, c.a.name, c.b.space, c.b.name, c.trans_b) == ("buffer", "x", "weights", "weight_ih", True)
    assert (c.a_type, c.b_type, c.c_type, c.compute) == ("f32", "f32", "f32", "tf32")
    f64 = build("vanilla", dtype="float64").plan
    assert {op.call.compute for _, op in f64.backward.ops() if getattr(op, "call", None)} == {"f64"}
    assert {b.dtype for b in f64.storage.buffers} == {"f64"}


def test_copies_fill_the_other_slots_of_gemm_outputs():
    plan = build("gru", Schedule(fuse_gates=False)).plan  # unfused: several GEMMs add into one sum
    body = plan.backward.loop.body
    for k, op in enumerate(body):
        if isinstance(op, Copy):
            writers = [j for j, o in enumerate(body[:k]) if isinstance(o, Gemm) and op.node in o.outputs]
            leaf = plan.backward.nodes[op.node].op in ("grad_in", "fwd")
            assert leaf or writers, op
            if writers:  # after the last GEMM of the sum, not between them
                assert not any(isinstance(o, Gemm) and op.node in o.outputs for o in body[k:])


def test_rendering_is_deterministic_across_processes(tmp_path):
    code = ("import lstmdsl, sys; from lstmdsl.program import build_program; from lstmdsl.schedule import Schedule;"
            "sys.stdout.write(build_program(lstmdsl.parse('fgr').cell, Schedule()).source)")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, LSTMDSL_CACHE=str(tmp_path / seed))  # each renders afresh
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                   check=True).stdout)
    assert outs[0] == outs[1] and 'extern "C" __global__ void fgr_fwd0(' in outs[0]


def test_fused_recurrent_kernels_use_one_warp_per_element():
    program = build("vanilla", Schedule(fuse_recurrent=True))
    assert [type(op).__name__ for op in program.plan.forward.loop.body] == ["Kernel"]
    (fwd,) = [k for k in program.kernels.values() if k.name.startswith("vanilla_fwd") and k.kind == "kernel"]
    assert fwd.warp and sum(a.bind.kind == "weights" for a in fwd.args) == 4
    assert "warp_sum(" in program.source and "if (lane == 0) out" in program.source


def test_kernels_are_found_by_name():
    program = build("gru")
    names = [n for n, k in program.kernels.items() if k.kind == "kernel"]
    assert names == [op.name for op in program.plan.kernels()]
    assert [n for n in names if "_fwd" in n] == ["gru_fwd0", "gru_fwd1"]
    assert len([n for n in names if "_bwd" in n]) == 2  # the third, an addition, folded into the last GEMM
    # auto: the forward's persistent kernel (two stages: passes/persistent.py, STAGED_LIMITS), not the backward's
    assert [n for n, k in program.kernels.items() if k.kind == "persistent"] == ["gru_fwd_persistent"]
    assert not [n for n, k in build("layernorm").kernels.items() if k.kind == "persistent"]  # reductions: never
    # FGR's four GEMMs a step, on h and the three gates, one stage: the forward's kernel, not the backward's
    assert [n for n, k in build("fgr").kernels.items() if k.kind == "persistent"] == ["fgr_fwd_persistent"]
    forced = build("gru", Schedule(persistent="on"))
    persistent = [n for n, k in forced.kernels.items() if k.kind == "persistent"]
    # forced, the backward's too: its GEMM adds its products to the sum the step's kernel began (fold sums),
    # a stage of the products and then that addition
    assert persistent == [forced.plan.forward.loop.persistent.name, forced.plan.backward.loop.persistent.name] \
        == ["gru_fwd_persistent", "gru_bwd_persistent_reverse"]
    last = forced.plan.backward.loop.persistent.stages[-1]
    assert [forced.plan.backward.nodes[i].op for i in last.nodes] == ["matvec_t", "add"]
    assert f'void __launch_bounds__(256, 1) {persistent[0]}(' in forced.source


def test_the_persistent_kernel_is_the_loop_as_stages():
    """GRU's loop (kernel, GEMM on r * h, kernel) becomes two stages, each with its products inside; a
    layer-normalised cell's GEMM stays a stage of its own before its row-fused reductions; a reverse layer's
    kernel steps backwards and is named apart; the sLSTM's block-diagonal matrices keep the stepwise loop."""
    from lstmdsl.plan import reduces

    on = Schedule(persistent="on")
    gru = build("gru", on).plan.forward
    stages = gru.loop.persistent.stages
    assert len(stages) == 2 and all(any(gru.nodes[i].op == "matvec" for i in s.nodes) for s in stages)
    ln = build("layernorm", on).plan.forward
    first, *rest = ln.loop.persistent.stages
    assert all(ln.nodes[i].op == "matvec" for i in first.nodes) and reduces(ln, rest[0])
    assert all(s.joins for s in rest[1:])
    reverse = build_program(lstmdsl.parse("vanilla").cell, Schedule(), direction="reverse")
    name = reverse.plan.forward.loop.persistent.name
    assert name == "vanilla_fwd_persistent_reverse" and reverse.kernels[name].reverse
    slstm = build("slstm", on)  # block-diagonal matrices: a GEMM each (kept in order), one stage of them
    (stage,) = slstm.plan.forward.loop.persistent.stages
    cached = slstm.kernels[slstm.plan.forward.loop.persistent.name].cached
    assert len(cached) == 4 and all(c.heads == (f"hr{c.node}", f"hc{c.node}") for c in cached)
    assert "zero off the diagonal blocks" in slstm.source
    auto = build("slstm", Schedule())  # auto: the stacks head by head, the forward's kernel reads that copy's rows
    cached = auto.kernels[auto.plan.forward.loop.persistent.name].cached
    assert [c.order for c in cached] == [(0, 4), (1, 4), (2, 4), (3, 4)] and "head-by-head copy" in auto.source
    back = auto.kernels[auto.plan.backward.loop.persistent.name]  # (each gate's gradients lie head by head)
    assert [c.order for c in back.cached] == [(3, 4), (2, 4), (1, 4), (0, 4)]  # (R_o, R_z, R_f, R_i's columns)
    assert all(o.heads for ops in back.staged for o in ops)
    assert re.search(r"stage_operand\(sh\d+, .*, hb_in\d+, hp_in\d+\)", auto.source)  # (gathered: hb, hp)
    fgr = build("fgr", on).plan.forward  # a run of GEMMs that read none of each other's products: one stage
    (stage,) = fgr.loop.persistent.stages
    assert {a for i in stage.nodes if fgr.nodes[i].op == "matvec" for a in fgr.nodes[i].args} == {1, 3, 4, 5}
    # `persistent auto` compiles the kernel only where its cost model can choose it (fp32 cells of one or two
    # product stages, and tf32, which runs fp32's kernels; in half precision, cells of one)
    assert build("layernorm").plan.forward.loop.persistent is None
    assert build("vanilla", Schedule(precision="tf32")).plan.forward.loop.persistent is not None
    assert build("vanilla", Schedule(precision="bf16")).plan.forward.loop.persistent is not None
    assert build("gru", Schedule(precision="bf16")).plan.forward.loop.persistent is None
    assert build("vanilla").plan.forward.loop.persistent is not None
    assert build("indrnn").plan.forward.loop.persistent is None  # no products: its kernel would never be chosen
    assert build("indrnn", on).plan.forward.loop.persistent is not None
    assert build("vanilla", Schedule(persistent="off")).plan.forward.loop.persistent is None
    assert build("vanilla", Schedule(persistent="on")).plan.forward.loop.persistent.forced


def test_a_one_stage_persistent_kernel_hands_the_state_to_the_next_step_on_chip():
    """A persistent forward of one stage whose items write the operand the next step stages (the state h:
    written at area t + 1, staged at t + 0; in a reverse layer the other way) also stores it into the staged
    row, and skips the staging's load where it runs as one block with every row staged; a kernel of several
    stages (GRU) or a backward (its products' operands come from its first stage) does not."""
    on = Schedule(persistent="on")
    for direction in ("forward", "reverse"):
        program = build_program(lstmdsl.parse("vanilla").cell, on, direction=direction)
        fwd = program.kernels[program.plan.forward.loop.persistent.name]
        (a,) = fwd.forwarded
        assert f"if (!forwarding || s == 0) stage_operand(sh{a}," in program.source
        assert program.source.count(f"if (forwarding) sh{a}[(b - b0) * ld_sh{a} + j] = ") == 1
        assert not program.kernels[program.plan.backward.loop.persistent.name].forwarded
    gru = build("gru", on)
    assert not gru.kernels[gru.plan.forward.loop.persistent.name].forwarded and "forwarding" not in gru.source


def test_a_persistent_step_computes_no_area_by_division():
    """Each buffer's area for each step offset of its slots (its step modulo a ring's length) is computed once
    before the step loop and moved on after every step (lstmdsl_next_area), forwards and in reverse: no
    division inside the loop (the vanilla forward's step start had twelve among its 170 or so instructions per
    warp), and one area for all the slots that share it (each kept area cost about five instructions a step)."""
    on = Schedule(persistent="on")
    for name in ("vanilla", "gru", "layernorm"):
        for direction in ("forward", "reverse"):
            program = build_program(lstmdsl.parse(name).cell, on, direction=direction)
            for pers in (program.plan.forward.loop.persistent, program.plan.backward.loop.persistent):
                if pers is None:
                    continue
                source = program.source.split(f" {pers.name}(", 1)[1].split("\nextern \"C\"", 1)[0]
                before, loop = source.split("for (int s = 0; s < T; ++s) {", 1)
                desc = program.kernels[pers.name]
                assert desc.areas and all(f"int {a.name} = lstmdsl_area(" in before for a in desc.areas)
                assert "lstmdsl_area(" not in loop
                reverse = "true" if desc.reverse else "false"
                assert all(f"{a.name} = lstmdsl_next_area({a.name}, t + {a.step}, {a.buffer}_m, {reverse});"
                           in loop for a in desc.areas)
                # one area per buffer and step offset, shared by its slots (vanilla's forward: 12 slots, 5 areas)
                assert {p.area for p in desc.pointers} == set(desc.areas)
                assert len({(a.buffer, a.step) for a in desc.areas}) == len(desc.areas)


def test_a_persistent_step_divides_no_index():
    """Each stage's share of the elements (J), each thread's items (item_walk: its first item and the step to
    the next) and its lean products' sums (lean_plan) are computed before the step loop: inside it no index is
    divided (at B = 1, H = 32 those divisions were about a third of a step's instructions; ncu), and the lean
    plan is made again only for a chunk of fewer staged rows than the first. A kernel of more than four
    stages of items computes them at each step (kept for all steps, they made such kernels spill)."""
    on = Schedule(persistent="on")
    for name in ("vanilla", "gru", "layernorm", "fgr"):
        program = build_program(lstmdsl.parse(name).cell, on)
        for pers in (program.plan.forward.loop.persistent, program.plan.backward.loop.persistent):
            if pers is None:
                continue
            source = program.source.split(f" {pers.name}(", 1)[1].split("\nextern \"C\"", 1)[0]
            before, loop = source.split("for (int s = 0; s < T; ++s) {", 1)
            stages = [st for st in program.kernels[pers.name].stages if not (st.stages or st.reduce)]
            if len(stages) > 4:  # (kept for all steps, a kernel of many stages' values would not fit registers)
                assert "are computed at each step" in before and "item_walk(J)" in loop
                continue
            assert "item_walk(J0)" in before and "/ gridDim.x" in before
            for division in ("% J", "/ J", "/ gridDim.x", "item_walk("):
                assert division not in loop, (name, pers.name, division)
            plans = loop.count("= lean_plan(")  # made again only for other rows than the last plan's
            assert plans == loop.count("if (nb != lean_rows") == before.count("= -1;") and "lean_plan(" not in before


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_a_persistent_kernels_moved_area_is_the_divisions(tmp_path):
    """lstmdsl_next_area, as the template writes it, compiled for the host: moved on step by step from the
    first step's area (forwards from t = 0, in reverse from T - 1), it gives lstmdsl_area(t + offset, ring)
    at every step, for no ring and rings of 2 to 5 (the runtime's hold 2), offsets -1, 0 and 1, T = 1 to 12."""
    source = build("vanilla", Schedule(persistent="on")).source
    helpers = [re.search(r"__device__ __forceinline__ int %s\(.*?\n\}\n" % name if name == "lstmdsl_next_area" else
                         r"__device__ __forceinline__ int %s\(.*?\n" % name, source, re.S).group(0)
               for name in ("lstmdsl_area", "lstmdsl_next_area")]
    program = "\n".join(h.replace("__device__ __forceinline__", "static inline") for h in helpers) + """
#include <cstdio>
int main() {
    int bad = 0;
    for (int ring = 0; ring <= 5; ring += ring == 0 ? 2 : 1)
        for (int offset = -1; offset <= 1; ++offset)
            for (int T = 1; T <= 12; ++T)
                for (int reverse = 0; reverse < 2; ++reverse) {
                    int area = lstmdsl_area((reverse ? T - 1 : 0) + offset, ring);
                    for (int s = 0; s < T; ++s) {
                        const int t = reverse ? T - 1 - s : s;
                        if (area != lstmdsl_area(t + offset, ring)) ++bad;
                        area = lstmdsl_next_area(area, t + offset, ring, reverse);
                    }
                }
    std::printf("%d\\n", bad);
    return bad != 0;
}
"""
    (tmp_path / "areas.cpp").write_text(program)
    subprocess.run(["c++", "-O1", "-o", str(tmp_path / "areas"), str(tmp_path / "areas.cpp")], check=True,
                   capture_output=True, timeout=120)
    r = subprocess.run([str(tmp_path / "areas")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stdout


def test_a_one_stage_persistent_grid_hands_the_state_on_in_tagged_words():
    """Run as a grid, such a kernel (float32 state) also stores each item's h with the number of the step
    that reads it (exchange_put, two areas by parity), the next step stages those words once they carry its
    number, and no grid barrier ends the step; a reverse layer alike, and a half-precision state (the word holds
    the item's float32 value; staging rounds it as the item's store does); not a float64 state (the word holds
    32 bits), a kernel of several stages (GRU) or a backward."""
    on = Schedule(persistent="on")
    for direction in ("forward", "reverse"):
        program = build_program(lstmdsl.parse("vanilla").cell, on, direction=direction)
        pers = program.plan.forward.loop.persistent
        fwd = program.kernels[pers.name]
        assert pers.exchange == fwd.exchanged.node == fwd.forwarded[0]
        a = pers.exchange
        assert f"xw{a} = xchg + ((size_t)((s + 1) & 1) * B + b) * n_hidden + j;" in program.source
        assert f"if (exchanging) exchange_put(xw{a}, " in program.source
        assert f"stage_exchanged(sh{a}, xchg + ((size_t)(s & 1) * B + b0) * n_hidden" in program.source
        assert "if (!exchanging) grid_barrier(bar, target += gridDim.x);" in program.source
        # a block without elements leaves: it would read words and write none, and could be overtaken
        assert "if (exchanging && blockIdx.x * ((n_hidden + gridDim.x - 1) / gridDim.x) >= n_hidden)" in \
            program.source
        assert any(arg.name == "xchg" and arg.bind.kind == "exchange" for arg in fwd.args)
        assert program.plan.backward.loop.persistent.exchange is None
    for precision in ("bf16", "fp16"):
        half = build("vanilla", Schedule(persistent="on", precision=precision), "float32")
        pers = half.plan.forward.loop.persistent
        assert pers.exchange is not None and half.kernels[pers.name].exchanged.ctype in ("lstmdsl_bf16", "lstmdsl_f16")
        assert "if (exchanging) exchange_put(" in half.source and "if (!exchanging) grid_barrier(" in half.source
    for name, schedule, dtype in (("gru", on, "float32"), ("vanilla", on, "float64")):
        other = build(name, schedule, dtype)
        assert other.plan.forward.loop.persistent.exchange is None and "exchanging" not in other.source


KERNEL = 'extern "C" __global__'


def unclaimed_kernels(source: str) -> tuple[str, int]:
    """The module with only the kernels no other test of this session has claimed to compile (claimed now): the
    same text but for the kernel's name compiles to the same code, so each distinct kernel is compiled once in
    the session (about a third of the parametrisations' kernels are such repeats: another schedule's kernels
    that this one leaves unchanged). Claims are files in conftest's LSTMDSL_TEST_NVCC_CLAIMS, made exclusively,
    so two workers never both take one; without it (a test run alone), every kernel. A module's helpers come
    before its first kernel (the element types among them: a kernel is the same only under the same helpers),
    and each kernel is self-contained from there (its macros its own). Returns (source, number of kernels
    kept)."""
    head, *kernels = source.split(KERNEL)
    claims = os.environ.get("LSTMDSL_TEST_NVCC_CLAIMS")
    kept, helpers = [], re.sub(r"//[^\n]*", "", head)  # (its comments name the cell and schedule)
    for k in kernels:
        name = re.match(r"\s*void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", k).group(1)
        digest = hashlib.sha256((helpers + k.replace(name, "")).encode()).hexdigest()  # (the helpers: its types)
        try:
            if claims:
                os.close(os.open(os.path.join(claims, digest), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        kept.append(k)
    return head + "".join(KERNEL + k for k in kept), len(kept)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("schedule,dtype,lengths",
                         [(s, "float32", False) for s in SCHEDULES.values()] + [(Schedule(), "float64", False),
                                                                               (Schedule(), "float32", True),
                                                                               (Schedule(precision="bf16"), "float32", True),
                                                                               (Schedule(precision="fp16", fuse_recurrent=True),
                                                                                "float32", False),
                                                                               (Schedule(persistent="on"), "float32", False),
                                                                               (Schedule(persistent="on", precision="bf16"),
                                                                                "float32", False),
                                                                               (Schedule(persistent="on", precision="fp16"),
                                                                                "float32", False),
                                                                               (Schedule(persistent="on"), "float64", False),
                                                                               (Schedule(persistent="on"), "float32", True),
                                                                               (Schedule(persistent="on", fuse_rows=False),
                                                                                "float32", False),
                                                                               (Schedule(False, False, False, False,
                                                                                         persistent="on"), "float32", False)],
                         ids=list(SCHEDULES) + ["float64", "lengths", "bf16", "fp16-recurrent", "persistent",
                                                "persistent-bf16", "persistent-fp16", "persistent-float64", "persistent-lengths",
                                                "persistent-no-fuse-rows", "persistent-unfused"])
def test_all_kernels_compile_for_sm90_without_spills(schedule, dtype, lengths, tmp_path):
    sources = [build(name, schedule, dtype, lengths).source for name in SPECS]
    if schedule.precision == "bf16":  # and the converting copies of mixed precision (runtime/convert.py)
        sources.append(render_conversions())
    sources, counts = zip(*map(unclaimed_kernels, sources))
    if not sum(counts):
        return  # (every kernel compiled by the other parametrisations)
    cu = tmp_path / "kernels.cu"
    cu.write_text("\n".join(sources))
    # device code only (-cubin: what NVRTC compiles at run time; the host side's compile cost 7% more)
    r = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), str(cu)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    report = r.stderr
    functions = re.findall(r"Compiling entry function '(\w+)'", report)
    assert len(functions) == sum(counts)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report


def _constants(desc, B, sizes, blocks, split=0, cached=1, stage_rows=None, exchange=0):
    """A launch's shape arguments (kerneldesc.SHAPE_KINDS) by name, as runtime/issue.shape_value binds them."""
    widest = max(sizes.values())
    value = {"batch": B, "cached": cached, "stage_rows": stage_rows or min(B, split or B), "split": split,
             "exchanging": exchange, "ld": 4 * widest, "stride": 4 * widest * B, "ring": 2}
    env = dict(sizes, B=B, one=1)
    return {a.name: sizes[a.bind.name] if a.bind.kind == "size" else sum(env[n] for n in a.bind.offset)
            if a.bind.kind == "dim" else value[a.bind.kind] for a in desc.shape_args()}


def test_a_kernel_compiled_for_a_shape_has_its_arguments_as_constants():
    """codegen.render_persistent: the launch's shape arguments become constants of the same names (the
    parameters stay, renamed, so the launch passes what it passes the general kernel), and the grid's size; the
    general kernel is unchanged; constants for other arguments are refused."""
    program = build("vanilla", Schedule(persistent="on"))
    desc = program.kernels[program.plan.forward.loop.persistent.name]
    assert {"B", "cached", "stage_rows", "split", "exchange", "n_hidden"} <= {a.name for a in desc.shape_args()}
    assert {"T", "bar", "xchg"}.isdisjoint(a.name for a in desc.shape_args())
    source = render_persistent(program.plan, desc, _constants(desc, 3, {"hidden": 33}, 132, exchange=1), 132)
    body = source.split(f"void __launch_bounds__(256, 1) {desc.name}(", 1)[1]
    assert "const int B_arg," in body and "const int n_hidden_arg," in body and "const int T," in body
    assert "constexpr int B = 3;" in body and "constexpr int n_hidden = 33;" in body
    assert "constexpr unsigned lstmdsl_grid = 132, lstmdsl_threads = 256;" in body
    assert "gridDim.x" not in body.split("\n}\n", 1)[0] and "lstmdsl_grid" in body
    assert source.count("__global__") == 1 and "gridDim.x" in program.source and "B_arg" not in program.source
    with pytest.raises(AssertionError, match="constants"):
        render_persistent(program.plan, desc, {"B": 3}, 1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_kernels_compiled_for_a_shape_compile_for_sm90_without_spills(tmp_path):
    """Kernels compiled for the shapes the cost model specialises (one block, a split grid, a grid over the
    elements at B <= 4) and a few it does not (forced), forward and backward, fp32, float64 and half precision."""
    cases = [("vanilla", Schedule(persistent="on"), "float32", 1, {"hidden": 32}, 1, 0, 0),
             ("vanilla", Schedule(persistent="on"), "float32", 64, {"hidden": 64}, 64, 1, 0),
             ("vanilla", Schedule(persistent="on"), "float32", 1, {"hidden": 512}, 132, 0, 1),
             ("vanilla", Schedule(persistent="on"), "float32", 16, {"hidden": 256}, 132, 0, 1),
             ("vanilla", Schedule(persistent="on"), "float64", 3, {"hidden": 33}, 3, 1, 0),
             ("vanilla", Schedule(persistent="on", precision="bf16"), "float32", 4, {"hidden": 256}, 132, 0, 1),
             ("gru", Schedule(persistent="on"), "float32", 17, {"hidden": 100}, 17, 1, 0),
             ("layernorm", Schedule(persistent="on"), "float32", 1, {"hidden": 1000}, 132, 0, 0),
             ("fgr", Schedule(persistent="on"), "float32", 1, {"hidden": 256}, 132, 0, 0)]
    sources = []
    for name, schedule, dtype, B, sizes, blocks, split, exchange in cases:
        program = build(name, schedule, dtype)
        for phase in ("forward", "backward"):
            pers = getattr(program.plan, phase).loop.persistent
            if pers is not None:
                desc = program.kernels[pers.name]
                given = {"input": sizes["hidden"], "proj": max(1, sizes["hidden"] // 2), **sizes}
                sources.append((f"{name} {phase} {schedule.precision} {dtype} B={B} {sizes} {blocks} blocks",
                                render_persistent(program.plan, desc, _constants(
                                    desc, B, given, blocks, split, exchange=exchange if desc.exchanged else 0), blocks)))
    for k, (label, source) in enumerate(sources):  # (one file each: every module defines the same helpers)
        cu = tmp_path / f"k{k}.cu"
        cu.write_text(source)
        r = subprocess.run(["nvcc", "-arch=sm_90", "-c", "-Xptxas", "-v", "-o", str(tmp_path / f"k{k}.o"), str(cu)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
        assert len(spills) == 1 and spills[0] == ("0", "0"), (label, r.stderr)


def test_modules_compile_on_their_own(tmp_path):
    """NVRTC compiles each module alone (the test above joins them, where include guards hide what one module
    lacks): the converting copies, the regularisers' draws, and a half-precision persistent module, also for sm_75, where the tensor-core
    products (mma m16n8k16 needs sm_80) give way to the FMA tiles."""
    fp16 = build("vanilla", Schedule(persistent="on", precision="fp16")).source
    for name, source, arch in (("convert", render_conversions(), "sm_90"), ("draws", render_draws(), "sm_90"),
                               ("fp16", fp16, "sm_90"), ("fp16-sm75", fp16, "sm_75")):
        cu = tmp_path / f"{name}.cu"
        cu.write_text(source)
        r = subprocess.run(["nvcc", f"-arch={arch}", "-c", "-o", str(tmp_path / f"{name}.o"), str(cu)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"


def test_half_plans_align_rows_and_run_products_over_the_padded_width():
    """Mixed precision aligns storage for the tensor cores (16 bytes): the products whose operand is a whole
    buffer row run K (forward) or N (gradient passed back) over the padded width; fp32 plans do not."""
    from lstmdsl.plan import Gemm

    half = build("vanilla", Schedule(precision="bf16")).plan
    assert half.storage.align == 8 and all(s.padded for s in half.storage.stacks)
    pads = {(op.kind, where): op.call.padded for phase in (half.forward, half.backward)
            for where, op in phase.ops() if isinstance(op, Gemm)}
    assert pads == {("forward", "before"): ("k",), ("forward", "loop"): ("k",), ("backward", "loop"): ("n",),
                    ("backward", "after"): ("n",)}
    strict = build("vanilla").plan
    assert strict.storage.align == 1 and not any(op.call.padded for phase in (strict.forward, strict.backward)
                                                 for _, op in phase.ops() if isinstance(op, Gemm))
    heads = build("slstm", Schedule(precision="bf16")).plan  # block-diagonal stacks stay unpadded
    assert not any(s.padded for s in heads.storage.stacks if s.heads)


def test_the_module_loader_finds_a_persistent_kernel_first_in_its_source():
    """nvrtc.load_module checks a cached cubin by getting its first kernel: a kernel compiled for a shape is the
    module's only one and begins with __launch_bounds__ (once taken for the kernel's name: every load failed)."""
    from lstmdsl.runtime.nvrtc import _FIRST_KERNEL

    program = build("vanilla", Schedule(persistent="on"))
    desc = program.kernels[program.plan.forward.loop.persistent.name]
    source = render_persistent(program.plan, desc, _constants(desc, 1, {"hidden": 32}, 1), 1)
    assert _FIRST_KERNEL.search(source).group(1) == desc.name
    assert _FIRST_KERNEL.search(program.source).group(1) in program.kernels


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_step_clock_probe_still_instruments_the_persistent_template(monkeypatch):
    """benchmarks/probe_step_clock.py edits a copy of templates/ at anchors in persistent.cu.j2: every anchor is
    still there once, and the kernels rendered from the copy carry the six clock sums and the array they are
    stored into (with --products, in half precision, the products' three sums too; with --polls, the staging's
    rounds of loads); with nvcc where it is installed, they compile for sm_90."""
    from pathlib import Path

    from lstmdsl import codegen
    from lstmdsl.resources import resource_dir

    probe = _benchmark("probe_step_clock")
    copy = Path(probe.instrumented(str(resource_dir("templates")), products=True, polls=True))
    real = codegen.resource_dir
    monkeypatch.setattr(codegen, "resource_dir", lambda name: copy if name == "templates" else real(name))
    codegen._template.cache_clear()
    build_program.cache_clear()  # (programs are kept in memory: none built before, and none of these after)
    try:
        for precision in ("fp16", "fp32"):
            source = build_program(lstmdsl.parse("vanilla").cell, Schedule(precision=precision)).source
            assert all(f"lstmdsl_ck[{k}] +=" in source for k in range(6)) and "lstmdsl_clock_out[" in source
            assert ("lstmdsl_clock_sub[" in source) == (precision == "fp16")
            assert source.count("atomicAdd(o") == (3 if precision == "fp16" else 0)
            assert "++lstmdsl_rounds;" in source and "lstmdsl_poll_rounds[" in source
            if shutil.which("nvcc"):
                cu = copy / f"k_{precision}.cu"
                cu.write_text(source)
                r = subprocess.run(["nvcc", "-arch=sm_90", "-c", "-o", str(copy / "k.o"), str(cu)],
                                   capture_output=True, text=True)
                assert r.returncode == 0, r.stderr[-2000:]
    finally:
        codegen._template.cache_clear()
        build_program.cache_clear()
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_the_l2_fanin_probe_compiles_without_spills(tmp_path):
    """benchmarks/probe_l2_fanin.py's kernel (the exchange's round of loads, every block at once) compiles for
    sm_90 without register spills, so that what it times on the GPU is its loads."""
    cu = tmp_path / "fanin.cu"
    cu.write_text(_benchmark("probe_l2_fanin").source())
    r = subprocess.run(["nvcc", "-arch=sm_90", "-c", "-Xptxas", "-v", "-o", str(tmp_path / "k.o"), str(cu)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Compiling entry function 'fanin'" in r.stderr and "Compiling entry function 'exchange_rounds'" in r.stderr
    assert r.stderr.count(" 0 bytes spill stores") == 2, r.stderr[-2000:]


def test_a_persistent_backward_meets_the_grid_once_a_step():
    """The vanilla LSTM's backward kernel: a grid barrier after its pointwise stage, a block barrier after its
    products (Persistent.block_barriers: the next step's pointwise stage reads dh only at its own elements)."""
    program = build_program(lstmdsl.parse("vanilla").cell, Schedule(persistent="on"), direction="forward")
    name = program.plan.backward.loop.persistent.name
    source = program.source[program.source.index(f"void __launch_bounds__(256, 1) {name}("):]
    source = source[:source.index("extern \"C\"")] if "extern \"C\"" in source else source
    assert source.count("grid_barrier(bar, target += gridDim.x);") == 1
    assert "__syncthreads();  // (the next stage reads and writes only this block's elements" in source
