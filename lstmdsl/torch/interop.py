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
    with torch.no_grad():
        for name, param in module.named_parameters():
            _copy(getattr(new, name), param)
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
    H = module.hidden_size
    with torch.no_grad():
        if module._nn is not None:  # (LSTM and GRU: torch.nn's own parameters)
            for name, param in out.named_parameters():
                _copy(param, getattr(module, name))
            return out.train(module.training)
        for sfx in suffixes(module):  # (an RNN of those cells: the spec's names; requires_grad=False carried over)
            _copy(getattr(out, "weight_ih" + sfx), getattr(module, "weight_ih" + sfx))
            _copy(getattr(out, "weight_hh" + sfx), getattr(module, "weight_hh" + sfx))
            if module.proj_size:
                _copy(getattr(out, "weight_hr" + sfx), getattr(module, "P" + sfx))
            if not module.bias:
                continue
            bih, bhh = getattr(out, "bias_ih" + sfx), getattr(out, "bias_hh" + sfx)
            trained = any(getattr(module, f"{v}{sfx}").requires_grad for v in ("b_in", "b_hn", *(f"b_{g}" for g in gates))
                          if hasattr(module, f"{v}{sfx}"))
            bih.requires_grad_(trained), bhh.requires_grad_(trained)
            bhh.zero_()
            for j, g in enumerate(gates):
                part = slice(j * H, (j + 1) * H)
                if g == "n":
                    bih[part] = getattr(module, "b_in" + sfx)
                    bhh[part] = getattr(module, "b_hn" + sfx)
                else:
                    bih[part] = getattr(module, f"b_{g}" + sfx)
    return out.train(module.training)
