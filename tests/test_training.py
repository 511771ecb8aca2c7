"""Training pieces on the reference backend: initialisation options, state dicts and .npz files,
optimizers (against torch.optim where torch is installed), clipping, the dense layer and losses, and a
small overfitting run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lstmdsl
from lstmdsl import InputFileError, UsageError
from lstmdsl.nn import Dense, sigmoid_binary_cross_entropy, softmax_cross_entropy
from lstmdsl.optim import SGD, Adam, AdamW, clip_grad_norm

OPTIMIZERS = {
    "sgd": lambda p: SGD(p, lr=0.1),
    "momentum": lambda p: SGD(p, lr=0.05, momentum=0.9),
    "nesterov": lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: Adam(p, lr=0.1),
    "adam-l2": lambda p: Adam(p, lr=0.1, weight_decay=0.05),
    "adamw": lambda p: AdamW(p, lr=0.1, weight_decay=0.05),
}


def quadratic(p, A, c):
    """f = 1/2 (p - c)^T A (p - c), gradient A (p - c)."""
    return A @ (p - c)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_reach_the_minimum_of_a_quadratic(name):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((5, 5))
    A = M @ M.T / 5 + np.eye(5)
    c = rng.standard_normal(5)
    params = {"p": np.zeros(5)}
    opt = OPTIMIZERS[name](params)
    for _ in range(600):
        opt.step({"p": quadratic(params["p"], A, c)})
    tol = 0.05 if "l2" in name or name in ("adamw", "nesterov") else 1e-3  # decay shifts the minimum a little
    assert np.linalg.norm(params["p"] - c) < tol * max(1, np.linalg.norm(c)), params["p"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_follow_torch_optim(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    M = rng.standard_normal((4, 4))
    A, c = M @ M.T / 4 + np.eye(4), rng.standard_normal(4)
    ours = {"p": rng.standard_normal(4)}
    theirs = torch.tensor(ours["p"].copy(), requires_grad=True)
    opt = OPTIMIZERS[name](ours)
    t_opt = {"sgd": lambda: torch.optim.SGD([theirs], lr=0.1),
             "momentum": lambda: torch.optim.SGD([theirs], lr=0.05, momentum=0.9),
             "nesterov": lambda: torch.optim.SGD([theirs], lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
             "adam": lambda: torch.optim.Adam([theirs], lr=0.1),
             "adam-l2": lambda: torch.optim.Adam([theirs], lr=0.1, weight_decay=0.05),
             "adamw": lambda: torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.05)}[name]()
    At, ct = torch.tensor(A), torch.tensor(c)
    for _ in range(50):
        opt.step({"p": quadratic(ours["p"], A, c)})
        t_opt.zero_grad()
        theirs.grad = At @ (theirs.detach() - ct)
        t_opt.step()
        np.testing.assert_allclose(ours["p"], theirs.detach().numpy(), rtol=1e-6, atol=1e-9)


def test_optimizer_errors():
    with pytest.raises(UsageError, match="lr must be a positive number"):
        SGD({"p": np.zeros(2)}, lr=0)
    with pytest.raises(UsageError, match="nesterov needs a momentum"):
        SGD({"p": np.zeros(2)}, lr=0.1, nesterov=True)
    with pytest.raises(UsageError, match="betas must lie in"):
        Adam({"p": np.zeros(2)}, betas=(0.9, 1.0))
    # (these were AttributeError, UFuncTypeError, ValueError or TypeError, and a scalar or a repeated array was
    # silently not updated or updated twice; a review, 2026-12-06)
    ro = np.zeros(2)
    ro.flags.writeable = False
    same = np.zeros(2)
    for params, message in (({"w": 1.0}, "'w' is float: an optimizer updates floating-point numpy or CuPy arrays"),
                            ({"w": np.zeros(2, int)}, "'w' is an array of int64"),
                            ({"w": np.float32(1)}, "'w' is float32"), ({"w": ro}, "'w' is a read-only array"),
                            ({"a": same, "b": same}, "parameters 'a' and 'b' are the same array")):
        with pytest.raises(UsageError, match=message):
            SGD(params, lr=0.1)
    sgd = SGD({"w": np.zeros(2)}, lr=0.1)
    for grads, message in (([np.zeros(2)], "the gradients are a dict of arrays by parameter name .*, got list"),
                           ({"w": None}, "the gradient of w is NoneType, not a numpy or CuPy array")):
        with pytest.raises(UsageError, match=message):
            sgd.step(grads)
    with pytest.raises(UsageError, match="clip_grad_norm takes a dict of floating-point numpy or CuPy gradient"):
        clip_grad_norm({"w": [1.0]}, 1.0)
    for kw, message in ((dict(dtype="int32"), "dtype must be float32 or float64, got 'int32'"),
                        (dict(seed=-1), "seed must be a non-negative integer, got -1"),
                        (dict(seed=1.5), "seed must be a non-negative integer, got 1.5")):
        with pytest.raises(UsageError, match=message):  # (all-zero int weights, numpy's ValueError, TypeError)
            Dense(3, 2, **kw)
    assert Dense(np.int64(3), 2).parameters()["W"].shape == (2, 3)
    for call, message in ((lambda: softmax_cross_entropy([[1.0, 2.0]], [0]), "logits must be a numpy or CuPy array"),
                          (lambda: softmax_cross_entropy(np.array(1.0), np.array(0)), "logits have shape \\[\\]"),
                          (lambda: sigmoid_binary_cross_entropy(np.zeros((1, 3)), [[0, 1, 0]]),
                           "targets must be a numpy or CuPy array, got list")):
        with pytest.raises(UsageError, match=message):  # (AttributeError, IndexError)
            call()
    opt = Adam({"p": np.zeros(2)})
    with pytest.raises(UsageError, match="missing: \\['p'\\]"):
        opt.step({"q": np.zeros(2)})
    with pytest.raises(UsageError, match="shape"):
        opt.step({"p": np.zeros(3)})


def test_clip_grad_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    assert g["a"][0] == 3.0  # under the limit: unchanged
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    total = np.sqrt(sum((v ** 2).sum() for v in g.values()))
    assert total == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(UsageError, match="NaN"):
        clip_grad_norm({"a": np.array([np.nan])}, 1.0)


def test_forget_bias_init():
    layer = lstmdsl.compile("peephole", input_size=3, hidden_size=8, num_layers=2, forget_bias=1.0)
    assert np.all(layer.parameters()["l0.b_f"] == 1.0) and np.all(layer.parameters()["l1.b_f"] == 1.0)
    assert not np.all(layer.parameters()["l0.b_i"] == 1.0)
    with pytest.raises(UsageError, match="needs a forget-gate bias vector named b_f; cell 'gru' has none"):
        lstmdsl.compile("gru", input_size=3, hidden_size=8, forget_bias=1.0)


def test_state_dict_round_trip_and_checks():
    a = lstmdsl.compile("gru", input_size=3, hidden_size=4, seed=1)
    b = lstmdsl.compile("gru", input_size=3, hidden_size=4, seed=2)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(a.parameters()[k], b.parameters()[k]) for k in a.parameters())
    state = a.state_dict()
    state["l0.W_r"] = np.zeros((5, 3))
    with pytest.raises(UsageError, match=r"l0.W_r has shape \[5, 3\] in the state dict, \[4, 3\] here"):
        b.load_state_dict(state)
    with pytest.raises(UsageError, match="missing: \\['l0.b_n'\\]"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "l0.b_n"})


def test_save_and_load_npz(tmp_path):
    a = lstmdsl.compile("lstmp", input_size=3, hidden_size=6, proj_size=2, num_layers=2, seed=4)
    path = tmp_path / "model.npz"
    a.save(path)
    b = lstmdsl.load(path)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x)[0], b.forward(x)[0])
    c = lstmdsl.compile("lstmp", input_size=3, hidden_size=6, proj_size=2, num_layers=2, seed=9)
    c.load(path)
    np.testing.assert_array_equal(a.forward(x)[0], c.forward(x)[0])
    other = lstmdsl.compile("vanilla", input_size=3, hidden_size=6)
    with pytest.raises(UsageError, match="holds cell 'lstmp'"):
        other.load(path)


@pytest.mark.parametrize("content,message", [(b"not a zip", "not a readable .npz archive"),
                                             (None, "no such file")])
def test_load_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError, match=message):
        lstmdsl.load(path)


def test_load_npz_without_metadata(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(InputFileError, match="not written by lstmdsl"):
        lstmdsl.load(path)


def test_load_of_edited_settings_is_a_file_error_the_callers_options_usage_errors(tmp_path):
    """A layer file whose metadata was edited (a dtype the backends do not take, sizes its parameters do not have)
    is the file's fault: InputFileError (exit 66), saying so; a bad backend or schedule given to load is the
    caller's: UsageError / SpecError, before the file is read."""
    import json

    path = tmp_path / "v.npz"
    lstmdsl.compile("vanilla", 3, 4).save(path)
    files = dict(np.load(path))
    meta = json.loads(str(files["__meta__"]))
    for edit in ({"dtype": "float16"}, {"sizes": [dict(meta["sizes"][0], hidden=5)]}):
        np.savez(tmp_path / "edited.npz", **{**files, "__meta__": np.array(json.dumps({**meta, **edit}))})
        with pytest.raises(InputFileError, match="its saved settings do not fit its spec or the options given"):
            lstmdsl.load(tmp_path / "edited.npz")
    with pytest.raises(UsageError, match="unknown backend 'gpu'"):
        lstmdsl.load(path, backend="gpu")
    with pytest.raises(lstmdsl.SpecError):
        lstmdsl.load(path, schedule="hoist everything")
    assert lstmdsl.load(path).output_size == 4


