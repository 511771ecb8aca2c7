"""Variable-length batches and bidirectional layers (masks.py, the reference and the Layer API): each
sequence of a padded batch computes what it computes alone, the reverse direction reads each sequence
from its own end, gradients match central differences through the mask, and the API refuses bad lengths.
The same against torch.nn.LSTM's packed, bidirectional layers when torch is installed."""

from __future__ import annotations

import numpy as np
import pytest

import lstmdsl
from lstmdsl import UsageError
from lstmdsl.gradcheck import gradient_check
from lstmdsl.ir import verify
from lstmdsl.masks import LENGTH, has_lengths, with_lengths

from conftest import POSITIVE_STATES, SPECS, extra_sizes

LENGTHS = np.array([5, 2, 1, 4])


def case(name: str, bidirectional: bool, layers: int = 2, seed: int = 3, text: str | None = None):
    """A float64 layer of the shipped spec `name` (or of the spec `text`), random weights, input and state."""
    T, B, I, H = 5, len(LENGTHS), 4, 6
    layer = lstmdsl.compile(text or name, I, H, layers, dtype="float64", seed=seed, bidirectional=bidirectional,
                            **({} if text else extra_sizes(name)))
    rng = np.random.default_rng(seed)
    for p in layer.parameters().values():
        p[...] = rng.uniform(-0.8, 0.8, p.shape)
    x = rng.standard_normal((T, B, I))
    state = {k: 0.5 * rng.standard_normal(s) for k, s in layer.state_shapes(B).items()}
    for k in POSITIVE_STATES.get(name, ()):
        state[k] = np.abs(state[k]) + 0.5
    return layer, x, state


def test_the_mask_is_an_ordinary_rewrite_of_the_cell():
    cell = lstmdsl.parse("vanilla").cell
    masked = with_lengths(cell)
    verify(masked)
    assert has_lengths(masked) and not has_lengths(cell)
    assert [n for n in masked.nodes if n.op == "stepin"][0].attr == LENGTH
    assert with_lengths(cell) is masked  # cached: one program per cell


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_sequence_computes_what_it_computes_alone(name, bidirectional):
    """Outputs up to each sequence's end and its final states equal a run of that sequence alone, trimmed
    to its length; outputs past the end are zero."""
    assert_each_sequence_alone(name, *case(name, bidirectional))


def assert_each_sequence_alone(name, layer, x, state):
    y, final = layer.forward(x, state, lengths=LENGTHS, train=False)  # train=False: no regulariser draws
    assert y.shape == (x.shape[0], x.shape[1], layer.output_size)
    for b, n in enumerate(LENGTHS):
        alone, final_alone = layer.forward(x[:n, b:b + 1], {k: v[:, b:b + 1] for k, v in state.items()},
                                           train=False)
        np.testing.assert_allclose(y[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12, err_msg=f"{name} sequence {b}")
        assert np.all(y[n:, b] == 0)
        for k in final:
            np.testing.assert_allclose(final[k][:, b], final_alone[k][:, 0], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", SPECS)
def test_zero_initial_states_in_both_directions_give_each_sequences_own_run_and_gradients(name):
    """With the default (zero) initial states, in a bidirectional stack: the reverse direction holds that state
    through the padding before each sequence begins, where the sLSTM's h' = o * (c' / n') is 0 / 0 on the held
    state (it once gave NaN outputs, states and gradients, silently: masks._singular_inputs). Outputs, final
    states, dx and every parameter's gradient equal the sum of each sequence's run alone."""
    layer, x, _ = case(name, True)
    zero = {k: np.zeros(s) for k, s in layer.state_shapes(x.shape[1]).items()}
    assert_each_sequence_alone(name, layer, x, zero)
    dy = np.random.default_rng(5).standard_normal((x.shape[0], x.shape[1], layer.output_size))
    layer.zero_grad()
    layer.forward(x, lengths=LENGTHS)
    if layer.last_noise():  # (a regulariser draws its masks each run; its gradients: gradient_check's tests)
        return
    dx = layer.backward(dy * (np.arange(x.shape[0])[:, None] < LENGTHS)[..., None])
    grads = {k: g.copy() for k, g in layer.grads().items()}
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(g)) for g in grads.values())
    total = {k: np.zeros_like(g) for k, g in grads.items()}
    for b, n in enumerate(LENGTHS):
        layer.zero_grad()
        layer.forward(x[:n, b:b + 1])
        dx_alone = layer.backward(dy[:n, b:b + 1])
        np.testing.assert_allclose(dx[:n, b], dx_alone[:, 0], rtol=1e-10, atol=1e-12, err_msg=f"{name} dx {b}")
        assert np.all(dx[n:, b] == 0)
        for k, g in layer.grads().items():
            total[k] += g
    for k in grads:
        np.testing.assert_allclose(grads[k], total[k], rtol=1e-10, atol=1e-12, err_msg=f"{name} {k}")


