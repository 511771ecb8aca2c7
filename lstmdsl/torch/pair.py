"""The two directions of a bidirectional layer issued together (lstmdsl.torch's modules, eager calls on CUDA
outside a CUDA-graph capture): the reverse direction's op is set up first (checks, inputs copied in on a side
stream), then the forward direction's up to its launch, and the reverse direction's launch follows at once, before
either direction's outputs are allocated and copied out. Issued one op after the other, the host spent one op's
ending and the other's setting up between the two launches, and at B = 16, H = 256 the two persistent kernels
(about 0.31 ms each) then ran one after the other (benchmarks/results/probes/packed_overlap_h200_h100.txt).

One autograd node takes the pair; its backward runs the forward direction's backward on the current stream and the
reverse direction's on the side stream, and adds the two gradients of the input both read. The caching allocator
is told which stream uses which tensor. On CPU tensors (the numpy reference) the two run one after the other
through the same node, which the CPU tests compare with the directions run apart."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .handles import runner
from .ops import _NoSecondDerivative, backward_impl, forward_impl, forward_started

_SIDE_STREAMS: dict = {}  # device -> the side stream of reverse directions (modules share it)

Unit = tuple[list[Tensor], list[Tensor], list[Tensor], int]  # one direction: (h0, params, steps, handle)


def run_pair(x: Tensor, units: list[Unit], train: bool) -> list[list[Tensor]]:
    """[[y, *hn] of the forward direction, [y, *hn] of the reverse one] of a layer reading x; units as Unit,
    for d = 0 and 1."""
    if not train:
        with torch.no_grad():
            return _issue(x, units, False)
    layout = tuple((len(h0), len(params), len(steps), handle) for h0, params, steps, handle in units)
    out = Pair.apply(x, layout, *(t for h0, params, steps, _ in units for t in (*h0, *params, *steps)))
    n = 1 + len(runner(units[0][3]).state_names)
    return [list(out[:n]), list(out[n:])]


def _fork(x: Tensor):
    """(the current stream, the side stream), the side one waiting for the work issued so far; (None, None) on
    CPU."""
    if not x.is_cuda:
        return None, None
    main = torch.cuda.current_stream(x.device)
    if x.device not in _SIDE_STREAMS:
        _SIDE_STREAMS[x.device] = torch.cuda.Stream(x.device)
    side = _SIDE_STREAMS[x.device]
    side.wait_stream(main)
    return main, side


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _join(main, side, used: list, made: list) -> None:
    """The current stream waits for the side one; `used` were read there, `made` allocated there."""
    if main is None:
        return
    main.wait_stream(side)
    for t in used:
        if t is not None:
            t.record_stream(side)
    for t in made:
        if t is not None:
            t.record_stream(main)


def _issue(x: Tensor, units: list[Unit], train: bool) -> list[list[Tensor]]:
    """On CUDA: the reverse direction's op up to its launch (checks, its inputs copied in on the side stream), the
    forward direction's up to and including its launch, the reverse direction's launch, then each one's outputs
    (ops.forward_started). On CPU: one after the other."""
    (h0, params, steps, handle), (h0_r, params_r, steps_r, handle_r) = units
    main, side = _fork(x)
    with _on(side):
        finish = forward_started(x, h0_r, params_r, steps_r, handle_r, train) if x.is_cuda else \
            (lambda: forward_impl(x, h0_r, params_r, steps_r, handle_r, train))
    second: list[Tensor] = []

    def issue_second() -> None:  # (forward_impl calls it once the forward direction's first work is issued)
        if not second:
            with _on(side):
                second.extend(finish())
    try:  # (joined whatever happens: the side stream may be reading the reverse direction's inputs)
        first = forward_impl(x, h0, params, steps, handle, train, issued=issue_second)
        issue_second()  # (the reference, on CPU, has no such moment: after)
    finally:
        _join(main, side, [x, *h0_r, *params_r, *steps_r], second)
    return [first, second]


def _units(layout: tuple, flat: list[Tensor]) -> list[Unit]:
    out, i = [], 0
    for n, p, m, handle in layout:
        out.append((list(flat[i:i + n]), list(flat[i + n:i + n + p]), list(flat[i + n + p:i + n + p + m]), handle))
        i += n + p + m
    return out


class Pair(torch.autograd.Function):
    """Both directions' forward and backward, as ops.Eager is one direction's."""

    @staticmethod
    def forward(ctx, x, layout, *flat):
        outs = _issue(x, _units(layout, list(flat)), True)
        ctx.layout, ctx.first = layout, len(outs[0])
        ctx.runners = [runner(u[3]) for u in layout]  # (as ops.Eager keeps its runner for the backward)
        ctx.set_materialize_grads(False)  # (the engine zeroes a final state's gradient the loss does not reach)
        ctx.save_for_backward(x, *flat, outs[0][0], outs[1][0])
        return (*outs[0], *outs[1])

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        x, flat, ys = saved[0], list(saved[1:-2]), saved[-2:]
        units = _units(ctx.layout, flat)
        need, first = ctx.needs_input_grad, 2  # (x, layout, *flat): the unit's first tensor's index there
        main, side = _fork(x)
        outs, given = [], [grads[:ctx.first], grads[ctx.first:]]
        h0_r, params_r, steps_r, _ = units[1]
        try:  # (joined whatever happens, as in _issue)
            for d, ((h0, params, steps, handle), g, y) in enumerate(zip(units, given, ys)):
                wanted = need[0], any(need[first:first + len(h0)])
                with _on(side if d else None):  # (a zero dy made on the stream that reads it)
                    dy = g[0] if g[0] is not None else torch.zeros_like(y)
                    outs.append(backward_impl(x, h0, params, steps, y, dy, list(g[1:]), handle, views=True,
                                              wanted=wanted))
                first += len(h0) + len(params) + len(steps)
        finally:
            _join(main, side, [x, *h0_r, *params_r, *steps_r, ys[1], *given[1]], outs[1] if len(outs) > 1 else [])
        dx = outs[0][0] if outs[1][0] is None else outs[1][0] if outs[0][0] is None else outs[0][0] + outs[1][0]
        rest = [g for (h0, params, steps, _), out in zip(units, outs) for g in (*out[1:], *([None] * len(steps)))]
        if torch.is_grad_enabled():  # create_graph=True: as ops.Eager's backward
            links = [t for t in (x, *flat, *(g for g in grads if g is not None)) if t.requires_grad]
            got = [dx, *rest]
            got = list(_NoSecondDerivative.apply(len(got), *(g if g is None else g.detach() for g in got), *links))
            dx, rest = got[0], got[1:]
        return (dx, None, *rest)
