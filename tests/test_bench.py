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
    y_ref, _ = layer.forward(x)
    eager = EagerCell(layer.spec, layer, device="cpu")
    y = eager.forward(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)


def test_vanilla_equivalence():
    assert vanilla_equivalent(lstmdsl.parse("vanilla"))
    assert not vanilla_equivalent(lstmdsl.parse("peephole"))
