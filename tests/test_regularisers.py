"""Regularisers: dropout(v, p) and zoneout(new, old, p) in the language, lowered to masks (Cell.noise); dropout
between stacked layers (compile(dropout=p)); the masks' draws, their expectations in evaluation, explicit
masks (forward(noise=...)), and the torch module's."""

from __future__ import annotations

import numpy as np
import pytest

import lstmdsl
from lstmdsl import SpecError, UsageError
from lstmdsl.ir import Noise

ZONEOUT = "zoneout_lstm"
DROPOUT = "recurrent_dropout"


def spec_with(body: str) -> str:
    return f"""cell t {{
    input x
    state h
    a = tanh(W x + R h + b)
    {body}
    output h'
}}"""


def test_regularisers_lower_to_masks():
    cell = lstmdsl.parse(ZONEOUT).cell
    assert cell.noise == (Noise("zoneout1", "zoneout", 0.5, "hidden"), Noise("zoneout2", "zoneout", 0.05, "hidden"))
    assert [n.attr for n in cell.nodes if n.op == "stepin"] == ["zoneout1", "zoneout2"]
    assert lstmdsl.parse(DROPOUT).cell.noise == (Noise("dropout1", "dropout", 0.25, "hidden"),)
    assert lstmdsl.parse("vanilla").cell.noise == ()


@pytest.mark.parametrize("body,match", [
    ("h' = dropout(a, 1.0)", r"probability must lie in \[0, 1\), got 1"),
    ("h' = dropout(a, -0.5)", r"probability must lie in \[0, 1\), got -0.5"),
    ("h' = dropout(a, p)", "takes a value and a probability"),
    ("h' = dropout(a)", "takes a value and a probability"),
    ("h' = zoneout(a, 0.1)", "takes the new value, the old one and a probability"),
    ("h' = a * dropout(2.0, 0.5)", "acts on the features of a vector"),
    ("h' = zoneout(a, x, 0.1)", "size"),
])
def test_bad_regularisers_are_located(body, match):
    with pytest.raises(SpecError, match=match):
        lstmdsl.parse(spec_with(body))


def run(name, noise=None, train=True, **kw):
    layer = lstmdsl.compile(name, 3, 5, 2, dtype="float64", seed=4, **kw)
    x = np.random.default_rng(0).standard_normal((6, 4, 3))
    return layer, x, layer.forward(x, train=train, noise=noise)


