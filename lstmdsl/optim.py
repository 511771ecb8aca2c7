"""Optimizers and gradient clipping for lstmdsl layers, on numpy and CuPy arrays alike.

    opt = lstmdsl.optim.Adam(layer.parameters(), lr=1e-3)
    ...
    layer.zero_grad(); y, _ = layer.forward(x); layer.backward(dy)
    lstmdsl.optim.clip_grad_norm(layer.grads(), max_norm=1.0)
    opt.step(layer.grads())

An optimizer holds the parameter arrays (name -> array) and updates them in place, so a layer's
parameters() dict can be handed over once. Each update follows torch.optim's documented algorithm
exactly (same defaults, same order of operations), so trajectories match torch's to rounding; the
tests check this to 1e-6.
"""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np

from .arrays import array_module, is_cupy, to_numpy
from .errors import EXIT_CHECK_FAILED, LstmdslError, UsageError


class NonFiniteGradients(LstmdslError):
    """A step's gradients hold NaN or infinite values (a numerical failure: exit 1, as a failed check)."""

    exit_code = EXIT_CHECK_FAILED


def _check(params: dict, grads: dict) -> None:
    if not isinstance(grads, dict):
        raise UsageError(f"the gradients are a dict of arrays by parameter name (layer.grads()), got "
                         f"{type(grads).__name__}")
    if set(grads) != set(params):
        missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        raise UsageError(f"the gradients do not match the parameters (missing: {missing}, unexpected: {extra})")
    for k, p in params.items():
        if not (isinstance(grads[k], np.ndarray) or is_cupy(grads[k])):
            raise UsageError(f"the gradient of {k} is {type(grads[k]).__name__}, not a numpy or CuPy array")
        if grads[k].shape != p.shape:
            raise UsageError(f"gradient of {k} has shape {list(grads[k].shape)}, the parameter {list(p.shape)}")
    # NaN or infinite gradients would make every parameter NaN, and each later call's results with them, silently:
    # refused before any update, one reduction an array and one read for them all (a review, 2026-12-08); a sum
    # that overflows from finite terms is told apart array by array
    with np.errstate(over="ignore", invalid="ignore"):
        total = sum(g.sum(dtype=np.float32) if g.dtype == np.float16 else g.sum() for g in grads.values())
        bad = None if math.isfinite(float(total)) else \
            next((k for k, g in grads.items() if not bool(array_module(g).isfinite(g).all())), None)
    if bad is not None:  # (else finite terms whose sum overflowed)
        raise NonFiniteGradients(f"the gradient of {bad} holds NaN or infinite values: no step taken, the parameters "
                                 "are unchanged (a loss that overflowed? lstmdsl train skips such steps under fp16's "
                                 "loss scaling)")


def _positive(name: str, value: float, allow_zero: bool = True) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0
            or (value == 0 and not allow_zero)):  # (numpy scalars too: np.float32(1e-3))
        raise UsageError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


