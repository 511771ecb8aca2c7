"""Generated kernels on the GPU against the float64 reference (marked gpu: skipped without a GPU).

Every shipped spec, forward and backward, float32: outputs, final states, dx, initial-state gradients
and every parameter gradient within 1e-4 relative error (norm-wise); every workspace buffer is poisoned
with NaN before the run, so a value read but never written fails the test. Sizes include B = 1, 3;
H = 1, 33, 100, 512; T = 1, 7, 100; 1 and 3 layers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lstmdsl
from lstmdsl.check import TOLERANCE, compare, random_case, randomize
from lstmdsl.arrays import from_io, to_io

from conftest import ONE_FEATURE_TOLERANCE, POSITIVE_STATES, SPECS, extra_sizes
from unusual_specs import HEADS_ON_INPUT, UNUSUAL

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    from lstmdsl.runtime import workspace

    monkeypatch.setattr(workspace, "POISON", True)


def check(name, T, B, I, H, L, schedule=None, seed=0, dtype="float32", bidirectional=False, lengths=None,
          dropout=0.0, dropconnect=0.0, num_heads=None, scale=0.5, tolerance=None, zero_states=False):
    """The spec on the GPU against the float64 reference (lstmdsl.check.compare): forward-only and
    training forward, backward with gradients of the outputs and final states; the regularisers' masks
    are the GPU's draws, handed to the reference. Parameters uniform in [-scale, scale]; zero_states: the
    initial states zero (the default a caller gets), else random."""
    gpu = lstmdsl.compile(name, input_size=I, hidden_size=H, backend="cuda", num_layers=L, seed=seed,
                          schedule=schedule, dtype=dtype, bidirectional=bidirectional, dropout=dropout,
                          dropconnect=dropconnect, num_heads=num_heads, **extra_sizes(name))
    randomize(gpu, seed + 1, scale)
    x, state, dy, dstate = random_case(gpu, T, B, seed + 2)
    for s in POSITIVE_STATES.get(name if isinstance(name, str) else "", ()):
        state[s] = np.abs(state[s]) + 0.5
    if zero_states:
        state = {k: np.zeros_like(v) for k, v in state.items()}
    if name == "slstm" and gpu.schedule.precision in ("bf16", "fp16"):
        # the stabiliser m' = max(lf + m, li) is a kink only the final states' gradients see (h does not
        # depend on m): half-precision rounding may take the other side of a near tie there, a gradient as
        # right as the reference's but not equal to it. Checked through y (fp32 checks the final states)
        dstate = {k: np.zeros_like(v) for k, v in dstate.items()}
    result = compare(gpu, x, state, dy, dstate, lengths)
    tol = tolerance or (ONE_FEATURE_TOLERANCE.get(name, result.tolerance) if H == 1 else result.tolerance)
    bad = {k: e for k, e in result.errors.items() if not e <= tol}
    assert not bad, f"{name} T={T} B={B} I={I} H={H} L={L} {schedule}: {bad}"
    return result.errors


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("T,B,I,H,L", [(7, 3, 5, 33, 1), (1, 1, 2, 1, 3), (7, 1, 3, 100, 3)])
@pytest.mark.parametrize("schedule", [None, "no persistent"])
def test_every_spec_matches_the_reference(name, T, B, I, H, L, schedule):
    """As the cost model chooses (the persistent kernel for fp32 LSTMs at these batches), and the stepwise
    loop at the same sizes."""
    check(name, T, B, I, H, L, schedule=schedule)


@pytest.mark.parametrize("T,B,I,H,L,heads", [(7, 3, 5, 33, 1, 3), (1, 1, 2, 4, 3, 4), (7, 17, 3, 100, 2, 4),
                                               (5, 3, 8, 1000, 1, 8), (4, 2, 6, 9, 1, 9)])
def test_slstm_heads_match_the_reference(T, B, I, H, L, heads):
    check("slstm", T, B, I, H, L, num_heads=heads)
    check("slstm", T, B, I, H, L, num_heads=heads, schedule="no fuse gates; no batch weights; fuse recurrent",
          bidirectional=True)


@pytest.mark.parametrize("schedule", ["precision bf16", "precision fp16", "precision tf32", "no hoist input",
                                      "no batch weights", "wavefront"])
def test_slstm_heads_stored_head_by_head_under_other_schedules(schedule):
    """The stacks stored head by head (the default's gate fusion) in half precision (padded input stack,
    permuted half copies), under tf32, with the input products in the loop, with weight gradients per step,
    as a stack's wavefront; bidirectional with lengths and DropConnect once."""
    check("slstm", 7, 3, 6, 24, 2, num_heads=4, schedule=schedule)
    if schedule == "precision bf16":
        check("slstm", 5, 3, 6, 24, 2, num_heads=4, schedule=schedule, bidirectional=True,
              lengths=np.array([5, 1, 3]), dropconnect=0.3)


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_storage(name):
    for schedule in (None, "no fuse gates; no hoist input; no fuse pointwise; no batch weights", "fuse recurrent"):
        check(UNUSUAL[name], 5, 3, 4, 6, 2 if "input" not in UNUSUAL[name].split("state")[1] else 1,
              schedule=schedule)


@pytest.mark.parametrize("name", ["vanilla", "peephole", "gru"])
@pytest.mark.parametrize("T,B,I,H,L", [(100, 3, 16, 100, 1), (7, 1, 64, 512, 1), (100, 3, 8, 33, 3)])
def test_long_and_wide(name, T, B, I, H, L):
    check(name, T, B, I, H, L)


@pytest.mark.parametrize("name", ["peephole", "gru", "lstmp", "fgr"])
def test_every_schedule_on_the_gpu(name):
    import itertools

    switches = ["fuse gates", "hoist input", "fuse pointwise", "batch weights", "fuse recurrent"]
    for bits in itertools.product([False, True], repeat=len(switches)):
        text = "; ".join(("" if on else "no ") + s for s, on in zip(switches, bits))
        check(name, 5, 3, 4, 9, 2, schedule=text)
        if name == "lstmp":  # (the projection folded by default where the step has its pattern)
            check(name, 5, 3, 4, 9, 2, schedule=text + "; no fold projection")


@pytest.mark.parametrize("name", ["vanilla", "peephole", "cifg", "lstmp"])
@pytest.mark.parametrize("T,B,I,H,L", [(7, 3, 5, 33, 1), (1, 1, 2, 1, 2), (100, 1, 16, 100, 1), (5, 3, 64, 512, 1)])
def test_recurrent_products_fused_into_the_step_kernel(name, T, B, I, H, L):
    check(name, T, B, I, H, L, schedule="fuse recurrent")


@pytest.mark.parametrize("T,B,I,H,L,kw", [(7, 3, 5, 33, 1, {}), (1, 1, 2, 1, 2, {}), (9, 17, 7, 100, 2, {"bidirectional": True}),
                                          (5, 3, 64, 1000, 1, {}), (6, 4, 5, 33, 2, {"dtype": "float64"}),
                                          (7, 3, 6, 33, 2, {"bidirectional": True, "dropout": 0.3, "dropconnect": 0.3}),
                                          (7, 3, 6, 33, 2, {"bidirectional": True, "lengths": np.array([7, 1, 4])})])
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_lstmp_with_the_projection_folded(T, B, I, H, L, kw, precision):
    """`fold projection`: the step's one GEMM of the next step's products through W P (passes/projection.py);
    with lengths the plan stays unfolded (the masked update is not the projection's product)."""
    if precision == "tf32" and kw.get("dtype") == "float64":
        pytest.skip("float64 layers compute in float64")
    schedule = f"fold projection; precision {precision}"
    from lstmdsl.passes.projection import folded

    layer = lstmdsl.compile("lstmp", input_size=I, hidden_size=H, proj_size=4, backend="cuda", schedule=schedule)
    assert folded(layer.program.plan)
    check("lstmp", T, B, I, H, L, schedule=schedule, **kw)


