"""Training a compiled spec on a task, on either backend: the loop behind `lstmdsl train`.

Tasks:
  chorales  next-frame prediction on the piano rolls of data.chorales(): the layer reads frame t, a
            dense layer with a sigmoid predicts frame t + 1, trained with binary cross-entropy; the
            metric is the negative log-likelihood per frame (nats, summed over pitches, averaged over
            frames), the usual figure for JSB-style data.
  digits    data.digits() read row by row; the dense layer classifies the last step's output; the
            loss is softmax cross-entropy, the metric test accuracy.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import data, nn, optim
from .api import compile
from .errors import UsageError

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "nesterov")


@dataclass(frozen=True)
class TrainConfig:
    spec: str
    task: str
    epochs: int = 10
    hidden_size: int = 128
    layers: int = 1
    optimizer: str = "adam"
    lr: float = 1e-3
    batch: int = 32
    backend: str = "numpy"
    clip: float = 1.0
    forget_bias: float | None = 1.0
    seed: int = 0
    max_train: int | None = None  # use only the first N training sequences (quick runs)


def _optimizer(name: str, params: dict, lr: float):
    if name == "adam":
        return optim.Adam(params, lr=lr)
    if name == "adamw":
        return optim.AdamW(params, lr=lr)
    if name == "sgd":
        return optim.SGD(params, lr=lr)
    if name in ("momentum", "nesterov"):
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=name == "nesterov")
    raise UsageError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class _Task:
    """Batches as numpy arrays: (x [T, B, I], target, mask [T, B] or [B])."""

    def __init__(self, name: str, max_train: int | None):
        self.name = name
        if name == "chorales":
            c = data.chorales()
            self.seqs = c.rolls
            self.input_size = self.output_size = c.pitches
        elif name == "digits":
            d = data.digits()
            self.x, self.y = d.x, d.y
            self.input_size, self.output_size = 8, 10
        else:
            raise UsageError(f"unknown task {name!r}; choose chorales or digits")
        self.max_train = max_train

    def count(self, split: str) -> int:
        n = len(self.seqs[split]) if self.name == "chorales" else len(self.y[split])
        return min(n, self.max_train) if split == "train" and self.max_train else n

    def batch(self, split: str, index: np.ndarray):
        if self.name == "digits":
            return self.x[split][:, index], self.y[split][index], None
        rolls = [self.seqs[split][k] for k in index]
        # lengths rounded up to a multiple of 32 frames (masked): the GPU backend keeps one workspace and
        # one captured CUDA graph per (T, B), so few distinct lengths mean few captures
        T = -(-(max(len(r) for r in rolls) - 1) // 32) * 32
        x = np.zeros((T, len(rolls), self.input_size), np.float32)
        target = np.zeros_like(x)
        mask = np.zeros((T, len(rolls)), np.float32)
        for b, r in enumerate(rolls):
            n = len(r) - 1
            x[:n, b], target[:n, b], mask[:n, b] = r[:-1], r[1:], 1
        return x, target, mask


class Model:
    """A compiled layer stack and a dense head, with the loss of the task."""

    def __init__(self, cfg: TrainConfig, task: _Task):
        self.task = task
        self.layer = compile(cfg.spec, task.input_size, cfg.hidden_size, cfg.layers, backend=cfg.backend,
                             seed=cfg.seed, forget_bias=cfg.forget_bias if _has_forget_gate(cfg.spec) else None)
        self.head = nn.Dense(self.layer.output_size, task.output_size, backend=cfg.backend, seed=cfg.seed)
        self.xp = optim.array_module(self.head.parameters()["W"])

    def parameters(self) -> dict:
        return {**self.layer.parameters(), **{f"head.{k}": v for k, v in self.head.parameters().items()}}

    def grads(self) -> dict:
        return {**self.layer.grads(), **{f"head.{k}": v for k, v in self.head.grads().items()}}

    def loss(self, x, target, mask, train: bool):
        """(mean loss, the task's metric numerator, its denominator); with train, gradients too."""
        xp = self.xp
        x = xp.asarray(x)
        y, _ = self.layer.forward(x, train=train)
        if self.task.name == "digits":
            logits = self.head.forward(y[-1])
            labels = xp.asarray(target)
            loss, dlogits = nn.softmax_cross_entropy(logits, labels)
            correct = float((logits.argmax(axis=-1) == labels).sum())
            metric = (correct, len(target))
        else:
            logits = self.head.forward(y)
            m = xp.asarray(mask)
            loss, dlogits = nn.sigmoid_binary_cross_entropy(logits, xp.asarray(target), m)
            frames = float(mask.sum())
            metric = (loss * frames * self.task.output_size, frames)  # NLL summed over pitches per frame
        if train:
            dy = self.head.backward(dlogits)
            if self.task.name == "digits":
                full = xp.zeros_like(y)
                full[-1] = dy
                dy = full
            self.layer.backward(xp.ascontiguousarray(dy))
        return loss, metric


def _has_forget_gate(spec: str) -> bool:
    from .api import parse

    return any(p.name == "b_f" for p in parse(spec).cell.params)


def evaluate(model: Model, split: str, batch: int) -> float:
    """The task's metric over a split: NLL per frame (chorales) or accuracy (digits)."""
    n = model.task.count(split)
    total, count = 0.0, 0.0
    for start in range(0, n, batch):
        x, target, mask = model.task.batch(split, np.arange(start, min(n, start + batch)))
        _, (num, den) = model.loss(x, target, mask, train=False)
        total, count = total + num, count + den
    return total / count


def run(cfg: TrainConfig, out: Path | None, log=sys.stderr) -> dict:
    """Train, evaluate on the test split, save parameters, history and a loss-curve plot to `out`."""
    for name in ("epochs", "hidden_size", "layers", "batch"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    task = _Task(cfg.task, cfg.max_train)
    model = Model(cfg, task)
    opt = _optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    history = []
    n = task.count("train")
    batches = (n + cfg.batch - 1) // cfg.batch
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        total, count, losses = 0.0, 0.0, []
        for k in range(batches):
            x, target, mask = task.batch("train", order[k * cfg.batch:(k + 1) * cfg.batch])
            model.layer.zero_grad()
            model.head.zero_grad()
            loss, (num, den) = model.loss(x, target, mask, train=True)
            losses.append(loss)
            if cfg.clip:
                optim.clip_grad_norm(model.grads(), cfg.clip)
            opt.step(model.grads())
            total, count = total + num, count + den
            if log is not None and log.isatty():
                done = int(30 * (k + 1) / batches)
                print(f"\repoch {epoch}/{cfg.epochs} [{'#' * done}{'.' * (30 - done)}] {total / count:.4f}",
                      end="", file=log, flush=True)
        _sync(model)
        seconds = time.perf_counter() - t0
        valid = evaluate(model, "valid", cfg.batch)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "train": total / count, "valid": valid,
                        "seconds": seconds})
        if log is not None:
            label = "NLL/frame" if cfg.task == "chorales" else "accuracy"
            print(f"\repoch {epoch}/{cfg.epochs}: train {total / count:.4f}, valid {label} {valid:.4f}, "
                  f"{seconds:.1f} s" + " " * 10, file=log, flush=True)
    test = evaluate(model, "test", cfg.batch)
    result = {"config": asdict(cfg), "history": history, "test": test,
              "metric": "NLL per frame (nats)" if cfg.task == "chorales" else "accuracy",
              "seconds_per_epoch": float(np.median([h["seconds"] for h in history]))}
    if out is not None:
        _save(model, result, out, log)
    return result


def _sync(model: Model) -> None:
    if model.xp is not np:
        model.xp.cuda.Device().synchronize()


def _save(model: Model, result: dict, out: Path, log) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.layer.save(out / "layer.npz")
    np.savez(out / "head.npz", **{k: np.asarray(v.get() if hasattr(v, "get") else v)
                                 for k, v in model.head.parameters().items()})
    (out / "history.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if log is not None:
            print("note: matplotlib is not installed, so no loss-curve plot (pip install 'lstmdsl[bench]')",
                  file=log)
        return
    h = result["history"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e["epoch"] for e in h], [e["train"] for e in h], marker="o", label="train")
    ax.plot([e["epoch"] for e in h], [e["valid"] for e in h], marker="o", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel(result["metric"])
    ax.xaxis.get_major_locator().set_params(integer=True)
    cfg = result["config"]
    ax.set_title(f"{cfg['spec']} on {cfg['task']} ({cfg['backend']}, H={cfg['hidden_size']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
