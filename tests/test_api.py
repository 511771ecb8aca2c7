"""The Python API: parse() and compile() accept what they document and reject the rest with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lstmdsl
from lstmdsl import BackendUnavailable, InputFileError, Schedule, SpecError, UsageError
from lstmdsl.arrays import from_bf16_bits, from_io, to_bf16_bits, to_io
from lstmdsl.resources import shipped_specs

from conftest import has_gpu


def test_parse_accepts_path_text_and_shipped_name():
    path = shipped_specs()["gru"]
    by_path, by_str, by_name, by_text = (lstmdsl.parse(path), lstmdsl.parse(str(path)), lstmdsl.parse("gru"),
                                         lstmdsl.parse(path.read_text()))
    assert by_path.cell == by_str.cell == by_name.cell == by_text.cell
    assert by_name.source.filename == str(path)
    assert by_text.source.filename == "<string>"


def test_parse_missing_file():
    with pytest.raises(InputFileError, match="no spec file 'nope.cell'.*shipped specs: .*vanilla"):
        lstmdsl.parse("nope.cell")


def test_parse_unreadable_file(tmp_path):
    bad = tmp_path / "bad.cell"
    bad.write_bytes(b"\xff\xfe cell")
    with pytest.raises(InputFileError, match=r"bad.cell:1:1: not UTF-8 text: byte 0xff"):
        lstmdsl.parse(bad)


def test_spec_error_is_a_value_error_free_exception_with_diagnostics(tmp_path):
    f = tmp_path / "x.cell"
    f.write_text("cell c {\n  input x\n}\n")
    with pytest.raises(SpecError) as info:
        lstmdsl.parse(f)
    assert str(info.value).startswith(f"{f}:1:6: error: cell 'c' has no output")


def test_forward_shapes_state_and_names(rng):
    layer = lstmdsl.compile("peephole", input_size=3, hidden_size=5, num_layers=2)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y, state = layer.forward(x)
    assert y.shape == (4, 2, 5) and y.dtype == np.float32
    assert {k: v.shape for k, v in state.items()} == {"h": (2, 2, 5), "c": (2, 2, 5)}
    names = list(layer.parameters())
    assert names[:3] == ["l0.W_i", "l0.R_i", "l0.p_i"] and "l1.b_o" in names
    assert layer.parameters()["l1.W_i"].shape == (5, 5)
    assert all(layer.grads()[k].shape == v.shape for k, v in layer.parameters().items())


def test_initialisation_is_seeded_and_bounded():
    a = lstmdsl.compile("vanilla", input_size=3, hidden_size=16, seed=1).parameters()
    b = lstmdsl.compile("vanilla", input_size=3, hidden_size=16, seed=1).parameters()
    c = lstmdsl.compile("vanilla", input_size=3, hidden_size=16, seed=2).parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["l0.W_i"], c["l0.W_i"])
    assert max(np.abs(v).max() for v in a.values()) <= 0.25  # 1 / sqrt(16)


@pytest.mark.skipif(has_gpu(), reason="checks the error on a machine without a GPU")
def test_cuda_backend_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendUnavailable, match="needs CuPy|no usable CUDA device|no CUDA device"):
        lstmdsl.compile("vanilla", input_size=3, hidden_size=4, backend="cuda")


@pytest.mark.parametrize("kwargs,message", [
    (dict(backend="tpu"), "unknown backend 'tpu'"),
    (dict(dtype="float16"), "unsupported dtype 'float16'"),
    (dict(hidden_size=0), "hidden_size must be a positive integer, got 0"),
    (dict(input_size=2.5), "input_size must be a positive integer, got 2.5"),
    (dict(num_layers=True), "num_layers must be a positive integer"),
    (dict(proj_size=3), "proj_size was given but cell 'vanilla' has no size 'proj'"),
    (dict(schedule=42), "schedule must be a Schedule or directive text"),
])
def test_compile_rejects_bad_arguments(kwargs, message):
    args = dict(input_size=3, hidden_size=4) | kwargs
    with pytest.raises(UsageError, match=message):
        lstmdsl.compile("vanilla", **args)


def test_stacked_state_sizes_must_agree():
    text = "cell c {\n input x\n state s : input, h\n s' = x\n h' = tanh(W x + R h + U s)\n output h'\n}"
    lstmdsl.compile(text, input_size=3, hidden_size=3, num_layers=2)  # equal sizes stack
    with pytest.raises(UsageError, match="state 's' has size input, which differs between the layers"):
        lstmdsl.compile(text, input_size=3, hidden_size=4, num_layers=2)


def test_projection_needs_proj_size():
    with pytest.raises(UsageError, match="uses the size 'proj': give proj_size"):
        lstmdsl.compile("lstmp", input_size=3, hidden_size=4)
    layer = lstmdsl.compile("lstmp", input_size=3, hidden_size=8, proj_size=2, num_layers=2)
    assert layer.output_size == 2 and layer.parameters()["l1.W_i"].shape == (8, 2)


@pytest.mark.parametrize("x,message", [
    (np.zeros((4, 2, 3), np.float64), "x has dtype float64, but the layer computes in float32"),
    (np.zeros((4, 2, 7), np.float32), r"x has shape \[4, 2, 7\], expected \[4, 2, 3\]"),
    (np.zeros((4, 3), np.float32), r"x must be a 3-D numpy array \[T, B, input_size\], got shape \[4, 3\]"),
    ([[[0.0]]], "x must be a numpy array on the numpy backend, got list"),
    (np.full((2, 1, 3), np.nan, np.float32), "x contains NaN"),
    (np.zeros((0, 2, 3), np.float32), "at least one step"),
])
def test_forward_rejects_bad_input(x, message):
    layer = lstmdsl.compile("vanilla", input_size=3, hidden_size=4)
    with pytest.raises(UsageError, match=message):
        layer.forward(x)


def test_forward_refuses_a_train_flag_that_is_not_a_bool():
    layer = lstmdsl.compile("vanilla", input_size=3, hidden_size=4)
    with pytest.raises(UsageError, match="train must be True or False, got 'no'"):  # ("no" once trained)
        layer.forward(np.zeros((2, 1, 3), np.float32), train="no")


def test_bad_state_and_backward_misuse(rng):
    layer = lstmdsl.compile("vanilla", input_size=3, hidden_size=4)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    with pytest.raises(UsageError, match=r"state must be a dict with the keys \['c', 'h'\], got \['h'\]"):
        layer.forward(x, {"h": np.zeros((1, 5, 4), np.float32)})
    with pytest.raises(UsageError, match=r"state\['c'\] has shape \[1, 4, 4\], expected \[1, 5, 4\]"):
        layer.forward(x, {"h": np.zeros((1, 5, 4), np.float32), "c": np.zeros((1, 4, 4), np.float32)})
    with pytest.raises(UsageError, match="backward\\(\\) needs a forward\\(\\) with train=True"):
        layer.backward(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(UsageError, match="initial_state_grads\\(\\) needs a backward\\(\\) first"):
        layer.initial_state_grads()
    y, _ = layer.forward(x, train=False)
    with pytest.raises(UsageError, match="needs a forward"):
        layer.backward(np.zeros_like(y))
    y, _ = layer.forward(x)
    with pytest.raises(UsageError, match=r"dy has shape \[2, 5, 3\], expected \[2, 5, 4\]"):
        layer.backward(np.zeros((2, 5, 3), np.float32))


def test_schedule_from_spec_api_text_and_object():
    spec = lstmdsl.parse("vanilla")
    assert spec.schedule == Schedule()
    layer = lstmdsl.compile(spec, input_size=2, hidden_size=3, schedule="no hoist input; precision tf32")
    assert layer.schedule == Schedule(hoist_input=False, precision="tf32")
    layer = lstmdsl.compile(spec, input_size=2, hidden_size=3, schedule=Schedule(fuse_gates=False))
    assert layer.schedule.fuse_gates is False
    assert lstmdsl.parse_schedule(Schedule().describe()) == Schedule()
    with pytest.raises(SpecError, match="unknown schedule directive 'fuse everything'"):
        lstmdsl.compile(spec, input_size=2, hidden_size=3, schedule="fuse everything")


def test_schedules_do_not_change_reference_results(rng):
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    outs = []
    for text in ("", "no fuse gates; no hoist input; no fuse pointwise", "precision bf16"):
        layer = lstmdsl.compile("peephole", input_size=4, hidden_size=5, schedule=text or None)
        outs.append(layer.forward(x)[0])
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_package_has_py_typed():
    assert (Path(lstmdsl.__file__).parent / "py.typed").exists()


def test_an_evaluation_forward_leaves_the_training_forwards_activations():
    """forward(train=True), forward(train=False) of another batch, backward(): the backward is the first
    forward's, on both backends (here the reference)."""
    layer = lstmdsl.compile("peephole", 3, 4, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _ = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    grads = {k: v.copy() for k, v in layer.grads().items()}
    layer.zero_grad()
    layer.forward(x)
    layer.forward(np.zeros((3, 7, 3)), train=False)
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), dx)
    for k, g in layer.grads().items():
        np.testing.assert_array_equal(g, grads[k])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("options", [{}, {"bidirectional": True}])
