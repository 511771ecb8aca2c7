"""Weights between lstmdsl.torch and torch.nn: from_torch(nn.LSTM or nn.GRU) and to_torch(module).

    rnn = lstmdsl.torch.from_torch(torch_lstm)     # the same function, now computed by lstmdsl
    torch_lstm = lstmdsl.torch.to_torch(rnn)       # and back

lstmdsl.torch's LSTM and GRU have torch.nn's parameters (layout.py), copied as they are. An RNN of the same cells
keeps the specs' names: weight_ih_l{k} and weight_hh_l{k} are the same stacks in the same gate order (LSTM i, f,
g, o = the vanilla spec's i, f, z, o; GRU r, z, n = gru_torch's r, z, n), LSTMP's projection P_l{k} is torch's
weight_hr_l{k}, and one bias a gate where torch keeps two (bias_ih, bias_hh): to_torch puts it in bias_ih and
zeros in bias_hh (the GRU's candidate keeps two, b_in and b_hn). Parameters of other specs have no torch
counterpart.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import UsageError
from .modules import GRU, LSTM, RNN
from .names import GATES, cell_kind, suffixes


def from_torch(module: nn.LSTM | nn.GRU, **kw) -> RNN:
    """An lstmdsl.torch module computing what `module` computes (same arguments, device and dtype; weights
    copied). Keyword arguments (schedule=...) go to the new module."""
    if not isinstance(module, (nn.LSTM, nn.GRU)):
        raise UsageError(f"from_torch takes a torch.nn.LSTM or torch.nn.GRU, got {type(module).__name__}")
    p = next(module.parameters())
    args = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                dropout=module.dropout, bidirectional=module.bidirectional, device=p.device, dtype=p.dtype)
    if isinstance(module, nn.LSTM):
        new = LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **args, **kw)
    else:
        new = GRU(module.input_size, module.hidden_size, **args, **kw)
    if new._nn is None:
        raise UsageError(f"from_torch builds torch.nn's cell; spec='{new.spec.name}' is another: build "
                         "lstmdsl.torch.LSTM(..., spec=...) and copy the weights you want by hand")
    values = {n: getattr(module, n) for n in new._flat_weights_names}  # (outside no_grad: what a weight wrapper
    with torch.no_grad():                                                # computes keeps its requires_grad)
        for name, value in values.items():
            _copy(getattr(new, name), value)
    return new.train(module.training)


def _copy(param: nn.Parameter, value: torch.Tensor) -> None:
    """value into param, which is trained where value's parameter is (requires_grad=False carried over)."""
    param.copy_(value)
    param.requires_grad_(value.requires_grad)


def to_torch(module: RNN) -> nn.LSTM | nn.GRU:
    """The torch.nn.LSTM or torch.nn.GRU computing what `module` computes (vanilla, lstmp and gru_torch
    cells), on the module's device and dtype."""
    if not isinstance(module, RNN):
        raise UsageError(f"to_torch takes an lstmdsl.torch module, got {type(module).__name__}")
    kind = cell_kind(module)
    if module.dropconnect > 0:  # (its weights are carried over, its training regime is not)
        warnings.warn(f"to_torch: torch.nn.{'GRU' if kind == 'gru_torch' else 'LSTM'} has no DropConnect; the "
                      f"module's dropconnect={module.dropconnect} is not carried over", stacklevel=2)
    p = next(module.parameters())
    args = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                dropout=module.dropout, bidirectional=module.bidirectional, device=p.device, dtype=p.dtype)
    if kind == "gru_torch":
        out = nn.GRU(module.input_size, module.hidden_size, **args)
    else:
        out = nn.LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **args)
    gates = GATES[kind]
    # the module's tensors read outside no_grad (a weight wrapper's result keeps its requires_grad), by torch's names
    if module._nn is not None:  # (LSTM and GRU: torch.nn's own parameters)
        src = {n: getattr(module, n) for n, _ in out.named_parameters()}
    else:  # (an RNN of those cells: the spec's names, one bias a gate: in bias_ih, zeros in bias_hh but the GRU's b_hn)
        src = {}
        for sfx in suffixes(module):
            for n in ("weight_ih", "weight_hh"):
                src[n + sfx] = getattr(module, n + sfx)
            if module.proj_size:
                src["weight_hr" + sfx] = getattr(module, "P" + sfx)
            if module.bias:
                ih = [getattr(module, ("b_in" if g == "n" else f"b_{g}") + sfx) for g in gates]
                hh = [getattr(module, "b_hn" + sfx) if g == "n" else torch.zeros_like(b) for g, b in zip(gates, ih)]
                trained = any(b.requires_grad for b in ih + hh)  # (trained where any of the gates' biases is)
                src["bias_ih" + sfx], src["bias_hh" + sfx] = (torch.cat(bs).detach().requires_grad_(trained)
                                                              for bs in (ih, hh))
    with torch.no_grad():
        for name, param in out.named_parameters():
            _copy(param, src[name])
    return out.train(module.training)
