"""Files written by Layer.save: a .npz archive of the parameters ("param:<name>") beside "__meta__", the JSON of
what rebuilds the layer (format "lstmdsl-layer-1": spec text, cell, sizes, layers, dtype, directions, dropout,
dropconnect). read_saved checks one before anything trusts it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputFileError, SpecError, UsageError
from .files import exists, is_dir, is_file
from .schedule import parse_schedule
from .spec import parse_quietly

_META_KEYS = {"format": str, "spec": str, "cell": str, "sizes": list, "num_layers": int, "dtype": str}



def read_saved(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, parameters) of a file written by Layer.save, with clear errors for anything else."""
    if not isinstance(path, (str, Path)) or str(path) == "":
        raise UsageError(f"path must be a file name, got {path!r}")
    path = Path(path)
    if not exists(path) and is_file(path.with_name(path.name + ".npz")):  # saved by lstmdsl before 0.2
        path = path.with_name(path.name + ".npz")
    if is_dir(path):
        raise InputFileError(f"{path} is a folder, not a file saved by Layer.save")
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise InputFileError(f"no such file: {path}") from None
    except OSError as err:
        if err.errno is None:  # (numpy's own OSErrors: not a file it can interpret)
            raise InputFileError(f"{path} is not a file saved by lstmdsl's Layer.save (not a readable .npz "
                                 "archive; damaged, truncated or another format)") from None
        raise InputFileError(f"cannot read {path}: {err.strerror or err}") from None  # (a name too long, no access)
    except Exception:  # not a zip, truncated, a pickle, not numpy
        raise InputFileError(f"{path} is not a file saved by lstmdsl's Layer.save (not a readable .npz archive; "
                             "damaged, truncated or another format)") from None
    try:
        meta = json.loads(str(files.pop("__meta__")))
        ok = isinstance(meta, dict) and meta.get("format") == "lstmdsl-layer-1"
    except Exception:  # noqa: BLE001 (missing, or not JSON)
        ok = False
    if not ok:
        raise InputFileError(f"{path} was not written by lstmdsl's Layer.save (no valid metadata)")
    bad = [k for k, t in _META_KEYS.items() if not isinstance(meta.get(k), t)]
    sizes = meta.get("sizes")
    if not bad and (not sizes or len(sizes) != meta["num_layers"] or not all(
            isinstance(b, dict) and isinstance(b.get("input"), int) and isinstance(b.get("hidden"), int)
            and "proj" in b and isinstance(b["proj"], (int, type(None))) for b in sizes)):
        bad = ["sizes"]
    if not bad and meta.get("directions", 1) not in (1, 2):  # (3 once loaded as one direction)
        bad = ["directions"]
    if not bad and "schedule" in meta and not _parses(meta["schedule"]):
        bad = ["schedule"]
    if not bad and "{" not in meta["spec"]:
        bad = ["spec"]  # (save writes the spec's text: never a file's or a shipped spec's name, read from elsewhere)
    if bad:
        raise InputFileError(f"{path} is damaged: its metadata lacks or garbles {', '.join(bad)}")
    try:
        cell = parse_quietly(meta["spec"]).cell  # (lstmdsl.load and Layer.load parse it again: a small cost)
    except SpecError as err:  # (a damaged file, or one edited by hand)
        raise InputFileError(f"{path} is damaged: the spec saved in it does not parse:\n{err}") from None
    if cell.name != meta["cell"]:
        raise InputFileError(f"{path} is damaged: its metadata names cell '{meta['cell']}', its spec cell "
                             f"'{cell.name}'")
    return meta, {k.removeprefix("param:"): v for k, v in files.items()}


def _parses(schedule) -> bool:
    """Whether a saved schedule is directive text that parses (Layer.save writes Schedule.describe())."""
    try:
        parse_schedule(schedule)
    except (SpecError, UsageError):
        return False
    return True
