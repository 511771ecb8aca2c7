"""Generated kernels on the GPU against the float64 reference (marked gpu: skipped without a GPU).

Every shipped spec, forward and backward, float32: outputs, final states, dx, initial-state gradients
and every parameter gradient within 1e-4 relative error (norm-wise); every workspace buffer is poisoned
with NaN before the run, so a value read but never written fails the test. Sizes include B = 1, 3;
H = 1, 33, 100, 512; T = 1, 7, 100; 1 and 3 layers.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstmdsl

from conftest import SPECS, extra_sizes
from unusual_specs import UNUSUAL

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    from lstmdsl import runtime

    monkeypatch.setattr(runtime, "POISON", True)


def rel(got, want) -> float:
    got = cupy.asnumpy(got).astype(np.float64)
    assert np.all(np.isfinite(got)), "NaN or inf in the GPU result (an unwritten value was read?)"
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def check(name, T, B, I, H, L, schedule=None, tol=1e-4, seed=0):
    kw = dict(num_layers=L, seed=seed, schedule=schedule, **extra_sizes(name))
    gpu = lstmdsl.compile(name, input_size=I, hidden_size=H, backend="cuda", **kw)
    ref = lstmdsl.compile(name, input_size=I, hidden_size=H, dtype="float64", **kw)
    rng = np.random.default_rng(seed + 1)
    for k, p in gpu.parameters().items():  # larger than the default init, so every path matters
        p[...] = cupy.asarray(rng.uniform(-0.5, 0.5, p.shape).astype(np.float32))
        ref.parameters()[k][...] = cupy.asnumpy(p)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state = {k: (0.5 * rng.standard_normal(s)).astype(np.float32) for k, s in ref.state_shapes(B).items()}
    # forward-only first (its own, smaller workspace), then the training forward
    y_inf, final_inf = gpu.forward(cupy.asarray(x), {k: cupy.asarray(v) for k, v in state.items()}, train=False)
    y, final = gpu.forward(cupy.asarray(x), {k: cupy.asarray(v) for k, v in state.items()})
    y_ref, final_ref = ref.forward(x.astype(np.float64), {k: v.astype(np.float64) for k, v in state.items()})
    dy = rng.standard_normal(y_ref.shape)
    dfinal = {k: rng.standard_normal(v.shape) for k, v in final_ref.items()}
    dx = gpu.backward(cupy.asarray(dy.astype(np.float32)),
                      {k: cupy.asarray(v.astype(np.float32)) for k, v in dfinal.items()})
    dx_ref = ref.backward(dy, dfinal)
    errors = {"y": rel(y, y_ref), "dx": rel(dx, dx_ref), "y forward-only": rel(y_inf, y_ref)}
    errors |= {f"final {k} forward-only": rel(final_inf[k], final_ref[k]) for k in final_ref}
    errors |= {f"final {k}": rel(final[k], final_ref[k]) for k in final_ref}
    errors |= {f"d initial {k}": rel(v, ref.initial_state_grads()[k]) for k, v in gpu.initial_state_grads().items()}
    errors |= {f"d {k}": rel(g, ref.grads()[k]) for k, g in gpu.grads().items()}
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"{name} T={T} B={B} I={I} H={H} L={L} {schedule}: {bad}"
    return errors


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("T,B,I,H,L", [(7, 3, 5, 33, 1), (1, 1, 2, 1, 3), (7, 1, 3, 100, 3)])
def test_every_spec_matches_the_reference(name, T, B, I, H, L):
    check(name, T, B, I, H, L)


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_storage(name):
    for schedule in (None, "no fuse gates; no hoist input; no fuse pointwise; no batch weights", "fuse recurrent"):
        check(UNUSUAL[name], 5, 3, 4, 6, 2 if "input" not in UNUSUAL[name].split("state")[1] else 1,
              schedule=schedule)


@pytest.mark.parametrize("name", ["vanilla", "peephole", "gru"])
@pytest.mark.parametrize("T,B,I,H,L", [(100, 3, 16, 100, 1), (7, 1, 64, 512, 1), (100, 3, 8, 33, 3)])
def test_long_and_wide(name, T, B, I, H, L):
    check(name, T, B, I, H, L)


@pytest.mark.parametrize("name", ["peephole", "gru", "lstmp", "fgr"])
def test_every_schedule_on_the_gpu(name):
    import itertools

    switches = ["fuse gates", "hoist input", "fuse pointwise", "batch weights", "fuse recurrent"]
    for bits in itertools.product([False, True], repeat=len(switches)):
        text = "; ".join(("" if on else "no ") + s for s, on in zip(switches, bits))
        check(name, 5, 3, 4, 9, 2, schedule=text)


@pytest.mark.parametrize("name", ["vanilla", "peephole", "cifg", "lstmp"])
@pytest.mark.parametrize("T,B,I,H,L", [(7, 3, 5, 33, 1), (1, 1, 2, 1, 2), (100, 1, 16, 100, 1), (5, 3, 64, 512, 1)])
def test_recurrent_products_fused_into_the_step_kernel(name, T, B, I, H, L):
    check(name, T, B, I, H, L, schedule="fuse recurrent")


def test_tf32_is_close_but_not_strict():
    errors = check("vanilla", 20, 16, 256, 256, 1, schedule="precision tf32", tol=2e-2)
    assert max(errors.values()) < 2e-2


def test_vanilla_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    T, B, I, H = 9, 3, 7, 33
    layer = lstmdsl.compile("vanilla", input_size=I, hidden_size=H, backend="cuda", seed=3)
    lstm = torch.nn.LSTM(I, H).cuda()
    p = {k: torch.as_tensor(cupy.asnumpy(v)).cuda() for k, v in layer.parameters().items()}
    with torch.no_grad():  # torch's gate order is i, f, g, o (g is our block input z)
        lstm.weight_ih_l0.copy_(torch.cat([p["l0.W_i"], p["l0.W_f"], p["l0.W_z"], p["l0.W_o"]]))
        lstm.weight_hh_l0.copy_(torch.cat([p["l0.R_i"], p["l0.R_f"], p["l0.R_z"], p["l0.R_o"]]))
        lstm.bias_ih_l0.copy_(torch.cat([p["l0.b_i"], p["l0.b_f"], p["l0.b_z"], p["l0.b_o"]]))
        lstm.bias_hh_l0.zero_()
    x = torch.randn(T, B, I, device="cuda")
    y_t, (h_t, c_t) = lstm(x)
    y, state = layer.forward(cupy.asarray(x.detach().cpu().numpy()))
    np.testing.assert_allclose(cupy.asnumpy(y), y_t.detach().cpu().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(state["c"][0]), c_t[0].detach().cpu().numpy(), rtol=1e-4, atol=1e-5)


def test_bad_inputs_on_the_gpu():
    layer = lstmdsl.compile("vanilla", input_size=3, hidden_size=4, backend="cuda")
    with pytest.raises(lstmdsl.UsageError, match="must be a CuPy array"):
        layer.forward(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(lstmdsl.UsageError, match="dtype float64"):
        layer.forward(cupy.zeros((2, 1, 3)))
    with pytest.raises(lstmdsl.UsageError, match="C-contiguous"):
        layer.forward(cupy.zeros((2, 1, 6), np.float32)[:, :, ::2])
    with pytest.raises(lstmdsl.UsageError, match="applies to float32 layers"):
        lstmdsl.compile("vanilla", input_size=3, hidden_size=4, backend="cuda", dtype="float64",
                        schedule="precision tf32")


def test_optimizers_and_dense_on_cupy_match_numpy():
    from lstmdsl.nn import Dense, softmax_cross_entropy
    from lstmdsl.optim import Adam, SGD

    rng = np.random.default_rng(0)
    for make in (lambda p: Adam(p, lr=0.05, weight_decay=0.01), lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True)):
        host = {"p": rng.standard_normal(7).astype(np.float32)}
        dev = {"p": cupy.asarray(host["p"])}
        a, b = make(host), make(dev)
        for _ in range(20):
            g = rng.standard_normal(7).astype(np.float32)
            a.step({"p": g})
            b.step({"p": cupy.asarray(g)})
        np.testing.assert_allclose(cupy.asnumpy(dev["p"]), host["p"], rtol=1e-5, atol=1e-6)
    d_host, d_dev = Dense(6, 4, seed=2), Dense(6, 4, backend="cuda", seed=2)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 5)
    l1, g1 = softmax_cross_entropy(d_host.forward(x), labels)
    l2, g2 = softmax_cross_entropy(d_dev.forward(cupy.asarray(x)), cupy.asarray(labels))
    assert abs(l1 - l2) < 1e-5
    np.testing.assert_allclose(cupy.asnumpy(d_dev.backward(g2)), d_host.backward(g1), rtol=1e-4, atol=1e-6)


def test_train_digits_on_the_gpu(tmp_path):
    pytest.importorskip("sklearn")
    from lstmdsl.train import TrainConfig, run

    result = run(TrainConfig("peephole", "digits", epochs=4, hidden_size=32, lr=0.01, backend="cuda"), tmp_path, log=None)
    assert result["test"] > 0.6
    saved = lstmdsl.load(tmp_path / "layer.npz", backend="cuda")
    assert set(saved.parameters()) == set(lstmdsl.load(tmp_path / "layer.npz").parameters())


@pytest.mark.parametrize("name", ["peephole", "gru", "lstmp"])
def test_torch_adapter_gradcheck_float64(name):
    torch = pytest.importorskip("torch")
    from lstmdsl.torch_adapter import LSTMDSL

    rnn = LSTMDSL(name, input_size=3, hidden_size=4, num_layers=2, dtype=torch.float64, seed=1,
                  **extra_sizes(name))
    x = torch.randn(3, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    h0 = {k: (0.3 * torch.randn(s, dtype=torch.float64, device="cuda")).requires_grad_()
          for k, s in rnn.layer.state_shapes(2).items()}
    names = sorted(h0)

    def f(x, *rest):
        y, final = rnn(x, dict(zip(names, rest[:len(names)])))
        return (y,) + tuple(final[n] for n in names)
    assert torch.autograd.gradcheck(f, (x, *(h0[n] for n in names), *rnn.parameters()), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


def test_torch_adapter_trains_in_a_torch_loop():
    torch = pytest.importorskip("torch")
    from lstmdsl.torch_adapter import LSTMDSL

    torch.manual_seed(0)
    rnn = LSTMDSL("cifg", input_size=5, hidden_size=32, forget_bias=None)
    head = torch.nn.Linear(32, 3).cuda()
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=0.02)
    x = torch.randn(6, 64, 5, device="cuda")
    labels = torch.randint(0, 3, (64,), device="cuda")
    losses = []
    for _ in range(100):
        y, _ = rnn(x)
        loss = torch.nn.functional.cross_entropy(head(y[-1]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    # the layer saw torch's updates: its arrays are the parameters' memory
    p = dict(rnn.named_parameters())["l0_W_i"]
    np.testing.assert_array_equal(cupy.asnumpy(rnn.layer.parameters()["l0.W_i"]), p.detach().cpu().numpy())


def test_float64_layer_matches_reference_tightly():
    gpu = lstmdsl.compile("fgr", input_size=4, hidden_size=7, num_layers=2, backend="cuda", dtype="float64", seed=2)
    ref = lstmdsl.compile("fgr", input_size=4, hidden_size=7, num_layers=2, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    y, _ = gpu.forward(cupy.asarray(x))
    y_ref, _ = ref.forward(x)
    assert rel(y, y_ref) < 1e-12
    dx = gpu.backward(cupy.ones_like(y))
    assert rel(dx, ref.backward(np.ones_like(y_ref))) < 1e-12


def test_profile_parts_add_up():
    layer = lstmdsl.compile("peephole", input_size=64, hidden_size=64, backend="cuda")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32))
    p = layer.profile(x, repeat=2)
    kinds = set(p["parts_ms"])
    assert {"forward: input GEMM, all steps", "forward: per-step GEMMs (recurrent)", "forward: pointwise kernels",
            "backward: pointwise kernels", "backward: weight-gradient GEMMs"} <= kinds
    busy = sum(p["parts_ms"].values())
    graphed_train = p["graphs"]["train"]["ms"]
    assert 0.3 * graphed_train < busy < 3 * graphed_train  # GPU work, not the host's issue time
    assert all(not g.any() for g in layer.grads().values())  # profiling leaves no gradients behind


def test_kernels_load_from_the_cubin_cache(tmp_path, monkeypatch):
    from lstmdsl import runtime

    monkeypatch.setenv("LSTMDSL_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_MODULES", {})
    check("gru", 7, 3, 5, 33, 1)  # compiles, writes the cubin
    (cubin,) = (tmp_path / "cubin").glob("*.cubin")
    monkeypatch.setattr(runtime, "_MODULES", {})
    check("gru", 7, 3, 5, 33, 1)  # loads it
    # CuPy keeps modules loaded from a path for the life of the process, so a file damaged now is only
    # read again by a new process (tests/emulated/cubin_cache.py checks that path without a GPU)
    cubin.write_bytes(b"not a cubin")
    monkeypatch.setattr(runtime, "_MODULES", {})
    check("gru", 7, 3, 5, 33, 1)