def test_fast_sigmoid_and_tanh_within_their_stated_error():
    """Float kernels compute sigmoid and tanh from the GPU's fast exp2 and reciprocal (__expf, __fdividef:
    templates/pointwise.cu.j2): absolute error against float64 below 1e-6 over [-60, 60] (1.1e-7 and 1.5e-7
    measured on an H200: docs/language.md), exact at 0, the limits at +-inf and far out, NaN kept."""
    import cupy
    from lstmdsl import codegen
    from lstmdsl.runtime import nvrtc
    source = codegen.render_helpers("float") + r'''
extern "C" __global__ void probe(const float* a, float* s, float* t, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) s[i] = lstmdsl_sigmoid(a[i]), t[i] = lstmdsl_tanh(a[i]);
}
'''
    kernel = cupy.RawModule(code=source, options=nvrtc._OPTIONS).get_function("probe")
    a = np.concatenate([np.linspace(-60, 60, 2_000_001), np.geomspace(1e-30, 1, 1001), -np.geomspace(1e-30, 1, 1001),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30]]).astype(np.float32)
    n = a.size
    a_gpu = cupy.asarray(a)
    s, t = cupy.full(n, np.nan, cupy.float32), cupy.full(n, np.nan, cupy.float32)
    kernel(((n + 255) // 256,), (256,), (a_gpu, s, t, np.int32(n)))
    s, t = cupy.asnumpy(s).astype(np.float64), cupy.asnumpy(t).astype(np.float64)
    a64 = a.astype(np.float64)
    with np.errstate(over="ignore"):
        s_ref, t_ref = 1.0 / (1.0 + np.exp(-a64)), np.tanh(a64)
    finite = np.isfinite(a64)
    s_err, t_err = np.abs(s - s_ref)[finite].max(), np.abs(t - t_ref)[finite].max()
    print(f"fast sigmoid: max abs error {s_err:.3g}; fast tanh: {t_err:.3g}")
    assert s_err < 1e-6 and t_err < 1e-6
    # at 0, -0, inf, -inf, NaN, 1e30, -1e30 (the last seven)
    assert s[-7:-3].tolist() == [0.5, 0.5, 1.0, 0.0] and t[-7:-3].tolist() == [0.0, 0.0, 1.0, -1.0]
    assert s[-2:].tolist() == [1.0, 0.0] and t[-2:].tolist() == [1.0, -1.0]
    assert np.isnan(s[-3]) and np.isnan(t[-3])
    print("steps down over the sweep:", int((np.diff(s[:2_000_001]) < 0).sum()), int((np.diff(t[:2_000_001]) < 0).sum()))


def test_tf32_reaches_cublas_and_stays_within_its_tolerance():
    """The stepwise loop (its recurrent GEMMs on cuBLAS's tf32 tensor cores); at this shape `auto` would run
    fp32's persistent kernel, whose products are strict."""
    strict = max(check("vanilla", 20, 16, 256, 256, 1, schedule="no persistent").values())
    tf32 = max(check("vanilla", 20, 16, 256, 256, 1, schedule="no persistent; precision tf32").values())
    assert tf32 <= TOLERANCE["tf32"]
    # tf32 rounds the GEMMs' operands to 10 mantissa bits: its error is far above strict fp32's
    assert tf32 > 30 * strict and tf32 > 1e-5, (strict, tf32)


def test_vanilla_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    T, B, I, H = 9, 3, 7, 33
    layer = lstmdsl.compile("vanilla", input_size=I, hidden_size=H, backend="cuda", seed=3)
    lstm = torch.nn.LSTM(I, H).cuda()
    p = {k: torch.as_tensor(cupy.asnumpy(v)).cuda() for k, v in layer.parameters().items()}
    with torch.no_grad():  # torch's gate order is i, f, g, o (g is our block input z)
        lstm.weight_ih_l0.copy_(torch.cat([p["l0.W_i"], p["l0.W_f"], p["l0.W_z"], p["l0.W_o"]]))
        lstm.weight_hh_l0.copy_(torch.cat([p["l0.R_i"], p["l0.R_f"], p["l0.R_z"], p["l0.R_o"]]))
        lstm.bias_ih_l0.copy_(torch.cat([p["l0.b_i"], p["l0.b_f"], p["l0.b_z"], p["l0.b_o"]]))
        lstm.bias_hh_l0.zero_()
    x = torch.randn(T, B, I, device="cuda")
    y_t, (h_t, c_t) = lstm(x)
    y, state = layer.forward(cupy.asarray(x.detach().cpu().numpy()))
    np.testing.assert_allclose(cupy.asnumpy(y), y_t.detach().cpu().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(state["c"][0]), c_t[0].detach().cpu().numpy(), rtol=1e-4, atol=1e-5)


def test_bad_inputs_on_the_gpu():
    layer = lstmdsl.compile("vanilla", input_size=3, hidden_size=4, backend="cuda")
    with pytest.raises(lstmdsl.UsageError, match="must be a CuPy array"):
        layer.forward(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(lstmdsl.UsageError, match="dtype float64"):
        layer.forward(cupy.zeros((2, 1, 3)))
    with pytest.raises(lstmdsl.UsageError, match="C-contiguous"):
        layer.forward(cupy.zeros((2, 1, 6), np.float32)[:, :, ::2])
    with pytest.raises(lstmdsl.UsageError, match="applies to float32 layers"):
        lstmdsl.compile("vanilla", input_size=3, hidden_size=4, backend="cuda", dtype="float64",
                        schedule="precision tf32")


def test_optimizers_and_dense_on_cupy_match_numpy():
    from lstmdsl.nn import Dense, softmax_cross_entropy
    from lstmdsl.optim import Adam, SGD

    rng = np.random.default_rng(0)
    for make in (lambda p: Adam(p, lr=0.05, weight_decay=0.01), lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True)):
        host = {"p": rng.standard_normal(7).astype(np.float32)}
        dev = {"p": cupy.asarray(host["p"])}
        a, b = make(host), make(dev)
        for _ in range(20):
            g = rng.standard_normal(7).astype(np.float32)
            a.step({"p": g})
            b.step({"p": cupy.asarray(g)})
        np.testing.assert_allclose(cupy.asnumpy(dev["p"]), host["p"], rtol=1e-5, atol=1e-6)
    d_host, d_dev = Dense(6, 4, seed=2), Dense(6, 4, backend="cuda", seed=2)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 5)
    l1, g1 = softmax_cross_entropy(d_host.forward(x), labels)
    l2, g2 = softmax_cross_entropy(d_dev.forward(cupy.asarray(x)), cupy.asarray(labels))
    assert abs(l1 - l2) < 1e-5
    np.testing.assert_allclose(cupy.asnumpy(d_dev.backward(g2)), d_host.backward(g1), rtol=1e-4, atol=1e-6)


def test_train_digits_on_the_gpu(tmp_path):
    pytest.importorskip("sklearn")
    from lstmdsl.train import TrainConfig, run

    result = run(TrainConfig("peephole", "digits", epochs=4, hidden_size=32, lr=0.01, backend="cuda"), tmp_path, log=None)
    assert result["test"] > 0.6
    saved = lstmdsl.load(tmp_path / "layer.npz", backend="cuda")
    assert set(saved.parameters()) == set(lstmdsl.load(tmp_path / "layer.npz").parameters())


@pytest.mark.parametrize("name", ["fgr", "gru", "lstmp"])
def test_float64_layer_matches_reference_tightly(name):
    errors = check(name, 5, 3, 4, 7, 2, dtype="float64")
    assert max(errors.values()) < 1e-12


def test_load_keeps_float64_layers_float64(tmp_path):
    layer = lstmdsl.compile("gru", input_size=3, hidden_size=5, dtype="float64")
    layer.save(tmp_path / "gru.npz")
    gpu = lstmdsl.load(tmp_path / "gru.npz", backend="cuda")
    assert gpu.dtype == np.float64 and all(p.dtype == np.float64 for p in gpu.parameters().values())


def test_profile_parts_add_up():
    layer = lstmdsl.compile("peephole", input_size=64, hidden_size=64, backend="cuda", schedule="no persistent")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32))
    for _ in range(3):  # (a part's events also time other processes' kernels: the GPU suite runs 8 at once)
        p = layer.profile(x, repeat=2)
        busy = sum(p["parts_ms"].values())
        graphed_train = p["graphs"]["train"]["ms"]
        if 0.3 * graphed_train < busy < 3 * graphed_train:
            break
    kinds = set(p["parts_ms"])
    assert {"forward: input GEMM, all steps", "forward: per-step GEMMs (recurrent)", "forward: pointwise kernels",
            "backward: pointwise kernels", "backward: weight-gradient GEMMs"} <= kinds
    assert 0.3 * graphed_train < busy < 3 * graphed_train  # GPU work, not the host's issue time
    assert all(not g.any() for g in layer.grads().values())  # profiling leaves no gradients behind



@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_profile_takes_half_arrays_and_backs_sum_y_through_them(precision):
    """profile() on x in the layer's half type (float16, or bfloat16 bits) runs its training step with the gradient
    of sum(y) in y's type: ones, not ones_like's bit pattern 1 (about 9e-41 as bfloat16 bits)."""
    layer = lstmdsl.compile("vanilla", input_size=64, hidden_size=64, backend="cuda",
                            schedule=f"precision {precision}; no persistent")
    half = np.float16 if precision == "fp16" else np.uint16
    x = cupy.asarray(to_io(np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32), half))
    seen, backward = [], layer.backward
    layer.backward = lambda dy, *a, **k: (seen.append(cupy.asnumpy(dy)), backward(dy, *a, **k))[1]
    p = layer.profile(x, repeat=2)
    assert p["graphs"]["train"]["ms"] > 0 and seen
    assert all(d.dtype == half and np.array_equal(from_io(d, np.float32), np.ones(d.shape, np.float32)) for d in seen)


def test_profile_times_every_unit_of_a_bidirectional_stack():
    x = cupy.asarray(np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32))
    calls = {}
    for bidirectional in (False, True):
        layer = lstmdsl.compile("vanilla", input_size=64, hidden_size=64, num_layers=2, backend="cuda",
                                bidirectional=bidirectional, schedule="no persistent")
        p = layer.profile(x, repeat=2)
        calls[bidirectional] = p["parts_calls"]
        assert set(p["parts_calls"]) == set(p["parts_ms"]) and all(ms > 0 for ms in p["parts_ms"].values())
        assert layer.overlap_directions and layer.use_graphs  # restored
    # both directions' kernels are timed (times themselves vary with what else shares the GPU; counts do not)
    assert calls[True] == {kind: 2 * n for kind, n in calls[False].items()}

_WARM_PROBE = """
import sys, cupy, numpy as np, lstmdsl
from lstmdsl.runtime import nvrtc
if sys.argv[1] == "warm":  # a warm start must not start NVRTC, nor let CuPy compile
    def refuse(*a, **k):
        raise SystemExit("NVRTC was started on a warm start")
    nvrtc.nvrtc_cubin = refuse
    raw = cupy.RawModule
    cupy.RawModule = lambda code=None, **k: refuse() if code is not None else raw(**k)
layer = lstmdsl.compile("gru", input_size=3, hidden_size=5, backend="cuda")
y, _ = layer.forward(cupy.ones((2, 1, 3), np.float32))
print("ran", float(y.sum()))
"""


