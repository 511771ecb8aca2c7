"""What a spec is, as `lstmdsl check` reports it: its input, states, output, gates, parameters, and the
FLOPs of one step as a polynomial in the sizes (with numbers once sizes are bound)."""

from __future__ import annotations

import math

from .ir import ROW
from .ops import OPS
from .spec import Spec
from .syntax import OutputDecl


def _poly(terms: dict[tuple[str, ...], int]) -> str:
    def mono(key):
        parts = []
        for s in sorted(set(key)):
            n = key.count(s)
            parts.append(s if n == 1 else f"{s}^{n}")
        return "*".join(parts)
    items = sorted(terms.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    return " + ".join((str(c) if not k else f"{c}*{mono(k)}" if c != 1 else mono(k)) for k, c in items if c) or "0"


def flops_per_step(spec: Spec) -> dict[tuple[str, ...], int]:
    """FLOPs of one step for one sequence, as a polynomial in the sizes: a matvec is 2*rows*cols,
    every elementwise operator (a function counts as one) one per element."""
    terms: dict[tuple[str, ...], int] = {}
    for n in spec.cell.nodes:
        if n.op == "matvec":
            key = tuple(sorted(spec.cell.param(n.attr).shape))
            terms[key] = terms.get(key, 0) + 2
        elif n.op not in ("input", "state", "param", "const"):
            # a value of one per row (ROW: a reduction's result, or arithmetic on one) is no size to bind: a
            # reduction costs one per element it reads, and an operator on per-row values one per row
            keys = ([(spec.cell.nodes[a].size,) for a in n.args] if n.size == ROW and OPS[n.op].reduction else
                    [()] if n.size == ROW else [(n.size,)])
            for key in keys:
                terms[key] = terms.get(key, 0) + 1
    return terms



def describe(spec: Spec, sizes: dict[str, int] | None) -> dict:
    cell = spec.cell
    named = {nid: name for name, nid in cell.names}
    # gates: named sigmoids, and the exponential gates of sLSTM-style cells (a named exp)
    gates = [named[i] for i in sorted(named) if cell.nodes[i].op in ("sigmoid", "hard_sigmoid", "exp")]
    values = [{"name": named[i], "op": cell.nodes[i].op, "size": cell.nodes[i].size} for i in sorted(named)]
    flops = flops_per_step(spec)
    out = {
        "cell": cell.name,
        "file": spec.source.filename,
        "input": {"name": cell.input, "size": "input"},
        "states": [{"name": s.name, "size": s.size} for s in cell.states],
        "output": {"name": next(s.name for s in spec.ast.stmts if isinstance(s, OutputDecl)),
                   "size": cell.output_size},
        "parameters": [{"name": p.name, "kind": p.kind, "shape": list(p.shape)} for p in cell.params],
        "gates": gates,
        "regularisers": [{"mask": z.name, "kind": z.kind, "p": z.p, "size": z.size} for z in cell.noise],
        "values": values,
        "flops_per_step": _poly(flops),
        "schedule": spec.schedule.describe(),
        "warnings": [w.render() for w in spec.warnings],
    }
    if sizes:
        out["sizes"] = {k: v for k, v in sizes.items() if v is not None}
        out["flops_per_step_value"] = sum(c * math.prod(int(sizes[s]) for s in k) for k, c in flops.items())  # (exact)
        out["parameter_count"] = sum(math.prod(int(sizes[s]) for s in p.shape) for p in cell.params)
    return out


def cell_io(v: dict) -> str:
    return f"{v['name']} : {v['size']}"
