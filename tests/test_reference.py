"""The numpy reference: against textbook LSTM code written here independently, against central finite
differences for every shipped spec, and for state carry-over and layer stacking."""

from __future__ import annotations

import numpy as np
import pytest

import lstmdsl

from conftest import SPECS, extra_sizes
from unusual_specs import UNUSUAL


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def textbook_lstm(x, h, c, p, peephole=False):
    """Hochreiter & Schmidhuber with forget gate (Gers 2000); peepholes as in Gers et al. 2002."""
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        pi = p["p_i"] * c if peephole else 0.0
        pf = p["p_f"] * c if peephole else 0.0
        i = sigmoid(xt @ p["W_i"].T + h @ p["R_i"].T + pi + p["b_i"])
        f = sigmoid(xt @ p["W_f"].T + h @ p["R_f"].T + pf + p["b_f"])
        z = np.tanh(xt @ p["W_z"].T + h @ p["R_z"].T + p["b_z"])
        c = f * c + i * z
        po = p["p_o"] * c if peephole else 0.0
        o = sigmoid(xt @ p["W_o"].T + h @ p["R_o"].T + po + p["b_o"])
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


def layer_params(layer, k=0):
    prefix = f"l{k}."
    return {n[len(prefix):]: a for n, a in layer.parameters().items() if n.startswith(prefix)}


@pytest.mark.parametrize("name,peephole", [("vanilla", False), ("peephole", True), ("np", False)])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 3, 5, 33), (4, 2, 8, 3)])
def test_reference_matches_textbook_lstm(name, peephole, T, B, I, H, rng):
    layer = lstmdsl.compile(name, input_size=I, hidden_size=H, dtype="float64", seed=T + H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H))
    y, state = layer.forward(x, {"h": h0, "c": c0})
    y_ref, h_ref, c_ref = textbook_lstm(x, h0[0], c0[0], layer_params(layer), peephole)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(state["h"][0], h_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(state["c"][0], c_ref, rtol=1e-12, atol=1e-13)


def test_textbook_gru(rng):
    layer = lstmdsl.compile("gru", input_size=3, hidden_size=5, dtype="float64")
    p = layer_params(layer)
    x, h = rng.standard_normal((6, 2, 3)), np.zeros((2, 5))
    y, _ = layer.forward(x)
    for t in range(6):  # Cho et al. 2014, eqs. (5)-(8)
        r = sigmoid(x[t] @ p["W_r"].T + h @ p["R_r"].T + p["b_r"])
        u = sigmoid(x[t] @ p["W_u"].T + h @ p["R_u"].T + p["b_u"])
        n = np.tanh(x[t] @ p["W_n"].T + (r * h) @ p["R_n"].T + p["b_n"])
        h = u * h + (1 - u) * n
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", SPECS + [UNUSUAL["state_named_output"]])
def test_backward_matches_central_differences(name):
    """Every parameter, x and every initial state, float64, B=3 T=5 H=7 I=4, two layers; also a cell whose state is
    named `output` (its gradient once shared dy's leaf: wrong gradients, no error)."""
    T, B, I, H = 5, 3, 4, 7
    layer = lstmdsl.compile(name, input_size=I, hidden_size=H, num_layers=2, dtype="float64", seed=7,
                            **extra_sizes(name))
    rng = np.random.default_rng(99)
    for p in layer.parameters().values():  # larger than the default init, so every path matters
        p[...] = rng.uniform(-0.8, 0.8, p.shape)
    x = rng.standard_normal((T, B, I))
    state = {k: 0.5 * rng.standard_normal(s) for k, s in layer.state_shapes(B).items()}
    y, final = layer.forward(x, state)
    noise = layer.last_noise() or None  # a spec's regularisers: the same masks for every evaluation
    wy = rng.standard_normal(y.shape)
    ws = {k: rng.standard_normal(a.shape) for k, a in final.items()}

    def loss():
        y, final = layer.forward(x, state, train=False, noise=noise)
        return np.sum(y * wy) + sum(np.sum(final[k] * ws[k]) for k in ws)

    layer.zero_grad()
    layer.forward(x, state, noise=noise)
    dx = layer.backward(wy, ws)
    analytic = {"x": dx, **{"state " + k: v for k, v in layer.initial_state_grads().items()}, **layer.grads()}
    tensors = {"x": x, **{"state " + k: v for k, v in state.items()}, **layer.parameters()}
    eps = 1e-6
    for tname, value in tensors.items():
        flat = value.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 25), replace=False)
        numeric = []
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            plus = loss()
            flat[i] = old - eps
            minus = loss()
            flat[i] = old
            numeric.append((plus - minus) / (2 * eps))
        got = analytic[tname].reshape(-1)[picks]
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-7, err_msg=f"{name}: d{tname}")