# cells whose updates the mask's rewrite once got wrong: a state's update that is the leaf of a state
# declared after it, and two states with one update node (the second got the first's old value)
ODD_UPDATES = {
    "leaf_update": "cell d { input x; state h, p; h' = tanh(W x + R h + S p + b); p' = h; output h' }",
    "shared_update": "cell d { input x; state h, g; a = tanh(W x + R h + S g + b); h' = a; g' = a; output a }",
}


@pytest.mark.parametrize("name", sorted(ODD_UPDATES))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_odd_updates_compute_what_each_sequence_computes_alone(name, bidirectional):
    assert_each_sequence_alone(name, *case(name, bidirectional, text=ODD_UPDATES[name]))
    rows = gradient_check(lstmdsl.parse(ODD_UPDATES[name]), 4, 6, 4, 5, 2, seed=3, bidirectional=bidirectional,
                          lengths=True)
    assert max(r.rel_error for r in rows) < 1e-6, rows


def test_full_lengths_equal_no_lengths(rng):
    layer, x, state = case("peephole", True)
    y, final = layer.forward(x, state)
    y2, final2 = layer.forward(x, state, lengths=np.full(x.shape[1], x.shape[0]))
    np.testing.assert_array_equal(y2, y)  # the same bits: where m = 1 the masked update is the update
    for k in final:
        np.testing.assert_array_equal(final2[k], final[k])


@pytest.mark.parametrize("name", ["vanilla", "gru", "peephole"])
def test_the_mask_adds_no_launch_and_keeps_the_persistent_stage(name):
    """The mask's nodes are all of the states' sizes, so the pointwise pass fuses them into the step's
    kernels: the masked plan launches as often per step as the unmasked one (a node of one value per row,
    1 - m, was a kernel of its own: a launch more per forward step), and a single-stage cell keeps its
    persistent stage."""
    from lstmdsl.plan import Gemm, Kernel
    from lstmdsl.program import build_program
    from lstmdsl.schedule import Schedule

    def launches(plan):
        return [sum(isinstance(op, (Gemm, Kernel)) for op in phase.loop.body) for phase in (plan.forward, plan.backward)]

    cell = lstmdsl.parse(name).cell
    plain, masked = (build_program(c, Schedule(persistent="on")).plan for c in (cell, with_lengths(cell)))
    assert launches(masked) == launches(plain)
    assert len(masked.forward.loop.persistent.stages) == len(plain.forward.loop.persistent.stages)