class Optimizer:
    def __init__(self, params: dict, **hyper):
        if not isinstance(params, dict) or not params:
            raise UsageError("an optimizer takes a non-empty dict of parameter arrays (layer.parameters())")
        seen = {}
        for k, p in params.items():  # (updated in place: a number, an int array or a read-only one cannot be)
            if not (isinstance(p, np.ndarray) or is_cupy(p)) or p.dtype.kind != "f":
                what = f"an array of {p.dtype}" if isinstance(p, np.ndarray) or is_cupy(p) else type(p).__name__
                raise UsageError(f"parameter {k!r} is {what}: an optimizer updates floating-point numpy or CuPy "
                                 "arrays in place")
            if isinstance(p, np.ndarray) and not p.flags.writeable:
                raise UsageError(f"parameter {k!r} is a read-only array: an optimizer updates it in place")
            if id(p) in seen:  # (it was updated twice a step)
                raise UsageError(f"parameters {seen[id(p)]!r} and {k!r} are the same array")
            seen[id(p)] = k
        self.params = params
        self._set_hyper(**hyper)
        self.steps = 0

    def _set_hyper(self, lr) -> None:
        """The hyperparameters (_HYPER), checked; the constructor's and load_state_dict's one way in."""
        self.lr = _positive("lr", lr, allow_zero=False)

    def step(self, grads: dict) -> None:
        _check(self.params, grads)
        self.steps += 1
        for k, p in self.params.items():
            self._update(k, p, grads[k], array_module(p))

    def _update(self, name, p, g, xp) -> None:
        raise NotImplementedError

    _SLOTS: tuple[str, ...] = ()  # the per-parameter state dicts (momentum buffers, moments)
    _HYPER: tuple[str, ...] = ("lr",)  # the hyperparameters (constructor arguments) state_dict keeps
    _non_negative: tuple[str, ...] = ()  # slots that are never negative (Adam's second moments)

    def state_dict(self) -> dict:
        """The optimizer's state as numpy arrays by "slot/parameter name", plus "steps", the optimizer's class
        ("kind") and its hyperparameters ("hyper/lr", ...: load_state_dict restores them, as torch's does): what
        a checkpoint keeps to continue training exactly."""
        out = {"steps": np.array(self.steps), "kind": np.array(type(self).__name__)}
        out |= {f"hyper/{k}": np.array(getattr(self, k)) for k in self._HYPER}
        for slot in self._SLOTS:
            out |= {f"{slot}/{k}": to_numpy(v) for k, v in getattr(self, slot).items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (arrays go to the parameters' array module): all of it checked
        first, then taken over, so a state that is refused leaves the optimizer as it was."""
        if not isinstance(state, dict):
            raise UsageError(f"an optimizer state is a dict (as state_dict() returns), got {type(state).__name__}")
        if "steps" not in state:
            raise UsageError("the optimizer state has no step count (\"steps\"): not what state_dict() returned")
        steps = state["steps"]
        if np.ndim(steps) != 0 or not float(steps).is_integer() or int(steps) < 0:
            raise UsageError(f"the optimizer's step count is {steps!r}, not a count of steps")
        kind = state.get("kind")  # (lacking before 2026-12-06: the slots' names tell then)
        if kind is not None and str(kind) != type(self).__name__:
            raise UsageError(f"the optimizer state is {str(kind)}'s, not {type(self).__name__}'s: its moments or "
                             "buffers do not carry over")
        stray = sorted(k for k in state if k not in ("steps", "kind") and not (
            k.partition("/")[0] in ("hyper", *self._SLOTS) and k.partition("/")[2]))
        if stray:  # (another optimizer's slots: dropped silently before)
            raise UsageError(f"the optimizer state holds {', '.join(map(repr, stray))}, which "
                             f"{type(self).__name__}'s state_dict() does not give")
        trial = copy.copy(self)  # (the hyperparameters checked as the constructor checks them)
        hyper = self._saved_hyper(state)
        try:
            trial._set_hyper(**hyper)
        except UsageError as e:
            raise UsageError(f"the optimizer state's hyperparameters: {e}") from None
        tables = {slot: trial._slot(slot, state, int(steps)) for slot in self._SLOTS}
        for k in self._HYPER:
            setattr(self, k, getattr(trial, k))
        self.steps = int(steps)
        for slot, table in tables.items():
            getattr(self, slot).clear()
            getattr(self, slot).update(table)

    def _saved_hyper(self, state: dict) -> dict:
        """The hyperparameters a state holds ("hyper/NAME"), over the optimizer's own."""
        values = {k: getattr(self, k) for k in self._HYPER}
        for key, v in state.items():
            prefix, _, k = key.partition("/")
            if prefix != "hyper":
                continue
            if k not in values:
                raise UsageError(f"the optimizer state holds hyperparameter {k}, which {type(self).__name__} does "
                                 "not have")
            v = to_numpy(v)
            if v.dtype.kind not in "biuf" or v.shape != np.shape(values[k]):
                raise UsageError(f"the optimizer state's {k} is {v!r}, not a value of {k}")
            values[k] = tuple(v.tolist()) if v.ndim else v.item()
        return values

    def _slot(self, slot: str, state: dict, steps: int) -> dict:
        """One slot's arrays from a state (checked), on the parameters' array module."""
        table = {}
        for key, v in state.items():
            prefix, _, name = key.partition("/")
            if prefix != slot:
                continue
            if name not in self.params:
                raise UsageError(f"the optimizer state names parameter {name!r}, which is not trained here")
            v = to_numpy(v)  # (what state_dict() returned, or CuPy arrays: checked on the host)
            if v.shape != self.params[name].shape:
                raise UsageError(f"the optimizer's {slot} of {name} is {list(v.shape)}, the parameter "
                                 f"{list(self.params[name].shape)}")
            dtype = self.params[name].dtype
            with np.errstate(over="ignore"):  # (float64 values past float32's range: infinite there)
                cast = v.astype(dtype) if v.dtype.kind == "f" else None
            if cast is None or not np.all(np.isfinite(cast)):
                raise UsageError(f"the optimizer's {slot} of {name} has non-finite values (or values "
                                 f"past {np.dtype(dtype).name}'s range, or no floating-point type)")
            if slot in self._non_negative and np.any(v < 0):
                raise UsageError(f"the optimizer's {slot} of {name} has negative values, which a {slot} "
                                 "never holds")
            table[name] = array_module(self.params[name]).asarray(cast)
        missing = sorted(set(self.params) - set(table)) if steps and slot in self._full_slots() else []
        if missing:  # (fresh moments where the run had others: not the same training)
            raise UsageError(f"the optimizer state after {steps} steps has no {slot} of {', '.join(missing)}")
        return table

    def _full_slots(self) -> tuple[str, ...]:
        """The slots that hold every parameter once a step has been taken."""
        return self._SLOTS


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum (heavy ball or Nesterov) and L2 weight decay,
    as torch.optim.SGD (dampening 0)."""

    _SLOTS = ("buffers",)
    _HYPER = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, params: dict, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        self.buffers: dict = {}

    def _set_hyper(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0) -> None:
        super()._set_hyper(lr)
        self.momentum = _positive("momentum", momentum)
        self.weight_decay = _positive("weight_decay", weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise UsageError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise UsageError("nesterov needs a momentum above 0")
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, xp) -> None:
        d = g + self.weight_decay * p if self.weight_decay else g
        if self.momentum:
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = d.copy()
            else:
                buf *= self.momentum
                buf += d
            d = d + self.momentum * buf if self.nesterov else buf
        p -= self.lr * d

    def _full_slots(self) -> tuple[str, ...]:
        return self._SLOTS if self.momentum else ()


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as torch.optim.Adam: bias-corrected moments; weight_decay adds an L2 term
    to the gradient."""

    decoupled = False
    _SLOTS = ("m", "v")
    _HYPER = ("lr", "betas", "eps", "weight_decay")
    _non_negative = ("v",)

    def __init__(self, params: dict, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.m: dict = {}
        self.v: dict = {}

    def _set_hyper(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> None:
        super()._set_hyper(lr)
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in betas)):
            raise UsageError(f"betas must be two numbers (beta1, beta2) in [0, 1), got {betas!r}")
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise UsageError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (float(b1), float(b2))
        self.eps = _positive("eps", eps)
        self.weight_decay = _positive("weight_decay", weight_decay)

    def _update(self, name, p, g, xp) -> None:
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m = self.m.setdefault(name, xp.zeros_like(p))
        v = self.v.setdefault(name, xp.zeros_like(p))
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        bias1 = 1 - b1 ** self.steps
        bias2 = 1 - b2 ** self.steps
        denom = xp.sqrt(v) / math.sqrt(bias2) + self.eps
        p -= (self.lr / bias1) * (m / denom)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as torch.optim.AdamW: weight decay applied to the weights
    directly, decoupled from the gradient; default weight_decay 0.01."""

    decoupled = True

    def __init__(self, params: dict, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm; returns the norm before
    clipping (as torch.nn.utils.clip_grad_norm_, with its 1e-6 guard)."""
    max_norm = _positive("max_norm", max_norm, allow_zero=False)
    if not isinstance(grads, dict) or any(not (isinstance(g, np.ndarray) or is_cupy(g)) or g.dtype.kind != "f"
                                          for g in grads.values()):  # (scaled in place)
        raise UsageError("clip_grad_norm takes a dict of floating-point numpy or CuPy gradient arrays (layer.grads())")
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    if not math.isfinite(total):
        raise UsageError("the gradients contain NaN or infinite values; cannot clip them")
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= scale
    return total
