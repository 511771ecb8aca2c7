"""lstmdsl.torch: a drop-in peer of torch.nn.LSTM and nn.GRU. On the CPU (the numpy reference behind the
same custom ops) in CI; the `gpu` tests run the generated kernels, under torch.compile too."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lstmdsl  # noqa: E402
import lstmdsl.torch as lt  # noqa: E402
from lstmdsl import UsageError  # noqa: E402

from conftest import has_gpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "lstm": lambda: torch.nn.LSTM(5, 7, 2, batch_first=True),
    "lstm-nobias": lambda: torch.nn.LSTM(5, 7, 1, bias=False),
    "lstmp": lambda: torch.nn.LSTM(5, 7, 2, proj_size=3),
    "lstm-bidirectional": lambda: torch.nn.LSTM(5, 7, 2, bidirectional=True),
    "gru": lambda: torch.nn.GRU(5, 7, 2),
    "gru-bidirectional-dropout": lambda: torch.nn.GRU(5, 6, 3, bidirectional=True, dropout=0.5),
}


def as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


def torch_layout(module, grads: dict) -> dict:
    """Gradients of an lstmdsl.torch module's parameters under torch.nn's names (LSTM and GRU have them; an RNN of
    the same cells: bias_ih and bias_hh both get the gradient of the spec's one bias per gate, as both add into it)."""
    if not isinstance(module, lt.RNN) or module._nn is not None or module.spec.name not in ("vanilla", "lstmp",
                                                                                             "gru_torch"):
        return grads
    gates = ("r", "z", "n") if module.spec.name == "gru_torch" else ("i", "f", "z", "o")
    out = {}
    for name, g in grads.items():
        if name.startswith(("weight_", "P_")):
            out[name.replace("P_", "weight_hr_", 1)] = g
    for sfx in {n.split("_l", 1)[1] for n in grads if n.startswith("weight_ih")}:
        if module.bias:
            out[f"bias_ih_l{sfx}"] = torch.cat([grads[f"b_{'in' if g == 'n' else g}_l{sfx}"] for g in gates])
            out[f"bias_hh_l{sfx}"] = torch.cat([grads[f"b_{'hn' if g == 'n' else g}_l{sfx}"] for g in gates])
    return out


def run_both(ref, ours, x, hx=None):
    """Outputs, final states and every gradient (input, initial states, and the parameters by torch.nn's
    names) of two modules."""
    out = []
    for m in (ref, ours):
        xx = x.detach().clone().requires_grad_()
        h = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
        y, s = m(xx, h if h is None or len(h) > 1 else h[0])
        s = as_tuple(s)
        w = [torch.linspace(-1, 1, t.numel(), dtype=t.dtype, device=t.device).reshape(t.shape) for t in (y, *s)]
        loss = sum((a * b).sum() for a, b in zip((y, *s), w))
        names = [n.removeprefix("_orig_mod.") for n, _ in m.named_parameters()]
        grads = torch.autograd.grad(loss, [xx, *(h or ()), *m.parameters()])
        k = 1 + len(h or ())
        named = torch_layout(getattr(m, "_orig_mod", m), dict(zip(names, grads[k:])))
        out.append(((y, *s), list(grads[:k]) + [named[n] for n in sorted(named)]))
    return out


def assert_close(a, b, tol):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        p, q = p.detach().double(), q.detach().double()
        err = float((p - q).norm() / max(float(q.norm()), 1e-30))
        assert err <= tol, err


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_from_torch_computes_what_torch_computes_on_the_cpu(name, dtype, tol):
    torch.manual_seed(0)
    ref = CASES[name]().to(dtype).eval()  # eval: dropout off, so both compute the same function
    ours = lt.from_torch(ref).eval()
    x = torch.randn(6, 3, 5, dtype=dtype)
    D = 2 if ref.bidirectional else 1
    hx = tuple(0.3 * torch.randn(D * ref.num_layers, 3 if not ref.batch_first else 6, n, dtype=dtype)
               for n in ((ref.proj_size or ref.hidden_size, ref.hidden_size) if isinstance(ref, torch.nn.LSTM)
                         else (ref.hidden_size,)))
    (a_out, a_grads), (b_out, b_grads) = run_both(ref, ours, x, hx)
    assert [t.shape for t in a_out] == [t.shape for t in b_out]
    assert_close(b_out, a_out, tol)
    assert_close(b_grads, a_grads, tol)  # parameters in the same order: weight_ih, weight_hh, biases / proj
    back = lt.to_torch(ours)
    assert_close(back(x, hx if len(hx) > 1 else hx[0])[0:1], a_out[0:1], tol)


def one_output_gradients(device: str, tol: float) -> None:
    """A loss that reaches one output only (y, h_n or c_n; autograd gives the others no gradient, None):
    the gradients of x, the initial states and every parameter equal nn.LSTM's; and with an input and
    initial states that want no gradient, the parameters' (the GPU copies neither dx nor dh0 out then)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 7, 2).to(device)
    ours = lt.from_torch(ref)
    x = torch.randn(6, 3, 5, device=device)
    hx = tuple(0.3 * torch.randn(2, 3, 7, device=device) for _ in range(2))
    for which in range(3):
        got = []
        for m in (ref, ours):
            xx, h = x.clone().requires_grad_(), tuple(t.clone().requires_grad_() for t in hx)
            y, (hn, cn) = m(xx, h)
            out = (y, hn, cn)[which]
            loss = (out * torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)).sum()
            grads = torch.autograd.grad(loss, [xx, *h, *m.parameters()])
            named = torch_layout(m, dict(zip([n for n, _ in m.named_parameters()], grads[3:])))
            got.append(list(grads[:3]) + [named[n] for n in sorted(named)])
        assert_close(got[1], got[0], tol)
    got = []  # an input and initial states that want no gradient (data): the parameters' gradients only
    for m in (ref, ours):
        y, _ = m(x, hx)
        grads = torch.autograd.grad((y * y).sum(), list(m.parameters()))
        named = torch_layout(m, dict(zip([n for n, _ in m.named_parameters()], grads)))
        got.append([named[n] for n in sorted(named)])
    assert_close(got[1], got[0], tol)


def test_a_loss_through_one_output_gets_torchs_gradients():
    one_output_gradients("cpu", 1e-5)


PACKED = {
    "lstm": lambda: torch.nn.LSTM(5, 7, 2),
    "lstm-batch-first": lambda: torch.nn.LSTM(5, 7, 1, batch_first=True),
    "lstm-bidirectional": lambda: torch.nn.LSTM(5, 7, 2, bidirectional=True),
    "lstmp-bidirectional": lambda: torch.nn.LSTM(5, 7, 2, bidirectional=True, proj_size=3),
    "gru-bidirectional": lambda: torch.nn.GRU(5, 6, 2, bidirectional=True),
}


def run_packed(m, x, lengths, hx, enforce_sorted):
    """Packed outputs, final states and the gradients of a weighted sum of them, as run_both."""
    xx = x.detach().clone().requires_grad_()
    h = tuple(t.detach().clone().requires_grad_() for t in hx)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xx, lengths, batch_first=m.batch_first,
                                                     enforce_sorted=enforce_sorted)
    y, s = m(packed, h if len(h) > 1 else h[0])
    assert isinstance(y, torch.nn.utils.rnn.PackedSequence)
    s = as_tuple(s)
    outs = (y.data, *s)
    w = [torch.linspace(-1, 1, t.numel(), dtype=t.dtype, device=t.device).reshape(t.shape) for t in outs]
    loss = sum((a * b).sum() for a, b in zip(outs, w))
    names = [n for n, _ in m.named_parameters()]
    grads = torch.autograd.grad(loss, [xx, *h, *m.parameters()])
    named = torch_layout(m, dict(zip(names, grads[1 + len(h):])))
    return (y, outs), list(grads[:1 + len(h)]) + [named[n] for n in sorted(named)]


@pytest.mark.parametrize("name", PACKED)
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequences_compute_what_torch_computes(name, enforce_sorted):
    """Variable-length batches (PackedSequence, sorted or not) and both directions, against torch.nn on
    the CPU: outputs, the final states at each sequence's own end, and every gradient."""
    torch.manual_seed(1)
    ref = PACKED[name]().double()
    ours = lt.from_torch(ref)
    lengths = [6, 4, 4, 1] if enforce_sorted else [3, 6, 1, 4]
    B, T = len(lengths), 6
    x = torch.randn((B, T, 5) if ref.batch_first else (T, B, 5), dtype=torch.float64)
    D = 2 if ref.bidirectional else 1
    sizes = (ref.proj_size or ref.hidden_size, ref.hidden_size) if isinstance(ref, torch.nn.LSTM) else (ref.hidden_size,)
    hx = tuple(0.3 * torch.randn(D * ref.num_layers, B, n, dtype=torch.float64) for n in sizes)
    (y_ref, a_out), a_grads = run_packed(ref, x, lengths, hx, enforce_sorted)
    (y, b_out), b_grads = run_packed(ours, x, lengths, hx, enforce_sorted)
    assert torch.equal(y.batch_sizes, y_ref.batch_sizes)
    for a, b in ((y.sorted_indices, y_ref.sorted_indices), (y.unsorted_indices, y_ref.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert_close(b_out, a_out, 1e-12)
    assert_close(b_grads, a_grads, 1e-12)


def run_padded(m, x, lengths, hx, packed: bool):
    """Padded outputs (zero past each end), final states and the gradients of a weighted sum of them: the batch
    packed and unpacked with torch's functions, or (lstmdsl's modules) given its lengths."""
    xx = x.detach().clone().requires_grad_()
    h = tuple(t.detach().clone().requires_grad_() for t in hx)
    T = x.shape[1] if m.batch_first else x.shape[0]
    if packed:
        p = torch.nn.utils.rnn.pack_padded_sequence(xx, torch.tensor(lengths), batch_first=m.batch_first,
                                                    enforce_sorted=False)
        y, s = m(p, h if len(h) > 1 else h[0])
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=m.batch_first, total_length=T)
    else:
        y, s = m(xx, h if len(h) > 1 else h[0], lengths=lengths)
    outs = (y, *as_tuple(s))
    w = [torch.linspace(-1, 1, t.numel(), dtype=t.dtype, device=t.device).reshape(t.shape) for t in outs]
    loss = sum((a * b).sum() for a, b in zip(outs, w))
    names = [n for n, _ in m.named_parameters()]
    grads = torch.autograd.grad(loss, [xx, *h, *m.parameters()])
    named = torch_layout(m, dict(zip(names, grads[1 + len(h):])))
    return outs, list(grads[:1 + len(h)]) + [named[n] for n in sorted(named)]


@pytest.mark.parametrize("name", PACKED)
def test_lengths_of_a_padded_batch_compute_what_torch_computes_on_it_packed(name):
    """forward(x, lengths=...) (lstmdsl's, not torch.nn.LSTM's): a padded batch with its lengths gives what torch.nn
    gives on the same batch packed and unpacked (pack_padded_sequence, pad_packed_sequence): outputs zero past each
    end, the final states at each sequence's own end, and every gradient; a tensor of lengths as a list does."""
    torch.manual_seed(2)
    ref = PACKED[name]().double()
    ours = lt.from_torch(ref)
    lengths = [3, 6, 1, 4]
    B, T = len(lengths), 6
    x = torch.randn((B, T, 5) if ref.batch_first else (T, B, 5), dtype=torch.float64)
    D = 2 if ref.bidirectional else 1
    sizes = (ref.proj_size or ref.hidden_size, ref.hidden_size) if isinstance(ref, torch.nn.LSTM) else (ref.hidden_size,)
    hx = tuple(0.3 * torch.randn(D * ref.num_layers, B, n, dtype=torch.float64) for n in sizes)
    a_out, a_grads = run_padded(ref, x, lengths, hx, packed=True)
    b_out, b_grads = run_padded(ours, x, lengths, hx, packed=False)
    assert_close(b_out, a_out, 1e-12)
    assert_close(b_grads, a_grads, 1e-12)
    y = b_out[0] if not ref.batch_first else b_out[0].transpose(0, 1)
    assert all(not y[n:, b].any() for b, n in enumerate(lengths))  # (zero past the end, exactly)
    c_out, _ = run_padded(ours, x, torch.tensor(lengths, dtype=torch.int32), hx, packed=False)
    assert_close(c_out, b_out, 0)


def test_lengths_ignore_whatever_the_padding_holds_and_take_numpy_integers():
    """The padding of a batch with lengths= is never read: NaN or inf there gives the outputs, final states and
    gradients that zeros there give (the op's mask multiplies, so the module zeroes the padding first; the packed
    path never sees it); numpy's integers are lengths too, as pack_padded_sequence takes them."""
    torch.manual_seed(4)
    m = lt.LSTM(3, 4, 2, bidirectional=True, dtype=torch.float64)
    lengths = [5, 2, 4]
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    poisoned = x.clone()
    for b, n in enumerate(lengths):
        x[n:, b] = 0
        poisoned[n:, b] = float("nan") if b % 2 else float("inf")
    hx = (torch.zeros(4, 3, 4, dtype=torch.float64),) * 2
    want, want_grads = run_padded(m, x, lengths, hx, packed=False)
    got, got_grads = run_padded(m, poisoned, np.array(lengths, dtype=np.int32), hx, packed=False)
    assert all(torch.isfinite(t).all() for t in [*got, *got_grads])
    assert_close(got, want, 0)
    assert_close(got_grads[1:], want_grads[1:], 0)  # (dx past each end: zero in both)
    assert torch.equal(torch.isnan(got_grads[0]), torch.zeros_like(got_grads[0], dtype=torch.bool))
    y, _ = m(x, lengths=[np.int64(5), np.int16(2), 4])
    assert torch.equal(y, want[0])


def test_lengths_that_do_not_fit_the_batch_are_refused():
    rnn = lt.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for lengths, message in [([5], "lengths has shape \\[1\\]; the input is a batch of 2 sequences"),
                             ([5, 0], "lengths must be in 1..5 \\(the input's steps\\), got 0..5"),
                             (torch.tensor([6, 2]), "lengths must be in 1..5 .*got 2..6"),
                             (torch.tensor([5.0, 2.0]), "lengths must hold integers, got torch.float32"),
                             ([5, 2.5], "lengths must hold integers"), ([True, 1], "lengths must hold integers"),
                             (np.array([5.0, 2.0]), "lengths must hold integers"),
                             (5, "lengths must be a list or a CPU tensor of integers, got int"),
                             (torch.tensor([5, 2], device="meta"), "lengths is on meta; give it on the CPU")]:
        with pytest.raises(UsageError, match=message):
            rnn(x, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 2])
    for bad in (packed, x[:, 0]):  # (a PackedSequence has its own; an unbatched input has one sequence)
        with pytest.raises(UsageError, match="lengths goes with a padded batch, a 3-D tensor"):
            rnn(bad, lengths=[5, 2])


def test_unbatched_input_and_single_state_cells():
    gru = lt.GRU(4, 6, 2, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    y, h = gru(x)
    assert y.shape == (5, 6) and isinstance(h, torch.Tensor) and h.shape == (2, 6)
    y2, h2 = gru(x.unsqueeze(1))
    torch.testing.assert_close(y2[:, 0], y)
    torch.testing.assert_close(h2[:, 0], h)


def test_states_in_the_specs_order_tuples_dicts_and_errors():
    rnn = lt.RNN("fgr", 3, 4, seed=1, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, states = rnn(x)
    assert isinstance(states, tuple) and len(states) == 5  # h, c, i, f, o
    y2, states2 = rnn(x, dict(zip(["h", "c", "i", "f", "o"], states)))
    y3, _ = rnn(x, states)
    torch.testing.assert_close(y2, y3)
    with pytest.raises(UsageError, match="5 tensor"):
        rnn(x, states[:2])
    with pytest.raises(UsageError, match="initial state 'c' has shape"):
        rnn(x, (states[0], states[1][:, :2]) + states[2:])
    with pytest.raises(UsageError, match="dtype torch.float32 but the parameters are torch.float64"):
        rnn(x.float())
    with pytest.raises(UsageError, match="3 features"):
        rnn(torch.randn(2, 5, 4, dtype=torch.float64))
    with pytest.raises(UsageError, match="initial state 'h' is torch.float32 on cpu, but the input is torch.float64"):
        rnn(x, (states[0].float(),) + states[1:])  # (not rounded silently)
    # (not moved silently either: on CUDA a kernel would be given a host pointer; "meta" stands for another device)
    with pytest.raises(UsageError, match="initial state 'c' is torch.float64 on meta, but the input is torch.float64 "
                                         "on cpu; convert or move one of them"):
        rnn(x, (states[0], states[1].to("meta")) + states[2:])
    with pytest.raises(UsageError, match="the input is on meta, but the parameters are on cpu; move one of them"):
        rnn(x.to("meta"))
    with pytest.raises(UsageError, match="proj_size was given but cell 'gru_torch' has no size 'proj'"):
        lt.GRU(3, 4, proj_size=2)  # (torch.nn.GRU refuses it too)


@pytest.mark.parametrize("make", [lambda m: m.LSTM(3, 4, 2, bidirectional=True), lambda m: m.LSTM(3, 4, proj_size=2),
                                  lambda m: m.GRU(3, 4, 2), lambda m: m.LSTM(3, 4, bias=False)])
def test_a_torch_nn_state_dict_loads_into_the_module_as_into_nn_lstm(make):
    """A checkpoint of torch.nn.LSTM / GRU (bias_ih and bias_hh, weight_hr) loads as it is, strict, also nested."""
    torch.manual_seed(0)
    ref, ours = make(torch.nn).double(), make(lt).double()
    assert str(ours.load_state_dict(ref.state_dict())) == "<All keys matched successfully>"
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0])
    nested = torch.nn.Sequential(make(lt).double())
    nested.load_state_dict(torch.nn.Sequential(ref).state_dict())
    torch.testing.assert_close(nested(x)[0], ref(x)[0])


def test_a_torch_nn_state_dict_is_refused_for_other_cells_and_beside_lstmdsl_names():
    with pytest.raises(UsageError, match="'peephole' has no torch.nn counterpart"):
        lt.RNN("peephole", 3, 4).load_state_dict(torch.nn.LSTM(3, 4).state_dict())
    mixed = {**torch.nn.LSTM(3, 4).state_dict(), **lt.RNN("vanilla", 3, 4).state_dict()}
    for into in (lt.RNN("vanilla", 3, 4), lt.LSTM(3, 4)):  # (the spec's names, and torch.nn's)
        with pytest.raises(UsageError, match="torch.nn's names .* and lstmdsl's too"):
            into.load_state_dict(mixed)
    # another cell's or another size's state dict: its biases named, not an empty slice's "b_o_l0 ... [0]" (helper-99)
    with pytest.raises(UsageError, match=r"have shapes \[12\] and \[12\]; this module's cell \(4 gates of 4\) takes "
                                         r"\[16\] each: is the state dict another cell's"):
        lt.RNN("vanilla", 3, 4).load_state_dict(torch.nn.GRU(3, 4).state_dict())
    with pytest.raises(UsageError, match=r"\(3 gates of 4\) takes \[12\]"):
        lt.RNN("gru_torch", 3, 4).load_state_dict(torch.nn.LSTM(3, 4).state_dict())
    with pytest.raises(RuntimeError, match=r"size mismatch for weight_ih_l0"):  # (LSTM and GRU: as torch.nn's own)
        lt.LSTM(3, 4).load_state_dict(torch.nn.GRU(3, 4).state_dict())


@pytest.mark.parametrize("make", [lambda m: m.LSTM(3, 4, 2), lambda m: m.LSTM(3, 4, proj_size=2, bidirectional=True),
                                  lambda m: m.GRU(3, 4, 2, bidirectional=True), lambda m: m.GRU(3, 4, bias=False)])
def test_lstm_and_gru_have_torch_nns_parameters_and_train_as_it_does(make):
    """LSTM and GRU register torch.nn's parameters in its order and draw them as it does (the same seed, the same
    values), so that an optimizer with weight decay and gradient clipping trains the same model: with one bias a
    gate, plain SGD moved the gates' biases at half nn.LSTM's rate (a review, 2026-12-08: outputs 0.39 apart after
    five steps)."""
    torch.manual_seed(7)
    ref = make(torch.nn).double()
    torch.manual_seed(7)
    ours = make(lt).double()
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    assert ours._flat_weights_names == ref._flat_weights_names and ours.mode == ref.mode
    assert [[n.shape for n in g] for g in ours.all_weights] == [[n.shape for n in g] for g in ref.all_weights]
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for optimizer in (lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.1),
                      lambda ps: torch.optim.Adam(ps, lr=0.01)):
        out = []
        for m in (copy.deepcopy(ref), copy.deepcopy(ours)):
            opt = optimizer(m.parameters())
            for _ in range(5):
                opt.zero_grad()
                (m(x)[0] ** 2).sum().backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
                opt.step()
            out.append(m(x)[0])
        torch.testing.assert_close(out[1], out[0], rtol=1e-10, atol=1e-12)
    assert lt.to_torch(ours).state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(ours.state_dict())  # (both ways, strict)