def test_half_arrays_in_and_out_under_half_precision(options, precision):
    """Under `precision fp16` x and dy may be float16, under `precision bf16` uint16 arrays of bfloat16 bits (numpy
    and CuPy have no bfloat16): y and dx come back in that type, the float32 results rounded once, the states in
    float32; elsewhere the half type is refused, and a half-precision forward wants dy in its type."""
    half, name = (np.float16, "float16") if precision == "fp16" else (np.uint16, "uint16")
    layers = [lstmdsl.compile("peephole", input_size=5, hidden_size=7, num_layers=2, schedule=f"precision {precision}",
                              seed=3, **options) for _ in range(2)]
    xh = to_io(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32), half)
    (y32, f32), (yh, fh) = layers[0].forward(from_io(xh, np.float32)), layers[1].forward(xh)
    assert yh.dtype == half and np.array_equal(yh, to_io(y32, half))
    assert all(fh[k].dtype == np.float32 and np.array_equal(fh[k], f32[k]) for k in f32)
    dyh = to_io(np.random.default_rng(1).standard_normal(yh.shape).astype(np.float32), half)
    with pytest.raises(UsageError, match=f"training forward's x and y were {name}; give dy in {name}"):
        layers[1].backward(from_io(dyh, np.float32))
    dx32, dxh = layers[0].backward(from_io(dyh, np.float32)), layers[1].backward(dyh)
    assert dxh.dtype == half and np.array_equal(dxh, to_io(dx32, half))
    g32, gh = layers[0].grads(), layers[1].grads()
    assert all(np.array_equal(gh[k], g32[k]) for k in g32)
    other = "bf16" if precision == "fp16" else "fp16"
    with pytest.raises(UsageError, match=rf"{name}.* arrays are taken only by a float32 layer under `precision "
                                         rf"{precision}`"):
        lstmdsl.compile("peephole", input_size=5, hidden_size=7, schedule=f"precision {other}").forward(xh)
    # the hint converts the values (bfloat16 bits through from_bf16_bits, not .astype: 1.0 would become 16256)
    hint = ("from_bf16_bits\\(x, numpy.float64\\)" if half is np.uint16 else "astype\\(numpy.float64\\)")
    with pytest.raises(UsageError, match=rf"{name}.* arrays are taken only by a float32 layer.*{hint}"):
        lstmdsl.compile("peephole", input_size=5, hidden_size=7, dtype="float64").forward(xh)
    with pytest.raises(UsageError, match=r"float64, but the layer computes in float32 \(and, as it runs `precision "
                                         rf"{precision}`, takes {name}"):
        layers[1].forward(xh.astype(np.float64))