def test_all_keep_masks_give_the_plain_cell():
    """zoneout with every mask 1 (take the new value) and dropout with masks of 1 compute the vanilla LSTM."""
    plain, x, (y_plain, f_plain) = run("vanilla")
    for name in (ZONEOUT, DROPOUT):
        layer = lstmdsl.compile(name, 3, 5, 2, dtype="float64", seed=4)
        layer.load_state_dict(plain.state_dict())
        ones = {k: np.ones(s) for k, s in layer.noise_shapes(6, 4).items()}
        y, final = layer.forward(x, noise=ones)
        np.testing.assert_allclose(y, y_plain, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(final["c"], f_plain["c"], rtol=1e-14, atol=1e-15)


def test_zoneout_with_every_feature_kept_never_changes_the_state():
    layer = lstmdsl.compile(ZONEOUT, 3, 5, 1, dtype="float64", seed=4)
    x = np.random.default_rng(0).standard_normal((6, 4, 3))
    state = {k: np.random.default_rng(1).standard_normal(s) for k, s in layer.state_shapes(4).items()}
    zeros = {k: np.zeros(s) for k, s in layer.noise_shapes(6, 4).items()}
    y, final = layer.forward(x, state, noise=zeros)
    for k in state:
        np.testing.assert_array_equal(final[k], state[k])
    np.testing.assert_array_equal(y, np.broadcast_to(state["h"][0], y.shape))


def test_evaluation_uses_the_expectations():
    layer, x, (y_eval, _) = run(ZONEOUT, train=False)
    expect = {k: np.full(s, 0.5 if k.endswith("zoneout1") else 0.95) for k, s in layer.noise_shapes(6, 4).items()}
    y, _ = layer.forward(x, train=False, noise=expect)
    np.testing.assert_array_equal(y, y_eval)
    assert not layer.last_noise()  # evaluation draws nothing


def test_training_draws_fresh_reproducible_masks():
    layer, x, (y1, _) = run(DROPOUT, dropout=0.3)
    first = layer.last_noise()
    y2, _ = layer.forward(x)
    assert not np.array_equal(y1, y2)
    again, _, (y3, _) = run(DROPOUT, dropout=0.3)  # the same seed draws the same masks
    np.testing.assert_array_equal(y3, y1)
    for k, m in again.last_noise().items():
        np.testing.assert_array_equal(m, first[k])
    other = lstmdsl.compile(DROPOUT, 3, 5, 2, dtype="float64", seed=5)
    other.forward(x)
    assert not np.array_equal(other.last_noise()["l0.dropout1"], first["l0.dropout1"])


def test_mask_values_and_rates():
    layer = lstmdsl.compile(ZONEOUT, 3, 200, 1, seed=0, dropout=0.0)
    layer.forward(np.zeros((50, 20, 3), np.float32))
    masks = layer.last_noise()
    for name, p in (("l0.zoneout1", 0.5), ("l0.zoneout2", 0.05)):
        m = masks[name]
        assert set(np.unique(m)) <= {0.0, 1.0} and m.dtype == np.float32
        assert abs(float((m == 0).mean()) - p) < 0.01
    drop = lstmdsl.compile(DROPOUT, 3, 200, 1, seed=0)
    drop.forward(np.zeros((50, 20, 3), np.float32))
    m = drop.last_noise()["l0.dropout1"]
    np.testing.assert_allclose(np.unique(m), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(float((m == 0).mean()) - 0.25) < 0.01


def test_dropout_between_layers_multiplies_each_layer_but_the_last():
    layer, x, _ = run("gru", dropout=0.4, bidirectional=True)
    shapes = layer.noise_shapes(6, 4)
    assert shapes == {"l0.between": (6, 4, 10)}
    masks = {"l0.between": (np.random.default_rng(2).random((6, 4, 10)) > 0.4) / 0.6}
    y, _ = layer.forward(x, noise=masks)
    first = lstmdsl.compile("gru", 3, 5, 1, dtype="float64", bidirectional=True)
    second = lstmdsl.compile("gru", 10, 5, 1, dtype="float64", bidirectional=True)
    params = layer.state_dict()
    first.load_state_dict({k: v for k, v in params.items() if k.startswith("l0")})
    second.load_state_dict({k.replace("l1", "l0", 1): v for k, v in params.items() if k.startswith("l1")})
    h, _ = first.forward(x)
    y_manual, _ = second.forward(h * masks["l0.between"])
    np.testing.assert_allclose(y, y_manual, rtol=1e-13, atol=1e-14)
    y_eval, _ = layer.forward(x, train=False)
    plain = lstmdsl.compile("gru", 3, 5, 2, dtype="float64", bidirectional=True)
    plain.load_state_dict(params)
    np.testing.assert_array_equal(y_eval, plain.forward(x, train=False)[0])


def test_gradients_through_the_spec_regularisers_match_central_differences():
    from lstmdsl.gradcheck import gradient_check

    for name in (ZONEOUT, DROPOUT):
        rows = gradient_check(lstmdsl.parse(name), 3, 4, 2, 4, 3, seed=1)
        assert max(r.rel_error for r in rows) < 1e-6, rows


def test_gradients_through_dropout_between_layers_match_central_differences():
    layer = lstmdsl.compile("vanilla", 3, 4, 3, dtype="float64", dropout=0.5, seed=2)
    x = np.random.default_rng(3).standard_normal((4, 2, 3))
    y, _ = layer.forward(x)
    noise = layer.last_noise()
    w = np.random.default_rng(4).standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(w)
    eps = 1e-6
    for i in np.random.default_rng(5).choice(x.size, 8, replace=False):
        xp, xm = x.copy().reshape(-1), x.copy().reshape(-1)
        xp[i] += eps
        xm[i] -= eps
        num = (np.sum(layer.forward(xp.reshape(x.shape), train=False, noise=noise)[0] * w)
               - np.sum(layer.forward(xm.reshape(x.shape), train=False, noise=noise)[0] * w)) / (2 * eps)
        np.testing.assert_allclose(dx.reshape(-1)[i], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("noise,match", [
    ({}, "noise must be a dict with the keys"),
    ({"l0.dropout1": np.ones((6, 4, 5)), "l1.dropout1": np.ones((6, 4, 4))}, r"has shape \[6, 4, 4\], expected \[6, 4, 5\]"),
    ("ones", "noise must be a dict"),
])
def test_bad_noise_is_refused(noise, match):
    layer = lstmdsl.compile(DROPOUT, 3, 5, 2, dtype="float64")
    with pytest.raises(UsageError, match=match):
        layer.forward(np.zeros((6, 4, 3)), noise=noise)


def test_dropout_must_be_a_probability():
    with pytest.raises(UsageError, match=r"dropout must be a probability in \[0, 1\)"):
        lstmdsl.compile("vanilla", 3, 4, 2, dropout=1.0)


def test_saved_layers_keep_their_dropout(tmp_path):
    layer = lstmdsl.compile("vanilla", 3, 4, 2, dropout=0.25)
    layer.save(tmp_path / "l.npz")
    assert lstmdsl.load(tmp_path / "l.npz").dropout == 0.25


def test_the_torch_module_draws_in_training_and_not_in_evaluation():
    torch = pytest.importorskip("torch")
    import lstmdsl.torch as lt

    m = lt.RNN(ZONEOUT, 3, 5, 2, dtype=torch.float64, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(0)
    a, _ = m(x)
    torch.manual_seed(0)
    b, _ = m(x)
    c, _ = m(x)
    assert torch.equal(a, b) and not torch.equal(a, c)  # torch's generator: reproducible with its seed
    m.eval()
    e1, _ = m(x)
    e2, _ = m(x)
    assert torch.equal(e1, e2)
    layer = lstmdsl.compile(ZONEOUT, 3, 5, 2, dtype="float64", bidirectional=True)
    layer.load_state_dict(_layer_params(m))
    np.testing.assert_allclose(e1.detach().numpy(), layer.forward(x.numpy(), train=False)[0], rtol=1e-12, atol=1e-13)


def _layer_params(module) -> dict:
    """The module's parameters under the Layer API's names (stacks split into their matrices)."""
    out = {}
    for runner, members, names in module._groups:
        tensors = [t.detach().numpy() for t in module._tensors(names)]
        for j, (k, d) in enumerate(members):
            unit = f"l{k}" + ("_reverse" if d else "")
            for name, a in runner.per_matrix(tensors, j).items():
                out[f"{unit}.{name}"] = a
    return out


def test_dropconnect_masks_the_recurrent_matrices_once_per_call():
    from lstmdsl.layer import recurrent_matrices

    assert recurrent_matrices(lstmdsl.parse("vanilla").cell) == ("R_i", "R_f", "R_z", "R_o")
    assert recurrent_matrices(lstmdsl.parse("gru").cell) == ("R_r", "R_u", "R_n")  # R_n reads r * h
    assert recurrent_matrices(lstmdsl.parse("indrnn").cell) == ()
    layer = lstmdsl.compile("gru", 3, 5, 2, dtype="float64", dropconnect=0.4, bidirectional=True, seed=1)
    x = np.random.default_rng(0).standard_normal((6, 4, 3))
    y, _ = layer.forward(x)
    masks = layer.last_noise()
    assert masks["l1_reverse.dropconnect.R_n"].shape == (5, 5)
    plain = lstmdsl.compile("gru", 3, 5, 2, dtype="float64", bidirectional=True)
    plain.load_state_dict({k: v * masks.get(k.replace(".", ".dropconnect.", 1), 1.0)
                           for k, v in layer.state_dict().items()})
    np.testing.assert_allclose(y, plain.forward(x)[0], rtol=1e-14, atol=1e-15)
    plain.load_state_dict(layer.state_dict())  # evaluation: the weights as they are
    np.testing.assert_array_equal(layer.forward(x, train=False)[0], plain.forward(x, train=False)[0])


@pytest.mark.parametrize("name,options", [("vanilla", {"bidirectional": True}), ("gru", {}),
                                          ("lstmp", {"proj_size": 2}), ("zoneout_lstm", {"lengths": True})])
def test_gradients_through_dropconnect_match_central_differences(name, options):
    from lstmdsl.gradcheck import gradient_check

    rows = gradient_check(lstmdsl.parse(name), 3, 4, 3, 4, 2, seed=2, dropconnect=0.5, **options)
    assert max(r.rel_error for r in rows) < 1e-6, rows


def test_the_torch_modules_dropconnect():
    torch = pytest.importorskip("torch")
    import lstmdsl.torch as lt

    m = lt.LSTM(3, 4, 2, dropconnect=0.5, dtype=torch.float64)
    plain = lt.LSTM(3, 4, 2, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(3)
    a, _ = m(x)
    torch.manual_seed(3)
    b, _ = m(x)
    assert torch.equal(a, b) and not torch.equal(a, plain(x)[0])
    m.eval()
    assert torch.equal(m(x)[0], plain.eval()(x)[0])
    with pytest.raises(UsageError, match="dropconnect must be a probability"):
        lt.LSTM(3, 4, dropconnect=1.0)


def test_the_torch_modules_dropconnect_reuses_two_buffers_and_refuses_a_stale_backward():
    torch = pytest.importorskip("torch")
    import lstmdsl.torch as lt

    m = lt.LSTM(3, 4, 1, dropconnect=0.5, dtype=torch.float64)
    plain = lt.LSTM(3, 4, 1, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    addresses = set()
    for seed in range(4):  # the masked stack lands in one of two buffers; gradients reach the parameter
        torch.manual_seed(seed)
        runner, members, names = m._groups[0]
        masked = m._connect(runner, m._op_tensors(runner, members, names))[1]
        addresses.add(masked.data_ptr())
        m.zero_grad()
        torch.manual_seed(seed)
        y, _ = m(x)
        y.sum().backward()
        mask = (masked.detach() / m.weight_hh_l0.detach()).nan_to_num()
        plain.load_state_dict({**m.state_dict(), "weight_hh_l0": m.weight_hh_l0.detach() * mask})
        plain.zero_grad()
        plain(x)[0].sum().backward()
        torch.testing.assert_close(m.weight_hh_l0.grad, plain.weight_hh_l0.grad * mask, rtol=1e-12, atol=1e-12)
    rings = list(m._connected.values())
    assert len(rings) == 1 and addresses <= {t.data_ptr() for t in rings[0][:2]}
    first, _, _ = m(x), m(x), m(x)  # the first forward's buffer is overwritten by the third
    with pytest.raises(RuntimeError, match="modified inplace"):
        first[0].sum().backward()


def test_the_cuda_backends_draws_are_splitmix64_and_any_piece_of_them_can_be_drawn():
    """lstmdsl/draws.py, the numpy twin of the CUDA backend's generator (templates/draws.cu.j2; the GPU test
    compares them bit for bit): SplitMix64's published first outputs for state 0, as the top 24 bits; draws
    depend on their index only, so pieces drawn one after another are the whole drawn at once."""
    from lstmdsl import draws

    first = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]  # SplitMix64, seed 0 (Vigna's splitmix64.c)
    assert draws.uniform(0, 0, (3,)).tolist() == [(v >> 40) * 2.0 ** -24 for v in first]
    key = draws.key_of((7, 0x6E6F6973))
    assert key == draws.key_of((7, 0x6E6F6973)) != draws.key_of((8, 0x6E6F6973)) and 0 <= key < 2 ** 64
    whole = draws.uniform(key, 5, (4, 3, 5))
    assert whole.dtype == np.float32 and whole.shape == (4, 3, 5) and 0 <= whole.min() and whole.max() < 1
    pieces = np.concatenate([draws.uniform(key, 5, (7,)), draws.uniform(key, 12, (1,)), draws.uniform(key, 13, (52,))])
    assert np.array_equal(whole.ravel(), pieces)
    many = draws.uniform(key, 2 ** 64 - 10, (100_000,))  # (the index wraps as on the GPU)
    assert abs(float(many.mean()) - 0.5) < 0.005 and abs(float((many < 0.3).mean()) - 0.3) < 0.005
    with pytest.raises(ValueError, match="64-bit key"):
        draws.uniform(-1, 0, (2,))