def test_state_dicts_saved_under_lstmdsls_names_load_into_lstm_and_gru():
    """LSTM and GRU took torch.nn's names on 2026-12-08; a state dict saved before (b_i_l0, ..., P_l0: an RNN of the
    same cell has them still) loads: each gate's bias in bias_ih, zeros in bias_hh (the GRU's b_hn there)."""
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for old, new in ((lt.RNN("vanilla", 3, 4, 2), lt.LSTM(3, 4, 2)), (lt.RNN("lstmp", 3, 4, proj_size=2), lt.LSTM(
            3, 4, proj_size=2)), (lt.RNN("gru_torch", 3, 4, bidirectional=True), lt.GRU(3, 4, bidirectional=True))):
        old, new = old.double(), new.double()
        assert str(new.load_state_dict(old.state_dict())) == "<All keys matched successfully>"
        torch.testing.assert_close(new(x)[0], old(x)[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(UsageError, match=r"b_i_l0 has shape \[5\]; this module's gates have 4 units"):
        lt.LSTM(3, 4).load_state_dict(lt.RNN("vanilla", 3, 5).state_dict())


@pytest.mark.parametrize("wrap", ["prune", "parametrize", "weight_norm", "spectral_norm", "forget_gate_init"])
def test_torchs_weight_wrappers_and_bias_edits_act_as_on_nn_lstm(wrap):
    """pruning, parametrizations, weight and spectral norm put something else in a weight's place (the module read
    its own dict of parameters: a KeyError, a review, 2026-12-08); the forget-gate init through .data writes torch's
    bias_ih, which the next call reads (the gates' sums are made again every call, not kept)."""
    from torch.nn.utils import parametrizations, parametrize, prune

    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out = []
    for m in (torch.nn, lt):
        torch.manual_seed(3)
        rnn = m.LSTM(3, 4).double()
        rnn(x)  # (a call before the edit)
        if wrap == "prune":
            prune.l1_unstructured(rnn, "weight_hh_l0", 0.5)
        elif wrap == "parametrize":
            parametrize.register_parametrization(rnn, "weight_hh_l0", torch.nn.Tanh())
        elif wrap in ("weight_norm", "spectral_norm"):
            rnn = getattr(parametrizations, wrap)(rnn, "weight_hh_l0")
        else:
            for name, p in rnn.named_parameters():
                if "bias" in name:
                    p.data[4:8].fill_(1.0)
        if wrap in ("prune", "parametrize", "weight_norm"):  # (from and to torch.nn read what the wrapper computes,
            there = lt.to_torch(rnn) if m is lt else lt.from_torch(rnn)  # trained where its source is: helper-124)
            torch.testing.assert_close(there(x)[0], rnn(x)[0], rtol=1e-12, atol=1e-12)
            assert all(p.requires_grad for p in there.parameters())
        y = rnn(x)[0]
        y.sum().backward()
        out.append((y, [p.grad for p in rnn.parameters()]))
    if wrap == "spectral_norm":  # (its power iteration runs at each read of the weight: nn.LSTM reads it more often)
        torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=1e-6)
        assert all(bool(g.isfinite().all()) for g in out[1][1])
    else:
        torch.testing.assert_close(out[1], out[0], rtol=1e-10, atol=1e-12)


def test_two_forwards_before_one_backward_and_a_bias_changed_before_its_backward():
    """The gates' summed biases are written into one buffer every call: two forwards before one backward stay
    legal, and a bias changed in place between a forward and its backward is torch's in-place error, as in nn.LSTM."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4).double()
    ours = lt.from_torch(ref)
    x1, x2 = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    for m in (ref, ours):
        (m(x1)[0].sum() + (m(x2)[0] ** 2).sum()).backward()
    torch.testing.assert_close([p.grad for p in ours.parameters()], [p.grad for p in ref.parameters()])
    y = ours(x1)[0]
    with torch.no_grad():
        ours.bias_hh_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_from_torch_keeps_frozen_parameters_frozen_and_to_torch_says_what_it_drops():
    """requires_grad=False on a torch module's parameters was lost by from_torch (a review, 2026-12-06): a frozen
    layer trained again. to_torch of a module with DropConnect warns that nn.LSTM has none (its weights are carried
    over, its training regime is not)."""
    ref = torch.nn.LSTM(3, 4, 2)
    ref.weight_hh_l0.requires_grad_(False)
    ref.bias_ih_l1.requires_grad_(False)
    frozen = {n for n, p in lt.from_torch(ref).named_parameters() if not p.requires_grad}
    assert frozen == {"weight_hh_l0", "bias_ih_l1"}
    assert {n for n, p in lt.to_torch(lt.from_torch(ref)).named_parameters() if not p.requires_grad} == frozen
    spec_names = lt.RNN("vanilla", 3, 4).requires_grad_(False)  # (helper-123: to_torch had made them all trainable)
    assert not any(p.requires_grad for p in lt.to_torch(spec_names).parameters())
    with pytest.warns(UserWarning, match="has no DropConnect; the module's dropconnect=0.3 is not carried over"):
        lt.to_torch(lt.LSTM(3, 4, dropconnect=0.3))


def test_lstm_takes_only_a_spec_with_two_states_and_from_torch_only_lstm_or_gru():
    """LSTM(spec=...) returns (h_n, c_n): a spec with one state (gru) would hand layer 1's h out as c_n."""
    with pytest.raises(UsageError, match="two states .h, c.; 'gru' has h: use lstmdsl.torch.RNN"):
        lt.LSTM(4, 6, num_layers=2, spec="gru")
    assert lt.LSTM(4, 6, spec="peephole").spec.name == "peephole"
    with pytest.raises(UsageError, match="torch.nn.LSTM or torch.nn.GRU, got Linear"):
        lt.from_torch(torch.nn.Linear(4, 6))
    with pytest.raises(UsageError, match="to_torch takes an lstmdsl.torch module, got LSTM"):
        lt.to_torch(torch.nn.LSTM(4, 6))


def test_a_projection_to_as_many_units_or_more_is_refused_as_nn_lstm_refuses_it():
    for proj in (5, 6):
        with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
            torch.nn.LSTM(4, 5, proj_size=proj)
        with pytest.raises(UsageError, match="proj_size has to be smaller than hidden_size"):
            lt.LSTM(4, 5, proj_size=proj)
    assert lt.LSTM(4, 5, proj_size=4).proj_size == 4


@pytest.mark.parametrize("make,message", [
    (lambda: lt.LSTM(3, 4, forget_bias=float("inf")), "forget_bias must be a finite number, got inf"),
    (lambda: lt.LSTM(3, 4, forget_bias="a"), "forget_bias must be a finite number"),
    (lambda: lt.GRU(3, 4, forget_bias=1.0), "cell 'gru_torch' has none"),  # (once ignored silently)
    (lambda: lt.LSTM(3, 4, seed=1.5), "seed must be a non-negative integer, got 1.5"),
    (lambda: lt.LSTM(3, 4, seed=-1), "seed must be a non-negative integer, got -1"),
    (lambda: lt.LSTM(3, 4, dtype=torch.int32), "dtype must be torch.float32, float64, bfloat16 or float16"),
    (lambda: lt.LSTM(3, 4, dtype=torch.complex64), "dtype must be torch.float32, float64, bfloat16 or float16"),
    (lambda: lt.LSTM(3, 4, schedule=3), "schedule must be a Schedule or directive text, got int"),  # (AttributeError)
])
def test_the_modules_arguments_are_checked_as_compile_checks_them(make, message):
    """The module's constructor refuses what lstmdsl.compile refuses, saying which argument (numpy's or torch's
    own messages, or nothing at all, once)."""
    with pytest.raises(UsageError, match=message):
        make()


def test_a_hand_made_packed_sequence_or_a_state_of_the_wrong_kind_is_refused():
    rnn = lt.LSTM(3, 4)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    for bad in (torch.nn.utils.rnn.PackedSequence(torch.randn(7, 3), packed.batch_sizes),
                torch.nn.utils.rnn.PackedSequence(torch.randn(7, 3), torch.tensor([2, 2, 2]))):
        rnn(packed)  # (a cached packing of the same batch_sizes does not hide the mismatch)
        with pytest.raises(UsageError, match="batch_sizes .* do not describe its data \\(7 rows\\)"):
            rnn(bad)
    with pytest.raises(UsageError, match="a tensor, a tuple of tensors \\(h, c\\) or a dict, got int"):
        rnn(torch.randn(5, 2, 3), 5)


def test_a_parameter_replaced_by_one_of_another_shape_is_refused_by_name():
    """A parameter put in place by hand with another shape (the kernels would read past its end; the reference
    failed in numpy's matmul): the module names it and its shape; the op itself checks every shape too."""
    m = lt.LSTM(4, 6, 2, bidirectional=True)
    m.weight_hh_l1_reverse = torch.nn.Parameter(torch.zeros(6, 24))
    with pytest.raises(UsageError, match=r"weight_hh_l1_reverse has shape \[6, 24\]; this module's "
                                         r"weight_hh_l1_reverse is \[24, 6\]"):
        m(torch.randn(3, 2, 4))
    m = lt.RNN("vanilla", 4, 6)  # (the spec's parameters: the op's own, one a slot)
    runner, _, names = m._groups[0]
    params = [p.detach() for p in m._tensors(names)]
    x = torch.randn(3, 2, 4)
    for bad, message in ((x[..., :3], r"the input has shape \[3, 2, 3\]; expected \[T, B, 4\]"),
                         (x, r"parameter weight_ih of layer 0 has shape \[24, 3\]; expected \[24, 4\]")):
        ps = [params[0][:, :3], *params[1:]] if bad is x else params
        with pytest.raises(UsageError, match=message):
            torch.ops.lstmdsl.rnn_forward(bad, [], ps, [], runner.handle, False)
    with pytest.raises(UsageError, match=r"the initial state h has shape \[1, 2, 5\]; expected \[1, 2, 6\]"):
        torch.ops.lstmdsl.rnn_forward(x, [torch.zeros(1, 2, 5), torch.zeros(1, 2, 6)], params, [], runner.handle,
                                      False)
    with pytest.raises(UsageError, match=r"the length mask has shape \[3, 1, 1\]; expected \[3, 2, 1\]"):
        torch.ops.lstmdsl.rnn_forward(x, [], params, [torch.ones(3, 1, 1)], runner.handle, False)
    y = torch.ops.lstmdsl.rnn_forward(x, [], params, [], runner.handle, True)[0]
    with pytest.raises(UsageError, match=r"the output's gradient has shape \[3, 2, 5\]; expected \[3, 2, 6\]"):
        torch.ops.lstmdsl.rnn_backward(x, [], params, [], y, torch.zeros(3, 2, 5), [torch.zeros(1, 2, 6)] * 2,
                                       runner.handle)
    with pytest.raises(UsageError, match=r"the final state c's gradient has shape \[2, 6\]; expected \[1, 2, 6\]"):
        torch.ops.lstmdsl.rnn_backward(x, [], params, [], y, torch.zeros(3, 2, 6),
                                       [torch.zeros(1, 2, 6), torch.zeros(2, 6)], runner.handle)
    z = lt.RNN("zoneout_lstm", 4, 6)
    zr, _, znames = z._groups[0]
    with pytest.raises(UsageError, match=r"the mask of .* in layer 0 has shape \[3, 2, 5\]; expected \[3, 2, 6\]"):
        torch.ops.lstmdsl.rnn_forward(x, [], [p.detach() for p in z._tensors(znames)],
                                      [torch.ones(3, 2, 5)] * len(zr.noise), zr.handle, False)


def test_reset_parameters_and_all_weights_as_nn_lstm_has_them():
    """reset_parameters draws again as the module was drawn (torch's generator: other values within
    +-1/sqrt(hidden_size); seed=: the same values; no bias: biases stay zero); all_weights lists each layer's and
    direction's parameters in nn.LSTM's order of layers and directions."""
    torch.manual_seed(0)
    m = lt.LSTM(4, 5, 2, bidirectional=True)
    before = [p.clone() for p in m.parameters()]
    m.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert max(float(p.detach().abs().max()) for p in m.parameters()) <= 1 / 5 ** 0.5
    seeded = lt.LSTM(4, 5, seed=3, forget_bias=1.0)
    before = [p.clone() for p in seeded.parameters()]
    seeded.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(before, seeded.parameters()))
    assert torch.all(seeded.bias_ih_l0[5:10] == 1.0) and not seeded.bias_hh_l0[5:10].any()
    nobias = lt.LSTM(4, 5, bias=False)
    nobias.reset_parameters()
    assert all(not b.any() for b in nobias.buffers())
    t = torch.nn.LSTM(4, 5, 2, bidirectional=True)
    shapes = lambda module: [[tuple(p.shape) for p in g][:2] for g in module.all_weights]  # noqa: E731
    assert shapes(m) == shapes(t)
    assert m.all_weights[1][0] is m.weight_ih_l0_reverse and m.all_weights[2][1] is m.weight_hh_l1
    assert [len(g) for g in nobias.all_weights] == [len(g) for g in torch.nn.LSTM(4, 5, bias=False).all_weights]


