"""Sum folding (backward): a step that ends with `a = p + sum_k g_k @ W_k` adds p inside the GEMM.

The gradient a state passes back often has two parts: what the recurrent matrices return, and a
pointwise part (a GRU's u * dh, a masked step's dh - m * dh). Computed as written, the step ends with a
kernel of its own for that one addition, after the GEMM. Here the kernel before the GEMM computes p and
writes it into a's slot, the GEMM adds its products to it (beta = 1), and the last kernel goes: one
launch per step fewer. The nodes p needs that the last kernel computed move into the kernel before the
GEMM, when they do not depend on the GEMM's result.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Kernel, Phase, Plan, reduces


def _fold(phase: Phase) -> Phase:
    body = list(phase.loop.body)
    nodes = phase.nodes
    if len(body) < 3 or not isinstance(body[-1], Kernel) or body[-1].joins or reduces(phase, body[-1]):
        return phase
    last = body[-1]
    gemms = []
    k = len(body) - 2
    while k >= 0 and isinstance(body[k], Gemm) and body[k].kind == "backward":
        gemms.insert(0, k)
        k -= 1
    before = body[k] if k >= 0 else None
    if not gemms or not isinstance(before, Kernel) or reduces(phase, before) or \
            any(nodes[i].op == "matvec" for i in before.nodes):
        return phase
    (m,) = {body[g].outputs[0] for g in gemms} if len({body[g].outputs[0] for g in gemms}) == 1 else (None,)
    if m is None:
        return phase
    a = last.nodes[-1]
    if nodes[a].op != "add" or m not in nodes[a].args or len(nodes[a].args) != 2:
        return phase
    (p,) = [x for x in nodes[a].args if x != m] or (m,)
    if p == m:
        return phase
    readers = [i for i, n in enumerate(nodes) if m in n.args]
    rest = last.nodes[:-1]
    if readers != [a] or any(m in nodes[i].args or a in nodes[i].args for i in rest) or nodes[p].size != nodes[a].size:
        return phase
    used_later = any(a in nodes[i].args for i in range(len(nodes)))  # a is read by nothing in the step
    if used_later:
        return phase
    body[k] = dataclasses.replace(before, nodes=before.nodes + rest)
    first = gemms[0]
    for g in gemms:
        body[g] = dataclasses.replace(body[g], outputs=(a,), init=p if g == first else None,
                                      accumulate=g != first or body[g].accumulate)
    return phase.with_body(body[:-1])


def fold_sums(plan: Plan) -> Plan:
    return dataclasses.replace(plan, backward=_fold(plan.backward))
