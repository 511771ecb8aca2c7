"""Stage 2: the Cell IR. verify() holds for every shipped spec and catches broken IR; equal IR hashes
equal (it names cache entries); the symbolic derivative of every operator matches its numeric one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lstmdsl
import lstmdsl.resources
from lstmdsl.grad import differentiate
from lstmdsl.ir import OUTPUT_GRAD, GraphBuilder, IRError, Node, prune, verify
from lstmdsl.ops import _no_derivative, FUNCTIONS, OPS

from conftest import SPECS


@pytest.mark.parametrize("name", SPECS)
def test_shipped_specs_verify(name):
    verify(lstmdsl.parse(name).cell)


def test_ir_is_hashable_and_equal_ir_hashes_equal():
    text = lstmdsl.resources.shipped_specs()["vanilla"].read_text()
    a = lstmdsl.parse(text).cell
    b = lstmdsl.parse("# another comment\n" + text.replace("    ", "  ").replace("schedule", "\nschedule")).cell
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != lstmdsl.parse("peephole").cell


def test_ir_is_frozen():
    cell = lstmdsl.parse("vanilla").cell
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.name = "x"


@pytest.mark.parametrize("mutate", [
    lambda c: dataclasses.replace(c, nodes=c.nodes[:-1] + (Node("mul", (len(c.nodes), 0), None, "hidden"),)),
    lambda c: dataclasses.replace(c, updates=c.updates[:1]),
    lambda c: dataclasses.replace(c, params=c.params[1:]),
    lambda c: dataclasses.replace(c, nodes=tuple(Node("frobnicate", n.args, n.attr, n.size) if n.op == "tanh" else n
                                               for n in c.nodes)),
    lambda c: dataclasses.replace(c, nodes=tuple(Node(n.op, n.args, n.attr, "input") if n.op == "sigmoid" else n
                                               for n in c.nodes)),
])
def test_verify_catches_broken_ir(mutate):
    with pytest.raises(IRError):
        verify(mutate(lstmdsl.parse("vanilla").cell))


def test_builder_hash_conses_and_folds():
    b = GraphBuilder()
    x = b.leaf("input", "x", "input")
    assert b.op("tanh", x) == b.op("tanh", x)
    two = b.op("add", b.const(1.0), b.const(1.0))
    assert b.nodes[two] == Node("const", (), 2.0, None)


def test_prune_keeps_order_and_remaps():
    nodes = (Node("input", (), "x", "input"), Node("const", (), 1.0), Node("tanh", (0,), None, "input"))
    kept, remap = prune(nodes, [2])
    assert kept == (nodes[0], Node("tanh", (0,), None, "input"))
    assert remap == {0: 0, 2: 1}


UNARY_DOMAIN = {"log": (0.2, 3.0), "sqrt": (0.2, 3.0)}
HELPERS = {name for name, o in OPS.items() if o.derivative is _no_derivative}  # piecewise constant


@pytest.mark.parametrize("op", [name for name, o in OPS.items() if o.arity == 1 and name not in HELPERS])
def test_unary_derivatives_match_central_differences(op):
    lo, hi = UNARY_DOMAIN.get(op, (-4.0, 4.0))
    a = np.linspace(lo, hi, 37) + 0.013  # avoid the kinks of relu, abs and hard_sigmoid
    check_derivative(op, [a])


@pytest.mark.parametrize("op", [name for name, o in OPS.items() if o.arity == 2 and name not in HELPERS])
def test_binary_derivatives_match_central_differences(op):
    rng = np.random.default_rng(0)
    check_derivative(op, [rng.uniform(0.5, 2.0, 29), rng.uniform(0.5, 2.0, 29) * rng.choice([-1, 1], 29)])


def check_derivative(op: str, args: list[np.ndarray]):
    """Differentiate y = op(args) through the same machinery the cells use and compare per argument."""
    b = GraphBuilder()
    size = "hidden"
    leaves = [b.leaf("param", f"a{k}", size) for k in range(len(args))]
    y = b.op(op, *leaves)
    from lstmdsl.ir import Cell, Param, StateVar
    cell = Cell("t", "x", (StateVar("h", size),), tuple(Param(f"a{k}", "vector", (size,)) for k in range(len(args))),
                tuple(b.nodes), (y,), y)
    grad = differentiate(cell)
    from lstmdsl.reference import _evaluate
    params = {f"a{k}": a for k, a in enumerate(args)}
    n = args[0].size
    fwd = _evaluate(cell.nodes, None, params, 1, np.dtype(np.float64), {size: n})
    g = np.ones((1, n))

    def leaf(node):
        if node.op == "fwd":
            return fwd[node.attr]
        return g if node.attr == OUTPUT_GRAD else np.zeros((1, n))
    back = _evaluate(grad.nodes, leaf, params, 1, np.dtype(np.float64), {size: n})
    analytic = dict(grad.d_vectors)
    eps = 1e-6
    for k, a in enumerate(args):
        plus = [x + eps if j == k else x for j, x in enumerate(args)]
        minus = [x - eps if j == k else x for j, x in enumerate(args)]
        numeric = (OPS[op].numpy(*plus) - OPS[op].numpy(*minus)) / (2 * eps)
        np.testing.assert_allclose(back[analytic[f"a{k}"]][0], numeric, rtol=1e-6, atol=1e-8)


def test_every_user_function_is_differentiated():
    assert set(FUNCTIONS) == {"sigmoid", "tanh", "relu", "identity", "exp", "log", "hard_sigmoid", "abs", "sqrt",
                              "softplus", "logsigmoid", "softsign", "gelu", "silu", "max", "min"}
    assert all(OPS[f].derivative is not _no_derivative for f in FUNCTIONS)


@pytest.mark.parametrize("name", SPECS)
def test_backward_graph_is_well_formed(name):
    s = lstmdsl.parse(name)
    g = s.grad
    assert len(g.d_states) == len(s.cell.states)
    for i, n in enumerate(g.nodes):
        assert all(0 <= a < i for a in n.args)
        assert n.op in OPS or n.op in ("fwd", "grad_in", "const", "param", "matvec_t", "expand")
    # every parameter gets a gradient
    got = {name for name, _ in g.d_vectors} | {name for name, _, _ in g.d_matrices}
    assert got == {p.name for p in s.cell.params}
