"""The operator table: one entry per elementwise operator, with its forward formula and its derivative.

This table is the only place that knows what an operator means. The numpy reference evaluates `numpy`,
the generated CUDA prints `cuda` (an expression in the kernel's type `real`, float or double, through
C++'s overloaded math functions; {0}, {1} are the arguments); symbolic
differentiation (grad.py) calls `derivative`, which builds the backward formula out of other table
entries, so the same derivative serves the reference and the generated backward kernels.
Adding an operator is one entry here (and, for user functions, one line in docs/language.md).

Derivative signature: derivative(b, args, y, g) -> one gradient contribution per argument (a node id,
or None where the argument gets nothing), where b is the graph builder of the backward step, `args` and
`y` are the node ids of the forward arguments and result as seen from the backward graph, and `g` is the
node id of the incoming gradient dL/dy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    cuda: str
    torch: str  # the same formula in PyTorch, for the benchmarks' eager competitor ("" for helpers)
    derivative: Callable
    function: bool = False  # callable by name in a spec: sigmoid(...)
    symbol: str | None = None  # infix symbol, for printing
    doc: str = ""


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # no overflow for large |a|, unlike 1 / (1 + exp(-a))


def _hard_sigmoid(a):
    return np.clip(a / 6.0 + 0.5, 0.0, 1.0)


def _hard_sigmoid_grad(a):
    return np.where((a > -3.0) & (a < 3.0), 1.0 / 6.0, 0.0).astype(a.dtype, copy=False)


def _step(a):
    return (a > 0).astype(a.dtype)


def _no_derivative(b, args, y, g):
    return (None,) * len(args)  # piecewise constant: its derivative is zero almost everywhere


_TABLE = [
    # user functions
    OpDef("sigmoid", 1, _sigmoid, "(real(1) / (real(1) + exp(-{0})))", "torch.sigmoid({0})",
          lambda b, a, y, g: (b.mul(g, b.mul(y, b.sub(b.const(1.0), y))),),
          function=True, doc="1 / (1 + exp(-a))"),
    OpDef("tanh", 1, np.tanh, "tanh({0})", "torch.tanh({0})",
          lambda b, a, y, g: (b.mul(g, b.sub(b.const(1.0), b.mul(y, y))),),
          function=True, doc="hyperbolic tangent"),
    OpDef("relu", 1, lambda a: np.maximum(a, 0), "fmax({0}, real(0))", "torch.relu({0})",
          lambda b, a, y, g: (b.mul(g, b.op("step", a[0])),),
          function=True, doc="max(a, 0); derivative 0 at a = 0"),
    OpDef("identity", 1, lambda a: a, "{0}", "{0}",
          lambda b, a, y, g: (g,), function=True, doc="a"),
    OpDef("exp", 1, np.exp, "exp({0})", "torch.exp({0})",
          lambda b, a, y, g: (b.mul(g, y),), function=True, doc="e to the a"),
    OpDef("log", 1, np.log, "log({0})", "torch.log({0})",
          lambda b, a, y, g: (b.div(g, a[0]),), function=True,
          doc="natural logarithm (NaN for a < 0)"),
    OpDef("hard_sigmoid", 1, _hard_sigmoid, "fmin(fmax({0} / real(6) + real(0.5), real(0)), real(1))",
          "torch.nn.functional.hardsigmoid({0})",
          lambda b, a, y, g: (b.mul(g, b.op("hard_sigmoid_grad", a[0])),), function=True,
          doc="clip(a / 6 + 1/2, 0, 1), as torch.nn.Hardsigmoid"),
    # operators
    OpDef("neg", 1, np.negative, "(-{0})", "(-{0})", lambda b, a, y, g: (b.op("neg", g),), symbol="-"),
    OpDef("add", 2, np.add, "({0} + {1})", "({0} + {1})", lambda b, a, y, g: (g, g), symbol="+"),
    OpDef("sub", 2, np.subtract, "({0} - {1})", "({0} - {1})",
          lambda b, a, y, g: (g, b.op("neg", g)), symbol="-"),
    OpDef("mul", 2, np.multiply, "({0} * {1})", "({0} * {1})",
          lambda b, a, y, g: (b.mul(g, a[1]), b.mul(g, a[0])),
          symbol="*"),
    OpDef("div", 2, np.divide, "({0} / {1})", "({0} / {1})",
          lambda b, a, y, g: (b.div(g, a[1]), b.op("neg", b.div(b.mul(g, y), a[1]))), symbol="/"),
    # helpers that derivatives use
    OpDef("step", 1, _step, "({0} > real(0) ? real(1) : real(0))", "", _no_derivative, doc="1 where a > 0, else 0"),
    OpDef("hard_sigmoid_grad", 1, _hard_sigmoid_grad, "(({0} > real(-3) && {0} < real(3)) ? real(1) / real(6) : real(0))", "",
          _no_derivative, doc="1/6 where -3 < a < 3, else 0"),
]

OPS: dict[str, OpDef] = {op.name: op for op in _TABLE}
FUNCTIONS: tuple[str, ...] = tuple(op.name for op in _TABLE if op.function)
BINARY_SYMBOLS: dict[str, str] = {op.symbol: op.name for op in _TABLE if op.arity == 2}
