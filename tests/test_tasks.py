"""The tasks and `lstmdsl train` on the reference backend (skipped where the data packages are missing)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstmdsl import data
from lstmdsl.cli import main
from lstmdsl.train import TrainConfig, run


def test_digits_split_and_shapes():
    pytest.importorskip("sklearn")
    d = data.digits()
    assert {s: v.shape[1] for s, v in d.x.items()} == {"train": 1437, "valid": 180, "test": 180}
    assert d.x["train"].shape[0] == 8 and d.x["train"].shape[2] == 8
    assert 0 <= d.x["train"].min() and d.x["train"].max() <= 1
    assert set(np.unique(d.y["test"])) == set(range(10))


@pytest.mark.slow
def test_chorales_piano_rolls():
    pytest.importorskip("music21")
    c = data.chorales()
    assert {s: len(r) for s, r in c.rolls.items()} == {"train": 290, "valid": 37, "test": 37}
    assert not set(c.names["train"]) & set(c.names["test"])  # split by piece
    roll = c.rolls["train"][0]
    assert roll.dtype == np.uint8 and roll.shape[1] == c.pitches
    assert 3 <= roll.sum(axis=1).mean() <= 4.5  # four voices, sometimes fewer sounding notes
    all_rolls = np.concatenate([r for rs in c.rolls.values() for r in rs])
    assert all_rolls[:, 0].any() and all_rolls[:, -1].any()  # the range is the range present in the data


def test_train_digits_learns(tmp_path):
    pytest.importorskip("sklearn")
    result = run(TrainConfig("vanilla", "digits", epochs=4, hidden_size=32, lr=0.01, backend="numpy"),
                 tmp_path, log=None)
    assert result["test"] > 0.6  # chance is 0.1
    assert (tmp_path / "layer.npz").exists() and (tmp_path / "history.json").exists()


@pytest.mark.parametrize("spec,options", [("zoneout_lstm", {}), ("recurrent_dropout", {}),
                                          ("vanilla", {"bidirectional": True, "layers": 2, "dropout": 0.2})])
def test_train_digits_learns_with_regularisers_and_both_directions(tmp_path, spec, options):
    pytest.importorskip("sklearn")
    result = run(TrainConfig(spec, "digits", epochs=4, hidden_size=32, lr=0.01, backend="numpy", **options),
                 tmp_path, log=None)
    assert result["test"] > 0.6


def test_chorales_batches_stop_each_sequence_at_its_end(monkeypatch):
    """The layer gets each chorale's length: a chorale's outputs do not depend on the padding after it."""
    from lstmdsl import train

    class Task:
        name, input_size, output_size = "chorales", 3, 3

    model = train.Model(TrainConfig("vanilla", "chorales", hidden_size=4, backend="numpy"), Task())
    seen = []
    forward = model.layer.forward
    monkeypatch.setattr(model.layer, "forward", lambda x, **kw: seen.append(kw["lengths"]) or forward(x, **kw))
    mask = np.zeros((5, 2), np.float32)
    mask[:5, 0], mask[:2, 1] = 1, 1
    x = np.random.default_rng(0).random((5, 2, 3)).astype(np.float32)
    model.loss(x, x, mask, train=False)
    assert list(seen[0]) == [5, 2]


def test_train_cli_chorales_json(tmp_path, capsys):
    pytest.importorskip("music21")
    assert main(["train", "peephole", "--task", "chorales", "--epochs", "2", "-H", "16", "--lr", "0.01",
                 "--max-train", "20", "--backend", "numpy", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    h = result["history"]
    assert h[1]["train"] < h[0]["train"]  # NLL per frame falls
    assert result["metric"] == "NLL per frame (nats)" and 0 < result["test"] < 46 * np.log(2)
    assert (tmp_path / "loss.png").exists() or "matplotlib" in capsys.readouterr().err


def test_train_rejects_bad_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "vanilla", "--task", "digits", "--lr", "-1", "--backend", "numpy"])
    assert info.value.code == 64
    assert "argument --lr: expected a number > 0, got -1" in capsys.readouterr().err


def test_a_loss_that_becomes_nan_stops_training_as_a_numerical_failure(tmp_path, capsys):
    """A spec whose output is NaN (log of a negative h) stops the run with exit 1 and says where and what, not a
    usage error about a `dy` the user never gave (exit 64, once)."""
    spec = tmp_path / "lg.cell"
    spec.write_text("cell lg { input x; state h; h' = tanh(W x + R h + b) + log(h); output h' }")
    assert main(["train", str(spec), "--task", "digits", "--epochs", "1", "-H", "8", "--max-train", "20",
                 "--backend", "numpy", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "epoch 1, batch 1 of 1: the loss is NaN or infinite" in err and "dy" not in err


def test_a_music21_without_its_chorales_is_missing_data_not_an_internal_error():
    """music21 importable but its corpus without Bach's four-part chorales (a stub, a trimmed install): the parse
    failed in min() of an empty sequence, exit 70 (a review, 2026-12-06); now MissingData, exit 69."""
    from lstmdsl import data

    class Empty:
        @staticmethod
        def getComposer(name):
            return []

    with pytest.raises(data.MissingData, match="found 0 four-part Bach chorales"):
        data._parse_chorales(Empty(), 0.25)


def test_a_learning_rate_too_large_for_the_dtype_stops_with_one_clear_error(tmp_path, capsys, recwarn):
    """--lr 1e300 makes the first update overflow float32: the next batch's loss is infinite, said once, without
    numpy's overflow warnings from the optimizer before it."""
    assert main(["train", "vanilla", "--task", "digits", "--epochs", "1", "-H", "8", "--max-train", "64",
                 "--lr", "1e300", "--backend", "numpy", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "epoch 1, batch 2 of 2: the loss is NaN or infinite" in err and "a smaller --lr" in err
    assert "warning" not in err and not [w for w in recwarn if w.category is RuntimeWarning], err
