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

import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import data, nn, optim
from .api import check_seed, compile
from .arrays import to_numpy
from .checkpoint import AGAIN, CHECKPOINT, load_checkpoint, save_checkpoint
from .errors import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, InputFileError, LstmdslError, OutputFileError, UsageError
from .files import output_dir, write_atomically, write_json, write_npz
from .schedule import PRECISIONS

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
    proj_size: int | None = None  # for specs using the size proj
    num_heads: int | None = None  # for specs with block-diagonal matrices (heads)
    bidirectional: bool = False  # digits only: chorales predict the next frame, which a reverse direction sees
    dropout: float = 0.0  # between stacked layers
    dropconnect: float = 0.0  # on the recurrent matrices
    precision: str | None = None  # the CUDA backend's (schedule directive precision), over the spec's own;
    # None: the spec's. The reference computes in float32 whatever it is


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
        """(x, target, mask): the mask [T, B] of the frames inside each sequence (chorales), or None."""
        if self.name == "digits":
            return self.x[split][:, index], self.y[split][index], None
        rolls = [self.seqs[split][k] for k in index]
        # padded to a multiple of 32 frames: the GPU backend keeps one workspace and one captured CUDA graph
        # per (T, B), so few distinct lengths mean few captures; the layer stops each sequence at its end
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
                             proj_size=cfg.proj_size, num_heads=cfg.num_heads, seed=cfg.seed,
                             forget_bias=cfg.forget_bias if _has_forget_gate(cfg.spec) else None,
                             bidirectional=cfg.bidirectional, dropout=cfg.dropout, dropconnect=cfg.dropconnect,
                             schedule=f"precision {cfg.precision}" if cfg.precision else None)
        self.head = nn.Dense(self.layer.output_size, task.output_size, backend=cfg.backend, seed=cfg.seed)
        self.xp = optim.array_module(self.head.parameters()["W"])

    def parameters(self) -> dict:
        return {**self.layer.parameters(), **{f"head.{k}": v for k, v in self.head.parameters().items()}}

    def grads(self) -> dict:
        return {**self.layer.grads(), **{f"head.{k}": v for k, v in self.head.grads().items()}}

    def loss(self, x, target, mask, train: bool, scale: float = 1.0):
        """(mean loss, the task's metric numerator, its denominator); with train, gradients too, the layer's
        computed for `scale` times the loss and divided by it again (fp16's loss scaling, LossScaler)."""
        xp = self.xp
        x = xp.asarray(x)
        lengths = mask.sum(axis=0).astype(np.int64) if mask is not None else None
        y, _ = self.layer.forward(x, train=train, lengths=lengths)
        half = y.shape[-1] // self.layer.directions
        if self.task.name == "digits":  # the forward direction's last output, the reverse one's first
            features = y[-1] if self.layer.directions == 1 else xp.concatenate([y[-1, :, :half], y[0, :, half:]], -1)
            logits = self.head.forward(xp.ascontiguousarray(features))
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
        if not np.isfinite(loss):
            raise Diverged("the loss is NaN or infinite: the model's output has non-finite values (does the spec "
                           "divide by zero, take the log of a value <= 0, or overflow? a smaller --lr or --clip "
                           "may help)")
        if train:
            dy = self.head.backward(dlogits)
            if self.task.name == "digits":
                full = xp.zeros_like(y)
                full[-1, :, :half] = dy[:, :half]
                if self.layer.directions == 2:
                    full[0, :, half:] = dy[:, half:]
                dy = full
            self.layer.backward(xp.ascontiguousarray(dy * scale if scale != 1.0 else dy))
            if scale != 1.0:
                for g in self.layer.grads().values():
                    g /= scale
        return loss, metric


class LossScaler:
    """Dynamic loss scaling for fp16 (as torch's GradScaler): the layer's backward runs on the loss times
    `scale`, so that small gradients stay above fp16's smallest normal number where the layer keeps them in
    fp16; a step whose gradients overflowed is skipped and the scale halved, and after `interval` good
    steps in a row it doubles. Other precisions use scale 1 (no scaling)."""

    def __init__(self, precision: str, scale: float = 2.0**16, interval: int = 200):
        self.enabled = precision == "fp16"
        self.scale = scale if self.enabled else 1.0
        self.interval, self.good, self.skipped = interval, 0, 0

    def step_ok(self, grads: dict, xp) -> bool:
        """Whether the step may go on with these (unscaled) gradients; updates the scale."""
        if not self.enabled:
            return True
        if not all(bool(xp.isfinite(g).all()) for g in grads.values()):
            self.scale, self.good, self.skipped = self.scale / 2, 0, self.skipped + 1
            return False
        self.good += 1
        if self.good >= self.interval:
            self.scale, self.good = min(self.scale * 2, 2.0**24), 0
        return True


def _has_forget_gate(spec: str) -> bool:
    from .spec import parse_quietly

    return any(p.name == "b_f" for p in parse_quietly(spec).cell.params)