@pytest.mark.parametrize("batch_first", [False, True])
def test_an_empty_batch_gives_empty_outputs_as_nn_lstm_gives(batch_first):
    """B = 0 (a data loader's empty last batch, a DDP rank without data): outputs and final states of the shapes
    torch.nn.LSTM gives, in autograd's graph (the backward reaches the input and every parameter, with zeros)."""
    ref = torch.nn.LSTM(4, 5, 2, bidirectional=True, batch_first=batch_first, proj_size=3)
    ours = lt.LSTM(4, 5, 2, bidirectional=True, batch_first=batch_first, proj_size=3)
    for m in (ref, ours):
        x = torch.zeros((0, 6, 4) if batch_first else (6, 0, 4), requires_grad=True)
        y, (h, c) = m(x)
        (y.sum() + h.sum() + c.sum()).backward()
        assert x.grad is not None and all(p.grad is not None and not p.grad.any() for p in m.parameters())
        if m is ref:
            want = [tuple(t.shape) for t in (y, h, c)]
    assert [tuple(t.shape) for t in (y, h, c)] == want
    with pytest.raises(UsageError, match="at least one step"):  # (no step: torch.nn.LSTM refuses it too)
        ours(torch.zeros((2, 0, 4) if batch_first else (0, 2, 4)))


