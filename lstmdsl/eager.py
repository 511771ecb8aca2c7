"""The eager PyTorch competitor of the benchmarks (lstmdsl/bench.py): a spec's cell as a PyTorch module, the way a
careful user writes one by hand, generated from the IR."""

from __future__ import annotations

import numpy as np

from . import api
from .spec import Spec


def _torch():
    import torch

    return torch


class EagerCell:
    """The spec's cell as a PyTorch module, written the way a careful user writes one by hand.

    The step is straight-line Python generated from the IR (`self.source`), not an interpreter:
      - the matrices applied to one value are one leaf tensor (the `nn.Linear(H, 4H)` of a hand-written
        LSTM), so a step runs one GEMM per operand and splits its result;
      - the input's products for all steps are one GEMM before the loop, with the bias vectors that are
        added to them folded in (`torch.addmm`, as nn.Linear does);
      - when each gate sums its input product and its recurrent product, the step adds the two whole
        products in the GEMM (`gates = addmm(xw[t], h, R.T)`), then splits.
    Sums are re-associated to do this; the outputs are checked against lstmdsl's before timing.
    """

    def __init__(self, spec: Spec, layer: api.Layer, device: str = "cuda"):
        torch = _torch()
        cell = self.cell = spec.cell
        self.training = True  # the regularisers draw masks (False: their expectations)
        self.sizes = layer.sizes
        # matvec nodes grouped by the value they multiply, in node order
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(cell.nodes):
            if n.op == "matvec":
                groups.setdefault(n.args[0], []).append(i)
        self.groups = groups
        self.heads = {a for a, members in groups.items() if cell.param(cell.nodes[members[0]].attr).heads}
        self.input_group = next((a for a in groups if cell.nodes[a].op == "input"), None)
        self.source, self.input_bias = self._source()
        state = layer.state_dict()
        self.params = []
        for k in range(len(layer.sizes)):
            p = {}
            for a, members in groups.items():
                mats = [state[f"l{k}.{cell.nodes[i].attr}"] for i in members]
                p[f"cat{a}"] = torch.tensor(np.concatenate(mats), device=device, requires_grad=True)
                p[f"split{a}"] = tuple(m.shape[0] for m in mats)
                p[f"heads{a}"] = (len(mats), layer.sizes[k].get("heads", 1))  # (matrices, blocks of each)
            for prm in cell.params:
                if state[f"l{k}.{prm.name}"].ndim == 1:
                    p[prm.name] = torch.tensor(state[f"l{k}.{prm.name}"], device=device, requires_grad=True)
            self.params.append(p)
        namespace = {"torch": torch, "blocks": _blocks}
        exec(compile(self.source, f"<eager {cell.name}>", "exec"), namespace)  # noqa: S102 (generated above)
        self.step = namespace["step"]

    def _source(self) -> tuple[str, list]:
        """The step's source, and per input product the bias vector folded into it (or None)."""
        from .ops import OPS

        cell, nodes, groups, a_in = self.cell, self.cell.nodes, self.groups, self.input_group
        consumers: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            for a in n.args:
                consumers.setdefault(a, []).append(i)
        for i in (cell.output, *cell.updates):
            consumers.setdefault(i, []).append(-1)

        def inner(i):  # an add whose only use is another add: part of that add's sum
            c = consumers.get(i, [])
            return nodes[i].op == "add" and len(c) == 1 and c[0] >= 0 and nodes[c[0]].op == "add"

        def leaves(i):
            return [x for a in nodes[i].args for x in (leaves(a) if inner(a) else [a])]

        sums = {i: leaves(i) for i, n in enumerate(nodes) if n.op == "add" and not inner(i)}
        where = {x: r for r, ls in sums.items() for x in ls}
        inputs = groups.get(a_in, [])
        single = [m for m in inputs if len(consumers.get(m, [])) == 1 and m in where]
        # fold one bias vector of each input product's sum into the hoisted GEMM
        input_bias = [None] * len(inputs)
        for m in single:
            r = where[m]
            bias = next((x for x in sums[r] if nodes[x].op == "param"), None)
            if bias is not None:
                input_bias[inputs.index(m)] = nodes[bias].attr
                sums[r].remove(bias)  # one copy: `b + b` keeps the other in the step
        # a recurrent group whose k-th product meets the k-th input product in one sum: add them in the GEMM
        paired = None
        if len(single) == len(inputs) > 0 and a_in not in self.heads:
            for a, members in groups.items():
                if a != a_in and a not in self.heads and len(members) == len(inputs) and all(
                        len(consumers.get(r, [])) == 1 and where.get(r) == where[m] for m, r in zip(inputs, members)):
                    paired = a
                    break
        if paired is not None:
            for m in inputs:
                sums[where[m]] = [x for x in sums[where[m]] if x != m]
        lines = ["def step(p, xw, x_t, s, m):"]
        if inputs and paired is None:
            lines.append(f"    xin = torch.split(xw, p['split{a_in}'], 1)")
        for i, n in enumerate(nodes):
            if n.op == "add" and inner(i):
                continue
            if n.op == "input":
                line = "x_t"
            elif n.op == "state":
                line = f"s[{n.attr!r}]"
            elif n.op == "stepin":  # a regulariser's mask at this step
                line = f"m[{n.attr!r}]"
            elif n.op == "param":
                line = f"p[{n.attr!r}]"
            elif n.op == "const":
                line = repr(float(n.attr))
            elif n.op == "matvec":
                a = n.args[0]
                k = groups[a].index(i)
                if a == a_in:
                    if paired is not None:
                        continue
                    line = f"xin[{k}]"
                else:
                    if k == 0:
                        gemm = f"torch.addmm(xw, v{a}, p['cat{a}'].T)" if a == paired else \
                            f"blocks(v{a}, p['cat{a}'], p['heads{a}'])" if a in self.heads else f"v{a} @ p['cat{a}'].T"
                        lines.append(f"    g{a} = torch.split({gemm}, p['split{a}'], 1)"
                                     if len(groups[a]) > 1 else f"    g{a} = ({gemm},)")
                    line = f"g{a}[{k}]"
            elif n.op == "add":
                line = " + ".join(f"v{x}" for x in sums[i])
            elif OPS[n.op].reduction:  # over the features of the arguments side by side (vectors: [H] -> [B, H])
                parts = ", ".join(f"v{a}.expand(x_t.shape[0], -1)" if nodes[a].op == "param" else f"v{a}"
                                  for a in n.args)
                fn = {"sum": "sum", "mean": "mean", "rowmax": "amax"}[n.op]
                line = f"torch.cat([{parts}], -1).{fn}(-1, keepdim=True)"
            else:
                line = OPS[n.op].torch.format(*(f"v{a}" for a in n.args))
            lines.append(f"    v{i} = {line}")
        updates = ", ".join(f"{s.name!r}: v{u}" for s, u in zip(cell.states, cell.updates))
        lines.append(f"    return v{cell.output}, {{{updates}}}")
        return "\n".join(lines) + "\n", input_bias

    def parameters(self):
        return [t for p in self.params for t in p.values() if not isinstance(t, tuple)]

    def forward(self, x, step=None):
        torch = _torch()
        step = step or self.step
        T, B, _ = x.shape
        h = x
        a = self.input_group
        for p, sizes in zip(self.params, self.sizes):
            xw = [None] * T
            if a is not None:
                flat, w = h.reshape(T * B, -1), p[f"cat{a}"]
                if any(self.input_bias):
                    bias = torch.cat([p[b] if b else w.new_zeros(n) for b, n in zip(self.input_bias, p[f"split{a}"])])
                    xw = torch.addmm(bias, flat, w.T).reshape(T, B, -1)
                elif a in self.heads:
                    xw = _blocks(flat, w, p[f"heads{a}"]).reshape(T, B, -1)
                else:
                    xw = (flat @ w.T).reshape(T, B, -1)
            state = {s.name: h.new_zeros(B, sizes[s.size]) for s in self.cell.states}
            masks = {}
            for z in self.cell.noise:  # drawn as a PyTorch user would, or the expectations in evaluation
                shape = (T, B, 1 if z.size == "one" else sizes[z.size])
                masks[z.name] = (z.training(torch.rand(shape, device=h.device)).to(h.dtype) if self.training
                                 else torch.full(shape, z.evaluation(), device=h.device, dtype=h.dtype))
            ys = []
            for t in range(T):
                y, state = step(p, xw[t], h[t], state, {k: v[t] for k, v in masks.items()})
                ys.append(y)
            h = torch.stack(ys)
        return h


def _blocks(v, stack, shape: tuple[int, int]):
    """v [N, cols] times a stack of block-diagonal matrices ([matrices * rows, cols / heads], each stored as
    its blocks stacked by rows), as one batched product per block: [N, matrices * rows]."""
    torch = _torch()
    matrices, heads = shape
    out = torch.einsum("nkc,jkrc->njkr", v.reshape(v.shape[0], heads, -1),
                       stack.reshape(matrices, heads, -1, stack.shape[1]))
    return out.reshape(v.shape[0], -1)
