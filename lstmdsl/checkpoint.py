"""A training run's checkpoint (train.py): everything needed to go on exactly where training stopped, in one
file written atomically, and its checks when a run resumes from it (the same options and spec; a file that is
readable but not a run's checkpoint is damaged, not an internal error)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .arrays import to_numpy
from .errors import InputFileError, LstmdslError, UsageError
from .files import write_npz
from .spec import parse_quietly

CHECKPOINT = "checkpoint.npz"
AGAIN = "start again with --overwrite instead of --resume"  # (the folder holds the run: a new one must replace it)


def save_checkpoint(out: Path, cfg, model, opt, rng, progress: dict) -> None:
    """Everything needed to go on exactly where training stopped, in one file written atomically."""
    progress = dict(progress)
    order = progress.pop("order", None)
    state = {"config": asdict(cfg), "spec": model.layer.spec.source.text, "rng": rng.bit_generator.state, **progress}
    noise = model.layer.noise_state()
    if noise is not None:  # the regularisers' masks go on as they would have
        state["noise"] = noise
    arrays = {f"param/{k}": to_numpy(v) for k, v in model.parameters().items()}
    arrays |= {f"opt/{k}": v for k, v in opt.state_dict().items()}
    if order is not None:  # the batch order of the epoch in progress
        arrays["order"] = np.asarray(order)
    write_npz(out / CHECKPOINT, {"state": np.array(json.dumps(state)), **arrays})


def _other_spec(state: dict, cfg, model) -> str:
    """How the spec given to --resume differs from the run's: the same name, edited since, or another cell."""
    was = state["config"].get("spec")

    def named(spec) -> str:
        return f"the spec {spec}" if isinstance(spec, str) and "\n" not in spec else "the standard input's spec"
    if named(was) == named(cfg.spec):  # (the same path or name, or text from the standard input both times)
        return f"{named(cfg.spec)} has changed since"
    try:
        cell = f" (cell {parse_quietly(str(state['spec'])).name})"
    except LstmdslError:  # (a spec that no longer parses: lstmdsl changed since, or the checkpoint was edited)
        cell = ""
    return f"it was trained on {named(was)}{cell}, which {named(cfg.spec)} (cell {model.layer.spec.name}) is not"


def load_checkpoint(out: Path, cfg, model, opt, rng) -> dict:
    """The run's progress from out/checkpoint.npz, its parameters, optimizer state and random generator restored
    into model, opt and rng; an error that says what is wrong where the checkpoint is damaged or of another run."""
    path = out / CHECKPOINT
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
        state = json.loads(str(files.pop("state")))
    except FileNotFoundError:
        raise InputFileError(f"--resume: there is no checkpoint in {out} (no {CHECKPOINT})") from None
    except Exception:  # noqa: BLE001 (damaged)
        raise InputFileError(f"--resume: {path} is damaged; {AGAIN}") from None
    try:
        saved = {k: v for k, v in state["config"].items() if k != "epochs"}
    except (KeyError, TypeError, AttributeError):
        raise InputFileError(f"--resume: {path} is damaged (no run configuration); {AGAIN}") from None
    ours = {k: v for k, v in asdict(cfg).items() if k != "epochs"}
    if "spec" in state:  # (its text is compared below: a path, a shipped name or `-` giving the same text is the run's)
        saved.pop("spec", None)
        ours.pop("spec", None)
    if saved != ours:
        diff = sorted(k for k in ours if saved.get(k) != ours[k])
        raise UsageError(f"--resume: the checkpoint in {out} is of another run (it differs in {', '.join(diff)}); "
                         "give the same options, or another --out")
    if "spec" in state and state["spec"] != model.layer.spec.source.text:  # (checkpoints before 2026-12-04 lack it)
        raise UsageError(f"--resume: the checkpoint in {out} is of another run ({_other_spec(state, cfg, model)}); "
                         "give the same spec, or another --out")
    epoch, batch = state.get("epoch"), state.get("batch")
    if isinstance(epoch, int) and isinstance(batch, int) and cfg.epochs < (epoch if batch > 0 else epoch - 1):
        begun = epoch if batch > 0 else epoch - 1  # (a smaller --epochs than the run's is no damage)
        raise UsageError(f"--resume: the run in {out} has {'begun' if batch > 0 else 'trained'} {begun} epochs, more "
                         f"than --epochs {cfg.epochs}; give --epochs {begun} or more to go on with it")
    try:
        _restore(files, state, cfg, model, opt, rng)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, UsageError) as e:
        raise InputFileError(f"--resume: {path} is damaged ({e}); {AGAIN}") from None
    state["order"] = files.get("order")
    return state


def _restore(files: dict, state: dict, cfg, model, opt, rng) -> None:
    """The checkpoint's parameters, optimizer state, random generator and progress, each checked first (a
    ValueError, KeyError or TypeError says what is wrong)."""
    for k, v in model.parameters().items():
        a = files[f"param/{k}"]
        with np.errstate(over="ignore"):  # (values past the type's range: infinite there, refused below)
            cast = np.asarray(a, dtype=v.dtype) if a.dtype.kind == "f" else None
        if a.shape != v.shape or cast is None or not np.all(np.isfinite(cast)):
            raise ValueError(f"parameter {k} is {a.shape} of {a.dtype}, expected {v.shape} of floating-point values "
                             f"finite in {np.dtype(v.dtype).name}")

    def number(v) -> bool:  # (a run stops at a loss that is not finite: its checkpoints hold none)
        try:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        except OverflowError:  # (an int past float's range)
            return False

    entry = {"loss": number, "train": number, "valid": number, "seconds": number}
    if not (isinstance(state["epoch"], int) and 1 <= state["epoch"] <= cfg.epochs + 1 and
            isinstance(state["batch"], int) and state["batch"] >= 0 and isinstance(state["history"], list) and
            all(isinstance(h, dict) and isinstance(h.get("epoch"), int) and all(f(h.get(k)) for k, f in entry.items())
                for h in state["history"]) and
            isinstance(state["losses"], list) and all(number(v) for v in state["losses"]) and
            all(number(state[k]) for k in ("total", "count", "seconds"))):
        raise ValueError("its progress (epoch, batch, history, losses) is not a run's")
    order = files.get("order")
    if order is not None and (order.dtype.kind not in "iu" or sorted(order.tolist()) != list(range(len(order)))):
        raise ValueError("its batch order is not a permutation")
    if (order is None) != (state["batch"] == 0) or (state["batch"] > 0 and not state["count"] > 0):
        raise ValueError("its place in the epoch (batch, order, count) is not a run's")
    saved = {k.removeprefix("opt/"): v for k, v in files.items() if k.startswith("opt/")}
    ours = opt.state_dict()  # (the run's options made this optimizer: its checkpoint's settings are the same)
    for k in (k for k in saved if k.startswith("hyper/") or k == "kind"):
        if k not in ours or np.asarray(saved[k]).shape != ours[k].shape or not np.all(np.asarray(saved[k]) == ours[k]):
            raise ValueError(f"its optimizer's {k.removeprefix('hyper/')} is {saved[k]!r}, not the run's "
                             f"{ours.get(k)!r}")
    opt.load_state_dict(saved)  # (checks)
    rng.bit_generator.state = state["rng"]
    if "noise" in state and model.layer.noise_state() is not None:  # (lacking before 2026-12-04; CUDA's before 12-06)
        model.layer.set_noise_state(state["noise"])
    for k, v in model.parameters().items():
        v[...] = model.xp.asarray(files[f"param/{k}"])