def test_dense_and_losses_match_central_differences():
    rng = np.random.default_rng(3)
    dense = Dense(5, 4, dtype="float64", seed=1)
    x = rng.standard_normal((3, 2, 5))
    labels = rng.integers(0, 4, (3, 2))
    mask = np.array([[1, 1], [1, 0], [0, 1]])
    targets = (rng.random((3, 2, 4)) > 0.5).astype(np.float64)
    for loss_fn, target in ((softmax_cross_entropy, labels), (sigmoid_binary_cross_entropy, targets)):
        dense.zero_grad()
        logits = dense.forward(x)
        loss, dlogits = loss_fn(logits, target, mask)
        dx = dense.backward(dlogits)

        def f():
            return loss_fn(dense.forward(x), target, mask)[0]
        for arr, grad in ((x, dx), (dense.parameters()["W"], dense.grads()["W"]), (dense.parameters()["b"],
                                                                                    dense.grads()["b"])):
            flat, gflat = arr.reshape(-1), grad.reshape(-1)
            for i in range(0, flat.size, 3):
                old = flat[i]
                flat[i] = old + 1e-6
                plus = f()
                flat[i] = old - 1e-6
                minus = f()
                flat[i] = old
                assert gflat[i] == pytest.approx((plus - minus) / 2e-6, rel=1e-5, abs=1e-8)