@pytest.mark.parametrize("name", ["vanilla", "gru", "fgr", "lstmp"])
def test_two_chunks_equal_one_run_forward_and_backward(name, rng):
    T, B, I, H = 7, 3, 5, 6
    kw = dict(input_size=I, hidden_size=H, num_layers=2, dtype="float64", seed=3, **extra_sizes(name))
    whole, first, second = (lstmdsl.compile(name, **kw) for _ in range(3))
    x = rng.standard_normal((T, B, I))
    y, final = whole.forward(x)
    y1, mid = first.forward(x[:3])
    y2, final2 = second.forward(x[3:], mid)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, rtol=1e-13, atol=1e-14)
    for k in final:
        np.testing.assert_allclose(final2[k], final[k], rtol=1e-13, atol=1e-14)

    dy = rng.standard_normal(y.shape)
    dfinal = {k: rng.standard_normal(v.shape) for k, v in final.items()}
    dx = whole.backward(dy, dfinal)
    dx2 = second.backward(dy[3:], dfinal)
    dx1 = first.backward(dy[:3], second.initial_state_grads())
    np.testing.assert_allclose(np.concatenate([dx1, dx2]), dx, rtol=1e-12, atol=1e-13)
    for k, g in whole.grads().items():
        np.testing.assert_allclose(first.grads()[k] + second.grads()[k], g, rtol=1e-12, atol=1e-13, err_msg=k)
    for k, g in whole.initial_state_grads().items():
        np.testing.assert_allclose(first.initial_state_grads()[k], g, rtol=1e-12, atol=1e-13)


def test_stack_equals_layers_run_one_after_another(rng):
    stack = lstmdsl.compile("peephole", input_size=4, hidden_size=6, num_layers=3, dtype="float64", seed=1)
    x = rng.standard_normal((5, 2, 4))
    y, state = stack.forward(x)
    h = x
    for k in range(3):
        single = lstmdsl.compile("peephole", input_size=h.shape[2], hidden_size=6, dtype="float64")
        for name, a in single.parameters().items():
            a[...] = stack.parameters()[name.replace("l0.", f"l{k}.")]
        h, st = single.forward(h)
        for s in st:
            np.testing.assert_allclose(st[s][0], state[s][k], rtol=1e-13)
    np.testing.assert_allclose(h, y, rtol=1e-13)


@pytest.mark.parametrize("name", ["vanilla", "cifg", "gru"])
def test_float32_tracks_float64(name, rng):
    kw = dict(input_size=5, hidden_size=9, num_layers=2, seed=5)
    l32, l64 = lstmdsl.compile(name, dtype="float32", **kw), lstmdsl.compile(name, dtype="float64", **kw)
    for k, a in l64.parameters().items():
        a[...] = l32.parameters()[k]
    x = rng.standard_normal((20, 3, 5))
    y32, _ = l32.forward(x.astype(np.float32))
    y64, _ = l64.forward(x)
    assert y32.dtype == np.float32
    assert np.max(np.abs(y32 - y64)) / np.max(np.abs(y64)) < 1e-5
    dy = rng.standard_normal(y64.shape)
    dx32, dx64 = l32.backward(dy.astype(np.float32)), l64.backward(dy)
    assert dx32.dtype == np.float32
    assert np.linalg.norm(dx32 - dx64) / np.linalg.norm(dx64) < 1e-5
    for k, g in l64.grads().items():
        assert np.linalg.norm(l32.grads()[k] - g) / max(np.linalg.norm(g), 1e-12) < 1e-4, k


def test_gradients_accumulate_and_zero_grad_clears(rng):
    layer = lstmdsl.compile("vanilla", input_size=3, hidden_size=4, dtype="float64")
    x = rng.standard_normal((3, 2, 3))
    y, _ = layer.forward(x)
    layer.backward(np.ones_like(y))
    once = {k: v.copy() for k, v in layer.grads().items()}
    layer.backward(np.ones_like(y))
    for k, v in layer.grads().items():
        np.testing.assert_allclose(v, 2 * once[k])
    layer.zero_grad()
    assert all(not v.any() for v in layer.grads().values())