def evaluate(model: Model, split: str, batch: int) -> float:
    """The task's metric over a split: NLL per frame (chorales) or accuracy (digits)."""
    n = model.task.count(split)
    total, count = 0.0, 0.0
    for start in range(0, n, batch):
        x, target, mask = model.task.batch(split, np.arange(start, min(n, start + batch)))
        _, (num, den) = model.loss(x, target, mask, train=False)
        total, count = total + num, count + den
    return total / count


RUN_FILES = (CHECKPOINT, "layer.npz", "head.npz", "history.json")  # what a run leaves in its folder


class Diverged(LstmdslError):
    """The loss became NaN or infinite (a numerical failure: exit 1, as a failed check)."""

    exit_code = EXIT_CHECK_FAILED


class Interrupted(LstmdslError):
    """Training stopped by Ctrl-C or SIGTERM; a checkpoint was written to resume from."""

    exit_code = EXIT_INTERRUPTED


class _StopSignals:
    """While training: Ctrl-C (SIGINT) and SIGTERM set a flag the loop checks after each step, so the run
    stops between steps, with a checkpoint, instead of in the middle of one."""

    def __init__(self):
        self.stopped = None

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stopped = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def check_config(cfg: TrainConfig) -> None:
    for name in ("epochs", "hidden_size", "layers", "batch"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be a positive integer, got {v!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.bidirectional and cfg.task == "chorales":
        raise UsageError("--bidirectional does not suit chorales: the model predicts the next frame, which the reverse "
                         "direction has already read; use it on digits (a classification of whole sequences)")
    for name in ("dropout", "dropconnect"):
        p = getattr(cfg, name)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise UsageError(f"{name} must be a probability in [0, 1), got {p!r}")
    check_seed(cfg.seed)
    if cfg.precision is not None and cfg.precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")


def run(cfg: TrainConfig, out: Path | None, log="stderr", resume: bool = False, stop_after: int | None = None) -> dict:
    """Train, evaluate on the test split, save parameters, history and a loss-curve plot to `out`. log: where
    progress goes, a stream ("stderr": sys.stderr as it is when called) or None.

    With `out`, a checkpoint (out/checkpoint.npz) is written after every epoch and when Ctrl-C or SIGTERM
    stops the run (which then raises Interrupted); resume=True continues from it, to the same parameters
    an uninterrupted run reaches. The parameters are saved before the test evaluation, so a failure late
    in the run loses no training. stop_after (for tests): stop as a signal would after that many steps.
    """
    if isinstance(log, str) and log == "stderr":  # (resolved now, not at import: the stderr of then, replaced
        log = sys.stderr                           # and closed since, once made a run fail)
    check_config(cfg)
    if out is not None:
        out = output_dir(out, "--out")
        for name in (*RUN_FILES, "loss.png"):  # (found at the end of the run, after the training, once)
            if (out / name).is_dir():
                raise OutputFileError(f"--out {out} holds a folder named {name}, where the run writes that file")
    task = _Task(cfg.task, cfg.max_train)
    model = Model(cfg, task)
    opt = _optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    progress = {"epoch": 1, "batch": 0, "history": [], "order": None, "total": 0.0, "count": 0.0, "losses": [],
                "seconds": 0.0}
    if resume:
        if out is None:
            raise UsageError("resume needs the folder of the run (out)")
        progress = load_checkpoint(out, cfg, model, opt, rng)
    history = progress["history"]
    n = task.count("train")
    batches = (n + cfg.batch - 1) // cfg.batch
    if progress["order"] is not None and (len(progress["order"]) != n or progress["batch"] >= batches):
        raise InputFileError(f"--resume: {out / CHECKPOINT} is damaged (its place in the epoch, batch "
                             f"{progress['batch']} of an order of {len(progress['order'])}, is not one of this "
                             f"task's {batches} batches of {n}); {AGAIN}")
    if resume and log is not None and progress["epoch"] > cfg.epochs:
        print(f"the run in {out} has trained its {cfg.epochs} epochs already: nothing to train (give a larger "
              "--epochs to go on)", file=log)
    elif resume and log is not None:
        print(f"resuming at epoch {progress['epoch']}, batch {progress['batch']}", file=log)
    steps = 0
    # the precision the layer runs at (the spec's own schedule may say fp16); restarts at its first scale on resume
    scaler = LossScaler(model.layer.schedule.precision if model.layer.backend == "cuda" else "fp32")
    with _StopSignals() as stop:
        for epoch in range(progress["epoch"], cfg.epochs + 1):
            t0 = time.perf_counter()
            order = progress["order"] if progress["order"] is not None else rng.permutation(n)
            start = progress["batch"]
            total, count, losses = progress["total"], progress["count"], list(progress["losses"])
            for k in range(start, batches):
                x, target, mask = task.batch("train", order[k * cfg.batch:(k + 1) * cfg.batch])
                model.layer.zero_grad()
                model.head.zero_grad()
                try:
                    loss, (num, den) = model.loss(x, target, mask, train=True, scale=scaler.scale)
                except Diverged as e:
                    raise Diverged(f"epoch {epoch}, batch {k + 1} of {batches}: {e}") from None
                losses.append(loss)
                if scaler.step_ok(model.layer.grads(), model.xp):
                    if cfg.clip:
                        optim.clip_grad_norm(model.grads(), cfg.clip)
                    try:
                        with np.errstate(over="ignore", invalid="ignore"):  # (a step too large for the dtype: the
                            opt.step(model.grads())                        # next loss is infinite, said there)
                    except optim.NonFiniteGradients as e:
                        raise Diverged(f"epoch {epoch}, batch {k + 1} of {batches}: {e}") from None
                total, count = total + num, count + den
                steps += 1
                if log is not None and log.isatty():
                    done = int(30 * (k + 1) / batches)
                    print(f"\repoch {epoch}/{cfg.epochs} [{'#' * done}{'.' * (30 - done)}] {total / count:.4f}",
                          end="", file=log, flush=True)
                if stop_after is not None and steps >= stop_after:
                    stop.stopped = "stop_after"
                if stop.stopped and k + 1 < batches:
                    seconds = progress["seconds"] + time.perf_counter() - t0
                    _interrupt(out, cfg, model, opt, rng, stop.stopped, epoch, k + 1, history,
                               dict(order=order, total=total, count=count, losses=losses, seconds=seconds))
            _sync(model)
            seconds = progress["seconds"] + time.perf_counter() - t0
            progress = {"epoch": epoch + 1, "batch": 0, "history": history, "order": None, "total": 0.0,
                        "count": 0.0, "losses": [], "seconds": 0.0}
            valid = evaluate(model, "valid", cfg.batch)
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "train": total / count, "valid": valid,
                            "seconds": seconds})
            if log is not None:
                label = "NLL/frame" if cfg.task == "chorales" else "accuracy"
                print(f"\repoch {epoch}/{cfg.epochs}: {label} train {total / count:.4f}, valid {valid:.4f}, "
                      f"{seconds:.1f} s" + " " * 10, file=log, flush=True)
            if out is not None:
                save_checkpoint(out, cfg, model, opt, rng, dict(progress))
            if stop.stopped and epoch < cfg.epochs:
                _interrupt(out, cfg, model, opt, rng, stop.stopped, epoch + 1, 0, history, None)
    if out is not None:  # the trained parameters first: a failure below loses no training
        _save_parameters(model, out)
    test = evaluate(model, "test", cfg.batch)
    result = {"config": asdict(cfg), "history": history, "test": test,
              "spec_name": model.layer.spec.name,  # (cfg.spec may be the spec's text)
              "metric": "NLL per frame (nats)" if cfg.task == "chorales" else "accuracy",
              "seconds_per_epoch": float(np.median([h["seconds"] for h in history])) if history else 0.0}
    if scaler.enabled:  # fp16: the loss scale at the end, and the steps skipped for overflowing gradients
        result["loss_scale"] = {"scale": scaler.scale, "skipped_steps": scaler.skipped}
    if out is not None:
        write_json(out / "history.json", result)
        _plot(result, out, log)
    return result


