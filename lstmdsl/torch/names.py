"""torch.nn's names for the parameters of the cells it has (vanilla, lstmp, gru_torch): which layout a module's
cell has, the suffix of each layer and direction, and a torch.nn state dict renamed into lstmdsl.torch's
(interop.py and RNN.load_state_dict use them)."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import UsageError
from ..spec import parse

GATES = {"vanilla": ("i", "f", "z", "o"), "lstmp": ("i", "f", "z", "o"), "gru_torch": ("r", "z", "n")}


def cell_kind(module) -> str:
    """Which shipped spec's layout the module's cell has (vanilla, lstmp or gru_torch), or an error."""
    cell = module.spec.cell
    for name in GATES:
        if dataclasses.replace(cell, name=name) == parse(name).cell:
            return name
    raise UsageError(f"cell '{cell.name}' has no torch.nn counterpart; to_torch and from_torch take the vanilla, "
                     "lstmp and gru_torch cells")


def nn_kind(module) -> str | None:
    """Which of torch.nn's cells (GATES) the module's is, or None."""
    try:
        return cell_kind(module)
    except UsageError:
        return None


def suffix(k: int, d: int) -> str:
    """The end of the names of layer k's parameters in direction d (0 forward, 1 reverse), as torch.nn's."""
    return f"_l{k}" + ("_reverse" if d else "")


def suffixes(m) -> list[str]:
    return [suffix(k, d) for k in range(m.num_layers) for d in range(1 + m.bidirectional)]


def torch_state_dict(module, state: dict, prefix: str = "") -> None:
    """Rewrite, in place, the entries of a torch.nn.LSTM or torch.nn.GRU state dict under prefix into `module`'s
    names, so that load_state_dict takes either (RNN._load_from_state_dict): the weights keep their names,
    bias_ih + bias_hh are summed into the gates' biases (the GRU's candidate keeps its two apart, as from_torch
    does) and weight_hr becomes P. A state dict with no torch.nn entries is left alone."""
    ends = suffixes(module)
    if not any(prefix + k + s in state for s in ends for k in ("bias_ih", "bias_hh", "weight_hr")):
        return
    gates, H = GATES[cell_kind(module)], module.hidden_size  # (a cell with no torch.nn counterpart: an error)
    ours = [k for k in state if k.startswith(prefix + "b_") or k.startswith(prefix + "P_")]
    if ours:  # (which of the two would win is not clear: say so)
        raise UsageError(f"the state dict holds torch.nn's names (bias_ih, bias_hh, weight_hr) and lstmdsl's too "
                         f"({', '.join(ours[:3])}{', ...' if len(ours) > 3 else ''}): load one or the other")
    for sfx in ends:
        if prefix + "weight_hr" + sfx in state:
            state[prefix + "P" + sfx] = state.pop(prefix + "weight_hr" + sfx)
        if prefix + "bias_ih" + sfx not in state or prefix + "bias_hh" + sfx not in state:
            continue  # (one of the two alone: left for torch's report of unexpected and missing keys)
        bih, bhh = state.pop(prefix + "bias_ih" + sfx), state.pop(prefix + "bias_hh" + sfx)
        if bih.shape != (len(gates) * H,) or bhh.shape != bih.shape:  # (else a gate's slice would come out empty)
            raise UsageError(f"{prefix}bias_ih{sfx} and bias_hh{sfx} have shapes {list(bih.shape)} and "
                             f"{list(bhh.shape)}; this module's cell ({len(gates)} gates of {H}) takes "
                             f"[{len(gates) * H}] each: is the state dict another cell's (an nn.GRU's into an LSTM, "
                             "or the reverse) or of another hidden size?")
        for j, g in enumerate(gates):
            part = slice(j * H, (j + 1) * H)
            if g == "n":
                state[prefix + "b_in" + sfx], state[prefix + "b_hn" + sfx] = bih[part], bhh[part]
            else:
                state[prefix + f"b_{g}" + sfx] = bih[part] + bhh[part]


def lstmdsl_state_dict(module, state: dict, prefix: str = "") -> None:
    """Rewrite, in place, the entries of a state dict saved under lstmdsl's names (b_i_l0, ..., P_l0: LSTM and GRU
    before they took torch.nn's, 2026-12-08) into torch.nn's, which `module` has (layout.NNLayout): each gate's
    bias into bias_ih, zeros in bias_hh (the GRU's b_hn into bias_hh), P into weight_hr. A state dict with no such
    entries is left alone."""
    layout, H = module._nn, module.hidden_size
    for sfx in suffixes(module):
        keys = [prefix + name + sfx for name, _, _ in layout.vectors]
        if prefix + "P" + sfx in state:
            if prefix + "weight_hr" + sfx in state:
                raise UsageError(f"the state dict holds torch.nn's {prefix}weight_hr{sfx} and lstmdsl's {prefix}P{sfx} "
                                 "too: load one or the other")
            state[prefix + "weight_hr" + sfx] = state.pop(prefix + "P" + sfx)
        if not all(k in state for k in keys):
            continue  # (none, or some alone: left for torch's report of unexpected and missing keys)
        if prefix + "bias_ih" + sfx in state or prefix + "bias_hh" + sfx in state:
            raise UsageError(f"the state dict holds torch.nn's names (bias_ih, bias_hh) and lstmdsl's too "
                             f"({', '.join(keys)}): load one or the other")
        values = [state.pop(k) for k in keys]
        for k, v in zip(keys, values):
            if tuple(v.shape) != (H,):
                raise UsageError(f"{k} has shape {list(v.shape)}; this module's gates have {H} units")
        for name, part in zip(("bias_ih", "bias_hh"), layout.split(values)):
            state[prefix + name + sfx] = torch.cat([v if v is not None else values[0].new_zeros(H) for v in part])