def test_dropout_on_one_layer_warns_as_nn_lstm_warns():
    """(dropout acts between layers: on one layer it does nothing, and nn.LSTM says so.)"""
    for cls in (torch.nn.LSTM, lt.LSTM):
        with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1, but got "
                                             "dropout=0.5 and num_layers=1"):
            cls(4, 5, dropout=0.5)


def test_the_module_equals_the_layer_api_with_the_same_seed():
    rnn = lt.RNN("peephole", 3, 4, 2, seed=7, dtype=torch.float64)
    layer = lstmdsl.compile("peephole", 3, 4, 2, seed=7, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _ = rnn(torch.from_numpy(x))
    y_api, _ = layer.forward(x)
    np.testing.assert_allclose(y.detach().numpy(), y_api, rtol=1e-12, atol=1e-12)
    names = dict(rnn.named_parameters())
    assert names["weight_ih_l1"].shape == (16, 4) and names["p_i_l0"].shape == (4,)
    np.testing.assert_array_equal(names["weight_hh_l0"].detach().numpy()[4:8], layer.parameters()["l0.R_f"])


def test_custom_ops_pass_opcheck():
    rnn = lt.RNN("vanilla", 3, 4, 2, dtype=torch.float64)  # (the spec's parameters: the op's own, one a slot)
    runner, _, names = rnn._groups[0]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = [torch.randn(2, 2, 4, dtype=torch.float64) for _ in range(2)]
    params = [getattr(rnn, n) for n in names]
    torch.library.opcheck(torch.ops.lstmdsl.rnn_forward, (x, h0, params, [], runner.handle, True))
    mask = (torch.arange(3)[:, None] < torch.tensor([3, 1])[None]).double()[:, :, None]
    torch.library.opcheck(torch.ops.lstmdsl.rnn_forward, (x, h0, params, [mask], runner.handle, True))


def test_torch_compile_sees_one_opaque_op_and_agrees_with_eager():
    torch._dynamo.reset()
    rnn = lt.LSTM(3, 4, 2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    explained = torch._dynamo.explain(rnn)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(rnn, backend="aot_eager", fullgraph=True)
    (_, eager), (_, comp) = run_both(rnn, compiled, x)
    assert_close(comp, eager, 1e-12)


def test_lengths_under_torch_compile_take_one_graph_for_every_lengths():
    """lengths= as a CPU tensor under torch.compile(fullgraph=True): one graph (no break: the range is checked
    where the graph runs) whatever the lengths, so new lengths never compile again; the results are eager's, and a
    length past T is an error there too."""
    torch._dynamo.reset()
    rnn = lt.LSTM(3, 4, 2, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    eager = [rnn(x, lengths=torch.tensor(n))[0] for n in ([5, 2, 3], [4, 4, 1], [1, 5, 5])]
    graphs = []
    compiled = torch.compile(rnn, backend=lambda gm, example: graphs.append(gm) or gm.forward, fullgraph=True)
    for n, want in zip(([5, 2, 3], [4, 4, 1], [1, 5, 5]), eager):
        y, _ = compiled(x, lengths=torch.tensor(n))
        assert torch.equal(y, want)
    assert len(graphs) == 1
    with pytest.raises(RuntimeError, match="lengths must be in 1..5"):
        compiled(x, lengths=torch.tensor([6, 1, 1]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not has_gpu(), reason="needs an NVIDIA GPU with CuPy")])])
def test_torch_export_runs_where_a_module_of_its_kind_lives_and_refuses_clearly_elsewhere(tmp_path, device):
    """torch.export takes a module (one custom op per call) and its program agrees with the module. The op names its
    layer by a handle that the k-th layer of a spec, sizes and schedule gets in every process: loaded in another
    process (torch.export.save, then load) the program runs once a module of its kind is made there (its weights are
    the program's own) and refuses with a UsageError before, or beside a layer of another kind, never running that
    one under its handle (as handles counted from 1 did); in its own process, once its module is gone, it refuses."""
    import gc

    rnn = lt.LSTM(13, 17, dtype=torch.float64, device=device)
    x = torch.randn(5, 2, 13, dtype=torch.float64, device=device)
    program = torch.export.export(rnn, (x,))
    y, made = rnn(x)[0], rnn._groups[0][0].index  # (how many layers of its kind this process made before it)
    assert_close(program.module()(x)[0], y, 0 if device == "cpu" else 1e-12)
    torch.export.save(program, tmp_path / "lstm.pt2")
    torch.save((x, y.detach()), tmp_path / "xy.pt")
    code = ("import sys, torch, lstmdsl, lstmdsl.torch as lt\n"
            "program = torch.export.load(sys.argv[1])\n"
            "x, y = torch.load(sys.argv[2])\n"
            "def run(what):\n"
            "    try:\n"
            "        print(what, float((program.module()(x)[0] - y).abs().max()))\n"
            "    except lstmdsl.UsageError as e:\n"
            "        print(what, 'refused:', e)\n"
            "before = [lt.LSTM(13, 17, dtype=torch.float64) for _ in range(int(sys.argv[3]))]  # (indices below its)\n"
            "run('alone')\n"
            "other = lt.LSTM(13, 16, dtype=torch.float64)\n"
            "run('beside another kind')\n"
            "same = lt.LSTM(13, 17, dtype=torch.float64)\n"
            "run('beside its kind')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # (lark's place kept)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "lstm.pt2"), str(tmp_path / "xy.pt"), str(made)],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and "Traceback" not in r.stderr, r.stdout + r.stderr[-3000:]
    assert lines[0].startswith("alone refused: no lstmdsl layer with handle"), lines
    assert lines[1].startswith("beside another kind refused: no lstmdsl layer with handle"), lines
    assert lines[2].startswith("beside its kind ") and "refused" not in lines[2], lines
    assert float(lines[2].split()[-1]) <= 1e-12, lines
    del rnn, y  # (y's autograd context keeps the layer's runner for its backward)
    gc.collect()
    with pytest.raises(UsageError, match="no lstmdsl layer with handle .* in this process"):
        program.module()(x)


def test_a_module_dropped_after_its_forward_still_runs_its_backward():
    x = torch.randn(5, 2, 3, requires_grad=True)
    y = lt.LSTM(3, 4)(x)[0]  # (the module is gone once the call returns; its autograd context keeps its runner)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_layers_made_on_several_threads_at_once_get_handles_of_their_own():
    import threading

    made, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        made.append(lt.LSTM(11, 19))
    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handles = {m._groups[0][0].handle for m in made}
    assert len(handles) == 8
    x = torch.randn(3, 2, 11)
    for m in made:  # (each runs its own layer, with its own weights: as torch.nn.LSTM with them does)
        torch.testing.assert_close(m(x)[0], lt.to_torch(m)(x)[0], rtol=1e-5, atol=1e-6)


def test_torchscript_is_refused_with_a_clear_error():
    with pytest.raises(UsageError, match="torch.jit.trace cannot trace lstmdsl's modules"):
        torch.jit.trace(lt.LSTM(3, 4), torch.randn(5, 2, 3))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), lt.LSTM(3, 4))  # (inside a model too)
    with pytest.raises(UsageError, match="torch.jit.script cannot compile lstmdsl's modules"):
        torch.jit.script(model)


def test_a_first_call_under_torch_compile_fullgraph_on_the_cpu(monkeypatch):
    """The CPU warning (issued once, at the first eager call) is not issued while torch compiles: dynamo cannot
    trace warnings.warn, and fullgraph=True then refused a module whose first call was compiled."""
    import lstmdsl.torch.modules as modules

    torch._dynamo.reset()
    monkeypatch.setattr(modules, "_WARNED_CPU", [])
    rnn = lt.LSTM(3, 4, dtype=torch.float64)
    y, _ = torch.compile(rnn, backend="aot_eager", fullgraph=True)(torch.randn(5, 2, 3, dtype=torch.float64))
    assert y.shape == (5, 2, 4)
    with pytest.warns(UserWarning, match="CPU tensors run on the numpy reference"):
        rnn(torch.randn(5, 2, 3, dtype=torch.float64))


