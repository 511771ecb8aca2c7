"""Stage 2: the Cell IR, a typed DAG of one time step.

Everything here is a frozen dataclass of tuples, so equal IR hashes equal and can name a cache entry.
Nodes live in one tuple in topological order; a node's id is its index and its arguments are ids of
earlier nodes. Sizes are symbolic: "input", "hidden" or "proj" (bound to numbers by the API); "one" is a
per-row scalar (what a reduction gives: one value per batch row), None a scalar constant; both broadcast.

Node ops:
  leaves   input (attr: name), state (attr: name, the value at the start of the step),
           param (attr: vector parameter name), const (attr: float value),
           stepin (attr: name): a per-step input besides x, given by whoever runs the layer (the mask of
           sequence lengths, "length": 1 while the step is inside the sequence, 0 after its end; the
           masks of the regularisers the spec writes, dropout and zoneout, listed in Cell.noise)
  matvec   attr: matrix name, args (operand,) -> W @ operand
  any entry of ops.OPS (sigmoid, add, ...) with its arity; a reduction (sum, mean, rowmax) takes any number of
           vectors and has size "one"
  expand   (backward graphs) args (g,) of size "one" -> g broadcast to the node's size, divided by the total
           of the sizes in attr (for a mean's gradient; attr () divides by nothing)
The backward graph (grad.py) uses the same Node type with three more ops: fwd (attr: id of a forward
node whose value it reads), grad_in (attr: OUTPUT_GRAD or a state name: an incoming gradient) and
matvec_t (attr: a tuple of matrix names, args: one gradient each -> sum_k g_k @ W_k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops import OPS

SIZES = ("input", "hidden", "proj")
HEADS = "heads"  # the count of a block-diagonal matrix's blocks: the layer's num_heads


def per_head(size: str) -> str:
    """The size of one block of a block-diagonal matrix along a side of size `size`: "hidden/heads"."""
    return f"{size}/{HEADS}"


PER_HEAD = tuple(per_head(s) for s in SIZES)
ROW = "one"  # the size of a per-row scalar (a reduction's result): one value per row, broadcast over a vector
LEAF_OPS = ("input", "state", "param", "const", "fwd", "grad_in", "stepin")
OUTPUT_GRAD = "<output>"  # grad_in's attr for the output's incoming gradient dy: no state can be so named (a state
# named `output` once shared dy's leaf, and its backward read dy for its own gradient)


@dataclass(frozen=True, slots=True)
class Node:
    op: str
    args: tuple[int, ...] = ()
    attr: str | float | int | None = None
    size: str | None = None  # symbolic size; None for a scalar constant


@dataclass(frozen=True, slots=True)
class StateVar:
    name: str
    size: str


@dataclass(frozen=True, slots=True)
class Param:
    """A learned parameter. A block-diagonal matrix (heads=True, `heads R` in a spec) of logical shape
    [rows, cols] is stored as its num_heads diagonal blocks stacked by rows: shape (rows, cols/heads),
    block k = rows k * rows/heads onward, acting on the k-th cols/heads features of its operand."""

    name: str
    kind: str  # "matrix" | "vector"
    shape: tuple[str, ...]  # (rows, cols) for a matrix (cols/heads for heads), (size,) for a vector
    heads: bool = False

    @property
    def cols(self) -> str:
        """The size of the operand a matrix multiplies."""
        return self.shape[1].removesuffix("/" + HEADS)


@dataclass(frozen=True, slots=True)
class Noise:
    """A regulariser's mask: the stepin leaf `name` ([T, B, size] values, one per step), drawn afresh for
    every training call and constant in evaluation (see Noise.training and Noise.evaluation):

      dropout  v * m with m = 0 (probability p) or 1 / (1 - p): dropout(v, p) in a spec. Evaluation: m = 1.
      zoneout  old + m * (new - old) with m = 0 (probability p: the state keeps its old value) or 1:
               zoneout(new, old, p). Evaluation: m = 1 - p, the expectation (Krueger et al. 2016).
    """

    name: str  # the stepin leaf's name
    kind: str  # "dropout" | "zoneout"
    p: float
    size: str

    def evaluation(self) -> float:
        return 1.0 if self.kind == "dropout" else 1.0 - self.p

    def training(self, uniform):
        """The mask from uniform draws in [0, 1) (an array of any array module)."""
        keep = uniform >= self.p
        return keep * (1.0 / (1.0 - self.p)) if self.kind == "dropout" else keep * 1.0


@dataclass(frozen=True, slots=True)
class Cell:
    """One time step of one layer."""

    name: str
    input: str  # the input's name; its size is "input"
    states: tuple[StateVar, ...]
    params: tuple[Param, ...]  # in order of first appearance in the spec
    nodes: tuple[Node, ...]
    updates: tuple[int, ...]  # node id of each state's new value, aligned with `states`
    output: int  # node id of what the layer emits
    names: tuple[tuple[str, int], ...] = ()  # the spec's names for nodes (intermediates, updates)
    noise: tuple[Noise, ...] = ()  # the regularisers' masks (stepin leaves), in the order of the spec

    @property
    def output_size(self) -> str:
        return self.nodes[self.output].size

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def name_of(self, node_id: int) -> str | None:
        for name, nid in self.names:
            if nid == node_id:
                return name
        return None


class IRError(AssertionError):
    """An IR invariant does not hold: a bug in a pass or in lowering, never a user error."""


def result_size(sizes) -> str | None:
    """The size of an elementwise result: the vectors' one size; per-row scalars and constants broadcast."""
    sizes = set(sizes) - {None}
    vectors = sizes - {ROW}
    if len(vectors) > 1:
        raise IRError(f"an elementwise operation on sizes {sorted(vectors)}")
    return vectors.pop() if vectors else (ROW if sizes else None)