def test_a_warm_start_loads_cubins_without_nvrtc(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, LSTMDSL_CACHE=str(tmp_path))
    cold = subprocess.run([sys.executable, "-c", _WARM_PROBE, "cold"], capture_output=True, text=True, env=env)
    assert cold.returncode == 0 and "ran" in cold.stdout, cold.stderr[-2000:]
    assert list((tmp_path / "cubin").glob("*.cubin")), "the cold start wrote no cubin"
    warm = subprocess.run([sys.executable, "-c", _WARM_PROBE, "warm"], capture_output=True, text=True, env=env)
    assert warm.returncode == 0 and warm.stdout == cold.stdout, warm.stdout + warm.stderr[-2000:]
    for cubin in (tmp_path / "cubin").glob("*.cubin"):  # a damaged cubin is compiled and written again
        cubin.write_bytes(b"not a cubin")
    again = subprocess.run([sys.executable, "-c", _WARM_PROBE, "cold"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stdout == cold.stdout, again.stderr[-2000:]
    assert all(c.read_bytes() != b"not a cubin" for c in (tmp_path / "cubin").glob("*.cubin"))


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm", "slstm"])
@pytest.mark.parametrize("T,B,I,H,L", [(5, 3, 7, 1000, 1), (6, 17, 4, 33, 2)])
def test_reductions_over_wide_and_odd_rows(name, T, B, I, H, L):
    check(name, T, B, I, H, L)


@pytest.mark.parametrize("name", ["vanilla", "peephole", "gru", "lstmp", "layernorm", "slstm"])
@pytest.mark.parametrize("T,B,I,H,L", [(7, 5, 5, 33, 2), (40, 3, 16, 100, 1)])
@pytest.mark.parametrize("bidirectional,masked", [(True, False), (False, True), (True, True)])
def test_lengths_and_both_directions(name, T, B, I, H, L, bidirectional, masked):
    lengths = np.random.default_rng(T + B).integers(1, T + 1, B) if masked else None
    if masked:
        lengths[0] = T
    check(name, T, B, I, H, L, bidirectional=bidirectional, lengths=lengths)


@pytest.mark.parametrize("name", ["slstm", "layernorm", "vanilla"])
@pytest.mark.parametrize("schedule", [None, "persistent"])
def test_zero_initial_states_held_through_the_reverse_directions_padding(name, schedule):
    """The reverse direction holds the initial state through the padding before each sequence; zero there is
    0 / 0 in the sLSTM's h' = o * (c' / n') unless the divisor reads the raw update (masks._singular_inputs:
    the masked cell once gave NaN, silently)."""
    check(name, 7, 5, 5, 33, 2, schedule=schedule, bidirectional=True, lengths=np.array([7, 1, 3, 6, 2]),
          zero_states=True)


def test_lengths_changing_between_calls_of_one_layer():
    """The length mask is kept for the next call with the same lengths (runtime/layer.py): lengths A, B, A
    again (B as a CuPy array) through one layer, each against the reference."""
    gpu = lstmdsl.compile("vanilla", input_size=5, hidden_size=33, num_layers=2, backend="cuda", bidirectional=True)
    randomize(gpu, 1)
    x, state, dy, dstate = random_case(gpu, 9, 4, 2)
    for lengths in (np.array([9, 1, 5, 3]), cupy.asarray([2, 9, 9, 7]), np.array([9, 1, 5, 3])):
        result = compare(gpu, x, state, dy, dstate, lengths)
        bad = {k: e for k, e in result.errors.items() if not e <= result.tolerance}
        assert not bad, (lengths, bad)


@pytest.mark.parametrize("name", ["zoneout_lstm", "recurrent_dropout", "vanilla"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_regularisers_inside_and_between_layers(name, bidirectional):
    lengths = np.array([9, 1, 4, 9, 7])
    check(name, 9, 5, 6, 47, 3, bidirectional=bidirectional, lengths=lengths, dropout=0.3, dropconnect=0.4)
    check(name, 30, 3, 8, 200, 1, bidirectional=bidirectional)
    check(name, 7, 2, 5, 33, 2, bidirectional=bidirectional, dropconnect=0.5, schedule="fuse recurrent")


def test_the_gpus_masks_are_draws_at_their_rates():
    layer = lstmdsl.compile("zoneout_lstm", 4, 300, 2, backend="cuda", dropout=0.2, seed=3)
    layer.forward(cupy.zeros((40, 30, 4), cupy.float32))
    masks = {k: cupy.asnumpy(v) for k, v in layer.last_noise().items()}
    for name, p in (("l0.zoneout1", 0.5), ("l1.zoneout2", 0.05), ("l0.between", 0.2)):
        assert abs(float((masks[name] == 0).mean()) - p) < 0.01, name
    again = lstmdsl.compile("zoneout_lstm", 4, 300, 2, backend="cuda", dropout=0.2, seed=3)
    again.forward(cupy.zeros((40, 30, 4), cupy.float32))
    assert all(np.array_equal(cupy.asnumpy(v), masks[k]) for k, v in again.last_noise().items())


def test_the_gpus_draws_are_the_numpy_twins_bit_for_bit():
    """runtime/draws.py's kernel against lstmdsl/draws.py at odd sizes and offsets, past the grid's blocks (a
    grid-stride loop) and across 2^32 draws (64-bit indices); the memory pool's block for its output holds NaN first."""
    from lstmdsl import draws
    from lstmdsl.runtime.draws import MAX_BLOCKS, THREADS, Uniform

    key = draws.key_of((11, 0x6E6F6973))
    for offset, shape in ((0, (1,)), (0, (3, 5, 7)), (123, (2 * MAX_BLOCKS * THREADS + 17,)), (2 ** 32 - 5, (9, 3)),
                          (2 ** 64 - 4, (8,))):
        gen = Uniform((11, 0x6E6F6973))
        gen.set_state({"key": key, "drawn": offset})
        poison = cupy.full(shape, cupy.nan, cupy.float32)
        del poison  # (its block goes back to the pool, which gives it to the draws' output)
        got = gen(shape)
        assert got.shape == shape and got.dtype == cupy.float32 and gen.state()["drawn"] == offset + got.size
        assert np.array_equal(cupy.asnumpy(got), draws.uniform(key, offset, shape)), (offset, shape)


def test_training_with_zoneout_on_the_gpu_resumes_to_the_uninterrupted_result(tmp_path):
    """The CUDA layer's masks' generator is in the checkpoint (runtime/draws.py): a run stopped mid-epoch and
    resumed reaches the uninterrupted run's parameters (before 2026-12-06 it drew other masks after the resume)."""
    from lstmdsl.train import Interrupted, TrainConfig, run

    cfg = TrainConfig("zoneout_lstm", "digits", epochs=2, hidden_size=12, lr=0.02, batch=16, max_train=160, seed=5,
                      optimizer="adam", backend="cuda")
    whole = run(cfg, tmp_path / "whole", log=None)
    with pytest.raises(Interrupted, match="epoch 2, batch 3"):
        run(cfg, tmp_path / "cut", log=None, stop_after=13)
    resumed = run(cfg, tmp_path / "cut", log=None, resume=True)
    a, b = (np.load(tmp_path / d / "layer.npz") for d in ("whole", "cut"))
    # (the parameters close, not equal: the GPU's sums need not repeat bit for bit; other masks moved them by 0.06 in
    # the emulated runtime; the file's other entries, its metadata, equal)
    assert all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) if a[k].dtype.kind == "f" else np.array_equal(a[k], b[k])
               for k in a.files)
    assert np.allclose([h["valid"] for h in resumed["history"]], [h["valid"] for h in whole["history"]], rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("T,B,I,H,L", [(7, 3, 5, 33, 1), (6, 17, 64, 256, 2), (20, 1, 16, 1000, 1)])
def test_every_spec_in_half_precision(name, precision, T, B, I, H, L):
    """GEMM operands, weights and saved activations in half precision, state and accumulation in fp32:
    within lstmdsl.check.TOLERANCE of the float64 reference, at odd and round sizes. The weights are at
    the scale of the usual initialisation (1/sqrt(H)): at the fp32 tests' 0.5 a wide cell is chaotic
    (R's spectral radius about 9 at H=1000), the half-precision rounding grows to O(1) within 20 steps (the
    emulated runtime shows the same), and fp16's gradients overflow. IndRNN's ReLU has a kink at 0: the
    rounding moves the pre-activations of a fraction ~eps of the rows across it, each changing a gradient
    element by O(1), so its gradients' error grows like sqrt(eps) (1.5-2.5% in fp16 at H=256), not eps."""
    kink = {"bf16": 0.15, "fp16": 0.05}[precision] if name == "indrnn" else None
    check(name, T, B, I, H, L, schedule=f"precision {precision}", scale=min(0.5, 1 / np.sqrt(H)), tolerance=kink)


def test_half_precision_rounds_and_follows_the_master_weights():
    """bf16 really reaches the GEMMs (its error is far above fp32's), and a change of the float32 master
    weights between two calls reaches the half copies the GEMMs read."""
    strict = max(check("vanilla", 20, 16, 256, 256, 1).values())
    for precision, limit in (("bf16", 200), ("fp16", 20)):
        err = max(check("vanilla", 20, 16, 256, 256, 1, schedule=f"precision {precision}").values())
        assert err > limit * strict, (precision, strict, err)
    layer = lstmdsl.compile("vanilla", 8, 16, backend="cuda", schedule="precision bf16")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((5, 3, 8)), np.float32)
    y0, _ = layer.forward(x)
    for p in layer.parameters().values():
        p *= 0.5
    y1, _ = layer.forward(x)
    ref = lstmdsl.compile("vanilla", 8, 16, dtype="float64")
    ref.load_state_dict(layer.state_dict())
    want, _ = ref.forward(cupy.asnumpy(x).astype(np.float64))
    assert np.linalg.norm(cupy.asnumpy(y1) - want) / np.linalg.norm(want) < 2e-2
    assert np.linalg.norm(cupy.asnumpy(y1 - y0)) > 1e-2


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("options,schedule,lengths", [({}, "", None), ({"dropout": 0.3}, "", None),
                                                      ({"bidirectional": True}, "", None), ({}, "; persistent", None),
                                                      ({}, "; wavefront", None),
                                                      ({"bidirectional": True, "dropout": 0.3}, "", "random")])
def test_half_arrays_in_and_out_under_half_precision(options, schedule, lengths, precision):
    """x and dy in the half type (float16 under `precision fp16`, uint16 bfloat16 bits under `precision bf16`; the
    engines convert; workspaces poisoned first): y and dx are the float32 arrays' run rounded to it once (to one unit
    in the last place: two layers, two runs), the final states float32, the gradients the float32 run's."""
    half, ulp = (np.float16, 2 ** -10) if precision == "fp16" else (np.uint16, 2 ** -7)
    xh = to_io(np.random.default_rng(0).standard_normal((13, 17, 33)).astype(np.float32), half)
    if lengths is not None:
        lengths = np.random.default_rng(4).integers(1, 14, 17)
    runs = []
    for given in (np.float32, half):
        layer = lstmdsl.compile("peephole", 33, 100, 2, backend="cuda", schedule=f"precision {precision}" + schedule,
                                seed=3, **options)
        x = cupy.asarray(from_io(xh, given))
        y, _ = layer.forward(x, lengths=lengths)
        masks = layer.last_noise()
        layer.zero_grad()
        y, final = layer.forward(x, noise=masks, lengths=lengths)
        dyh = to_io(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32), half)
        dx = layer.backward(cupy.asarray(from_io(dyh, given)))
        runs.append((cupy.asnumpy(y), {k: cupy.asnumpy(v) for k, v in final.items()}, cupy.asnumpy(dx),
                     {k: cupy.asnumpy(g) for k, g in layer.grads().items()}))
    (y32, f32, dx32, g32), (yh, fh, dxh, gh) = runs
    assert yh.dtype == dxh.dtype == half and all(fh[k].dtype == np.float32 for k in fh)
    for got, want in ((yh, y32), (dxh, dx32)):
        got = from_io(got, np.float32)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, from_io(to_io(want, half), np.float32), rtol=ulp, atol=1e-6)
    for k in g32:
        np.testing.assert_allclose(gh[k], g32[k], rtol=1e-4, atol=1e-6 * float(np.abs(g32[k]).max()))


