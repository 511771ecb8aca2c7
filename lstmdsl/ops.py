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
    reduction: bool = False  # over the features of a row (any number of vectors): a per-row scalar


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


_GELU_C = 0.7978845608028654  # sqrt(2 / pi)


def _gelu(a):
    return 0.5 * a * (1.0 + np.tanh(_GELU_C * (a + 0.044715 * a ** 3)))


def _gelu_grad(a):
    t = np.tanh(_GELU_C * (a + 0.044715 * a ** 3))
    return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * a * a)


def _silu_grad(a):
    s = _sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


def _cat(args):
    """The arguments of a reduction side by side: [B, sum of widths] (scalars and per-row values broadcast
    over their own width one)."""
    return np.concatenate([np.atleast_2d(a) for a in args], axis=-1)


def _expand(b, g, sizes, mean=False):
    """g (a per-row scalar) broadcast to each size; divided by the total width for a mean."""
    return tuple(b.expand(g, s, sizes if mean else ()) for s in sizes)


def _max_derivative(b, a, y, g):
    """Every feature equal to the row's maximum gets the gradient (at a tie, all of them)."""
    sizes = tuple(b.nodes[x].size for x in a)
    return tuple(b.mul(e, b.op("eq", x, b.expand(y, s, ()))) for e, x, s in zip(_expand(b, g, sizes), a, sizes))