class GraphBuilder:
    """Builds a node tuple with hash-consing (equal nodes are shared) and constant folding."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self._ids: dict[Node, int] = {}

    def add(self, node: Node) -> int:
        if (node.op in OPS and not OPS[node.op].reduction and node.args
                and all(self.nodes[a].op == "const" for a in node.args)):
            with np.errstate(all="ignore"):  # a non-finite result is the caller's to report
                value = OPS[node.op].numpy(*(np.float64(self.nodes[a].attr) for a in node.args))
            node = Node("const", (), float(value), None)
        if node not in self._ids:
            self._ids[node] = len(self.nodes)
            self.nodes.append(node)
        return self._ids[node]

    def leaf(self, op: str, attr, size: str | None) -> int:
        return self.add(Node(op, (), attr, size))

    def const(self, value: float) -> int:
        return self.leaf("const", float(value), None)

    def op(self, name: str, *args: int) -> int:
        if OPS[name].reduction:
            return self.add(Node(name, tuple(args), None, ROW))
        return self.add(Node(name, tuple(args), None, result_size(self.nodes[a].size for a in args)))

    def expand(self, g: int, size: str, divisor: tuple[str, ...] = ()) -> int:
        """A per-row scalar broadcast over a vector of `size` (divided by the sum of the `divisor` sizes)."""
        return self.add(Node("expand", (g,), tuple(divisor), size))

    def mul(self, a: int, b: int) -> int:
        return self.op("mul", a, b)

    def sub(self, a: int, b: int) -> int:
        return self.op("sub", a, b)

    def div(self, a: int, b: int) -> int:
        return self.op("div", a, b)

    def matvec(self, matrix: str, operand: int, rows: str) -> int:
        return self.add(Node("matvec", (operand,), matrix, rows))


def prune(nodes: tuple[Node, ...], roots) -> tuple[tuple[Node, ...], dict[int, int]]:
    """Drop the nodes no root depends on. Returns the kept nodes (order preserved) and old id -> new id."""
    live = set(roots)
    for i in reversed(range(len(nodes))):
        if i in live:
            live.update(nodes[i].args)
    remap: dict[int, int] = {}
    kept = []
    for i, n in enumerate(nodes):
        if i in live:
            remap[i] = len(kept)
            kept.append(Node(n.op, tuple(remap[a] for a in n.args), n.attr, n.size))
    return tuple(kept), remap


def verify(cell: Cell) -> None:
    """Check the invariants of a Cell; raise IRError naming the first that fails."""
    nodes = cell.nodes
    params = {p.name: p for p in cell.params}
    if len(params) != len(cell.params):
        raise IRError("duplicate parameter names")
    if len({s.name for s in cell.states}) != len(cell.states):
        raise IRError("duplicate state names")
    for p in cell.params:
        want = 2 if p.kind == "matrix" else 1
        if p.kind not in ("matrix", "vector") or len(p.shape) != want or not set(p.shape) <= set(SIZES + PER_HEAD) \
                or (p.heads and (p.kind != "matrix" or p.shape[1] != per_head(p.cols))) \
                or (not p.heads and not set(p.shape) <= set(SIZES)):
            raise IRError(f"bad parameter {p}")
    state_sizes = {s.name: s.size for s in cell.states}
    for i, n in enumerate(nodes):
        if any(not 0 <= a < i for a in n.args):
            raise IRError(f"node {i} {n.op}: arguments {n.args} are not earlier nodes")
        arg_sizes = [nodes[a].size for a in n.args]
        if n.op == "const":
            ok = not n.args and isinstance(n.attr, float) and n.size is None
        elif n.op == "input":
            ok = not n.args and n.attr == cell.input and n.size == "input"
        elif n.op == "state":
            ok = not n.args and state_sizes.get(n.attr) == n.size
        elif n.op == "param":
            p = params.get(n.attr)
            ok = not n.args and p is not None and p.kind == "vector" and p.shape == (n.size,)
        elif n.op == "stepin":
            ok = not n.args and isinstance(n.attr, str) and n.size in SIZES + (ROW,)
        elif n.op == "matvec":
            p = params.get(n.attr)
            ok = (len(n.args) == 1 and p is not None and p.kind == "matrix"
                  and (p.shape[0], p.cols) == (n.size, arg_sizes[0]))
        elif n.op in OPS and OPS[n.op].reduction:
            ok = len(n.args) >= 1 and None not in arg_sizes and n.size == ROW
        elif n.op in OPS:
            vectors = set(arg_sizes) - {None, ROW}
            ok = (len(n.args) == OPS[n.op].arity and len(vectors) <= 1 and n.size != None  # noqa: E711
                  and n.size == (vectors.pop() if vectors else ROW if ROW in arg_sizes else "?"))
        else:
            ok = False
        if not ok:
            raise IRError(f"node {i} is malformed: {n}")
    if len(cell.updates) != len(cell.states):
        raise IRError("every state needs exactly one update")
    for s, u in zip(cell.states, cell.updates):
        if not 0 <= u < len(nodes) or nodes[u].size != s.size:
            raise IRError(f"update of state {s.name} is node {u}, which does not have size {s.size}")
    if not 0 <= cell.output < len(nodes) or nodes[cell.output].size is None:
        raise IRError("the output must be a vector node")
    stepins = {n.attr: n.size for n in nodes if n.op == "stepin"}
    for z in cell.noise:
        if stepins.get(z.name) != z.size or z.kind not in ("dropout", "zoneout") or not 0 <= z.p < 1:
            raise IRError(f"bad regulariser {z}")
    used = {n.attr for n in nodes if n.op in ("param", "matvec")}
    if used != set(params):
        raise IRError(f"parameters {sorted(set(params) ^ used)} are declared but unused or used but undeclared")


def format_cell(cell: Cell) -> str:
    """A readable listing of the IR (for `lstmdsl compile --emit ir`)."""
    lines = [f"cell {cell.name}", f"  input {cell.input} : input"]
    lines += [f"  state {s.name} : {s.size}" for s in cell.states]
    for p in cell.params:
        lines.append(f"  param {p.name} : {p.kind} [{', '.join(p.shape)}]"
                     + (" (block-diagonal: heads blocks)" if p.heads else ""))
    for i, n in enumerate(cell.nodes):
        name = cell.name_of(i)
        args = ", ".join(f"%{a}" for a in n.args)
        attr = "" if n.attr is None else (repr(n.attr) if n.op == "const" else str(n.attr))
        body = f"{n.op}({', '.join(x for x in (attr, args) if x)})"
        lines.append(f"  %{i} = {body} : {n.size or 'scalar'}" + (f"    # {name}" if name else ""))
    for s, u in zip(cell.states, cell.updates):
        lines.append(f"  update {s.name} <- %{u}")
    lines.append(f"  output %{cell.output}")
    lines += [f"  noise {z.name}: {z.kind} p={z.p:g} : {z.size}" for z in cell.noise]
    return "\n".join(lines)