def test_the_reverse_direction_reads_each_sequence_from_its_end():
    """A bidirectional layer's second half is a forward layer run on each sequence reversed, with the
    reverse direction's own parameters."""
    layer, x, state = case("gru", True, layers=1)
    forward = lstmdsl.compile("gru", 4, 6, 1, dtype="float64")
    forward.load_state_dict({k.replace("l0_reverse.", "l0."): v for k, v in layer.state_dict().items()
                             if k.startswith("l0_reverse.")})
    y, final = layer.forward(x, state, lengths=LENGTHS)
    for b, n in enumerate(LENGTHS):
        alone, last = forward.forward(x[:n, b:b + 1][::-1].copy(), {"h": state["h"][1:2, b:b + 1]})
        np.testing.assert_allclose(y[:n, b, 6:], alone[::-1, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(final["h"][1, b], last["h"][0, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vanilla", "gru", "lstmp", "layernorm", "slstm", "cifg"])
def test_gradients_through_the_mask_match_central_differences(name):
    rows = gradient_check(lstmdsl.parse(name), 4, 6, 4, 5, 2, seed=3, bidirectional=True, lengths=True,
                          **extra_sizes(name))
    assert max(r.rel_error for r in rows) < 1e-6, rows
    layer, x, state = case(name, True)
    y, _ = layer.forward(x, state, lengths=LENGTHS)
    dx = layer.backward(np.ones_like(y))
    for b, n in enumerate(LENGTHS):  # nothing flows from the padding
        assert np.all(dx[n:, b] == 0)


def test_bidirectional_layers_name_shape_save_and_load(tmp_path):
    layer, x, state = case("vanilla", True)
    assert layer.output_size == 12 and layer.state_shapes(4)["h"] == (4, 4, 6)
    names = list(layer.parameters())
    assert "l0_reverse.W_i" in names and "l1.W_i" in names
    assert layer.parameters()["l1.W_i"].shape == (6, 12)  # the next layer reads both directions
    y, _ = layer.forward(x, state, lengths=LENGTHS)
    layer.save(tmp_path / "bi.npz")
    back = lstmdsl.load(tmp_path / "bi.npz")
    assert back.directions == 2
    np.testing.assert_array_equal(back.forward(x, state, lengths=LENGTHS)[0], y)
    one = lstmdsl.compile("vanilla", 4, 6, 2, dtype="float64")
    with pytest.raises(UsageError, match="2 direction"):
        one.load(tmp_path / "bi.npz")


@pytest.mark.parametrize("lengths,match", [
    ([5, 2, 1], "4 integers"),
    ([5, 2, 1, 0], r"in \[1, T\] = \[1, 5\]"),
    ([5, 2, 1, 6], r"in \[1, T\] = \[1, 5\]"),
    ([5, 2.5, 1, 4], "integers"),
    ([np.inf, 2.0, 1.0, 4.0], "integers"),  # (inf equals its rounding: OverflowError once)
    ("five", "integers"),
])
def test_bad_lengths_are_refused_with_what_is_wrong(lengths, match):
    layer, x, state = case("vanilla", False, layers=1)
    with pytest.raises(UsageError, match=match):
        layer.forward(x, state, lengths=np.array(lengths) if not isinstance(lengths, str) else lengths)


def test_bidirectional_must_be_a_bool():
    with pytest.raises(UsageError, match="bidirectional must be True or False"):
        lstmdsl.compile("vanilla", 3, 4, bidirectional="yes")
    torch = pytest.importorskip("torch")
    from lstmdsl.torch import LSTM

    # the torch module takes flags as nn.LSTM does: 1 and 0 too, nothing else
    m = LSTM(3, 4, bidirectional=1, batch_first=0)
    assert m.bidirectional is True and m.batch_first is False
    assert m(torch.zeros(2, 1, 3))[0].shape == (2, 1, 8)
    with pytest.raises(UsageError, match="bidirectional must be True or False, got 2"):
        LSTM(3, 4, bidirectional=2)


def test_bidirectional_packed_lstm_equals_torch():
    """The Layer API (numpy reference) against torch.nn.LSTM(bidirectional) on a packed batch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 6, 2, bidirectional=True).double()
    layer = lstmdsl.compile("vanilla", 4, 6, 2, dtype="float64", bidirectional=True)
    params = {}
    for k in range(2):
        for sfx, unit in (("", f"l{k}"), ("_reverse", f"l{k}_reverse")):
            w, r = (getattr(ref, f"{n}_l{k}{sfx}").detach().numpy() for n in ("weight_ih", "weight_hh"))
            b = sum(getattr(ref, f"{n}_l{k}{sfx}").detach().numpy() for n in ("bias_ih", "bias_hh"))
            for g, gate in enumerate("ifzo"):
                rows = slice(6 * g, 6 * (g + 1))
                params[f"{unit}.W_{gate}"], params[f"{unit}.R_{gate}"] = w[rows], r[rows]
                params[f"{unit}.b_{gate}"] = b[rows]
    layer.load_state_dict(params)
    x = np.random.default_rng(1).standard_normal((5, 4, 4))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor(LENGTHS), enforce_sorted=False)
    y_ref, (h_ref, c_ref) = ref(packed)
    y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(y_ref, total_length=5)
    y, final = layer.forward(x, {k: np.zeros(s) for k, s in layer.state_shapes(4).items()}, lengths=LENGTHS)
    np.testing.assert_allclose(y, y_ref.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(final["h"], h_ref.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(final["c"], c_ref.detach().numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", SPECS)
def test_held_outputs_change_nothing_a_packed_batch_reads(name):
    """with_lengths(held=True) (the torch module's packed batches: y past the end is the held value, not
    zero, and no buffer of its own): the same final states, the same outputs up to each end, and with a dy
    of zero past the end (what the packed rows' gradient is) the same dx, initial-state and parameter
    gradients, through a bidirectional stack whose second layer reads the held values."""
    from lstmdsl.numpy_layer import stack_backward, stack_forward

    layer, x, state = case(name, True)
    masks = layer._noise(*x.shape[:2], True, None)  # the regularisers' masks, drawn once for both runs
    connect = layer._dropconnect(masks)
    params = [dict(p, **{m: p[m] * mask for m, mask in c.items()}) for p, c in zip(layer._params, connect)]
    sizes = layer.sizes
    runs = {}
    for held in (False, True):
        y, final, saved = stack_forward(layer.cell, params, sizes, x, state, lengths=LENGTHS, directions=2,
                                        noise=masks, held=held)
        dy = np.random.default_rng(5).standard_normal(y.shape)
        for b, n in enumerate(LENGTHS):
            dy[n:, b] = 0
        grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in params]
        dstate = {k: np.random.default_rng(6 + i).standard_normal(v.shape) for i, (k, v) in enumerate(final.items())}
        dx, d0 = stack_backward(params, sizes, saved, dy, dstate, grads, directions=2)
        runs[held] = y, final, dx, d0, grads
    (y0, f0, dx0, d00, g0), (y1, f1, dx1, d01, g1) = runs[False], runs[True]
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(y1[:n, b], y0[:n, b], rtol=1e-12, atol=1e-12)
    assert any(np.any(y1[n:, b] != 0) for b, n in enumerate(LENGTHS) if n < len(x))  # held: not zeroed
    for k in f0:
        np.testing.assert_allclose(f1[k], f0[k], rtol=1e-12, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(d01[k], d00[k], rtol=1e-10, atol=1e-12, err_msg=f"d {k}")
    np.testing.assert_allclose(dx1, dx0, rtol=1e-10, atol=1e-12)
    for u, (a, b) in enumerate(zip(g0, g1)):
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-10, atol=1e-12, err_msg=f"unit {u} {k}")


def test_held_keeps_zeroing_an_output_that_is_not_an_update():
    """Past the end such an output is a value of the padding's inputs (it could overflow, and 0 * inf in
    the next layer is NaN), so held=True zeroes it as held=False does; an LSTM's output, h', is held."""
    other = lstmdsl.parse("cell d { input x; state h; h' = tanh(W x + R h + b); y = exp(h'); output y }").cell
    assert with_lengths(other, held=True) == with_lengths(other, held=False)
    vanilla = lstmdsl.parse("vanilla").cell
    assert with_lengths(vanilla, held=True) != with_lengths(vanilla, held=False)
