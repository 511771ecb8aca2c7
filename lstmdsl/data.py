"""Data sets that ship inside packages (nothing is downloaded): Bach chorales from music21's corpus,
and scikit-learn's 8x8 digits.

chorales() -- "JSB-like" polyphonic music: every Bach chorale in music21's corpus with four parts, as a
    piano roll of eighth-note frames (a note sounds in every frame its duration covers) over the pitch
    range present in the data. The split is deterministic and by piece: chorales sorted by file name,
    every 10th (index % 10 == 0) to test, the next (== 1) to validation, the rest to training. This is
    not the published JSB split (Boulanger-Lewandowski et al. 2012), so figures are not comparable to
    papers' one for one. Parsing takes about a minute; the piano rolls are cached in
    $LSTMDSL_CACHE (default ~/.cache/lstmdsl), keyed by the music21 version and the frame length.
digits() -- the 1797 8x8 images as sequences of 8 rows of 8 pixels (scaled to [0, 1]), 10 classes,
    split the same way by index.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from .cache import cache_dir
from .errors import BackendUnavailable, InputFileError, OutputFileError
from .files import is_file, write_npz


class MissingData(BackendUnavailable):
    """A task's data package is not installed."""


def _split(index: int) -> str:
    return "test" if index % 10 == 0 else "valid" if index % 10 == 1 else "train"


@dataclass(frozen=True)
class Chorales:
    rolls: dict[str, list[np.ndarray]]  # split -> piano rolls [frames, pitches], uint8
    low: int  # MIDI number of pitch column 0
    names: dict[str, list[str]]  # split -> file names

    @property
    def pitches(self) -> int:
        return self.rolls["train"][0].shape[1]


def chorales(frame: float = 0.5) -> Chorales:
    """The chorales task's data (see the module docstring). Raises MissingData without music21."""
    try:
        import music21
        from music21 import corpus
    except ImportError:  # a parse cached on another machine will do; without one, ask for music21
        corpus = None
        cached = sorted(cache_dir().glob(f"chorales-music21-*-frame{frame}.npz"))
        if not cached:
            raise MissingData("the chorales task reads the Bach chorales shipped with music21: "
                              "pip install 'lstmdsl[data]'") from None
        path = cached[-1]
    else:
        path = cache_dir() / f"chorales-music21-{music21.__version__}-frame{frame}.npz"
    cached = _read_cache(path)
    if cached is not None:
        return cached
    if corpus is None:
        raise InputFileError(f"the chorale cache {path} is damaged and music21 is not installed to rebuild it: "
                             "pip install 'lstmdsl[data]'")
    chorales_data = _parse_chorales(corpus, frame)
    try:
        write_npz(path, {"meta": np.array(json.dumps(chorales_data[0])),
                         **{f"{s}/{k}": r for s, rs in chorales_data[1].items() for k, r in enumerate(rs)}},
                  compressed=True)
    except OutputFileError as err:
        print(f"note: the parsed chorales are not cached ({err}); the next run parses them again", file=sys.stderr)
    meta, rolls = chorales_data
    return Chorales(rolls, meta["low"], meta["names"])


def _read_cache(path) -> Chorales | None:
    """The cached piano rolls, or None when there are none or they cannot be read (then they are parsed
    and written again: the cache is disposable)."""
    if not is_file(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            rolls = {s: [f[f"{s}/{k}"] for k in range(meta["counts"][s])] for s in ("train", "valid", "test")}
        _check_rolls(meta, rolls)
        return Chorales(rolls, meta["low"], meta["names"])
    except Exception:  # noqa: BLE001 (truncated, garbage, another format, contents that are not rolls: rebuild)
        print(f"note: the chorale cache {path} is damaged; parsing the chorales again", file=sys.stderr)
        return None


def _check_rolls(meta: dict, rolls: dict[str, list[np.ndarray]]) -> None:
    """Raises ValueError unless the cache's contents are what _parse_chorales writes: in every split at least
    one roll, each a non-empty [frames, pitches] array of 0s and 1s, all of one width inside the MIDI range from
    `low`, and a name for each (a file that loads but was changed is rebuilt, not trained on)."""
    low, width = meta["low"], None
    if not isinstance(low, int) or isinstance(low, bool):
        raise ValueError("low")
    for split, rs in rolls.items():
        if not rs or len(meta["names"][split]) != len(rs):
            raise ValueError(split)
        for r in rs:
            width = r.shape[1] if width is None and r.ndim == 2 else width
            if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] != width or r.dtype != np.uint8 or r.max() > 1:
                raise ValueError(split)
    if not (width and 0 <= low and low + width <= 128):
        raise ValueError("range")


def _parse_chorales(corpus, frame: float) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """(meta, piano rolls by split) from music21's corpus."""
    pieces = []
    for file in sorted(corpus.getComposer("bach"), key=lambda p: p.name):
        if file.suffix != ".mxl":
            continue
        score = corpus.parse(file)
        if len(score.parts) != 4:
            continue
        notes = []
        for part in score.parts:
            for n in part.flatten().notes:
                start, end = float(n.offset), float(n.offset + n.quarterLength)
                for p in n.pitches:
                    notes.append((start, end, p.midi))
        if notes:
            pieces.append((file.name, notes))
    if len(pieces) < 3:  # (a music21 without its corpus, or a stub: one piece a split at least)
        raise MissingData(f"the chorales task found {len(pieces)} four-part Bach chorales in music21's corpus: is "
                          "its corpus installed? (pip install 'lstmdsl[data]')")
    low = min(m for _, notes in pieces for _, _, m in notes)
    high = max(m for _, notes in pieces for _, _, m in notes)
    rolls: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    names: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for k, (name, notes) in enumerate(pieces):
        frames = math.ceil(max(end for _, end, _ in notes) / frame)
        roll = np.zeros((frames, high - low + 1), np.uint8)
        for start, end, midi in notes:
            a = int(round(start / frame))
            b = max(a + 1, int(round(end / frame)))
            roll[a:b, midi - low] = 1
        rolls[_split(k)].append(roll)
        names[_split(k)].append(name)
    meta = {"low": low, "names": names, "counts": {s: len(r) for s, r in rolls.items()}, "frame": frame}
    return meta, rolls


@dataclass(frozen=True)
class Digits:
    x: dict[str, np.ndarray]  # split -> [8 rows, N, 8 pixels] float32 in [0, 1]
    y: dict[str, np.ndarray]  # split -> [N] int64 labels


def digits() -> Digits:
    """scikit-learn's digits, row by row (see the module docstring). Raises MissingData without it."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingData("the digits task reads scikit-learn's digits: pip install 'lstmdsl[data]'") from None
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)  # [N, 8, 8]
    split = np.array([_split(k) for k in range(len(images))])
    return Digits({s: np.ascontiguousarray(images[split == s].transpose(1, 0, 2)) for s in ("train", "valid", "test")},
                  {s: d.target[split == s].astype(np.int64) for s in ("train", "valid", "test")})
