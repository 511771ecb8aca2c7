"""The eager PyTorch competitor of the benchmarks, built from a spec's IR, computes what the reference
computes (on the CPU, where torch is installed)."""

from __future__ import annotations

import numpy as np
import pytest

import lstmdsl
from lstmdsl.bench import EagerCell, vanilla_equivalent

from conftest import SPECS, extra_sizes

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", SPECS)
def test_eager_cell_matches_the_reference(name):
    layer = lstmdsl.compile(name, input_size=5, hidden_size=6, num_layers=2, dtype="float64", seed=3,
                            **extra_sizes(name))
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    y_ref, _ = layer.forward(x, train=False)  # evaluation: the regularisers' expectations, no draws
    eager = EagerCell(layer.spec, layer, device="cpu")
    eager.training = False
    y = eager.forward(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)


def test_vanilla_equivalence():
    assert vanilla_equivalent(lstmdsl.parse("vanilla"))
    assert not vanilla_equivalent(lstmdsl.parse("peephole"))


def test_eager_vanilla_is_one_addmm_per_step_with_the_biases_folded_in():
    layer = lstmdsl.compile("vanilla", input_size=5, hidden_size=6, seed=3)
    eager = EagerCell(layer.spec, layer, device="cpu")
    assert eager.source.count("addmm") == 1 and eager.source.count("@") == 0, eager.source
    assert eager.input_bias == ["b_i", "b_f", "b_z", "b_o"]
    # the training path: autograd through the generated step gives the reference's input gradient
    x = torch.tensor(np.random.default_rng(0).standard_normal((4, 3, 5)), dtype=torch.float32, requires_grad=True)
    y = eager.forward(x)
    y.sum().backward()
    y_ref, _ = layer.forward(x.detach().numpy())
    dx_ref = layer.backward(np.ones_like(y_ref))
    np.testing.assert_allclose(x.grad.numpy(), dx_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("text", [
    "cell d { input x; state h; h' = tanh((W x + b) + (R h + b)); output h' }",
    "cell d { input x; state h; h' = tanh(W x + R h + b + b); output h' }",
    "cell d { input x; state h; a = W x + b; h' = tanh(a + R h) * sigmoid(a - b); output h' }",
])
def test_eager_cell_folds_a_bias_once_where_it_is_added_twice(text):
    layer = lstmdsl.compile(text, input_size=3, hidden_size=4, dtype="float64", seed=1)
    for p in layer.parameters().values():
        p[...] = np.random.default_rng(2).uniform(-1, 1, p.shape)
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    y_ref, _ = layer.forward(x)
    y = EagerCell(layer.spec, layer, device="cpu").forward(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)


def test_the_benchmarks_count_the_cublas_workspaces_an_earlier_case_made(monkeypatch):
    """lstmdsl's memory in a benchmark row adds the cuBLAS workspaces its calls used that existed before the case
    (made on first use and kept by the process, CuPy's pool counts them only in the case that made them): each
    such workspace once, none made during the case (the pool counts those), no bare handle's; _handle restored."""
    from lstmdsl import bench
    from lstmdsl.runtime import cublas

    class Handle:
        def __init__(self, n):
            self.workspace = None if n is None else np.empty(n, np.uint8)

    old, new, bare = Handle(32), Handle(64), Handle(None)
    lanes = {0: old, 1: new}
    monkeypatch.setattr(cublas, "_handle", lambda lane, b=False: bare if b else lanes[lane])
    real = cublas._handle
    with bench._workspaces_kept({id(old), id(bare)}) as kept:
        for lane, b in [(0, False), (1, False), (0, True), (0, False)]:
            cublas._handle(lane, b)
    assert kept == [32] and cublas._handle is real
    with bench._workspaces_kept({id(old)}) as kept:
        cublas._handle(1)
    assert kept == [0]