def test_autocast_returns_what_torch_lstm_returns_on_the_cpu():
    ref = torch.nn.LSTM(3, 4)
    ours = lt.from_torch(ref)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, _) = ours(torch.nn.Linear(3, 3)(x))  # a bfloat16 input, as after any autocast layer
        assert (y.dtype, h.dtype) == (torch.bfloat16, torch.bfloat16)
        try:
            y_ref, (h_ref, _) = ref(x)
        except RuntimeError as e:  # (torch's own: oneDNN has no bf16 LSTM on some CPUs, as on 2026-12-04's)
            pytest.skip(f"ours returned bfloat16; torch's own bf16 LSTM does not run on this CPU: {str(e)[:60]}")
    assert (y.dtype, h.dtype) == (y_ref.dtype, h_ref.dtype)


def test_the_runners_of_a_bidirectional_layer_say_so_through_copies_and_pickles():
    """Runner.beside (the directions of a bidirectional layer, whose engines take the rules of grids side by side,
    not a layer of one direction's: plan.Persistent.beside_work, alone_work): set for both directions, not for a stack of one direction with dropout between
    its layers (its layers also run one call each); kept by copy.deepcopy and by pickling, and set again on a
    module pickled before runners kept it."""
    import io
    import pickle

    from lstmdsl.torch import handles

    for module, want in ((lt.LSTM(3, 4, 2, bidirectional=True), True), (lt.LSTM(3, 4, 2, dropout=0.5), False),
                         (lt.GRU(3, 4), False)):
        for copied in (module, copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert [r.beside for r, _, _ in copied._groups] == [want] * len(module._groups), (module, want)
            # (a second handle for the calls whose other direction does not run beside: engines of their own)
            assert all((r.serial_handle != r.handle) == want and handles.runner(r.serial_handle) is r
                       for r, _, _ in copied._groups)
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        assert all(r.beside == want for r, _, _ in torch.load(buffer, weights_only=False)._groups)
    old = lt.LSTM(3, 4, bidirectional=True)
    for runner, _, _ in old._groups:
        runner.beside, runner.serial_handle = False, runner.handle  # (as a runner from before `beside` unpickles)
    state = old.__dict__.copy()
    fresh = lt.LSTM.__new__(lt.LSTM)
    fresh.__setstate__(state)
    assert all(r.beside and r.serial_handle != r.handle for r, _, _ in fresh._groups)


def test_copies_state_dicts_and_dtypes():
    rnn = lt.GRU(3, 4, dtype=torch.float64)
    clone = copy.deepcopy(rnn)
    assert clone._groups[0][0].handle != rnn._groups[0][0].handle
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(clone(x)[0], rnn(x)[0])
    other = lt.GRU(3, 4, dtype=torch.float64)
    other.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(other(x)[0], rnn(x)[0])
    assert set(rnn.state_dict()) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    assert rnn.float()(x.float())[0].dtype == torch.float32
    assert rnn.half()(x.half())[0].dtype == torch.float16  # (half parameters: the next test)
    with pytest.raises(UsageError, match="input has dtype torch.float32 but the parameters are torch.float16"):
        rnn(x.float())


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_parameters_follow_float32_on_the_rounded_values_on_the_cpu(half):
    """A module in half precision (.to(half), or dtype= at construction) takes and returns tensors of that type,
    its gradients too, as torch.nn.LSTM does; on the CPU the reference computes in float32, so outputs and
    gradients are the float32 module's on the rounded parameters and inputs, rounded."""
    torch.manual_seed(0)
    ref = lt.LSTM(5, 7, 2)
    ours = copy.deepcopy(ref).to(half)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), ours.parameters()):
            p.copy_(q.float())
    x, h0, c0 = (torch.randn(6, 3, 5).to(half), torch.randn(2, 3, 7).to(half), torch.randn(2, 3, 7).to(half))
    xr = x.float().requires_grad_()
    y_r, (h_r, c_r) = ref(xr, (h0.float(), c0.float()))
    xh = x.clone().requires_grad_()
    y, (h, c) = ours(xh, (h0, c0))
    assert {t.dtype for t in (y, h, c)} == {half}
    eps = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}[half]  # (one rounding of each output)
    assert_close([y, h, c], [y_r, h_r, c_r], 2 * eps)
    (y_r.square().sum() + h_r.sum() + c_r.sum()).backward()
    (y.float().square().sum() + h.float().sum() + c.float().sum()).backward()
    assert {p.grad.dtype for p in ours.parameters()} == {half} and xh.grad.dtype == half
    assert_close([xh.grad, *[p.grad for p in ours.parameters()]], [xr.grad, *[p.grad for p in ref.parameters()]],
                 2 * eps)
    made = lt.GRU(4, 6, bias=False, dtype=half)
    assert {p.dtype for p in made.parameters()} == {half}
    assert made(torch.randn(3, 2, 4, dtype=half))[0].dtype == half
    theirs = torch.nn.GRU(5, 7, 2).to(half)  # from_torch and to_torch keep the type, and the function
    converted = lt.from_torch(theirs)
    assert {p.dtype for p in converted.parameters()} == {p.dtype for p in lt.to_torch(converted).parameters()} == {half}
    assert_close([converted(x)[0]], [lt.from_torch(copy.deepcopy(theirs).float())(x.float())[0]], 2 * eps)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                        str(ROOT / "tests" / "ddp_check.py"), "--backend", "gloo", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "DDP OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


# ------------------------------------------------------------------------------------------- on the GPU

gpu = pytest.mark.skipif(not has_gpu(), reason="needs an NVIDIA GPU with CuPy")


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@gpu
@pytest.mark.gpu
def test_compile_then_eager_no_longer_corrupts_memory():
    """The sequence of the bug report: a compiled training step, then an eager one, on one module."""
    torch._dynamo.reset()
    m = lt.RNN("vanilla", 64, 128, 2).cuda()
    x = torch.randn(50, 8, 64, device="cuda", requires_grad=True)
    cm = torch.compile(m)
    y, _ = cm(x)
    y.sum().backward()
    compiled = x.grad.clone()
    x.grad = None
    y, _ = m(x)
    y.sum().backward()
    torch.cuda.synchronize()
    torch.testing.assert_close(x.grad, compiled, rtol=1e-5, atol=1e-6)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dropconnect,compiled", [(0.0, False), (0.3, False), (0.0, True)])
def test_heads_stored_head_by_head_match_the_cpu_module(dropconnect, compiled, strict_fp32):
    """The sLSTM with heads: its stacks are stored head by head for the GEMMs (a permuted copy, the
    gradients permuted back), so the CUDA module's outputs and every gradient match those of the same
    module whose GEMMs keep one matrix per batch (`no fuse gates`) and, without DropConnect (whose masks
    come from the device's generator), the CPU module's (the reference); bidirectional, two layers; under
    torch.compile too."""
    torch.manual_seed(0)
    kw = dict(num_heads=4, bidirectional=True, dropconnect=dropconnect)
    cpu = lt.RNN("slstm", 12, 20, 2, **kw)
    models = [lt.RNN("slstm", 12, 20, 2, **kw).cuda(), lt.RNN("slstm", 12, 20, 2, schedule="no fuse gates", **kw).cuda()]
    models += [cpu] if dropconnect == 0 else []
    for m in models:
        m.load_state_dict(cpu.state_dict())
    x = torch.randn(7, 3, 12)
    out = []
    if compiled:
        torch._dynamo.reset()
    for m in models:
        xs = x.to(next(m.parameters()).device).requires_grad_()
        torch.manual_seed(1)  # the same DropConnect masks on the GPU
        y, _ = (torch.compile(m) if compiled and xs.is_cuda else m)(xs)
        (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
        out.append([y.detach().cpu(), xs.grad.cpu()] + [p.grad.cpu() for p in m.parameters()])
    for other in out[1:]:
        for a, b in zip(out[0], other):
            torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


def test_create_graph_gives_first_order_gradients_and_a_double_backward_says_there_is_none():
    """create_graph=True (as a gradient penalty takes) gives the same first-order gradients; differentiating them
    again raises lstmdsl's error naming the double backward, not torch's "does not require grad"."""
    torch.manual_seed(0)
    m = lt.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    wrt = [x] + list(m.parameters())
    plain = torch.autograd.grad(m(x)[0].sum(), wrt)
    graphed = torch.autograd.grad(m(x)[0].sum(), wrt, create_graph=True)
    for a, b in zip(plain, graphed):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for g in (graphed[0], graphed[-1]):  # through the input's gradient, and a parameter's
        with pytest.raises(lstmdsl.UsageError, match="no second derivative: a double backward"):
            (g ** 2).sum().backward(retain_graph=True)
    # and through torch.autograd.grad, which runs only the nodes on a path to what it differentiates by: the
    # gradients' node is linked to the layer's inputs, not left to drop the second-order part silently
    y = m(x)[0]
    first = torch.autograd.grad((y ** 2).sum(), wrt, create_graph=True)
    penalty = sum((g ** 2).sum() for g in first[1:])
    for target, by in [(penalty + y.sum(), wrt[1:]), (penalty, wrt[1:2]), ((first[0] ** 2).sum(), [x])]:
        with pytest.raises(lstmdsl.UsageError, match="no second derivative: a double backward"):
            torch.autograd.grad(target, by, retain_graph=True, allow_unused=True)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_second_backward_of_one_forward_gets_the_same_gradients(precision, strict_fp32):
    """The backward writes the gates' gradients over the gates it reads (Storage.in_place), so a second
    backward of the same forward (retain_graph) must run that forward again, not read gradients as gates;
    and a forward of another call in between must not change either backward."""
    torch.manual_seed(0)
    m = lt.RNN("vanilla", 24, 40, 2, schedule=f"precision {precision}").cuda()
    x = torch.randn(9, 5, 24, device="cuda", requires_grad=True)
    y, _ = m(x)
    loss = (y.float() * torch.randn_like(y.float())).sum()
    wrt = [x] + list(m.parameters())
    first = torch.autograd.grad(loss, wrt, retain_graph=True)
    second = torch.autograd.grad(loss, wrt, retain_graph=True)
    m(torch.randn_like(x))  # another forward between two backwards
    third = torch.autograd.grad(loss, wrt)
    for a, b, c in zip(first, second, third):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-6, atol=1e-7)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("batch", [4, 40])  # 4: the persistent kernel per layer; 40: the layers as a wavefront