def test_gemms_take_the_cublas_workspace_the_plan_gives(monkeypatch):
    """A stack's GEMMs run on handles with the workspace plan.GemmWorkspace gives: in bf16 / fp16 the half one
    (1 MiB a lane, not 32: a wavefront takes a lane per layer), in fp32 the small one at B = 1 and the full one
    at B = 5 (a wavefront's lanes untuned: cuBLAS's own choice, with it), and the small one at B = 16 where one
    layer's forward and backward both run persistent (their GEMMs are over all steps' rows only), forward and
    backward, and give what the reference gives. (Every shape with a workspace, as cuBLAS runs it by default: a
    choice stored by an earlier process could run one bare.)"""
    from lstmdsl.plan import GemmWorkspace
    from lstmdsl.runtime import cublas

    monkeypatch.setenv("LSTMDSL_TUNE_GEMMS", "0")
    monkeypatch.setattr(cublas, "_BARE", {})

    rng = np.random.default_rng(1)
    rule = GemmWorkspace()
    for precision, B, want, how, (I, H, L) in (
            ("bf16", 5, rule.half, "no persistent", (24, 40, 3)), ("fp16", 5, rule.half, "no persistent", (24, 40, 3)),
            ("fp32", 1, rule.small, "no persistent", (24, 40, 3)), ("fp32", 5, rule.full, "no persistent", (24, 40, 3)),
            ("fp32", 16, rule.small, "persistent", (64, 64, 1))):  # (both phases persistent: T * B = 112 rows)
        x = cupy.asarray(rng.standard_normal((7, B, I)), np.float32)
        before = cublas.workspace_uses()
        layer = lstmdsl.compile("vanilla", I, H, L, backend="cuda", schedule=f"precision {precision}; {how}")
        y, _ = layer.forward(x)
        layer.backward(cupy.ones_like(y))
        after = cublas.workspace_uses()
        used = {n for i, (uses, n) in after.items() if uses > before.get(i, (0, 0))[0]}
        assert used == {want}, (precision, B, used)
        if how == "persistent":
            runs = [run for phase in ("forward", "backward") for run in _phase_runs(layer, phase)]
            assert len(runs) == 2 and None not in runs, runs
        ref = lstmdsl.compile("vanilla", I, H, L, dtype="float64")
        ref.load_state_dict(layer.state_dict())
        expect, _ = ref.forward(cupy.asnumpy(x).astype(np.float64))
        assert np.linalg.norm(cupy.asnumpy(y) - expect) / np.linalg.norm(expect) < 2e-2


def test_a_wavefront_with_cublaslt_kernels_on_its_lanes_gives_the_reference(monkeypatch):
    """A stack's wavefront (fp32, B = 5, odd sizes: some steps' operands off a kernel's alignment) runs cuBLASLt's first
    kernel for each of its GEMMs on its lanes' workspace (GemmWorkspace.first_kernels), the parameter gradients' too;
    with the bare handle never taken, so that they run, its forward, input and parameter gradients match the float64
    reference's, and its lanes' handles hold the wave size."""
    from lstmdsl.plan import GemmWorkspace
    from lstmdsl.runtime import cublas

    rule = GemmWorkspace()
    used, rows = _wavefront_lanes_against_the_reference(monkeypatch, 4)
    assert rule.wave in used
    found = {key for key, kernel in cublas._FIRST.items() if kernel is not None}
    assert found and {key[-1] for key in cublas._FIRST} == {rule.wave}, cublas._FIRST
    assert any(key[3] == rows for key in found), found  # (a weight gradient's K: all steps' rows)


