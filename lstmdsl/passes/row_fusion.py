"""Row fusion: the kernels of a step between two GEMMs run as one launch when a reduction splits them.

A reduction over the features of a row (mean, sum, rowmax: layer norm, RMS norm) makes pointwise fusion
stop: the value after it needs the whole row. Inside a step that costs a launch per stage (a layer-normalised
LSTM has a dozen), and the launches, not the work, set the step's time. Here a run of such kernels
becomes one launch of one block per row: each stage is a loop of the block's threads over the row's
features, and a block-wide barrier separates the stages, so a stage reads what the one before it wrote
(the values that cross stages keep their slots in memory, as between launches). Kernels that compute
matrix-vector products themselves (recurrent fusion) are left alone.
"""

from __future__ import annotations

import dataclasses

from ..plan import Kernel, Phase, Plan, reduces


def _groupable(phase: Phase, op) -> bool:
    return isinstance(op, Kernel) and not any(phase.nodes[i].op == "matvec" for i in op.nodes)


def _fuse(phase: Phase) -> Phase:
    body = list(phase.loop.body)
    out = []
    k = 0
    while k < len(body):
        end = k
        while end < len(body) and _groupable(phase, body[end]):
            end += 1
        run = body[k:end]
        if len(run) >= 2 and any(reduces(phase, op) for op in run):
            out += [run[0]] + [dataclasses.replace(op, joins=True) for op in run[1:]]
            k = end
        elif run:
            out += run
            k = end
        else:
            out.append(body[k])
            k += 1
    return phase.with_body(out)


def fuse_rows(plan: Plan) -> Plan:
    return dataclasses.replace(plan, forward=_fuse(plan.forward), backward=_fuse(plan.backward))