def test_compiled_training_agrees_with_eager_on_the_gpu(mode, batch, strict_fp32):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = lt.LSTM(16, 32, 2).cuda()
    x = torch.randn(20, batch, 16, device="cuda")
    (_, eager), _ = run_both(m, m, x)
    compiled = torch.compile(m, mode=mode)
    for _ in range(3):  # reduce-overhead warms up, records, then replays torch's CUDA graph
        (_, comp), _ = run_both(compiled, m, x)
    assert_close(comp, eager, 1e-5)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["lstm", "lstmp", "lstm-bidirectional", "gru"])
def test_from_torch_matches_torch_on_the_gpu(name, strict_fp32):
    torch.manual_seed(0)
    ref = CASES[name]().cuda()
    ours = lt.from_torch(ref)
    x = torch.randn(7, 3, 5, device="cuda")
    (a_out, a_grads), (b_out, b_grads) = run_both(ref, ours, x)
    assert_close(b_out, a_out, 1e-4)
    assert_close(b_grads, a_grads, 1e-4)


@gpu
@pytest.mark.gpu
def test_a_loss_through_one_output_gets_torchs_gradients_on_the_gpu(strict_fp32):
    one_output_gradients("cuda", 1e-4)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["lstm", "lstm-bidirectional", "lstmp-bidirectional", "gru-bidirectional"])
def test_packed_sequences_match_torch_on_the_gpu(name, strict_fp32):
    """lstm: one direction's 2-layer stack runs as one op (each layer's y, held past each end, the next
    layer's x in place); the bidirectional stacks run layer by layer."""
    torch.manual_seed(2)
    ref = PACKED[name]().cuda()
    ours = lt.from_torch(ref)
    lengths = [3, 7, 1, 5, 7]
    x = torch.randn(7, len(lengths), 5, device="cuda")
    D = 2 if ref.bidirectional else 1
    hx = tuple(0.3 * torch.randn(D * ref.num_layers, len(lengths), n, device="cuda")
               for n in ((ref.proj_size or ref.hidden_size, ref.hidden_size) if isinstance(ref, torch.nn.LSTM)
                         else (ref.hidden_size,)))
    (_, a_out), a_grads = run_packed(ref, x, lengths, hx, False)
    (_, b_out), b_grads = run_packed(ours, x, lengths, hx, False)
    assert_close(b_out, a_out, 1e-4)
    assert_close(b_grads, a_grads, 1e-4)


def _forward_runs(module) -> list:
    """The persistent forward launches the module's engines chose in their workspaces (None: the stepwise loop)."""
    return [ws.persistent.get("forward") for runner, _, _ in module._groups for e in runner._engines.values()
            for wss in e.workspaces.values() for ws in wss]


@gpu
@pytest.mark.gpu
def test_a_bidirectional_layers_directions_take_the_grid_rule_of_grids_side_by_side():
    """Past B = 16 `persistent auto` runs a layer of one direction as a persistent grid to 2^26 multiply-adds a step
    (Persistent.alone_work), the directions of a bidirectional layer each on half the multiprocessors to 2^25
    (Persistent.beside_work: B = 32, H = 256), and stepwise past it (B = 64, H = 512)."""
    from lstmdsl.runtime import device

    count = device.on_chip()[0]
    for B, H, side_by_side in ((32, 256, True), (64, 512, False)):
        x = torch.randn(3, B, 8, device="cuda")
        for bidirectional in (False, True):
            module = lt.LSTM(8, H, bidirectional=bidirectional).cuda()
            with torch.no_grad():
                module(x)
            runs = _forward_runs(module)
            assert len(runs) == 1 + bidirectional, runs
            if not bidirectional:
                assert all(r is not None and r.blocks > 1 for r in runs), (B, H, runs)
            elif side_by_side:
                assert all(r is not None and 1 < r.blocks <= count // 2 for r in runs), (B, H, runs)
            else:
                assert all(r is None for r in runs), (B, H, runs)


@gpu
@pytest.mark.gpu
def test_the_directions_grids_share_the_multiprocessors_and_match_torch(strict_fp32):
    """At B = 16, H = 256 each direction's persistent grid takes half the multiprocessors (Persistent.beside_grids),
    so the two run at once; a layer of one direction takes them all, and so do the directions run one after the
    other (engines of their own: Runner.serial_handle). All against nn.LSTM, padded and packed."""
    from lstmdsl.runtime import device

    torch.manual_seed(5)
    x = torch.randn(7, 16, 8, device="cuda")
    lengths = torch.tensor([7, 1, 3, 7, 2, 5, 6, 4, 7, 1, 2, 3, 4, 5, 6, 7])
    count = device.on_chip()[0]
    for bidirectional in (True, False):
        layers = 2 if bidirectional else 1  # (a stack of one direction runs the wavefront of stepwise layers)
        ref = torch.nn.LSTM(8, 256, layers, bidirectional=bidirectional).cuda()
        ours = lt.from_torch(ref)
        (a_out, a_grads), (b_out, b_grads) = run_both(ref, ours, x)
        assert_close(b_out, a_out, 1e-4)
        assert_close(b_grads, a_grads, 1e-4)
        hx = tuple(0.3 * torch.randn((1 + bidirectional) * layers, 16, 256, device="cuda") for _ in range(2))
        (_, a_out), a_grads = run_packed(ref, x, lengths, hx, False)
        (_, b_out), b_grads = run_packed(ours, x, lengths, hx, False)
        assert_close(b_out, a_out, 1e-4)
        assert_close(b_grads, a_grads, 1e-4)
        runs = _forward_runs(ours)
        want = count // 2 if bidirectional else count
        assert runs and all(r is not None and r.blocks == want for r in runs), (runs, want)
    # the directions one after the other (overlap_directions off, as under torch.compile): engines of their own,
    # full grids
    ref = torch.nn.LSTM(8, 256, 2, bidirectional=True).cuda()
    ours = lt.from_torch(ref)
    ours.overlap_directions = False
    (a_out, a_grads), (b_out, b_grads) = run_both(ref, ours, x)
    assert_close(b_out, a_out, 1e-4)
    assert_close(b_grads, a_grads, 1e-4)
    runs = _forward_runs(ours)
    assert runs and all(r is not None and r.blocks == count for r in runs), runs


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_the_directions_half_precision_grids_share_the_multiprocessors(half, strict_fp32):
    """Under autocast too each direction's persistent grid takes half the multiprocessors at B = 16, H = 256
    (their tensor-core kernels), and outputs and gradients follow the same module in float32."""
    from lstmdsl.runtime import device

    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}[half]
    torch.manual_seed(7)
    ref = lt.LSTM(8, 256, 2, bidirectional=True).cuda()
    ours = copy.deepcopy(ref)
    x = torch.randn(7, 16, 8, device="cuda")
    out_ref = ref(x)[0]
    out_ref.square().sum().backward()
    with torch.autocast("cuda", dtype=half):
        out = ours(x)[0]
    out.float().square().sum().backward()
    assert_close([out], [out_ref], tol)
    assert_close([p.grad for p in ours.parameters()], [p.grad for p in ref.parameters()], tol)
    runs = _forward_runs(ours)
    assert runs and all(r is not None and r.blocks == device.on_chip()[0] // 2 for r in runs), runs


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("overlap", [True, False])
def test_a_bidirectional_module_captured_in_a_cuda_graph_replays_its_warm_up_engines(overlap, strict_fp32):
    """Inside a capture the directions run one after the other, but on the engines the warm-up calls made (their
    workspaces already there: a capture allocates none): beside ones after overlapped warm-ups, serial ones after
    warm-ups with overlap_directions off."""
    torch.manual_seed(6)
    m = lt.LSTM(8, 64, 2, bidirectional=True).cuda()
    m.overlap_directions = overlap
    x = torch.randn(5, 4, 8, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # (torch's way: warm up on a side stream)
            want = m(x)[0].clone()
            m(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = m(x)[0]
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    assert all(key[-1] == overlap for r, _, _ in m._groups for key in r._engines)  # (no other engine made)


@gpu
@pytest.mark.gpu
def test_lengths_captured_in_a_cuda_graph_replay_the_captured_lengths_after_the_pinned_memory_is_reused(strict_fp32):
    """A call with lengths= inside a user's torch.cuda.graph copies the mask from pinned host memory at each replay:
    the replays after many other lengths= calls (each pins a block of the captured one's size and writes other
    lengths into it) still give the captured lengths' results, so that memory is not given to another tensor."""
    from lstmdsl.torch.packing import length_mask

    torch.manual_seed(7)
    m = lt.LSTM(8, 32, 2, bidirectional=True).cuda()
    x = torch.randn(6, 5, 8, device="cuda")
    lengths = [6, 2, 5, 1, 3]
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # (torch's way: warm up on a side stream)
            want = m(x, lengths=lengths)[0].clone()
            m(x, lengths=lengths)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = m(x, lengths=lengths)[0]
        for k in range(50):  # (pinned buffers of the captured one's size, other values in them)
            length_mask([1 + (k + b) % 6 for b in range(5)], 6, 5, x.device, torch.float32)
        torch.cuda.synchronize()
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    assert all(not y[n:, b].any() for b, n in enumerate(lengths))


@gpu
@pytest.mark.gpu
def test_bidirectional_on_a_users_stream_matches_torch_with_and_without_overlap(strict_fp32):
    torch.manual_seed(4)
    ref = torch.nn.LSTM(5, 33, 2, bidirectional=True).cuda()
    x = torch.randn(9, 3, 5, device="cuda")
    (a_out, a_grads), _ = run_both(ref, ref, x)
    stream = torch.cuda.Stream()  # non-blocking: the workspaces must be filled on the stream that uses them
    for overlap in (True, False):
        ours = lt.from_torch(ref)
        ours.overlap_directions = overlap
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            (b_out, b_grads), _ = run_both(ours, ours, x)
        torch.cuda.current_stream().wait_stream(stream)
        assert_close(b_out, a_out, 1e-4)
        assert_close(b_grads, a_grads, 1e-4)


@pytest.mark.parametrize("kind", [torch.nn.LSTM, torch.nn.GRU])
def test_a_layers_directions_issued_together_compute_what_they_compute_apart(kind, monkeypatch):
    """pair.py: a bidirectional layer's two directions in one autograd node (on CUDA, issued together on two
    streams) against the two run apart, on the CPU reference (where the node runs them one after the other):
    packed input, given initial states, dropout between layers, a loss that reaches only some final states, one
    that reaches the final states alone, the forward without gradients; outputs, final states and every
    gradient."""
    from lstmdsl.torch import pair

    torch.manual_seed(3)
    ref = kind(4, 6, 3, bidirectional=True, dropout=0.3, dtype=torch.float64)
    x0 = torch.randn(5, 3, 4, dtype=torch.float64)
    states = [torch.randn(6, 3, 6, dtype=torch.float64) for _ in range(2 if kind is torch.nn.LSTM else 1)]
    issued = []
    monkeypatch.setattr(pair, "_issue", lambda *a, f=pair._issue: issued.append(1) or f(*a))
    got = []
    for together in (False, True):
        m = lt.from_torch(ref)
        monkeypatch.setattr(m, "_overlap", lambda x, together=together: together)
        x = x0.clone().requires_grad_()
        hx = [h.clone().requires_grad_() for h in states]
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
        torch.manual_seed(7)  # (the same dropout masks)
        out, hn = m(packed, tuple(hx) if len(hx) > 1 else hx[0])
        hn = as_tuple(hn)
        loss = (out.data * torch.linspace(-1, 1, out.data.numel(), dtype=out.data.dtype).view_as(out.data)).sum() \
            + hn[0][1:4].sum()
        grads = torch.autograd.grad(loss, [x, *hx, *m.parameters()], retain_graph=True)
        # a loss on the final states alone: no gradient reaches the top layer's output (a None dy)
        grads += torch.autograd.grad(hn[0][-2:].pow(2).sum(), [x, *hx, *m.parameters()])
        m.eval()
        with torch.no_grad():
            plain = m(packed, tuple(hx) if len(hx) > 1 else hx[0])[0].data
        got.append([out.data, *hn, *grads, plain])
    assert len(issued) == 2 * 3  # the training forward's three layers and the evaluation's, together
    assert_close(got[1], got[0], 1e-12)


def test_the_directions_issued_together_say_there_is_no_second_derivative(monkeypatch):
    m = lt.LSTM(3, 4, 1, bidirectional=True, dtype=torch.float64)
    monkeypatch.setattr(m, "_overlap", lambda x: True)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(UsageError, match="no second derivative"):
        g.sum().backward()


@gpu
@pytest.mark.gpu
def test_dropconnect_on_the_gpu_replays_its_graphs_and_matches_the_reference():
    m = lt.LSTM(4, 16, 2, dropconnect=0.4, dtype=torch.float64).cuda()
    x = torch.randn(6, 3, 4, dtype=torch.float64, device="cuda")
    for seed in range(6):  # training steps, each with fresh masks
        m.zero_grad()
        torch.manual_seed(seed)
        y, _ = m(x)
        y.sum().backward()
    runner = m._groups[0][0]
    assert len(runner._bindings) <= 4  # two buffers per stack: two forward and two backward bindings
    runner, members, names = m._groups[0]
    torch.manual_seed(5)  # the masks the forward draws first: the masked stacks, in plain parameters
    masked = dict(zip(names, (t.detach().clone() for t in m._connect(runner, m._op_tensors(runner, members, names)))))
    plain = lt.LSTM(4, 16, 2, dtype=torch.float64).cuda()
    plain.load_state_dict({**m.state_dict(), **{n: t for n, t in masked.items() if n.startswith("weight_hh")}})
    torch.manual_seed(5)
    assert_close(m(x)[0], plain(x)[0], 1e-12)


@gpu
@pytest.mark.gpu
def test_regularisers_gradcheck_on_the_gpu_with_fixed_masks():
    from lstmdsl.torch.ops import forward

    m = lt.RNN("zoneout_lstm", 3, 4, 2, dtype=torch.float64).cuda()
    runner, _, names = m._groups[0]
    x = torch.randn(4, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    h0 = [torch.zeros(2, 2, 4, dtype=torch.float64, device="cuda") for _ in range(2)]
    noise = m._noise(runner, x)
    params = [p.detach().clone().requires_grad_() for p in m._tensors(names)]

    def f(x, *p):
        return forward(x, h0, list(p), runner.handle, True, noise)[0]
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)
    cpu = [t.detach().cpu() for t in (x, *params)]
    torch.testing.assert_close(f(x, *params).cpu(), forward(cpu[0], [h.cpu() for h in h0], cpu[1:], runner.handle,
                                                            False, [n.cpu() for n in noise])[0])


@gpu
@pytest.mark.gpu
def test_autocast_on_the_gpu_returns_torch_lstms_dtype():
    ref = torch.nn.LSTM(8, 16).cuda()
    ours = lt.from_torch(ref)
    x = torch.randn(5, 2, 8, device="cuda")
    for dt in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dt):
            xin = torch.nn.Linear(8, 8).cuda()(x)
            y_ref, (h_ref, _) = ref(xin)
            y, (h, _) = ours(xin)
        assert (y.dtype, h.dtype) == (y_ref.dtype, h_ref.dtype)
        assert float((y.float() - y_ref.float()).abs().max()) < 0.05


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["peephole", "gru", "lstmp"])
def test_gradcheck_float64_on_the_gpu(name):
    extra = {"proj_size": 2} if lstmdsl.parse(name).uses_size("proj") else {}
    rnn = lt.RNN(name, 3, 4, 2, seed=1, dtype=torch.float64, **extra).cuda()
    x = torch.randn(3, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    h0 = tuple((0.3 * torch.randn(2, 2, n, dtype=torch.float64, device="cuda")).requires_grad_()
               for n in rnn.state_sizes.values())

    def f(x, *rest):
        y, final = rnn(x, rest[:len(h0)])
        return (y, *as_tuple(final))
    assert torch.autograd.gradcheck(f, (x, *h0, *rnn.parameters()), eps=1e-6, atol=1e-7, rtol=1e-5)


@gpu
@pytest.mark.gpu
def test_trains_in_a_torch_loop_and_cpu_gradients_equal_gpu_ones():
    torch.manual_seed(0)
    rnn = lt.RNN("cifg", 5, 32).cuda()
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
    cpu = copy.deepcopy(rnn).cpu().double()
    (_, g_gpu), _ = run_both(rnn.double(), rnn, x.double())
    (_, g_cpu), _ = run_both(cpu, cpu, x.double().cpu())
    assert_close(g_gpu, [g.cuda() for g in g_cpu], 1e-10)


@gpu
@pytest.mark.gpu
def test_no_host_synchronisation_per_call():
    m = lt.LSTM(16, 32).cuda()
    x = torch.randn(10, 4, 16, device="cuda", requires_grad=True)
    y, _ = m(x)  # the first call allocates and captures
    y.sum().backward()
    bi = lt.LSTM(16, 32, 2, bidirectional=True).cuda()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([10, 3, 7, 1]), enforce_sorted=False)
    y, _ = bi(packed)
    y.data.sum().backward()
    packs = [torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(n), enforce_sorted=False)
             for n in ([10, 3, 7, 1], [2, 10, 10, 5])]  # packed before: torch's packing copies the order over
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            y, (h, c) = m(x)
            (y.sum() + c.sum()).backward()
        for packed in packs:  # a packed batch too, the second with new lengths
            y, (h, c) = bi(packed)
            (y.data.sum() + c.sum()).backward()
        for n in ([10, 3, 7, 1], [2, 10, 10, 5]):  # a padded batch with its lengths (lstmdsl's `lengths=`)
            y, (h, c) = bi(x, lengths=n)
            (y.sum() + c.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["lstm-bidirectional", "gru-bidirectional", "lstm-batch-first"])