def _interrupt(out, cfg, model, opt, rng, why: str, epoch: int, batch: int, history, partial) -> None:
    """Write the checkpoint of a stopped run and raise Interrupted."""
    where = f"epoch {epoch}, batch {batch}"
    if out is None:
        raise Interrupted(f"training stopped ({why}) at {where}; with --out it would have left a checkpoint")
    progress = {"epoch": epoch, "batch": batch, "history": history, "order": None, "total": 0.0, "count": 0.0,
                "losses": [], "seconds": 0.0} | (partial or {})
    progress["losses"] = [float(v) for v in progress["losses"]]
    save_checkpoint(out, cfg, model, opt, rng, progress)
    raise Interrupted(f"training stopped ({why}) at {where}; the checkpoint is {out / CHECKPOINT}: run the same "
                      "command with --resume to go on")


def _sync(model: Model) -> None:
    if model.xp is not np:
        model.xp.cuda.Device().synchronize()


def _save_parameters(model: Model, out: Path) -> None:
    model.layer.save(out / "layer.npz")
    write_npz(out / "head.npz", {k: to_numpy(v) for k, v in model.head.parameters().items()})


def _plot(result: dict, out: Path, log) -> None:
    """The loss-curve plot; a plot that cannot be made is a note, never a lost run."""
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
    ax.set_title(f"{result['spec_name']} on {cfg['task']} ({cfg['backend']}, H={cfg['hidden_size']})")
    ax.legend()
    fig.tight_layout()
    try:
        write_atomically(out / "loss.png", lambda f: fig.savefig(f, dpi=100, format="png"))
    except OutputFileError as err:
        if log is not None:
            print(f"note: no loss-curve plot: {err}", file=log)
    finally:
        plt.close(fig)