_TABLE = [
    # user functions
    OpDef("sigmoid", 1, _sigmoid, "lstmdsl_sigmoid({0})", "torch.sigmoid({0})",
          lambda b, a, y, g: (b.mul(g, b.mul(y, b.sub(b.const(1.0), y))),),
          function=True, doc="1 / (1 + exp(-a))"),
    OpDef("tanh", 1, np.tanh, "lstmdsl_tanh({0})", "torch.tanh({0})",
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
    OpDef("abs", 1, np.abs, "fabs({0})", "torch.abs({0})",
          lambda b, a, y, g: (b.mul(g, b.op("sign", a[0])),), function=True, doc="|a|; derivative 0 at a = 0"),
    OpDef("sqrt", 1, np.sqrt, "sqrt({0})", "torch.sqrt({0})",
          lambda b, a, y, g: (b.div(b.mul(g, b.const(0.5)), y),), function=True,
          doc="square root (NaN for a < 0; its derivative is infinite at 0)"),
    OpDef("softplus", 1, lambda a: np.logaddexp(0.0, a), "(fmax({0}, real(0)) + log1p(exp(-fabs({0}))))",
          "torch.nn.functional.softplus({0}, threshold=1e30)",
          lambda b, a, y, g: (b.mul(g, b.op("sigmoid", a[0])),), function=True, doc="log(1 + exp(a)), computed stably"),
    OpDef("logsigmoid", 1, lambda a: -np.logaddexp(0.0, -a), "(fmin({0}, real(0)) - log1p(exp(-fabs({0}))))",
          "torch.nn.functional.logsigmoid({0})",
          lambda b, a, y, g: (b.mul(g, b.op("sigmoid", b.op("neg", a[0]))),), function=True,
          doc="log(sigmoid(a)), computed stably"),
    OpDef("softsign", 1, lambda a: a / (1.0 + np.abs(a)), "({0} / (real(1) + fabs({0})))",
          "torch.nn.functional.softsign({0})",
          lambda b, a, y, g: (b.div(g, b.op("square", b.op("add", b.const(1.0), b.op("abs", a[0])))),),
          function=True, doc="a / (1 + |a|)"),
    OpDef("gelu", 1, _gelu, "(real(0.5) * {0} * (real(1) + tanh(real(0.7978845608028654) * ({0} + real(0.044715) * "
          "{0} * {0} * {0}))))", "torch.nn.functional.gelu({0}, approximate='tanh')",
          lambda b, a, y, g: (b.mul(g, b.op("gelu_grad", a[0])),), function=True,
          doc="GELU, tanh form: a/2 (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))"),
    OpDef("silu", 1, lambda a: a * _sigmoid(a), "({0} / (real(1) + exp(-{0})))", "torch.nn.functional.silu({0})",
          lambda b, a, y, g: (b.mul(g, b.op("silu_grad", a[0])),), function=True, doc="a * sigmoid(a) (swish)"),
    OpDef("max", 2, np.maximum, "fmax({0}, {1})", "torch.maximum({0}, {1})",
          lambda b, a, y, g: (b.mul(g, b.op("ge", a[0], a[1])), b.mul(g, b.sub(b.const(1.0), b.op("ge", a[0], a[1])))),
          function=True, doc="the larger of a and b, elementwise; at a tie the gradient goes to a"),
    OpDef("min", 2, np.minimum, "fmin({0}, {1})", "torch.minimum({0}, {1})",
          lambda b, a, y, g: (b.mul(g, b.op("le", a[0], a[1])), b.mul(g, b.sub(b.const(1.0), b.op("le", a[0], a[1])))),
          function=True, doc="the smaller of a and b, elementwise; at a tie the gradient goes to a"),
    # reductions over the features of a row (of one or several vectors side by side): a per-row scalar
    OpDef("sum", -1, lambda *a: _cat(a).sum(axis=-1, keepdims=True), "", "",
          lambda b, a, y, g: _expand(b, g, tuple(b.nodes[x].size for x in a)), function=True, reduction=True,
          doc="the sum of the features of a row (of all the vectors given)"),
    OpDef("mean", -1, lambda *a: _cat(a).mean(axis=-1, keepdims=True), "", "",
          lambda b, a, y, g: _expand(b, g, tuple(b.nodes[x].size for x in a), mean=True), function=True,
          reduction=True, doc="the mean of the features of a row (of all the vectors given)"),
    OpDef("rowmax", -1, lambda *a: _cat(a).max(axis=-1, keepdims=True), "", "", _max_derivative, function=True,
          reduction=True, doc="the largest feature of a row (of all the vectors given); at a tie every largest "
                              "feature gets the gradient"),
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
    OpDef("sign", 1, np.sign, "(real({0} > real(0)) - real({0} < real(0)))", "torch.sign({0})", _no_derivative,
          doc="1, 0 or -1"),
    OpDef("square", 1, np.square, "({0} * {0})", "torch.square({0})",
          lambda b, a, y, g: (b.mul(g, b.mul(b.const(2.0), a[0])),), doc="a * a"),
    OpDef("gelu_grad", 1, _gelu_grad, "gelu_grad({0})", "", _no_derivative, doc="the derivative of gelu"),
    OpDef("silu_grad", 1, _silu_grad, "silu_grad({0})", "", _no_derivative, doc="the derivative of silu"),
    OpDef("ge", 2, lambda a, b: (a >= b).astype(np.result_type(a, b)), "real({0} >= {1})", "({0} >= {1}).to({0}.dtype)",
          _no_derivative, doc="1 where a >= b, else 0"),
    OpDef("le", 2, lambda a, b: (a <= b).astype(np.result_type(a, b)), "real({0} <= {1})", "({0} <= {1}).to({0}.dtype)",
          _no_derivative, doc="1 where a <= b, else 0"),
    OpDef("eq", 2, lambda a, b: (a == b).astype(np.result_type(a, b)), "real({0} == {1})", "({0} == {1}).to({0}.dtype)",
          _no_derivative, doc="1 where a == b, else 0"),
]

OPS: dict[str, OpDef] = {op.name: op for op in _TABLE}
FUNCTIONS: tuple[str, ...] = tuple(op.name for op in _TABLE if op.function and not op.reduction)
REDUCTIONS: tuple[str, ...] = tuple(op.name for op in _TABLE if op.reduction)
BINARY_SYMBOLS: dict[str, str] = {op.symbol: op.name for op in _TABLE if op.arity == 2}