def test_lengths_on_the_gpu_give_what_the_packed_batch_gives(name):
    """On CUDA (the generated kernels, each direction's persistent or stepwise loop as the plan chooses): a padded
    batch with lengths= gives the outputs, final states and gradients the same batch packed gives, at odd sizes."""
    torch.manual_seed(3)
    ours = lt.from_torch(PACKED[name]()).cuda()
    lengths = [9, 4, 7, 1, 9]
    B, T = len(lengths), 9
    x = torch.randn((B, T, 5) if ours.batch_first else (T, B, 5), device="cuda")
    D = 2 if ours.bidirectional else 1
    hx = tuple(0.3 * torch.randn(D * ours.num_layers, B, n, device="cuda") for n in ours.state_sizes.values())
    a_out, a_grads = run_padded(ours, x, lengths, hx, packed=True)
    b_out, b_grads = run_padded(ours, x, lengths, hx, packed=False)
    assert_close(b_out, a_out, 1e-5)
    assert_close(b_grads, a_grads, 1e-4)


@pytest.mark.skipif(not has_gpu() or torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.gpu
def test_ddp_on_two_gpus_matches_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                        str(ROOT / "tests" / "ddp_check.py"), "--backend", "nccl", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "DDP OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout.strip().splitlines()[-1])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_mixed_precision_under_autocast_follows_float32(half, strict_fp32):
    """Under torch.autocast the module computes in the autocast type (half GEMM operands and weights,
    float32 state and master weights): outputs, final states and every gradient within the precision's
    tolerance of the same module in float32, for a bidirectional stack on a packed batch with dropout
    masks drawn alike; an optimizer step reaches the half copies the GEMMs read."""
    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}[half]
    torch.manual_seed(0)
    ref = lt.LSTM(24, 40, 2, bidirectional=True).cuda()
    ours = copy.deepcopy(ref)
    lengths = torch.tensor([9, 4, 7, 1, 9])
    x = torch.randn(9, 5, 24, device="cuda")
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_ref, (h_ref, c_ref) = ref(packed)
    loss_ref = out_ref.data.square().sum() + h_ref.sum() + c_ref.square().sum()
    loss_ref.backward()
    with torch.autocast("cuda", dtype=half):
        out, (h, c) = ours(packed)
        loss = out.data.float().square().sum() + h.float().sum() + c.float().square().sum()
    loss.backward()
    assert_close([out.data, h, c], [out_ref.data, h_ref, c_ref], tol)
    assert_close([p.grad for p in ours.parameters()], [p.grad for p in ref.parameters()], tol)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in ours.parameters())
    for m in (ref, ours):
        torch.optim.SGD(m.parameters(), lr=0.5).step()
    with torch.no_grad(), torch.autocast("cuda", dtype=half):
        y = ours(x)[0]
    assert_close([y], [ref(x)[0]], tol)


