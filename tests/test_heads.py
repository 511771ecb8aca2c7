"""Block-diagonal matrices (`heads R_i, ...`, xLSTM's sLSTM heads), stage by stage: the language, the IR's
storage of the blocks, the reference against an independent sLSTM written here, gradients, the plan's
batched GEMMs, and every way in (API, save/load, CLI, torch module, the eager baseline)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lstmdsl
from lstmdsl import SpecError, UsageError
from lstmdsl.gradcheck import gradient_check
from lstmdsl.layer import interleave_rows
from lstmdsl.planformat import format_plan
from lstmdsl.program import build_program

from test_cli import run_cli

HEADS_VANILLA = """cell hv {
    input x
    state h, c
    heads R_i, R_f, R_z, R_o
    i  = sigmoid(W_i x + R_i h + b_i)
    f  = sigmoid(W_f x + R_f h + b_f)
    z  = tanh(W_z x + R_z h + b_z)
    o  = sigmoid(W_o x + R_o h + b_o)
    c' = f * c + i * z
    h' = o * tanh(c')
    output h'
}"""


def test_the_spec_declares_blocks_and_the_ir_stores_them():
    cell = lstmdsl.parse("slstm").cell
    r = cell.param("R_i")
    assert r.heads and r.shape == ("hidden", "hidden/heads") and r.cols == "hidden"
    assert not cell.param("W_i").heads and cell.param("W_i").shape == ("hidden", "input")
    layer = lstmdsl.compile("slstm", 5, 12, num_heads=4)
    assert layer.parameters()["l0.R_i"].shape == (12, 3) and layer.parameters()["l0.W_i"].shape == (12, 5)
    assert layer.sizes[0]["heads"] == 4 and layer.sizes[0]["hidden/heads"] == 3
    assert lstmdsl.compile("slstm", 5, 12).parameters()["l0.R_i"].shape == (12, 12)  # one head by default


@pytest.mark.parametrize("line,match", [
    ("heads R_i, R_q", r"'heads' names matrix 'R_q', which no equation applies"),
    ("heads R_i, R_f, R_i", r"matrix 'R_i' is declared block-diagonal twice"),
    ("heads R_i", r"multiply the same operand, but only R_i is block-diagonal"),
])
def test_bad_heads_lines_are_located(line, match):
    text = HEADS_VANILLA.replace("heads R_i, R_f, R_z, R_o", line)
    with pytest.raises(SpecError, match=match) as err:
        lstmdsl.parse(text)
    assert ":4:" in str(err.value)  # the line of the heads declaration


@pytest.mark.parametrize("kw,match", [
    (dict(hidden_size=7, num_heads=3), r"side 'hidden' is 7, not a multiple of 3"),
    (dict(hidden_size=6, num_heads=0), r"num_heads must be a positive integer"),
    (dict(hidden_size=6, num_heads=2, spec="vanilla"), r"cell 'vanilla' has no block-diagonal matrix"),
])
def test_bad_head_counts_are_refused(kw, match):
    spec = kw.pop("spec", "slstm")
    with pytest.raises(UsageError, match=match):
        lstmdsl.compile(spec, 3, **kw)


def independent_slstm(x, params, heads, state):
    """The sLSTM of Beck et al. 2024, eqs. (8)-(17) with sigmoid forget gate and block-diagonal recurrent
    matrices, written directly (dense blocks assembled here, not through the IR)."""
    H = params["b_i"].shape[0]
    r = H // heads

    def dense(blocks):  # [H, H / heads] stacked blocks -> the block-diagonal [H, H]
        out = np.zeros((H, H))
        for k in range(heads):
            out[k * r:(k + 1) * r, k * r:(k + 1) * r] = blocks[k * r:(k + 1) * r]
        return out
    R = {g: dense(params[f"R_{g}"]) for g in "ifzo"}
    h, c, n, m = (state[s].copy() for s in "hcnm")
    ys = []
    for xt in x:
        pre = {g: xt @ params[f"W_{g}"].T + h @ R[g].T + params[f"b_{g}"] for g in "ifzo"}
        li = pre["i"]
        lf = -np.logaddexp(0, -pre["f"])  # log sigmoid
        z, o = np.tanh(pre["z"]), 1 / (1 + np.exp(-pre["o"]))
        m_new = np.maximum(lf + m, li)
        i, f = np.exp(li - m_new), np.exp(lf + m - m_new)
        c, n, m = f * c + i * z, f * n + i, m_new
        h = o * (c / n)
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c, "n": n, "m": m}


def test_the_reference_matches_an_independent_slstm_with_heads():
    layer = lstmdsl.compile("slstm", 5, 12, num_heads=4, dtype="float64", seed=2)
    rng = np.random.default_rng(0)
    for p in layer.parameters().values():
        p[...] = rng.uniform(-0.8, 0.8, p.shape)
    x = rng.standard_normal((6, 3, 5))
    state = {s: rng.standard_normal((1, 3, 12)) for s in "hcm"}
    state["n"] = np.abs(rng.standard_normal((1, 3, 12))) + 0.5
    y, final = layer.forward(x, state)
    params = {k.split(".", 1)[1]: v for k, v in layer.parameters().items()}
    want, want_final = independent_slstm(x, params, 4, {k: v[0] for k, v in state.items()})
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-13)
    for s in "hcnm":
        np.testing.assert_allclose(final[s][0], want_final[s], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("options", [{}, {"bidirectional": True, "lengths": True}, {"dropconnect": 0.5}])
def test_gradients_through_blocks_match_central_differences(options):
    rows = gradient_check(lstmdsl.parse("slstm"), 3, 6, 3, 4, 2, seed=1, num_heads=3, **options)
    assert max(r.rel_error for r in rows) < 1e-6, rows
    rows = gradient_check(lstmdsl.parse(HEADS_VANILLA), 4, 6, 2, 3, 1, seed=2, num_heads=2)
    assert max(r.rel_error for r in rows) < 1e-6, rows


def test_the_plan_runs_the_block_diagonal_stack_head_by_head_as_one_batch_of_gemms():
    """Gate fusion: the four block-diagonal matrices' stack, and the input's stack beside it (they share
    the gates' gradients), are stored head by head, so each step's product is one batch over the heads
    (N = 4 blocks), the backward's one too (K = 4 blocks), and the values lie head by head in their
    buffers; without gate fusion, one batch per matrix on contiguous slices."""
    spec = lstmdsl.parse("slstm")
    plan = build_program(spec.cell, spec.schedule, "float32").plan
    dh = "hidden/heads"
    assert {s.name: s.interleave for s in plan.storage.stacks} == {"weight_ih": dh, "weight_hh": dh}
    (step,) = [op for op in plan.forward.loop.body if type(op).__name__ == "Gemm"]
    assert step.matrices == ("R_i", "R_f", "R_z", "R_o")
    assert step.call.heads == "heads" and step.call.n == (dh,) * 4 and step.call.k == (dh,)
    assert step.call.strides == ((dh,), (4, dh, dh), (4, dh))
    slots = plan.storage.slots("forward")
    assert [slots[o][0].col for o in step.outputs] == [(dh,) * j for j in range(4)]
    assert all(slots[o][0].interleave == ((dh,), (dh,) * 4) for o in step.outputs)
    (back,) = [op for op in plan.backward.loop.body if type(op).__name__ == "Gemm"]
    assert back.call.k == (dh,) * 4 and back.call.strides == ((4, dh), (4, dh, dh), (dh,))
    kernels = [op for op in plan.forward.loop.body if type(op).__name__ == "Kernel"]
    assert len(kernels) == 1
    hoisted = [op for op in plan.forward.before if type(op).__name__ == "Gemm"]
    assert hoisted[0].matrices == ("W_i", "W_f", "W_z", "W_o") and hoisted[0].call.heads is None
    text = format_plan(plan, {"input": 5, "hidden": 12, "heads": 4, "hidden/heads": 3, "proj": None})
    assert "for each of the 4 blocks" in text and "the GEMMs read it head by head" in text
    apart = build_program(spec.cell, dataclasses.replace(spec.schedule, fuse_gates=False), "float32").plan
    step = [op for op in apart.forward.loop.body if type(op).__name__ == "Gemm"]
    assert [op.matrices for op in step] == [("R_i",), ("R_f",), ("R_z",), ("R_o",)]
    assert step[0].call.strides == ((dh,), (dh, dh), (dh,)) and not any(s.interleave for s in apart.storage.stacks)


def test_the_row_order_of_a_stack_stored_head_by_head():
    """interleave_rows: block k of every matrix in turn; a permutation."""
    order = interleave_rows(count=3, rows=4, block=2)
    assert order.tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    assert sorted(interleave_rows(4, 12, 3).tolist()) == list(range(48))
    assert interleave_rows(4, 6, 6).tolist() == list(range(24))  # one head: the matrices' own order


def test_saved_layers_keep_their_heads(tmp_path):
    layer = lstmdsl.compile("slstm", 3, 8, 2, num_heads=4, seed=1)
    layer.save(tmp_path / "s.npz")
    back = lstmdsl.load(tmp_path / "s.npz")
    assert back.sizes[0]["heads"] == 4
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x, train=False)[0], layer.forward(x, train=False)[0])


def test_the_cli_takes_heads():
    r = run_cli("run", "slstm", "--heads", "4", "-I", "4", "-H", "8", "-L", "2", "--steps", "3", "--batch", "2",
                "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    r = run_cli("run", "slstm", "--heads", "3", "-I", "4", "-H", "8", "--backend", "numpy")
    assert r.returncode == 64 and "not a multiple of 3" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("compile", "slstm", "--emit", "plan", "-I", "4", "-H", "8", "--heads", "2")
    assert r.returncode == 0 and "for each of the 2 blocks" in r.stdout, r.stdout[-2000:]


def test_the_torch_module_and_the_eager_baseline_take_heads():
    torch = pytest.importorskip("torch")
    import lstmdsl.torch as lt
    from lstmdsl.eager import EagerCell

    m = lt.RNN("slstm", 5, 6, 2, num_heads=3, dtype=torch.float64)
    assert m.num_heads == 3 and m.weight_hh_l0.shape == (24, 2)
    layer = lstmdsl.compile("slstm", 5, 6, 2, num_heads=3, dtype="float64", seed=3)
    for p in layer.parameters().values():
        p[...] = np.random.default_rng(4).uniform(-0.5, 0.5, p.shape)
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    y_ref, _ = layer.forward(x, train=False)
    eager = EagerCell(layer.spec, layer, device="cpu")
    np.testing.assert_allclose(eager.forward(torch.tensor(x)).detach().numpy(), y_ref, rtol=1e-12, atol=1e-13)
    with pytest.raises(UsageError, match="not a multiple of 4"):
        lt.RNN("slstm", 5, 6, num_heads=4)