def test_losses_against_plain_formulas():
    logits = np.array([[2.0, -1.0, 0.5]])
    loss, _ = softmax_cross_entropy(logits, np.array([0]))
    assert loss == pytest.approx(-np.log(np.exp(2.0) / np.exp(logits).sum()))
    # an impossible class's logit of -inf (a common trick): the loss was NaN (0 * -inf), torch's is finite; a
    # padding row whose label 0 is such a class counts nothing
    masked = np.array([[-np.inf, 0.0, 1.0], [0.5, -np.inf, 0.2]])
    loss, grad = softmax_cross_entropy(masked, np.array([2, 0]))
    assert loss == pytest.approx((np.log(1 + np.e) - 1 + np.log(1 + np.exp(-0.3))) / 2) and np.isfinite(grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, _ = softmax_cross_entropy(masked, np.array([0, 0]), mask=np.array([0, 1]))
    assert loss == pytest.approx(np.log(1 + np.exp(-0.3)))
    z, t = np.array([[30.0, -30.0, 0.0]]), np.array([[1.0, 0.0, 1.0]])
    loss, grad = sigmoid_binary_cross_entropy(z, t)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(np.log(2) / 3, rel=1e-6)


def test_losses_and_dense_refuse_what_would_give_wrong_numbers():
    """Labels outside [0, C) (the row once counted as zero loss), float labels (loss -0.0), targets outside
    [0, 1], and masks of another shape than the positions (broadcast along the wrong axis, silently) are refused;
    so is a dy of the wrong shape or type for Dense.backward (a float64 dy once returned a float64 dx)."""
    logits = np.zeros((2, 3), np.float32)
    for labels, message in ((np.array([0, 5]), r"in \[0, 3\) where they count, got values in \[0, 5\]"),
                            (np.array([0, -1]), r"in \[0, 3\)"), (np.array([0.5, 1.7]), "must be integers")):
        with pytest.raises(UsageError, match=message):
            softmax_cross_entropy(logits, labels)
    with pytest.raises(UsageError, match=r"mask has shape \[3\], expected \[3, 3\]"):
        softmax_cross_entropy(np.zeros((3, 3, 4), np.float32), np.zeros((3, 3), int), mask=np.array([1, 0, 0]))
    for targets in (np.full((2, 3), 7.0, np.float32), np.full((2, 3), np.nan, np.float32)):
        with pytest.raises(UsageError, match=r"targets must be probabilities in \[0, 1\] where they count"):
            sigmoid_binary_cross_entropy(logits, targets)
    with pytest.raises(UsageError, match="mask has shape"):
        sigmoid_binary_cross_entropy(logits, np.zeros((2, 3), np.float32), mask=np.ones(3))
    # padding where the mask leaves a position out is no error (labels -1, a NaN target), nor are bool labels; the
    # binary loss's gradient has the logits' type whatever the targets' (Dense.backward takes it)
    labels = np.array([[0, 1, -1], [2, -1, -1]])
    assert np.isclose(softmax_cross_entropy(np.zeros((2, 3, 4), np.float32), labels, mask=labels >= 0)[0], np.log(4))
    assert np.isclose(softmax_cross_entropy(np.zeros((2, 2), np.float32), np.array([True, False]))[0], np.log(2))
    targets = np.zeros((2, 3, 4), np.float32)
    targets[1, 2] = np.nan
    mask = np.ones((2, 3))
    mask[1, 2] = 0
    loss, grad = sigmoid_binary_cross_entropy(np.zeros((2, 3, 4), np.float32), targets, mask=mask)
    assert np.isclose(loss, np.log(2)) and np.all(np.isfinite(grad))
    assert sigmoid_binary_cross_entropy(logits, np.array([[0, 1, 1], [1, 0, 0]]))[1].dtype == np.float32
    d = Dense(3, 2)
    d.forward(np.ones((4, 3), np.float32))
    for dy in (np.ones((4, 3), np.float32), np.ones((4, 2))):
        with pytest.raises(UsageError, match=r"Dense.backward expects dy of the forward's output, \[4, 2\] float32"):
            d.backward(dy)
    assert d.backward(np.ones((4, 2), np.float32)).shape == (4, 3)


def test_optimizers_take_numpy_numbers_and_refuse_malformed_states():
    p = {"w": np.zeros(3, np.float32)}
    assert Adam(p, lr=np.float32(0.5)).lr == 0.5
    for bad in ((0.9,), (0.9, True), "ab"):
        with pytest.raises(UsageError, match="betas must be two numbers"):
            Adam(p, betas=bad)
    a = Adam(p)
    a.step({"w": np.ones(3, np.float32)})
    state = a.state_dict()
    with pytest.raises(UsageError, match="no step count"):
        Adam(p).load_state_dict({k: v for k, v in state.items() if k != "steps"})
    with pytest.raises(UsageError, match="after 1 steps has no m of w"):  # (fresh moments: another training)
        Adam(p).load_state_dict({k: v for k, v in state.items() if not k.startswith("m/")})
    sgd = SGD(p, lr=0.1)  # (no momentum: no buffers to keep)
    sgd.step({"w": np.ones(3, np.float32)})
    SGD(p, lr=0.1).load_state_dict(sgd.state_dict())


def test_optimizer_state_keeps_its_class_and_hyperparameters():
    """As torch.optim's: load_state_dict restores lr, betas, momentum ...; another optimizer's state is refused
    (an Adam state loaded into SGD dropped its moments silently before)."""
    p, g = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
    a = Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    a.step(g)
    b = Adam({"w": np.zeros(3, np.float32)})
    b.load_state_dict(a.state_dict())
    assert (b.lr, b.betas, b.eps, b.weight_decay, b.steps) == (0.01, (0.8, 0.9), 1e-6, 0.1, 1)
    s = SGD(p, lr=0.1, momentum=0.9, nesterov=True)
    s.step(g)
    t = SGD({"w": np.zeros(3, np.float32)}, lr=1.0)
    t.load_state_dict(s.state_dict())
    assert (t.lr, t.momentum, t.nesterov) == (0.1, 0.9, True)
    state = a.state_dict()
    with pytest.raises(UsageError, match="is Adam's, not SGD's"):
        SGD(p, lr=0.1).load_state_dict(state)
    with pytest.raises(UsageError, match="holds 'm/w', 'v/w', which SGD's state_dict"):  # (one without its class)
        SGD(p, lr=0.1).load_state_dict({k: v for k, v in state.items() if k != "kind"})
    for key in ("kind/junk", "steps/x", "hyper", "m/"):  # (not what a state_dict() gives)
        with pytest.raises(UsageError, match="which Adam's state_dict"):
            Adam(p).load_state_dict({**state, key: np.array(1.0)})
    for key, value, message in (("hyper/lr", np.array(-1.0), "hyperparameters: lr must be a positive"),
                                ("hyper/betas", np.array([1.0, 0.5]), r"betas must lie in \[0, 1\)"),
                                ("hyper/betas", np.array(0.5), "not a value of betas"),
                                ("hyper/lr", np.array("x"), "not a value of lr"),
                                ("hyper/momentum", np.array(0.9), "hyperparameter momentum, which Adam does not")):
        with pytest.raises(UsageError, match=message):
            Adam(p).load_state_dict({**state, key: value})
    with pytest.raises(UsageError, match="nesterov must be True or False"):
        SGD(p, lr=0.1).load_state_dict({**s.state_dict(), "hyper/nesterov": np.array(2.5)})
    # a state refused leaves the optimizer as it was (its settings were taken before its slots were checked)
    t = SGD({"w": np.zeros(3, np.float32)}, lr=1.0, momentum=0.5)
    t.step(g)
    bad = {**s.state_dict(), "buffers/w": np.zeros(4, np.float32)}
    with pytest.raises(UsageError, match="buffers of w is"):
        t.load_state_dict(bad)
    assert (t.lr, t.momentum, t.nesterov, t.steps, list(t.buffers)) == (1.0, 0.5, False, 1, ["w"])

    class Scaled(Adam):  # (a subclass with constructor arguments of its own loads states too)
        def __init__(self, params, scale, **kw):
            super().__init__(params, **kw)
            self.scale = scale
    c = Scaled({"w": np.zeros(3, np.float32)}, 2.0)
    c.load_state_dict({**state, "kind": np.array("Scaled")})
    assert (c.lr, c.betas, c.steps) == (0.01, (0.8, 0.9), 1)
    old = {k: v for k, v in state.items() if k != "kind" and not k.startswith("hyper/")}  # (before 2026-12-06)
    c = Adam({"w": np.zeros(3, np.float32)}, lr=0.5)
    c.load_state_dict(old)
    assert (c.lr, c.steps) == (0.5, 1)


def test_overfits_100_short_sequences():
    """The reference backend, a layer, a dense head and Adam drive the loss of 100 sequences down 90%."""
    rng = np.random.default_rng(0)
    T, N, I, H, C = 6, 100, 4, 24, 3
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    labels = rng.integers(0, C, N)
    layer = lstmdsl.compile("vanilla", input_size=I, hidden_size=H, forget_bias=1.0, seed=0)
    head = Dense(H, C, seed=0)
    params = {**layer.parameters(), **{f"head.{k}": v for k, v in head.parameters().items()}}
    opt = Adam(params, lr=0.03)
    losses = []
    for _ in range(150):
        layer.zero_grad()
        head.zero_grad()
        y, _ = layer.forward(x)
        loss, dlogits = softmax_cross_entropy(head.forward(y[-1]), labels)
        dy = np.zeros_like(y)
        dy[-1] = head.backward(dlogits)
        layer.backward(dy)
        grads = {**layer.grads(), **{f"head.{k}": v for k, v in head.grads().items()}}
        clip_grad_norm(grads, 5.0)
        opt.step(grads)
        losses.append(loss)
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_fp16_loss_scaler_skips_overflow_and_grows():
    from lstmdsl.train import LossScaler

    s = LossScaler("fp16", scale=1024.0, interval=2)
    ok = {"w": np.ones(3)}
    assert s.step_ok(ok, np) and s.scale == 1024.0
    assert s.step_ok(ok, np) and s.scale == 2048.0  # two good steps: doubled
    assert not s.step_ok({"w": np.array([1.0, np.inf])}, np) and s.scale == 1024.0 and s.skipped == 1
    off = LossScaler("bf16")
    assert off.scale == 1.0 and off.step_ok({"w": np.array([np.nan])}, np)  # no scaling outside fp16


def test_train_precision_defaults_to_the_specs_and_is_checked():
    from lstmdsl.train import TrainConfig, check_config

    assert TrainConfig(spec="vanilla", task="chorales").precision is None  # the spec's own schedule decides
    with pytest.raises(lstmdsl.UsageError, match="precision must be one of"):
        check_config(TrainConfig(spec="vanilla", task="chorales", precision="fp8"))