def test_bfloat16_bits_round_to_nearest_even_as_torch_does():
    """arrays.to_bf16_bits gives torch's bfloat16 bits for every upper half of a float32 with the lower halves that
    decide the rounding (just below, at and above the tie, the largest; ties to even, overflow to infinity, signed
    zeros, subnormals), NaN stays NaN; from_bf16_bits is its exact inverse on every pattern but NaNs'; integer
    arrays are refused (a uint16 one may be bits already)."""
    torch = pytest.importorskip("torch")
    high = np.arange(2 ** 16, dtype=np.uint32) << 16
    x = (high[:, None] | np.uint32([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF])[None, :]).ravel().view(np.float32)
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = to_bf16_bits(x)
    nan = np.isnan(x)
    assert got.dtype == np.uint16 and np.array_equal(got[~nan], want[~nan])
    assert np.isnan(from_bf16_bits(got[nan])).all()
    every = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    finite = ~np.isnan(from_bf16_bits(every))
    assert np.array_equal(to_bf16_bits(from_bf16_bits(every))[finite], every[finite])
    with pytest.raises(UsageError, match=r"to_bf16_bits rounds floats, got an array of uint16 \(bfloat16 bits already\?\)"):
        to_bf16_bits(every)
    with pytest.raises(UsageError, match="to_bf16_bits rounds floats, got an array of int64"):
        to_bf16_bits(np.arange(3))
    with pytest.raises(UsageError, match="bfloat16 bits come as a uint16 array, got float16"):
        from_bf16_bits(np.zeros(3, np.float16))


def test_the_numpy_backward_reads_copies_of_x_and_the_states_as_the_cuda_one_does():
    """x and the initial states changed by the caller between forward and backward: the numpy backend's tapes held
    the caller's arrays, so its weight gradients changed with them (a review, 2026-12-06); the cuda backend copies
    them in."""
    layer = lstmdsl.compile("vanilla", 3, 4, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h = {k: rng.standard_normal(s).astype(np.float32) for k, s in layer.state_shapes(2).items()}
    dy = rng.standard_normal((5, 2, 4)).astype(np.float32)
    layer.forward(x, h)
    layer.zero_grad()
    dx = layer.backward(dy)
    want = {k: v.copy() for k, v in layer.grads().items()}
    layer.forward(x, h)
    x[...] = 0
    for v in h.values():
        v[...] = 0
    layer.zero_grad()
    assert np.array_equal(layer.backward(dy), dx)
    assert all(np.array_equal(v, want[k]) for k, v in layer.grads().items())