def test_the_lanes_take_the_workspace_sizes_of_the_plans_own_rule(monkeypatch):
    """The runtime sizes cuBLAS's workspaces by the plan's rule (Plan.gemm_workspace), not by the defaults: a plan whose
    wavefront lanes hold 4 MiB, first kernels looked up for an 8 MiB limit and a 2 MiB fallback, runs a stack's GEMMs
    on handles of those sizes (and `full`'s 8 MiB off the lanes) only, and gives the float64 reference's output and
    gradients."""
    import dataclasses

    from lstmdsl.plan import GemmWorkspace
    from lstmdsl.runtime import cublas, cublaslt
    from lstmdsl.runtime import layer as runtime_layer

    rule = type("Rule", (GemmWorkspace,), {"fallback": lambda self, nbytes: nbytes // 2})(full=8 << 20, wave=4 << 20)
    build = runtime_layer.build_program
    monkeypatch.setattr(runtime_layer, "build_program", lambda *a, **k: dataclasses.replace(
        build(*a, **k), plan=dataclasses.replace(build(*a, **k).plan, gemm_workspace=rule)))
    limits, first = set(), cublaslt.first
    monkeypatch.setattr(cublaslt, "first", lambda *a: limits.add(a[4]) or first(*a))
    used, _ = _wavefront_lanes_against_the_reference(monkeypatch, 6)
    assert 4 << 20 in used and used <= {8 << 20, 4 << 20, 2 << 20}, used  # (the rule's full, wave and fallback)
    assert limits == {8 << 20} and {key[-1] for key in cublas._FIRST} == {4 << 20}, (limits, cublas._FIRST)


def _wavefront_lanes_against_the_reference(monkeypatch, seed: int) -> tuple[set[int], int]:
    """A 3-layer vanilla wavefront (fp32, T = 9, B = 5, I = 37, H = 99) forward and backward with its GEMMs tuned
    afresh and never run bare (so the lanes' cuBLASLt kernels run), checked against the float64 reference: (the
    workspace sizes its GEMMs used, T * B)."""
    from lstmdsl.runtime import cublas

    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)
    for name, value in (("_BARE", {}), ("_STORED", {}), ("_store", lambda key, bare: None), ("_FIRST", {}),
                        ("TUNE_MARGIN", 0.0)):
        monkeypatch.setattr(cublas, name, value)
    rng = np.random.default_rng(seed)
    T, B, I, H, L = 9, 5, 37, 99, 3
    x = cupy.asarray(rng.standard_normal((T, B, I)) * 0.5, np.float32)
    dy = cupy.asarray(rng.standard_normal((T, B, H)), np.float32)
    before = cublas.workspace_uses()
    layer = lstmdsl.compile("vanilla", I, H, L, backend="cuda", schedule="no persistent; wavefront", seed=5)
    y, _ = layer.forward(x)
    dx = layer.backward(dy)
    after = cublas.workspace_uses()
    ref = lstmdsl.compile("vanilla", I, H, L, dtype="float64")
    ref.load_state_dict(layer.state_dict())
    want, _ = ref.forward(cupy.asnumpy(x).astype(np.float64))
    want_dx = ref.backward(cupy.asnumpy(dy).astype(np.float64))
    for got, expect in [(y, want), (dx, want_dx)] + [(layer.grads()[k], ref.grads()[k]) for k in ref.grads()]:
        got = cupy.asnumpy(got)
        assert np.linalg.norm(got - expect) / np.linalg.norm(expect) < 1e-4
    return {n for i, (uses, n) in after.items() if uses > before.get(i, (0, 0))[0]}, T * B


def _phase_runs(layer, phase: str) -> list:
    """The persistent launches the layer's workspaces chose for a phase, of those where it has run (None: the
    stepwise loop; a workspace's entry is made when its phase first runs)."""
    return [ws.persistent[phase] for engine in layer._engines.values() for wss in engine.workspaces.values()
            for ws in wss if phase in ws.persistent]


def _persistent_runs(layer) -> list:
    """The persistent launches the layer's engines chose in their workspaces (None: the stepwise loop)."""
    return [ws.persistent.get("forward") for engine in layer._engines.values() for wss in engine.workspaces.values()
            for ws in wss]


@pytest.mark.parametrize("B,H,precision", [(16, 512, "fp16"), (1, 1024, "bf16"), (4, 512, "fp16"), (8, 512, "bf16"),
                                           (9, 300, "fp32"), (13, 257, "tf32"), (11, 300, "fp16"), (8, 257, "bf16")])
def test_auto_runs_the_backward_kernel_where_its_rules_say(B, H, precision):
    """bf16, fp16, fp32 and tf32 under `persistent auto` at shapes of BACKWARD_LIMITS' rules (fp32 and tf32 at
    B = 5-16 since the thirtieth session): the backward runs its persistent kernel (the forward's grid too), and the
    layer matches the float64 reference."""
    gpu = lstmdsl.compile("vanilla", 16, H, backend="cuda", schedule=f"precision {precision}", seed=0)
    randomize(gpu, 1, 1 / np.sqrt(H))
    x, state, dy, dstate = random_case(gpu, 9, B, 2)
    result = compare(gpu, x, state, dy, dstate)
    assert all(e <= TOLERANCE[precision] for e in result.errors.values()), result.errors
    for phase in ("forward", "backward"):  # (a workspace's entry is made when its phase first runs)
        runs = _phase_runs(gpu, phase)
        assert runs and all(r is not None for r in runs), (phase, runs)


def test_fgr_runs_its_grid_at_a_middle_batch_in_a_layer_of_one_direction():
    """FGR under `persistent auto` at B = 9, H = 300 (2^23.3 multiply-adds a step: MANY_ALONE_LIMITS): a grid
    over the elements in a layer of one direction, the stepwise loop in a bidirectional layer's directions; the
    grid (the general kernel, then the one compiled for the shape) gives the stepwise loop's results, and the
    layer matches the float64 reference."""
    from lstmdsl.runtime import nvrtc

    x = cupy.asarray(np.random.default_rng(3).standard_normal((6, 9, 7)).astype(np.float32) * 0.5)
    results = {}
    for words in ("persistent auto", "no persistent"):
        layer = lstmdsl.compile("fgr", 7, 300, backend="cuda", schedule=words, seed=4)
        for _ in range(2):  # (the second call: the kernel compiled for the shape, under auto)
            y, state = layer.forward(x)
            dx = layer.backward(cupy.ones_like(y))
            nvrtc.settle()
        (run,) = _persistent_runs(layer)
        assert (run is not None and run.blocks > 1 and not run.split) == (words == "persistent auto"), (words, run)
        results[words] = [cupy.asnumpy(a) for a in (y, state["c"], dx)]
    for a, b in zip(results["persistent auto"], results["no persistent"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    both = lstmdsl.compile("fgr", 7, 300, backend="cuda", bidirectional=True)
    both.forward(x, train=False)
    assert _persistent_runs(both) == [None, None]
    check("fgr", 6, 9, 7, 300, 1)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("T,B,I,H,L", [(7, 1, 5, 1, 1), (7, 3, 5, 33, 2), (9, 17, 3, 100, 1), (20, 3, 16, 1000, 1)])
@pytest.mark.parametrize("schedule", ["persistent", "persistent; specialise"])
def test_every_spec_under_the_persistent_schedule(name, T, B, I, H, L, schedule):
    """The forward recurrence as one cooperative launch (forced: `persistent`), at odd sizes: one block at
    B = 1, a grid splitting the batch where the weights fit one block, a grid of blocks with barriers at the
    large ones; every workspace poisoned with NaN. With `specialise`, every launch runs a kernel compiled for
    its shape (runtime/specialise.py) from the first call."""
    scale = min(0.5, 1 / np.sqrt(H))
    tolerance = None
    if H == 1 and name in ONE_FEATURE_TOLERANCE:  # a norm over one feature is ill-conditioned: as good as stepwise
        stepwise = check(name, T, B, I, H, L, schedule="no persistent", scale=scale, tolerance=np.inf)
        tolerance = max(ONE_FEATURE_TOLERANCE[name], 2 * max(stepwise.values()))
    check(name, T, B, I, H, L, schedule=schedule, scale=scale, tolerance=tolerance)


@pytest.mark.parametrize("B,H,precision", [(1, 32, ""), (3, 33, ""), (3, 300, ""), (4, 256, "; precision bf16"),
                                         (16, 32, "; precision fp16")])
def test_a_kernel_compiled_for_the_shape_takes_over_from_the_next_call(B, H, precision):
    """`specialise auto`: the first call runs the general kernel while the shape's own compiles on a thread;
    once that has finished (settle), the next call launches it, forward and backward, with the same results;
    `no specialise` never does, `specialise` from the first call. One block, a split grid, a grid of 132; in
    fp32, and in bf16 and fp16 (their tensor-core kernels: a grid, a split grid)."""
    from lstmdsl.runtime import nvrtc

    x = cupy.asarray(np.random.default_rng(0).standard_normal((9, B, 5)).astype(np.float32))
    results = {}
    for words in ("persistent", "persistent; no specialise", "persistent; specialise"):
        layer = lstmdsl.compile("vanilla", 5, H, backend="cuda", schedule=words + precision, seed=2)
        runs = []
        for _ in range(3):
            y, state = layer.forward(x)
            dx = layer.backward(cupy.ones_like(y))
            runs.append([cupy.asnumpy(a) for a in (y, state["c"], dx)])
            functions = [dict(ws.persistent_function) for engine in layer._engines.values()
                         for wss in engine.workspaces.values() for ws in wss]
            nvrtc.settle()
        results[words] = runs[-1]
        want = {"persistent": {"forward", "backward"}, "persistent; specialise": {"forward", "backward"},
                "persistent; no specialise": set()}[words]
        assert {phase for f in functions for phase in f} == want, (words, functions)
        for first, last in zip(runs[0], runs[-1]):
            np.testing.assert_allclose(last, first, rtol=1e-5, atol=1e-6)
    for a, b in zip(results["persistent"], results["persistent; no specialise"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,H,precision", [(16, 256, "fp16"), (3, 512, "bf16"), (5, 256, "fp32"), (2, 1024, "fp16"),
                                         (1, 512, "fp16; specialise"), (1, 256, "bf16; specialise")])
def test_a_grid_hands_on_the_state_at_the_common_sizes(B, H, precision):
    """A grid handing h on in tagged words (templates: stage_exchanged) at the sizes users run, rows of a power of
    two words: a whole staging pass of 4096 words (16 x 256) and parts of one, rows shorter and longer than a
    thread's loads a pass; the float64 reference's results with every workspace poisoned, and every launch
    exchanged (the other grid tests' H = 300, 1000, 1100 have rows that are not). One batch row with `specialise`:
    the grids' kernels compiled for B = 1 (runtime/specialise.py)."""
    gpu = lstmdsl.compile("vanilla", 16, H, backend="cuda", schedule=f"persistent; precision {precision}", seed=0)
    randomize(gpu, 1, 1 / np.sqrt(H))
    x, state, dy, dstate = random_case(gpu, 9, B, 2)
    result = compare(gpu, x, state, dy, dstate)
    tol = TOLERANCE.get(precision.split(";")[0], result.tolerance)
    assert all(e <= tol for e in result.errors.values()), result.errors
    runs = _persistent_runs(gpu)
    assert runs and all(r is not None and r.exchange for r in runs), runs


@pytest.mark.parametrize("schedule", ["persistent; precision bf16", "persistent; precision fp16",
                                      "persistent; no hoist input", "persistent; fuse recurrent; precision tf32"])
@pytest.mark.parametrize("name", ["vanilla", "gru", "lstmp", "layernorm", "fgr"])
def test_persistent_schedule_in_every_precision_and_schedule(name, schedule):
    tolerance = {"bf16": TOLERANCE["bf16"], "fp16": TOLERANCE["fp16"]}.get(schedule.split()[-1])
    check(name, 9, 5, 16, 256, 2, schedule=schedule, scale=1 / 16, tolerance=tolerance)


def test_per_step_gemms_are_timed_and_both_ways_give_the_same_numbers(monkeypatch):
    """cublas.tune times each per-step GEMM shape with and without a workspace before the first capture
    (B = 16, H = 128: cuBLAS's kernel with the workspace was 10x slower); the other way round, forced for
    every shape, gives the same forward and backward."""
    from lstmdsl.runtime import cublas

    monkeypatch.setattr(cublas, "_BARE", {})
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((6, 16, 128)) * 0.5, np.float32)
    dy = cupy.asarray(rng.standard_normal((6, 16, 128)), np.float32)

    used, timing = [], []  # (M, N, K, bare) of every GEMM issued outside the timing (graphs: once each)
    gemm, tune = cublas._gemm, cublas.tune

    def recorded(h, M, N, K, *rest):
        if not timing:
            used.append((M, N, K, h.bare))
        gemm(h, M, N, K, *rest)

    monkeypatch.setattr(cublas, "_gemm", recorded)

    def timed(*args):
        timing.append(1)
        try:
            return tune(*args)
        finally:
            timing.clear()

    monkeypatch.setattr(cublas, "tune", timed)

    def run():
        used.clear()
        layer = lstmdsl.compile("vanilla", 128, 128, backend="cuda", schedule="no persistent", seed=3)
        y, _ = layer.forward(x)
        return y.copy(), layer.backward(dy).copy()

    def runs_as_chosen():  # every per-step GEMM ran the way its timing chose (tune's key is gemm's)
        chosen = {k[1:4]: v for k, v in cublas._BARE.items()}
        step = [u for u in used if u[:3] in chosen]
        assert step and all(u[3] == chosen[u[:3]] for u in step), (chosen, used)

    y, dx = run()
    shapes = {k[1:4] for k in cublas._BARE}
    assert (16, 512, 128) in shapes and (16, 128, 512) in shapes, shapes  # the forward's and backward's step
    runs_as_chosen()
    monkeypatch.setattr(cublas, "_BARE", {k: not v for k, v in cublas._BARE.items()})
    y2, dx2 = run()
    runs_as_chosen()
    assert float(cupy.abs(y - y2).max()) < 1e-5 and float(cupy.abs(dx - dx2).max()) < 1e-4


def test_the_cost_model_chooses_the_persistent_launch():
    """Small batches run the persistent kernel (one block for a small cell, a grid for a wide one, at B = 32
    in a layer of one direction and, on half the multiprocessors each, in a bidirectional layer's), large
    batches and `no persistent` the stepwise loop, and weights too large for the chip are read from memory
    under a forced `persistent` (and still match the stepwise result)."""
    from lstmdsl.passes import persistent
    from lstmdsl.runtime import device

    x = lambda T, B, I: cupy.asarray(np.random.default_rng(0).standard_normal((T, B, I)) * 0.5, np.float32)  # noqa: E731
    small = lstmdsl.compile("vanilla", 8, 32, backend="cuda", schedule="persistent")
    small.forward(x(5, 1, 8))
    (run,) = _persistent_runs(small)
    assert run is not None and run.blocks == 1 and run.cached
    small.forward(x(5, 2, 8))  # two rows: a block each (Persistent.split_rows)
    assert sorted((r.blocks, r.split) for r in _persistent_runs(small)) == [(1, 0), (2, 1)]
    wide = lstmdsl.compile("vanilla", 8, 1024, backend="cuda", schedule="persistent")
    wide.forward(x(5, 4, 8))
    (run,) = _persistent_runs(wide)
    assert run is not None and run.blocks > 1 and run.cached
    auto = lstmdsl.compile("vanilla", 8, 32, backend="cuda")  # persistent auto: B = 1, H = 32 is 2^12 per step
    auto.forward(x(5, 1, 8))
    chosen = any(1 <= b and lo <= 4 * 32 * 32 <= hi for b, lo, hi in persistent.LIMITS["fp32"])
    assert (_persistent_runs(auto)[0] is not None) == chosen
    off = lstmdsl.compile("vanilla", 8, 32, backend="cuda", schedule="no persistent")
    off.forward(x(5, 2, 8))
    assert _persistent_runs(off) == [None]
    one = lstmdsl.compile("vanilla", 8, 256, backend="cuda")  # B = 32, H = 256: a grid in one direction
    one.forward(x(3, 32, 8), train=False)
    (run,) = _persistent_runs(one)
    assert run is not None and run.blocks > 1 and not run.split
    both = lstmdsl.compile("vanilla", 8, 256, backend="cuda", bidirectional=True)  # (a bidirectional layer's: each
    both.forward(x(3, 32, 8), train=False)                                         # on half the multiprocessors)
    runs = _persistent_runs(both)
    assert len(runs) == 2 and all(r is not None and 1 < r.blocks <= device.on_chip()[0] // 2 for r in runs), runs
    wider = lstmdsl.compile("vanilla", 8, 512, backend="cuda", bidirectional=True)  # 64 x 512, 2^26: past the
    wider.forward(x(2, 64, 8), train=False)                                          # directions' rule
    assert _persistent_runs(wider) == [None, None]
    huge = lstmdsl.compile("vanilla", 8, 2048, backend="cuda", schedule="persistent", seed=1)
    stepwise = lstmdsl.compile("vanilla", 8, 2048, backend="cuda", schedule="no persistent", seed=1)
    stepwise.load_state_dict(huge.state_dict())
    xs = x(3, 2, 8)
    y_p, _ = huge.forward(xs)
    y_s, _ = stepwise.forward(xs)
    (run,) = _persistent_runs(huge)
    assert run is not None and not run.cached
    assert float(cupy.abs(y_p - y_s).max()) < 1e-4


def test_a_persistent_backward_under_no_fold_sums():
    """Without sum folding, the GRU's, MGU's and zoneout's backward GEMMs are plain sums of transposed products:
    they get the backward kernel too."""
    for name in ("gru", "mgu", "zoneout_lstm"):
        check(name, 7, 3, 5, 33, 1, schedule="persistent; no fold sums", scale=1 / np.sqrt(33),
              dropout=0.3 if name == "zoneout_lstm" else 0.0)


def test_a_forced_persistent_schedule_that_a_loop_cannot_take_warns_and_runs_stepwise():
    """`persistent` on the layer norm's backward (rows reduced in its step): the first call says why
    (passes/persistent.py: why_not_persistent), once a phase, and runs the stepwise loop there, matching the
    reference."""
    with pytest.warns(UserWarning, match=r"cell layernorm: a kernel of its step reduces rows.*\(backward\)"):
        check("layernorm", 5, 3, 6, 24, 1, schedule="persistent")


@pytest.mark.parametrize("T,B,I,H,L,heads,schedule", [
    (7, 3, 5, 33, 1, 3, "persistent"), (5, 17, 3, 1000, 1, 8, "persistent"), (4, 2, 6, 9, 1, 9, "persistent"),
    (6, 1, 4, 512, 1, 4, "persistent"), (5, 3, 6, 24, 2, 4, "persistent; no fold sums"),
    (5, 3, 5, 100, 1, 4, "precision bf16; persistent"), (5, 16, 5, 256, 1, 4, "precision fp16; persistent"),
    (4, 3, 5, 33, 1, 3, "persistent; specialise")])
def test_slstm_heads_run_the_persistent_kernels(T, B, I, H, L, heads, schedule, monkeypatch):
    """The sLSTM's block-diagonal matrices under a forced `persistent`: forward and backward run their kernels
    (each block's rows of the matrices kept expanded, zero off the diagonal blocks: CachedWeights.heads), one
    block and grids whose blocks' rows straddle the heads (H = 1000, 8 heads of 125: 8 rows a block), a head of
    one row, half precision's tensor-core products, kernels compiled for the shape; bidirectional with lengths
    and DropConnect under `no fold sums`; against the float64 reference, with no warning."""
    made, compile_ = [], lstmdsl.compile
    monkeypatch.setattr(lstmdsl, "compile", lambda *a, **kw: made.append(compile_(*a, **kw)) or made[-1])
    both = "no fold sums" in schedule
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*schedule 'persistent'")
        check("slstm", T, B, I, H, L, num_heads=heads, schedule=schedule, scale=1 / np.sqrt(H / heads),
              bidirectional=both, lengths=np.array([5, 1, 3]) if both else None, dropconnect=0.3 if both else 0.0)
    (layer,) = made
    for phase in ("forward", "backward"):  # (a workspace's entry is made when its phase first runs)
        runs = _phase_runs(layer, phase)
        assert runs and all(r is not None and r.cached for r in runs), (phase, runs)


@pytest.mark.parametrize("B,H,heads,lengths,want", [(1, 512, 4, True, (True, True)), (16, 256, 1, True, (True, None)),
                                                     (5, 100, 4, True, (True, True)), (17, 64, 4, True, (False, False)),
                                                     (3, 33, 3, False, (True, True)), (16, 256, 4, False, (True, True)),
                                                     (17, 1000, 8, False, (False, False))])
def test_slstm_auto_runs_the_kernels_from_the_head_by_head_copy(B, H, heads, lengths, want, monkeypatch):
    """`persistent auto` on the sLSTM (HEADS_LIMITS and HEADS_BACKWARD_LIMITS: B <= 16; here fp32): the forward's kernel
    reads its rows from the stacks' head-by-head copy (CachedWeights.order), the backward's its columns, staging
    each gate's gradients by gathering them (stage_operand with hb, hp; with lengths the step's kernel begins the
    state's gradient with the held gradient, sum folding's init, and the stage adds the products to it; one head at
    16 x 256 (None: either) kept the stepwise backward on an H200 and ran the kernel on an H100 on 2026-12-05);
    against the float64 reference, bidirectional with DropConnect (the copy masked), in a stack of two with lengths."""
    made, compile_ = [], lstmdsl.compile
    monkeypatch.setattr(lstmdsl, "compile", lambda *a, **kw: made.append(compile_(*a, **kw)) or made[-1])
    given = np.array([4] + [1 + k % 4 for k in range(1, B)]) if lengths else None
    L = 2 if lengths else 1
    check("slstm", 4, B, H, H, L, num_heads=heads, scale=1 / np.sqrt(H / heads), bidirectional=True,
          lengths=given, dropconnect=0.3)
    (layer,) = made
    for phase, wanted in zip(("forward", "backward"), want):
        runs = _phase_runs(layer, phase)
        assert wanted is None or (runs or not wanted) and all((r is not None) == wanted for r in runs), (phase, runs)


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("B,H,heads,want", [(1, 256, 4, (True, True)), (16, 256, 4, (True, True)),
                                            (3, 33, 3, (True, True)), (16, 1024, 4, (True, None)),
                                            (17, 64, 4, (False, False))])
def test_slstm_auto_runs_its_kernels_in_every_precision(precision, B, H, heads, want, monkeypatch):
    """HEADS_LIMITS and HEADS_BACKWARD_LIMITS in tf32, bf16 and fp16 (B <= 16; tf32's backward to 2^24 multiply-adds
    a step: at 16 x 1024, 2^26, stepwise in tf32, the kernel in bf16 and fp16): both kernels on the stacks'
    head-by-head copy (the half-precision staging in 16-byte words of 8 elements at 64 a head's block, one element a
    load at 11), against the float64 reference within the precision's tolerance; B = 17 stepwise."""
    made, compile_ = [], lstmdsl.compile
    monkeypatch.setattr(lstmdsl, "compile", lambda *a, **kw: made.append(compile_(*a, **kw)) or made[-1])
    check("slstm", 3, B, H, H, 1, schedule=f"precision {precision}", num_heads=heads, scale=1 / np.sqrt(H / heads))
    (layer,) = made
    backward = want[1] if want[1] is not None else precision != "tf32"
    for phase, wanted in zip(("forward", "backward"), (want[0], backward)):
        runs = _phase_runs(layer, phase)
        assert (runs or not wanted) and all((r is not None) == wanted for r in runs), (phase, runs)


@pytest.mark.parametrize("schedule", [None, "persistent"])
def test_whole_matrices_stored_head_by_head_match_the_reference(schedule):
    """Block-diagonal input matrices, whole recurrent ones sharing their gradients' buffer (stored head by head):
    the stepwise loop under auto (a kernel there read the head-by-head copy as if in order before the thirty-second
    session), both kernels under `persistent` (stacks in order)."""
    check(HEADS_ON_INPUT, 5, 3, 6, 6, 1, num_heads=3, schedule=schedule)
    check(HEADS_ON_INPUT, 4, 17, 8, 60, 1, num_heads=4, schedule=schedule, scale=1 / np.sqrt(60))


@pytest.mark.parametrize("name", ["vanilla", "peephole", "lstmp", "fgr"])
def test_a_forced_persistent_schedule_runs_the_backward_kernel_too(name):
    """The backward's persistent kernel (its GEMMs as stages of transposed products, the matrices' columns
    in shared memory) runs under a forced `persistent`, one block and a grid, and matches the reference
    (check); under `persistent auto` where the backward's rules say (vanilla and peephole at B <= 4 from 2^22
    multiply-adds a step), not below."""
    check(name, 9, 3, 5, 33, 1, schedule="persistent", scale=1 / np.sqrt(33))
    check(name, 6, 17, 3, 300, 1, schedule="persistent", scale=1 / np.sqrt(300))
    # other schedules: the input's gradient as a stage too (no hoist input), and half precision
    check(name, 5, 3, 5, 33, 1, schedule="persistent; no hoist input", scale=1 / np.sqrt(33))
    check(name, 5, 3, 16, 256, 1, schedule="persistent; precision bf16", scale=1 / 16, tolerance=TOLERANCE["bf16"])
    for schedule, want in (("persistent", True), (None, False)):
        layer = lstmdsl.compile(name, 5, 64, backend="cuda", schedule=schedule, **extra_sizes(name))
        x = cupy.asarray(np.random.default_rng(0).standard_normal((7, 3, 5)) * 0.5, np.float32)
        y, _ = layer.forward(x)
        layer.backward(cupy.ones_like(y))
        runs = [ws.persistent.get("backward") for engine in layer._engines.values()
                for wss in engine.workspaces.values() for ws in wss]
        assert runs and all((r is not None and r.cached) == want for r in runs), (name, schedule, runs)
    if name in ("vanilla", "peephole"):  # auto, B = 4, H = 600: 5.8M multiply-adds a step, the backward's kernel
        check(name, 4, 4, 5, 600, 1, scale=1 / np.sqrt(600))
        layer = lstmdsl.compile(name, 5, 600, backend="cuda")
        y, _ = layer.forward(cupy.asarray(np.random.default_rng(0).standard_normal((4, 4, 5)), np.float32))
        layer.backward(cupy.ones_like(y))
        runs = [ws.persistent.get("backward") for engine in layer._engines.values()
                for wss in engine.workspaces.values() for ws in wss]
        assert runs and all(r is not None and r.cached for r in runs), (name, runs)


@pytest.mark.parametrize("name", ["vanilla", "peephole", "gru", "fgr"])
def test_the_lean_products_of_small_cells(name):
    """Where the block has lanes for every sum and a lane at most 16 columns (templates: lean_products), the
    persistent kernels' products run a sum on a group of C lanes that meet by shuffles (blocks of 256
    threads): vanilla and peephole, forward and backward, at H = 16 (C = 4), 24 and 9 (C = 2; at 9 the
    first lane's last four columns lie past the row's end, in the zero padding); GRU's two forward stages
    C = 4 and 4, 4 and 4, 2 and 2 (its backward is stepwise); FGR's forward C = 1 at H = 16, the tiles at
    24, C = 2 at 9, its backward C = 2-4. One block at B = 1, a split grid of one row a block at B = 3 and
    5; then staged rows past the first (items of b > 0): a grid of one element a block at H = 128, B = 4
    (C = 16, vanilla's four matrices a row each), and two rows a block at B = 140, H = 16 (C = 2)."""
    for B, H in ((1, 16), (3, 24), (5, 9)):
        check(name, 6, B, 5, H, 1, schedule="persistent", scale=1 / np.sqrt(H))
    check(name, 5, 4, 5, 128, 1, schedule="persistent", scale=1 / np.sqrt(128))
    check(name, 4, 140, 3, 16, 1, schedule="persistent", scale=1 / 4)


@pytest.mark.parametrize("schedule", [None, "persistent", "no persistent"])
def test_no_state_is_zeros_written_by_the_engine(schedule):
    """forward(x) without a state and backward(dy) without its gradient: the engine zeroes its own copies
    (no arrays allocated and copied in), the same as zeros given, also after a call that left another state
    in the workspace; a stack of two layers, in training and in evaluation, without and with lengths."""
    rng = np.random.default_rng(5)
    layer = lstmdsl.compile("vanilla", 5, 16, num_layers=2, backend="cuda", schedule=schedule)
    x = cupy.asarray(rng.standard_normal((6, 3, 5)) * 0.5, np.float32)
    dy = cupy.asarray(rng.standard_normal((6, 3, 16)), np.float32)
    shapes = layer.state_shapes(3)
    other = {n: cupy.asarray(rng.standard_normal(s), np.float32) for n, s in shapes.items()}
    for lengths in (None, [6, 1, 4]):
        runs = []
        for state in (None, {n: cupy.zeros(s, np.float32) for n, s in shapes.items()}):
            layer.forward(x, other, train=False, lengths=lengths)
            layer.forward(x, other, lengths=lengths)
            layer.backward(dy, other)  # the workspaces hold another state and its gradient now
            layer.zero_grad()
            y_eval, final_eval = layer.forward(x, state, train=False, lengths=lengths)
            y, final = layer.forward(x, state, lengths=lengths)
            dx = layer.backward(dy, state)  # (None, or zeros for every final state)
            runs.append([y_eval, *final_eval.values(), y, *final.values(), dx, *layer.initial_state_grads().values(),
                         *layer.grads().values()])
        for a, b in zip(*runs):
            assert float(cupy.abs(cupy.asarray(a) - cupy.asarray(b)).max()) == 0.0, lengths


@pytest.mark.parametrize("name", ["vanilla", "gru", "layernorm", "fgr"])
def test_a_persistent_grid_that_splits_the_batch(name):
    """Where all the weights fit one block and a step is more than one block's work, each block of the grid
    runs its own batch rows with all the weights (Persistent.split_rows): one row a block, two, and both
    directions with lengths; the forward and backward kernels against the reference."""
    rng = np.random.default_rng(3)
    check(name, 6, 40, 5, 33, 1, schedule="persistent", scale=1 / np.sqrt(33))
    check(name, 4, 270, 3, 64, 1, schedule="persistent", scale=1 / 8)  # 3 rows a block on 132 multiprocessors
    check(name, 7, 40, 5, 33, 2, schedule="persistent", bidirectional=True, lengths=rng.integers(1, 8, 40))
    layer = lstmdsl.compile(name, 5, 33, backend="cuda", schedule="persistent")
    y, _ = layer.forward(cupy.asarray(rng.standard_normal((3, 40, 5)), np.float32))
    layer.backward(cupy.ones_like(y))
    runs = [ws.persistent.get(phase) for engine in layer._engines.values() for wss in engine.workspaces.values()
            for ws in wss for phase in ("forward", "backward") if ws.persistent.get(phase) is not None]
    assert runs and all(r.split == 1 and r.blocks == 40 and not r.exchange for r in runs), runs
    if name == "vanilla":  # `persistent auto` (SPLIT_LIMITS, BACKWARD_SPLIT_LIMITS): B = 64, H = 40, both ways
        check(name, 5, 64, 3, 40, 1, scale=1 / np.sqrt(40))
        layer = lstmdsl.compile(name, 3, 40, backend="cuda")
        y, _ = layer.forward(cupy.asarray(rng.standard_normal((5, 64, 3)), np.float32))
        layer.backward(cupy.ones_like(y))
        runs = [ws.persistent.get(phase) for engine in layer._engines.values()
                for wss in engine.workspaces.values() for ws in wss for phase in ("forward", "backward")]
        assert len(runs) == 2 and all(r is not None and r.split == 1 and r.blocks == 64 for r in runs), runs


@pytest.mark.parametrize("name", ["gru", "mgu"])
def test_a_cell_of_two_stages_runs_the_persistent_kernel_where_auto_chooses_it(name):
    """`persistent auto` for cells of two product stages (passes/persistent.py, STAGED_LIMITS): a split grid
    at B = 17, H = 100 and the element grid at B = 1, H = 600 (2^20 multiply-adds a step, GRU), against the
    reference; the backward stepwise."""
    for T, B, H in ((6, 17, 100), (4, 1, 600)):
        check(name, T, B, 5, H, 1, scale=1 / np.sqrt(H))
        layer = lstmdsl.compile(name, 5, H, backend="cuda", **extra_sizes(name))
        y, _ = layer.forward(cupy.asarray(np.random.default_rng(0).standard_normal((T, B, 5)), np.float32))
        layer.backward(cupy.ones_like(y))
        runs = [(ws.persistent.get("forward"), ws.persistent.get("backward")) for engine in layer._engines.values()
                for wss in engine.workspaces.values() for ws in wss]
        assert runs and all(f is not None and b is None for f, b in runs), (name, B, H, runs)
        if B > 1:
            assert all(f.split == 1 for f, _ in runs), runs


def test_ten_thousand_persistent_launches_do_not_hang():
    """10,000 consecutive cooperative launches (each with its barriers) on one stream, then one check."""
    layer = lstmdsl.compile("vanilla", 16, 256, backend="cuda", schedule="persistent")
    xs = cupy.asarray(np.random.default_rng(0).standard_normal((3, 4, 16)), np.float32)
    y0, _ = layer.forward(xs, train=False)
    for _ in range(10_000):
        y, _ = layer.forward(xs, train=False)
    cupy.cuda.Device().synchronize()
    assert bool(cupy.array_equal(y, y0))


@pytest.mark.parametrize("name", ["vanilla", "gru", "layernorm", "zoneout_lstm"])
def test_persistent_schedule_in_both_directions_with_lengths_and_regularisers(name):
    """The reverse direction's persistent kernel runs its steps backwards; masks of variable lengths and
    the regularisers' masks are per-step inputs it reads like any slot."""
    check(name, 9, 5, 5, 33, 2, schedule="persistent", bidirectional=True, lengths=np.array([9, 1, 4, 7, 2]),
          dropout=0.3 if name == "zoneout_lstm" else 0.0)
    if name != "layernorm":  # and the backward's kernel ran: its last stage adds the products to the sum the
        # step's kernel began (sum folding's init: the mask's dh - m * dh, GRU's u * dh, zoneout's kept part)
        layer = lstmdsl.compile(name, 5, 33, backend="cuda", schedule="persistent", bidirectional=True)
        y, _ = layer.forward(cupy.asarray(np.random.default_rng(1).standard_normal((9, 5, 5)), np.float32),
                             lengths=np.array([9, 1, 4, 7, 2]))
        layer.backward(cupy.ones_like(y))
        runs = [ws.persistent.get("backward") for engine in layer._engines.values()
                for wss in engine.workspaces.values() for ws in wss]
        assert runs and all(r is not None for r in runs), runs


@pytest.mark.parametrize("name,H,bidirectional", [("vanilla", 1000, False), ("gru", 1100, False),
                                                  ("peephole", 300, True)])
def test_persistent_schedule_staging_rows_in_chunks_and_concurrent_grids(name, H, bidirectional):
    """Batches too large to stage whole in shared memory beside the weights (stage_rows < B: the kernel's
    loop over row chunks), and two multi-block persistent grids at once (the directions of a bidirectional
    layer on two streams)."""
    check(name, 4, 64 if not bidirectional else 9, 7, H, 1, schedule="persistent", scale=1 / np.sqrt(H),
          bidirectional=bidirectional, lengths=np.array([4, 1, 3, 2, 4, 4, 2, 1, 3]) if bidirectional else None)


def _waves(layer) -> list:
    """Steps per chunk of the wavefront each engine of the layer chose per stack of workspaces (0: none)."""
    return [wss[0].wave for engine in layer._engines.values() for wss in engine.workspaces.values()]


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_as_a_layer_wavefront(name):
    """A stack's forward as a wavefront (forced: `wavefront`): 3 layers over T = 37 (chunks of 3 steps, the last
    one 1), each layer on a stream of its own; every workspace poisoned with NaN."""
    gpu = check(name, 37, 17, 6, 33, 3, schedule="wavefront", scale=1 / np.sqrt(33))
    assert gpu  # (check asserts the errors)


def test_the_wavefront_runs_where_its_cost_model_says():
    x = lambda T, B: cupy.asarray(np.random.default_rng(0).standard_normal((T, B, 64)) * 0.5, np.float32)  # noqa: E731
    """Every stack, over `persistent auto` too; a forced `persistent` beats `wavefront auto`, and a forced
    `wavefront` beats it. One layer, or a stack without the wavefront, at B = 64, H = 64 (2^20 multiply-adds
    a step) runs the persistent kernel `persistent auto` chooses there."""
    for schedule, B, L, want, persistent in [
            (None, 64, 3, [7], False), (None, 64, 1, [0], True), ("no wavefront", 64, 3, [0], True),
            (None, 2, 3, [7], False), ("persistent", 2, 3, [0], True), ("persistent; wavefront", 2, 3, [7], False)]:
        layer = lstmdsl.compile("vanilla", 64, 64, L, backend="cuda", schedule=schedule)
        layer.forward(x(100, B), train=False)
        assert _waves(layer) == want, (schedule, B, L)
        assert (_persistent_runs(layer)[0] is not None) == persistent, (schedule, B, L)


def _chunked(monkeypatch, steps: int | None = None) -> list[int]:
    """The steps per chunk each forward-only workspace made from here on chose (plan.Chunks); steps: the rule
    replaced by chunks of that many steps from any size, and a wavefront's chunks the same."""
    from lstmdsl.loops import Chunks, Wavefront
    from lstmdsl.runtime import executor

    if steps is not None:
        monkeypatch.setattr(Chunks, "steps", lambda self, T, *args: steps if 2 <= steps < T else 0)
        monkeypatch.setattr(Wavefront, "steps", lambda self, T: steps)
    seen, real = [], executor.chunk_steps
    monkeypatch.setattr(executor, "chunk_steps", lambda engine, ws, names: seen.append(real(engine, ws, names))
                        or seen[-1])
    return seen


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_runs_a_forward_only_workspace_in_chunks(monkeypatch, name):
    """A forward-only workspace keeps one chunk's steps of the input products and runs chunk by chunk (plan.Chunks;
    here from any size, chunks of 5 steps over T = 23: the ring's areas reused, the last chunk shorter): one layer,
    a wavefront of three layers (its chunks the same) and two bidirectional layers over lengths, stepwise (the
    persistent kernel reads every step's products); every workspace poisoned with NaN."""
    seen = _chunked(monkeypatch, 5)
    lengths = np.array([23, 1, 20, 5, 22, 9, 23])
    for L, bidirectional in ((1, False), (3, False), (2, True)):
        check(name, 23, 7, 16, 33, L, schedule="no persistent; wavefront", scale=1 / np.sqrt(33),
              bidirectional=bidirectional, lengths=lengths if bidirectional else None)
    assert seen and set(seen) == {5}, seen


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_forward_only_chunks_in_half_precision(monkeypatch, precision):
    seen = _chunked(monkeypatch, 5)
    for name in ["vanilla", "gru", "layernorm", "lstmp"]:
        check(name, 23, 17, 16, 256, 3, schedule=f"no persistent; wavefront; precision {precision}", scale=1 / 16,
              tolerance=TOLERANCE[precision])
    assert seen and set(seen) == {5}, seen


def test_forward_only_chunks_where_the_cost_model_says(monkeypatch):
    """Unpatched: vanilla at B = 96, H = 256, T = 700 (its input products 262 MiB in fp32) runs its forward-only
    workspace in chunks of ceil(16384 / 96) = 171 steps, and matches the reference; at T = 60 (22 MiB) it does not;
    at B = 16, H = 1024, T = 1000 (256 MiB) `persistent auto` runs the persistent kernel, all steps at once."""
    seen = _chunked(monkeypatch)
    check("vanilla", 700, 96, 256, 256, 1, scale=1 / 16)
    check("vanilla", 60, 96, 256, 256, 1, scale=1 / 16)
    assert seen == [171, 0], seen
    layer = lstmdsl.compile("vanilla", 64, 1024, backend="cuda")
    layer.forward(cupy.zeros((1000, 16, 64), np.float32), train=False)
    assert seen[2:] == [0] and _persistent_runs(layer)[0] is not None, seen


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["vanilla", "gru", "layernorm", "lstmp"])
def test_wavefront_in_half_precision_with_lengths(name, precision):
    check(name, 37, 17, 16, 256, 3, schedule=f"wavefront; precision {precision}", scale=1 / 16,
          tolerance=TOLERANCE[precision], lengths=np.array([37, 1, 20, 36, 5, 37, 9, 2, 30, 11, 37, 3, 18, 25, 7, 33, 1]))


@pytest.mark.parametrize("T,B,H,graphs", [(7, 3, 33, True), (20, 64, 512, True), (9, 16, 256, False)])
def test_a_steps_gemms_fanned_out_match_them_one_after_another(monkeypatch, T, B, H, graphs):
    """FGR's four GEMMs each way per step at once (passes/fanout.py), each on a stream and cuBLAS lane of its
    own, as branches of the CUDA graphs and without graphs: the reference's results, and the same outputs,
    final states, dx and parameter gradients as the GEMMs one after another (use_fanout off); the fan forks."""
    from lstmdsl.runtime import issue

    forks = []
    fanned = issue.Issue.fanned
    monkeypatch.setattr(issue.Issue, "fanned", lambda self, *a: (forks.append(1), fanned(self, *a))[1])
    check("fgr", T, B, 16, H, 1, schedule="no persistent", scale=1 / np.sqrt(H))  # (the stepwise loop fans out)
    assert forks
    rng = np.random.default_rng(7)
    x = cupy.asarray(rng.standard_normal((T, B, 16)), np.float32)
    dy = cupy.asarray(rng.standard_normal((T, B, H)), np.float32)
    results = {}
    for fanout in (True, False):
        layer = lstmdsl.compile("fgr", 16, H, backend="cuda", seed=3, schedule="no persistent")
        layer.use_graphs, layer.use_fanout = graphs, fanout
        randomize(layer, 4, 1 / np.sqrt(H))
        forks.clear()
        for _ in range(2):  # (the second call replays the graphs)
            layer.zero_grad()
            y, state = layer.forward(x)
            dx = layer.backward(dy)
        assert bool(forks) == fanout
        results[fanout] = [cupy.asnumpy(a) for a in (y, *state.values(), dx, *layer.grads().values())]
    for a, b in zip(results[True], results[False]):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6), float(np.abs(a - b).max())
