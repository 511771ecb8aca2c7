"""The specs of round 2 against implementations written here from their papers, in plain numpy, not through
lstmdsl's IR: LayerNorm LSTM (Ba et al. 2016), RMSNorm LSTM (Zhang & Sennrich 2019), sLSTM (Beck et al.
2024), IndRNN (Li et al. 2018), MGU (Zhou et al. 2016). Gradients: test_reference.py checks every shipped
spec against central differences."""

from __future__ import annotations

import numpy as np
import pytest

import lstmdsl


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def ln(a, g, b, eps=1e-5):
    mu = a.mean(-1, keepdims=True)
    var = ((a - mu) ** 2).mean(-1, keepdims=True)
    return g * (a - mu) / np.sqrt(var + eps) + b


def layernorm_lstm(p, x, h, c):
    """Ba, Kiros & Hinton (2016) eqs. (20)-(22): LN over all four gates' input and recurrent products."""
    W = np.concatenate([p[f"W_{k}"] for k in "ifzo"])
    R = np.concatenate([p[f"R_{k}"] for k in "ifzo"])
    gx = np.concatenate([p[f"g_x{k}"] for k in "ifzo"])
    gh = np.concatenate([p[f"g_h{k}"] for k in "ifzo"])
    b = np.concatenate([p[f"b_{k}"] for k in "ifzo"])
    ys = []
    for xt in x:
        a = ln(xt @ W.T, gx, 0) + ln(h @ R.T, gh, 0) + b
        i, f, z, o = np.split(a, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(z)
        h = sigmoid(o) * np.tanh(ln(c, p["g_c"], p["b_c"]))
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c}


def rmsnorm_lstm(p, x, h, c):
    ys = []
    for xt in x:
        pre = {k: xt @ p[f"W_{k}"].T + h @ p[f"R_{k}"].T for k in "ifzo"}
        n = {k: p[f"g_{k}"] * a / np.sqrt((a * a).mean(-1, keepdims=True) + 1e-5) + p[f"b_{k}"]
             for k, a in pre.items()}
        c = sigmoid(n["f"]) * c + sigmoid(n["i"]) * np.tanh(n["z"])
        h = sigmoid(n["o"]) * np.tanh(c)
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c}


def slstm(p, x, h, c, n, m):
    """Beck et al. (2024) eqs. (8)-(17): exponential input gate, sigmoid forget gate, stabiliser m."""
    ys = []
    for xt in x:
        pre = {k: xt @ p[f"W_{k}"].T + h @ p[f"R_{k}"].T + p[f"b_{k}"] for k in "ifzo"}
        log_i, log_f = pre["i"], np.log(sigmoid(pre["f"]))
        m_new = np.maximum(log_f + m, log_i)
        i, f = np.exp(log_i - m_new), np.exp(log_f + m - m_new)
        c = f * c + i * np.tanh(pre["z"])
        n = f * n + i
        h = sigmoid(pre["o"]) * c / n
        m = m_new
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c, "n": n, "m": m}


def indrnn(p, x, h):
    ys = []
    for xt in x:
        h = np.maximum(xt @ p["W"].T + p["u"] * h + p["b"], 0)
        ys.append(h)
    return np.stack(ys), {"h": h}


def mgu(p, x, h):
    ys = []
    for xt in x:
        f = sigmoid(xt @ p["W_f"].T + h @ p["U_f"].T + p["b_f"])
        cand = np.tanh(xt @ p["W_h"].T + (f * h) @ p["U_h"].T + p["b_h"])
        h = (1 - f) * h + f * cand
        ys.append(h)
    return np.stack(ys), {"h": h}


CASES = {"layernorm": layernorm_lstm, "rmsnorm": rmsnorm_lstm, "slstm": slstm, "indrnn": indrnn, "mgu": mgu}


@pytest.mark.parametrize("name", CASES)
def test_spec_matches_the_paper_written_out_in_numpy(name):
    layer = lstmdsl.compile(name, input_size=5, hidden_size=7, dtype="float64", seed=3)
    rng = np.random.default_rng(4)
    for k, v in layer.parameters().items():  # away from the initialisation: every term matters
        v[...] = rng.uniform(-0.8, 0.8, v.shape) + (1.0 if k.split(".")[1].startswith("g_") else 0.0)
    p = {k.split(".", 1)[1]: v for k, v in layer.parameters().items()}
    x = rng.standard_normal((6, 3, 5))
    state = {s: 0.5 * rng.standard_normal(shape) for s, shape in layer.state_shapes(3).items()}
    if name == "slstm":
        state["n"] = np.abs(state["n"]) + 0.5  # a normaliser is positive
    y, final = layer.forward(x, state)
    y_ref, final_ref = CASES[name](p, x, *(state[s][0] for s in state))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    for s in final_ref:
        np.testing.assert_allclose(final[s][0], final_ref[s], rtol=1e-10, atol=1e-12)


def test_gains_start_at_one():
    layer = lstmdsl.compile("layernorm", 4, 6, seed=0)
    gains = {k: v for k, v in layer.parameters().items() if k.split(".")[1].startswith("g_")}
    assert len(gains) == 9 and all(np.all(v == 1) for v in gains.values())
    assert not np.all(layer.parameters()["l0.b_i"] == 1)


def test_reductions_are_stages_of_their_own():
    from lstmdsl.passes import schedule_plan
    from lstmdsl.plan import Kernel, reduces

    spec = lstmdsl.parse("layernorm")
    plan = schedule_plan(spec.cell, spec.grad, spec.schedule)
    body = plan.forward.loop.body
    red = [op for op in body if reduces(plan.forward, op)]
    assert red and all(len(op.nodes) == 1 for op in red)
    assert all(isinstance(op, Kernel) for op in body[1:])  # no GEMM after the first: one recurrent stage