def test_the_copies_the_gemms_read_stay_put_for_a_deep_half_stack():
    """What the GEMMs read in place of half parameters (float32 copies of the vectors: 14 a layer in layernorm)
    stays at the same addresses from call to call, however many there are (the CUDA graphs are replayed, not
    captured again); a half input beside float32 parameters is refused on the CPU by the backward op too."""
    from lstmdsl.program import build_program
    from lstmdsl.schedule import parse_schedule

    m = lt.RNN("layernorm", 6, 6, num_layers=6).to(torch.bfloat16)
    runner, _, names = m._groups[0]
    params = m._tensors(names)
    plan = build_program(runner.cell, parse_schedule("precision bf16", m.spec.schedule)).plan
    first = [t.data_ptr() for t in runner.gemm.read(params, plan)]
    assert len(first) > 64 and [t.data_ptr() for t in runner.gemm.read(params, plan)] == first
    x = torch.randn(3, 2, 6, dtype=torch.bfloat16)
    with pytest.raises(UsageError, match="runs on CUDA only"):
        torch.ops.lstmdsl.rnn_backward(x, [], [p.float() for p in params], [], x, x, [torch.zeros(6, 2, 6)] * 2,
                                       runner.handle)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_parameters_on_the_gpu_follow_float32_on_the_rounded_values(half, strict_fp32):
    """A module in half precision (.to(half)): the GEMMs read the half parameters themselves (no float32
    masters), the state is float32; outputs, final states and every gradient (of the parameters' type) within
    the precision's tolerance of the float32 module on the same (rounded) values, for a bidirectional LSTM stack
    on a packed batch and a GRU without biases at odd sizes; an optimizer step on the half parameters reaches
    the next call (its CUDA graphs read them in place, the vectors through float32 copies made at each call). The
    weight stacks' gradients are written in half by the weight-gradient GEMMs (Plan.grad_type)."""
    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}[half]
    torch.manual_seed(0)
    lengths = torch.tensor([9, 4, 7, 1, 9])
    for make, size in ((lambda: lt.LSTM(24, 40, 2, bidirectional=True), 24), (lambda: lt.GRU(17, 33, bias=False), 17)):
        ours = make().cuda().to(half)
        ref = make().cuda()
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(9, 5, size, device="cuda").to(half)
        outs = []
        for m, xs in ((ref, x.float()), (ours, x)):
            packed = torch.nn.utils.rnn.pack_padded_sequence(xs, lengths, enforce_sorted=False)
            out, h = m(packed)
            h = h if isinstance(h, tuple) else (h,)
            (out.data.float().square().sum() + sum(s.float().square().sum() for s in h)).backward()
            outs.append([out.data, *h])
        assert {t.dtype for t in outs[1]} == {half}
        assert all(p.grad.dtype == half for p in ours.parameters())
        # (the weight stacks' gradients written in half by the GEMMs themselves, the vectors' in float32)
        assert set(ours._groups[0][0].grads.flats) == {half, torch.float32}
        assert_close(outs[1], outs[0], tol)
        assert_close([p.grad for p in ours.parameters()], [p.grad for p in ref.parameters()], tol)
        torch.optim.SGD(ours.parameters(), lr=0.5).step()
        ref.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert_close([ours(x)[0]], [ref(x.float())[0]], tol)


@gpu
@pytest.mark.gpu
def test_mixed_precision_from_the_schedule_and_from_a_half_input(strict_fp32):
    """precision bf16 in the schedule: float32 in and out, bf16 inside; a bfloat16 input without autocast
    runs in bf16 and returns bfloat16; both follow the float32 module."""
    torch.manual_seed(1)
    ref = lt.GRU(16, 33).cuda()
    ours = lt.GRU(16, 33, schedule="precision bf16").cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 16, device="cuda", requires_grad=True)
    y_ref = ref(x)[0]
    y = ours(x)[0]
    assert y.dtype == torch.float32
    assert_close([y], [y_ref], 5e-2)
    assert float((y - y_ref).norm() / y_ref.norm()) > 1e-5  # it did round
    gx_ref, = torch.autograd.grad(y_ref.sum(), x)
    gx, = torch.autograd.grad(y.sum(), x)
    assert_close([gx], [gx_ref], 5e-2)
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    yb = ref(xb)[0]
    assert yb.dtype == torch.bfloat16
    assert_close([yb], [y_ref], 5e-2)
    gb, = torch.autograd.grad(yb.float().sum(), xb)
    assert gb.dtype == torch.bfloat16
    assert_close([gb], [gx_ref], 5e-2)


def test_half_precision_input_on_the_cpu_says_what_to_do():
    """Mixed precision runs on CUDA; on the CPU (the numpy reference) a bfloat16 input is refused with a
    clear error, and under CPU autocast the module computes in float32 and returns the autocast type."""
    rnn = lt.LSTM(3, 4)
    with pytest.raises(UsageError, match="runs on CUDA only"):
        rnn(torch.randn(5, 2, 3, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = rnn(torch.randn(5, 2, 3))
    assert y.dtype == torch.bfloat16


def test_the_benchmarks_bf16_cudnn_flattening_falls_back_without_cudnn():
    """lstmdsl.bench.flatten_bf16 on a CPU module (no cuDNN): False, and the module runs as before."""
    from lstmdsl.bench import flatten_bf16

    m = torch.nn.LSTM(8, 8, 2).to(torch.bfloat16)
    x = torch.randn(3, 2, 8, dtype=torch.bfloat16)
    before = m(x)[0]
    assert flatten_bf16(m) is False
    assert torch.equal(m(x)[0], before)


@gpu
@pytest.mark.gpu
def test_the_benchmarks_bf16_cudnn_keeps_its_weights_in_one_buffer():
    """The benchmarks' cuDNN competitor in bf16 (lstmdsl.bench.flatten_bf16): PyTorch leaves a bf16 nn.LSTM's
    weights apart (cuDNN copies them at every call); flattened by hand they are views of one buffer, and the
    outputs and gradients agree."""
    from lstmdsl.bench import flatten_bf16

    torch.manual_seed(0)
    m = torch.nn.LSTM(24, 40, 2).cuda().to(torch.bfloat16)
    x = torch.randn(5, 3, 24, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y0 = m(x)[0]
    y0.float().sum().backward()
    g0 = [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]
    assert len({w.untyped_storage().data_ptr() for w in m._flat_weights}) == len(m._flat_weights)
    m.zero_grad()
    x.grad = None
    assert flatten_bf16(m)
    assert len({w.untyped_storage().data_ptr() for w in m._flat_weights}) == 1
    y1 = m(x)[0]
    y1.float().sum().backward()
    assert torch.allclose(y0.float(), y1.float(), atol=1e-2, rtol=1e-2)  # (the same kernels; bf16's tolerance)
    for a, b in zip(g0, [p.grad for p in m.parameters()] + [x.grad]):
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype,grad_type", [(torch.bfloat16, "bf16"), (torch.float16, ""), (torch.float32, ""),
                                             (torch.float64, "")])
def test_the_gradient_buffers_hold_each_parameter_aligned_and_copy_out_in_its_type(monkeypatch, dtype, grad_type):
    """torch/weights.py GradBuffers (on CPU tensors, the memset stubbed): the weight stacks' gradients in the plan's
    gradient type, the vectors' in float32 (float64 for float64 parameters), each starting 16-byte aligned in one
    flat buffer per type and zeroed; copied out in the parameters' type, as views or as tensors of their own."""
    from types import SimpleNamespace

    from lstmdsl.runtime import device
    from lstmdsl.torch.weights import GradBuffers

    zeroed = []
    monkeypatch.setattr(device, "zero", lambda ptr, n, stream: zeroed.append(n))
    runner = lt.GRU(5, 7, 2, dtype=dtype)._groups[0][0]
    params = [torch.ones(runner.shape(s, k), dtype=dtype) for k in range(2) for s in runner.slots]
    buffers = GradBuffers(runner.slots)
    values = torch.float64 if dtype == torch.float64 else torch.float32
    grads = buffers.zeroed(params, SimpleNamespace(grad_type=grad_type), values, 0)
    want = [({"bf16": torch.bfloat16}.get(grad_type, values) if s.kind == "stack" else values)
            for _ in range(2) for s in runner.slots]
    assert [g.dtype for g in grads] == want and [g.shape for g in grads] == [p.shape for p in params]
    assert all(g.data_ptr() % 16 == 0 for g in grads) and len(zeroed) == len(set(want))
    for i, g in enumerate(grads):
        g.fill_(i + 1)
    for views in (True, False):
        out = buffers.copied_out(params, grads, views)
        assert [o.dtype for o in out] == [dtype] * len(params)
        assert all(bool((o == i + 1).all()) for i, o in enumerate(out))


def test_hand_made_packed_batches_and_lengths_past_int64_are_refused_clearly():
    """A review's bad inputs (helper-120, 2026-12-08): float batch_sizes (torch's repeat_interleave had raised
    NotImplementedError), a 2-D batch_sizes equal in bytes to the last good batch's (the packing cache returned it
    before any check), lengths past int64 (ValueError: Overflow); numpy's floats as dropout (torch.nn takes them)."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    m = lt.LSTM(3, 4)
    x = torch.randn(3, 2, 3)
    good = pack_padded_sequence(x, [3, 2])
    assert m(good)[0].data.shape == (5, 4)
    for sizes, message in ((torch.tensor([2.0, 2.0, 1.0]), "must be an int64 tensor on the CPU, got torch.float32"),
                           (torch.tensor([[2, 2, 1]]), r"batch_sizes \[\[2, 2, 1\]\] do not describe its data")):
        with pytest.raises(UsageError, match=message):
            m(PackedSequence(good.data, sizes, None, None))
    with pytest.raises(UsageError, match=r"lengths must be in 1..3 \(the input's steps\)"):
        m(x, lengths=[2 ** 70, 3])
    assert lt.LSTM(3, 4, 2, dropout=np.float32(0.25)).dropout == 0.25


def test_the_summed_biases_survive_other_parameters_inference_mode_and_weight_wrappers():
    """helper-122's review of torch.nn's two biases (2026-12-08): a forward on other parameters (functional_call, an
    EMA pass) between a forward and its backward overwrote the sums the backward re-reads (gradients off by up to
    6.6); a first call under inference_mode made the module untrainable; reset_parameters zeroed pruning's mask and
    spectral norm's vectors; a state dict with both P and weight_hr loaded P silently."""
    from torch.func import functional_call
    from torch.nn.utils import parametrizations, prune

    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for make in (lambda m: m.LSTM(3, 4), lambda m: m.GRU(3, 4, bidirectional=True)):
        torch.manual_seed(0)
        ref = make(torch.nn).double()
        ours = lt.from_torch(ref)
        a = {k: v.detach().clone().requires_grad_() for k, v in ours.named_parameters()}
        b = {k: v.detach() * 2 for k, v in ours.named_parameters()}
        grads = []
        for m in (ref, ours):
            y = functional_call(m, a, (x,))[0]
            with torch.no_grad():
                functional_call(m, b, (x,))
            grads.append(torch.autograd.grad(y.sum(), list(a.values())))
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    m = lt.LSTM(3, 4).double()
    with torch.inference_mode():
        m(x)
    m(x)[0].sum().backward()
    assert m.bias_ih_l0.grad is not None
    m = lt.LSTM(3, 4, bias=False).double()
    prune.random_unstructured(m, "weight_hh_l0", 0.3)
    mask = m.weight_hh_l0_mask.clone()
    m.reset_parameters()
    assert torch.equal(m.weight_hh_l0_mask, mask)
    assert not any(b.any() for n, b in m.named_buffers() if n.startswith("b_"))
    m = parametrizations.spectral_norm(lt.LSTM(3, 4).double(), "weight_hh_l0")
    m.reset_parameters()
    assert bool(m(x)[0].isfinite().all())
    both = {**lt.RNN("lstmp", 3, 4, proj_size=2).state_dict(), "weight_hr_l0": torch.zeros(2, 4)}
    with pytest.raises(UsageError, match="holds torch.nn's weight_hr_l0 and lstmdsl's P_l0 too"):
        lt.LSTM(3, 4, proj_size=2).load_state_dict(both)
