"""cublas.tune: each per-step GEMM shape is timed with and without a cuBLAS workspace once, and gemm() runs it
the faster way (no GPU here: the timing, the handles and the call are replaced; the GPU tests run it)."""

import json
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from lstmdsl.runtime import cublas

TYPES = ("f32", "f32", "f32", "fp32")


def _fake(monkeypatch, times, cache=None):
    calls = []
    monkeypatch.setattr(cublas, "_BARE", {})
    monkeypatch.setattr(cublas, "_STORED", None)
    monkeypatch.setattr(cublas, "cache_dir", lambda: cache or Path(tempfile.mkdtemp()))
    monkeypatch.setattr(cublas, "_identity", lambda lane: ("NVIDIA H200", 130200))
    monkeypatch.setattr(cublas, "current_device", lambda: 0)
    monkeypatch.setattr(cublas, "empty", lambda *a, **k: SimpleNamespace(data=SimpleNamespace(ptr=7)))
    handles = {}
    monkeypatch.setattr(cublas, "_handle", lambda lane, bare=False, types=("f32",), workspace=None: handles.setdefault(
        (lane, bare, types[0], workspace), SimpleNamespace(name=("bare" if bare else "workspace", lane) + (
            () if bare or types[0] == "f32" else (types[0],)) + (  # (a workspace not the type's default: its bytes)
            () if bare or workspace in (None, cublas.workspace_for(types)) else (workspace,)), stream=None)))
    monkeypatch.setattr(cublas, "_gemm", lambda h, *args: calls.append((h.name, args)))

    def timed(call, stream):
        call(stream + 1)  # (a capture's side stream)
        return times[calls[-1][0][0]]

    monkeypatch.setattr(cublas, "_time", timed)
    return calls


def test_the_faster_way_is_kept_per_shape(monkeypatch):
    times = {}
    calls = _fake(monkeypatch, times)
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)
    times.update(workspace=24.6, bare=2.3)  # [16, 128] x [128, 512] as measured on the H200
    assert cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3)
    assert all(args[9] == 7 for _, args in calls)  # timed into the scratch result, not the real one
    times.update(workspace=9.5, bare=39.5)  # [64, 2048] x [2048, 512]
    assert not cublas.tune(64, 512, 2048, 1, 2048, False, 2, 512, False, 512, False, TYPES, 5, 3)
    times.update(workspace=1.0, bare=0.95)  # within the margin: the workspace, as cuBLAS would
    assert not cublas.tune(1, 128, 32, 1, 32, False, 2, 32, True, 128, False, TYPES, 5, 3)
    calls.clear()
    times.update(workspace=1.0, bare=0.1)
    assert cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3)  # kept, not timed again
    assert not calls
    cublas.gemm(16, 512, 128, 1, 128, False, 2, 128, True, 9, 512, False, TYPES, 5, 3)
    cublas.gemm(64, 512, 2048, 1, 2048, False, 2, 512, False, 9, 512, False, TYPES, 5, 3)
    cublas.gemm(16, 512, 128, 1, 128, False, 2, 128, True, 9, 512, True, TYPES, 5, 3)  # accumulates: not timed
    assert [h for h, _ in calls] == [("bare", 3), ("workspace", 3), ("workspace", 3)]
    assert calls[0][1][9] == 9  # the real result


def test_the_choices_are_kept_for_later_processes_on_the_same_gpu(monkeypatch, tmp_path):
    """A choice timed once is written to the cache directory; a later process (its per-process choices
    empty) runs it without timing, on the same GPU model and cuBLAS only; a damaged file is timed anew."""
    import pytest

    times = {"workspace": 24.6, "bare": 2.3}
    calls = _fake(monkeypatch, times, tmp_path)
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)
    assert cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3)
    stored = json.loads((tmp_path / cublas.CHOICES).read_text())
    assert list(stored.values()) == [True] and "NVIDIA H200" in next(iter(stored))

    def never(call, stream):
        pytest.fail("timed again")

    for case in ("a later process", "the file read at the first tune"):
        calls = _fake(monkeypatch, times, tmp_path)
        monkeypatch.setattr(cublas, "_time", never)
        assert cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3), case
        assert not calls
    calls = _fake(monkeypatch, {"workspace": 1.0, "bare": 5.0}, tmp_path)
    monkeypatch.setattr(cublas, "_identity", lambda lane: ("NVIDIA H100 80GB HBM3", 130200))  # another GPU
    assert not cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3) and calls
    assert len(json.loads((tmp_path / cublas.CHOICES).read_text())) == 2  # both kept
    (tmp_path / cublas.CHOICES).write_text("{damaged")
    calls = _fake(monkeypatch, {"workspace": 1.0, "bare": 0.1}, tmp_path)
    assert cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3) and calls
    assert list(json.loads((tmp_path / cublas.CHOICES).read_text()).values()) == [True]


def test_large_gemms_are_not_timed(monkeypatch):
    calls = _fake(monkeypatch, {"workspace": 1.0, "bare": 0.1})
    assert not cublas.tune(256, 4096, 1024 * 256, 1, 1 << 18, False, 2, 4096, False, 4096, False, TYPES, 5, 0)
    assert not calls


def test_the_environment_can_keep_cublas_default(monkeypatch):
    calls = _fake(monkeypatch, {"workspace": 1.0, "bare": 0.1})
    monkeypatch.setenv("LSTMDSL_TUNE_GEMMS", "0")
    assert not cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 0)
    assert not calls


def test_a_timing_that_fails_keeps_the_default_with_a_warning(monkeypatch):
    import pytest

    _fake(monkeypatch, {})
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)

    def broken(call, stream):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(cublas, "_time", broken)
    with pytest.warns(UserWarning, match="timing the 16x512x128 GEMM failed"):
        assert not cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 0)
    assert not cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 0)  # once


def test_the_executor_tunes_each_phase_once_outside_captures_and_profiling(monkeypatch):
    """Engine._tune: not inside someone else's CUDA-graph capture (the GEMMs then run as cuBLAS would by
    default, and the phase is tuned at a later call), and once per workspace, phase and fan (the fanned
    GEMMs take lanes of their own, whose handles the tuning makes); a wavefront's layers on its lanes (the plan's
    workspace there: Issue.wave)."""
    from lstmdsl.runtime import executor

    tuned = []

    class FakeIssue:
        def __init__(self, engine, ws, bind, stream, lane, fan=None, on_wave=False):
            self.ws, self.fan, self.on_wave = ws, fan, on_wave

        def tune(self, phase, wave=0):
            assert self.on_wave == bool(wave)
            tuned.append((self.ws.name, phase, wave, self.fan))

    capturing = [True]
    monkeypatch.setattr(executor, "Issue", FakeIssue)
    monkeypatch.setattr(executor.device, "is_capturing", lambda stream: capturing[0])
    engine = SimpleNamespace(parts={})  # (profiling or not)
    ws = SimpleNamespace(name="layer 0", tuned=set())
    executor.Engine._tune(engine, 7, [(ws, None, 0, "forward")])
    assert not tuned and not ws.tuned  # inside a capture: later
    capturing[0] = False
    executor.Engine._tune(engine, 7, [(ws, None, 0, "forward")], wave=7)  # (a wavefront's steps per chunk)
    executor.Engine._tune(engine, 7, [(ws, None, 0, "forward"), (ws, None, 0, "backward")])
    assert tuned == [("layer 0", "forward", 7, None), ("layer 0", "forward", 0, None),
                     ("layer 0", "backward", 0, None)]  # (a wavefront's lanes and a layer alone's: tuned apart)
    executor.Engine._tune(engine, 7, [(ws, None, 0, "forward")], fanned="fan")  # the fan's lanes: once more
    executor.Engine._tune(engine, 7, [(ws, None, 0, "forward")], fanned="fan")
    assert tuned[3:] == [("layer 0", "forward", 0, "fan")]
    assert ws.tuned == {("forward", False, True), ("forward", False, False), ("backward", False, False),
                        ("forward", True, False)}


def test_a_chunks_gemms_are_tuned_at_the_chunks_rows(monkeypatch):
    """Issue.tune: besides the step's GEMMs, the GEMMs a wavefront's chunk (or a chunked forward-only workspace's)
    runs over its own steps' rows are timed at those rows, a whole chunk's and the last, shorter one's (cuBLAS's
    default for a folded projection's states over 7 rows took 45-51 us a call on an H100, tuned 3-4: a 4-layer
    LSTMP at B = 1 took 2.02 ms forward, tuned 0.94); not the folded weights or the first step's products, which
    run once over their own shapes, but on a wavefront's lane (Issue.wave), where every GEMM of the phase is tuned
    (its cuBLASLt kernel and its handle found outside a capture), the parameter gradients' too, and a chunk of all T
    steps' rows."""
    from lstmdsl.program import build_program
    from lstmdsl.runtime import issue

    import lstmdsl

    tuned = []
    monkeypatch.setattr(issue.Issue, "gemm_args", lambda self, c, t, rows=None: (rows or c.m, c.n, c.k) + (0,) * 6)
    monkeypatch.setattr(issue.cublas, "tune", lambda M, N, K, *rest: tuned.append((M, N, K)))
    program = build_program(lstmdsl.parse("lstmp").cell, lstmdsl.parse("lstmp").schedule)
    engine = SimpleNamespace(program=program, persistent_run=lambda ws, name: None)
    fwd = program.plan.forward
    loop = [(op.call.m, op.call.n, op.call.k) for op in fwd.loop.body if getattr(op, "call", None) is not None]
    chunked = [(op.call.n, op.call.k) for op in (*fwd.before, *fwd.after) if getattr(op, "first", True) is False]
    assert len(loop) == 1 and len(chunked) == 2  # (the step's folded GEMM; the input products and the states)

    def run(name, wave=0, chunk=0, on_wave=False):
        tuned.clear()
        ws = SimpleNamespace(T=100, B=3, chunk=chunk, train=True, whole_persistent=None)
        issue.Issue(engine, ws, None, 5, 0, wave=on_wave).tune(name, wave)
        return (tuned[:len(loop)], sorted(tuned[len(loop):], key=repr)) if name == "forward" else (None, tuned)

    assert run("forward") == (loop, [])  # layer alone, all steps at once: the step's GEMMs only
    in_chunks = sorted(((rows, n, k) for rows in (21, 6) for n, k in chunked), key=repr)  # a chunk of 7, the last 2
    assert run("forward", wave=7) == (loop, in_chunks)
    assert run("forward", chunk=10) == (loop, sorted(((30, n, k) for n, k in chunked), key=repr))  # 10 chunks of 10
    dx = [(op.call.n, op.call.k) for op in program.plan.backward.after if isinstance(op, issue.Gemm)]
    assert dx and all((21, n, k) in run("backward", wave=7)[1] for n, k in dx)  # the input gradient's
    once = [(op.call.m, op.call.n, op.call.k) for op in fwd.before if not isinstance(op, issue.Gemm) or op.first]
    assert len(once) == 2 and not set(once) & set(run("forward", wave=7)[1])  # (the Fold and the first products)
    assert run("forward", wave=7, on_wave=True) == (loop, sorted(in_chunks + once, key=repr))
    assert run("forward", wave=200, on_wave=True) == (loop, sorted([(300, n, k) for n, k in chunked] + once, key=repr))
    grads = [(op.call.m, op.call.n, op.call.k) for op in program.plan.backward.after
             if not isinstance(op, issue.Gemm) and getattr(op, "call", None) is not None]
    assert grads and set(grads) <= set(run("backward", wave=7, on_wave=True)[1])
    assert not set(grads) & set(run("backward", wave=7)[1])


def _fresh_warmup(monkeypatch):
    from lstmdsl.runtime import warmup

    monkeypatch.setattr(warmup, "_THREAD", None)
    monkeypatch.delenv("LSTMDSL_WARM_UP", raising=False)
    return warmup


def test_the_warm_up_runs_once_on_a_thread_and_settle_waits_for_it(monkeypatch):
    import threading

    warmup = _fresh_warmup(monkeypatch)
    gate, ran = threading.Event(), []

    def warm(device):
        gate.wait(5)
        ran.append((device, threading.current_thread().name))

    warmup.start(3, warm)
    warmup.start(3, warm)  # (once per process)
    assert ran == []  # still waiting at the gate: start() did not block
    gate.set()
    warmup.settle()
    assert ran == [(3, "lstmdsl-cublas-warm-up")]


def test_a_failed_warm_up_is_dropped_and_the_environment_turns_it_off(monkeypatch):
    warmup = _fresh_warmup(monkeypatch)

    def fails(device):
        raise RuntimeError("no cuBLAS")

    warmup.start(0, fails)
    warmup.settle()  # (no exception: the first real GEMM reports the failure)
    warmup = _fresh_warmup(monkeypatch)
    monkeypatch.setenv("LSTMDSL_WARM_UP", "0")
    ran = []
    warmup.start(0, ran.append)
    warmup.settle()
    assert ran == [] and warmup._THREAD is None


def test_compile_waits_for_the_warm_up_it_started_even_when_it_raises(monkeypatch):
    """Nothing of the warm-up outlives compile(): no cuBLAS call of ours during a capture the caller begins
    next, none left running at the process's exit."""
    import time

    import pytest

    import lstmdsl
    from lstmdsl import api
    from lstmdsl.errors import LstmdslError

    warmup = _fresh_warmup(monkeypatch)
    done = []

    def slow(device):
        time.sleep(0.3)
        done.append(device)

    monkeypatch.setattr(api, "_warm_up", lambda: warmup.start(5, slow))
    with pytest.raises(LstmdslError):  # (no GPU here, or a bad size: either way compile raises)
        lstmdsl.compile("vanilla", 8, 0, backend="cuda")
    assert done == [5]


def test_half_precision_gemms_are_timed_and_run_on_their_own_handle(monkeypatch):
    """tune() times a bf16 shape against the lane's bf16 handle (its smaller workspace) and gemm() then runs it
    there: both hand _handle the GEMM's types, so the choice timed is the choice run."""
    times = {}
    calls = _fake(monkeypatch, times)
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)
    half = ("bf16", "bf16", "f32", "fp32")
    times.update(workspace=1.0, bare=0.95)  # within the margin: the workspace handle is kept
    assert not cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, half, 5, 3)
    assert {h for h, _ in calls} == {("workspace", 3, "bf16"), ("bare", 3)}  # timed on the bf16 handle
    calls.clear()
    cublas.gemm(16, 512, 128, 1, 128, False, 2, 128, True, 9, 512, False, half, 5, 3)
    cublas.gemm(16, 512, 128, 1, 128, False, 2, 128, True, 9, 512, False, TYPES, 5, 3)
    assert [h for h, _ in calls] == [("workspace", 3, "bf16"), ("workspace", 3)]


def test_cupys_own_work_goes_on_the_callers_stream_through_the_stream_protocol(monkeypatch):
    """device.cupy_stream: a raw stream handle as CuPy's Stream, by Stream.from_external and the CUDA stream
    protocol where CuPy has it (its ExternalStream is deprecated from CuPy 14), ExternalStream before, and CuPy's
    null stream for the legacy default stream (0)."""
    from lstmdsl.runtime import device

    seen = []

    class Stream:
        null = "null stream"

        @classmethod
        def from_external(cls, obj):
            seen.append(obj.__cuda_stream__())
            return "from_external"

    fake = SimpleNamespace(cuda=SimpleNamespace(Stream=Stream, ExternalStream=lambda ptr: ("external", ptr)))
    monkeypatch.setattr(device, "cupy", fake)
    assert device.cupy_stream(0x1234) == "from_external" and seen == [(0, 0x1234)]
    assert device.cupy_stream(0) == "null stream"
    del Stream.from_external
    assert device.cupy_stream(0x1234) == ("external", 0x1234)


def test_a_padded_state_is_zeroed_in_one_operation(monkeypatch):
    """device.zero_rows: rows with padding between them by one 2-D memset (one node in a CUDA graph, where a
    memset a row made B), contiguous rows by one plain memset."""
    from lstmdsl.runtime import device

    calls = []

    class Driver:
        def cuMemsetD2D8Async(self, *args):
            calls.append(("2d", [a.value for a in args]))
            return 0

    monkeypatch.setattr(device, "_driver", lambda: Driver())
    monkeypatch.setattr(device, "zero", lambda ptr, n, stream: calls.append(("1d", [ptr, n, stream])))
    device.zero_rows(4096, 32, 24, 5, 7)
    device.zero_rows(4096, 24, 24, 5, 7)
    device.zero_rows(4096, 32, 24, 1, 7)
    assert calls == [("2d", [4096, 32, 0, 24, 5, 7]), ("1d", [4096, 120, 7]), ("1d", [4096, 24, 7])]


def test_a_cublaslt_kernel_runs_the_shape_where_it_is_faster_and_only_when_asked(monkeypatch, tmp_path):
    """LSTMDSL_GEMM_LT=1: tune also times cuBLASLt's listed kernels against the way it chose (into the scratch
    result, with the lane's workspace), keeps the fastest where it takes less than TUNE_MARGIN of that time,
    stores it by its algorithm for later processes (which find it among the kernels listed then, untimed, and
    time again where it is no longer listed), and gemm() runs it on the real result where the addresses are
    aligned as it needs, else as cuBLAS chooses (also from the first failure on, with a warning); unset,
    cuBLASLt is never asked."""
    import pytest

    from lstmdsl.runtime import cublaslt

    times = {"workspace": 10.0, "bare": 30.0}
    calls = _fake(monkeypatch, times, tmp_path)
    monkeypatch.setattr(cublas, "_LT", {})
    monkeypatch.setattr(cublas, "_STORED_LT", None)
    ws = SimpleNamespace(nbytes=1 << 25, data=SimpleNamespace(ptr=11))
    handles = {}
    monkeypatch.setattr(cublas, "_handle", lambda lane, bare=False, types=("f32",), workspace=None: handles.setdefault(
        (0, lane, 0 if bare else 1 << 25), SimpleNamespace(name=("bare" if bare else "workspace", lane), stream=None,
                                                             workspace=ws)))
    monkeypatch.setattr(cublas, "_HANDLES", handles)
    kernels = [SimpleNamespace(key=k, time=t, fits=lambda a, b, c: c % 2 == 1)
               for k, t in (("aa", 9.5), ("bb", 6.0), ("cc", 7.0))]
    listed = []
    monkeypatch.setattr(cublaslt, "load", lambda libcublas: None)
    monkeypatch.setattr(cublas, "_load_libcublas", lambda: SimpleNamespace(_name="libcublas.so.13"))
    monkeypatch.setattr(cublaslt, "candidates", lambda device, *shape: listed.append(shape) or kernels)
    ran = []

    def run(device, kernel, a, b, c, accumulate, scalars, workspace, nbytes, stream):
        ran.append((kernel.key, c, workspace, nbytes))
        calls.append((("lt", kernel.time), ()))

    monkeypatch.setattr(cublaslt, "run", run)

    def timed(call, stream):
        call(stream + 1)
        name = calls[-1][0]
        return name[1] if name[0] == "lt" else times[name[0]]

    monkeypatch.setattr(cublas, "_time", timed)
    monkeypatch.delenv("LSTMDSL_GEMM_LT", raising=False)
    assert not cublas.tune(64, 1536, 512, 1, 512, False, 2, 512, True, 1536, False, TYPES, 5, 3)
    assert not listed and not cublas._LT

    monkeypatch.setenv("LSTMDSL_GEMM_LT", "1")
    assert not cublas.tune(64, 1536, 512, 1, 512, False, 2, 512, True, 1536, False, TYPES, 5, 3)
    assert listed == [(64, 1536, 512, 512, False, 512, True, 1536, TYPES, 1 << 25)]
    assert [r[0] for r in ran] == ["aa", "bb", "cc"] and all(r[1] == 7 and r[2:] == (11, 1 << 25) for r in ran)
    key = cublas._shape_key(64, 1536, 512, 512, False, 512, True, 1536, False, TYPES, cublas.workspace_for(TYPES))
    assert cublas._LT[key].key == "bb"
    assert list(json.loads((tmp_path / cublas.LT_CHOICES).read_text()).values()) == ["bb"]
    ran.clear()
    calls.clear()
    cublas.gemm(64, 1536, 512, 1, 512, False, 2, 512, True, 9, 1536, False, TYPES, 5, 3)
    cublas.gemm(64, 1536, 512, 1, 512, False, 2, 512, True, 8, 1536, False, TYPES, 5, 3)  # (misaligned for it)
    assert ran == [("bb", 9, 11, 1 << 25)] and [c[0] for c in calls] == [("lt", 6.0), ("workspace", 3)]

    for k, t in zip(kernels, (9.5, 9.2, 9.9)):  # none under the margin: cuBLAS's way
        k.time = t
    assert not cublas.tune(16, 1536, 512, 1, 512, False, 2, 512, True, 1536, False, TYPES, 5, 3)
    assert cublas._LT[cublas._shape_key(16, 1536, 512, 512, False, 512, True, 1536, False, TYPES,
                                        cublas.workspace_for(TYPES))] is None

    monkeypatch.setattr(cublas, "_LT", {})  # a later process: the stored kernel, found by its algorithm, untimed
    monkeypatch.setattr(cublas, "_STORED_LT", None)
    monkeypatch.setattr(cublas, "_time", lambda call, stream: pytest.fail("timed again"))
    cublas.tune(64, 1536, 512, 1, 512, False, 2, 512, True, 1536, False, TYPES, 5, 3)
    cublas.tune(16, 1536, 512, 1, 512, False, 2, 512, True, 1536, False, TYPES, 5, 3)
    assert cublas._LT[key].key == "bb" and list(cublas._LT.values())[1] is None

    def failing(*args):
        raise cublas.LstmdslError("cublasLtMatmul failed with cuBLAS status 15")

    monkeypatch.setattr(cublaslt, "run", failing)
    calls.clear()
    with pytest.warns(UserWarning, match="from now on"):
        cublas.gemm(64, 1536, 512, 1, 512, False, 2, 512, True, 9, 1536, False, TYPES, 5, 3)
    cublas.gemm(64, 1536, 512, 1, 512, False, 2, 512, True, 9, 1536, False, TYPES, 5, 3)
    assert [c[0] for c in calls] == [("workspace", 3)] * 2 and cublas._LT[key] is None

    monkeypatch.setattr(cublas, "_LT", {})  # a later cuBLAS that no longer lists "bb": timed again
    monkeypatch.setattr(cublas, "_STORED_LT", None)
    monkeypatch.setattr(cublaslt, "run", run)
    monkeypatch.setattr(cublas, "_time", timed)
    del kernels[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (timed again silently: nothing the user can act on)
        cublas.tune(64, 1536, 512, 1, 512, False, 2, 512, True, 1536, False, TYPES, 5, 3)
    assert cublas._LT[key] is None  # (9.5 and 9.9 against 10: not under the margin)
    assert json.loads((tmp_path / cublas.LT_CHOICES).read_text())[cublas._stored_key(3, key)] == ""


def test_a_wavefront_lane_runs_cublaslt_first_kernel_or_gemmex_on_its_one_workspace(monkeypatch):
    """first=the plan's rule (GemmWorkspace.first_kernels: a wavefront's lanes): tune looks up cuBLASLt's first kernel
    for its `full` limit, untimed where the shape is large, and times the bare handle against it; gemm() runs it on
    the lane's handle of the wave size where the addresses fit it; cublasGemmEx on the same handle
    (GemmWorkspace.fallback: no handle of another size is made) where the kernel needs more than the wave size or
    misses the alignment; with the full one where the shape was never tuned (or LSTMDSL_TUNE_GEMMS=0); bare where
    bare was faster."""
    from lstmdsl.plan import GemmWorkspace
    from lstmdsl.runtime import cublaslt

    rule = GemmWorkspace()
    times = {"bare": 30.0, "workspace": 10.0}
    calls = _fake(monkeypatch, times)
    monkeypatch.setattr(cublas, "_FIRST", {})
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)
    fake_handle, made = cublas._handle, []  # made: (bare, bytes) of each handle asked for
    monkeypatch.setattr(cublas, "_handle", lambda lane, bare=False, types=("f32",), workspace=None: made.append(
        (bare, 0 if bare else cublas.workspace_for(types, workspace))) or SimpleNamespace(
        **vars(fake_handle(lane, bare, types, workspace)), workspace=SimpleNamespace(
            nbytes=cublas.workspace_for(types, workspace), data=SimpleNamespace(ptr=11))))
    needs = {}  # M -> the first kernel's workspace
    listed = []
    monkeypatch.setattr(cublaslt, "load", lambda libcublas: None)
    monkeypatch.setattr(cublas, "_load_libcublas", lambda: SimpleNamespace(_name="libcublas.so.13"))
    monkeypatch.setattr(cublaslt, "candidates", lambda device, M, *shape: listed.append((M, shape[-1])) or [
        SimpleNamespace(key=f"k{M}", workspace=needs[M], fits=lambda a, b, c: c != 8)])

    def run(device, kernel, a, b, c, accumulate, scalars, workspace, nbytes, stream):
        calls.append((("lt", kernel.key, nbytes), (c,)))

    monkeypatch.setattr(cublaslt, "run", run)

    def timed(call, stream, *rest):
        call(stream + 1)
        name = calls[-1][0]
        return 10.0 if name[0] == "lt" else times[name[0]]

    monkeypatch.setattr(cublas, "_time", timed)
    wave, full = rule.wave, rule.full
    needs.update({16: 1 << 20, 64: 24 << 20, 2048: 16 << 20})
    # a step's shape: the kernel found (listed for a `full` limit) and timed against bare, which is slower
    assert not cublas.tune(16, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, wave, rule)
    assert listed == [(16, full)] and [c[0][0] for c in calls] == ["lt", "bare"]
    calls.clear()
    cublas.gemm(16, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, wave, rule)
    cublas.gemm(16, 1024, 256, 1, 256, False, 2, 256, True, 8, 1024, False, TYPES, 5, 3, wave, rule)  # misaligned
    assert [c[0] for c in calls] == [("lt", "k16", wave), ("workspace", 3, wave)]  # (with its size)
    # a kernel that needs more than the wave size: cublasGemmEx with the wave size, timed against bare so too
    calls.clear()
    assert not cublas.tune(64, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, wave, rule)
    cublas.gemm(64, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, wave, rule)
    assert [c[0] for c in calls] == [("workspace", 3, wave), ("bare", 3), ("workspace", 3, wave)]
    key = cublas._shape_key(64, 1024, 256, 256, False, 256, True, 1024, False, TYPES, wave)
    stored = cublas._stored_key(3, key, rule)  # (the choice kept with the fallback's size)
    assert stored in cublas._stored_choices() and repr(("first", wave))[1:-1] in stored
    # a weight gradient (large: untimed) runs its kernel; bare where bare is faster
    calls.clear()
    assert not cublas.tune(2048, 512, 6400, 1, 2048, True, 2, 512, False, 512, True, TYPES, 5, 3, wave, rule)
    assert not calls
    cublas.gemm(2048, 512, 6400, 1, 2048, True, 2, 512, False, 9, 512, True, TYPES, 5, 3, wave, rule)
    times["bare"] = 1.0
    needs[32] = 1 << 20
    assert cublas.tune(32, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, wave, rule)
    cublas.gemm(32, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, wave, rule)
    assert [c[0] for c in calls] == [("lt", "k2048", wave), ("lt", "k32", wave), ("bare", 3), ("bare", 3)]
    assert (False, wave) in made and made[-1] == (True, 0) and full not in {n for _, n in made}  # (one size)
    # never tuned, or tuning off: cublasGemmEx with the full workspace (cuBLAS's default), nothing looked up (tune
    # makes its handle)
    calls.clear()
    monkeypatch.setenv("LSTMDSL_TUNE_GEMMS", "0")
    needs[48] = 1 << 20
    made.clear()
    cublas.tune(48, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, wave, rule)
    assert made == [(False, full)]
    cublas.gemm(48, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, wave, rule)
    cublas.gemm(8, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, wave, rule)
    assert [c[0] for c in calls] == [("workspace", 3)] * 2 and listed[-1][0] == 32  # (the full one: no size)
    # the sizes are the plan's, not the defaults: a rule of 8 MiB lanes under a 12 MiB limit, falling back to 4 MiB
    other = type("Rule", (GemmWorkspace,), {"fallback": lambda self, nbytes: nbytes // 2})(full=12 << 20, wave=8 << 20)
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS")
    calls.clear()
    made.clear()
    times["bare"] = 30.0
    needs.update({80: 1 << 20, 96: 10 << 20})
    assert not cublas.tune(80, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, 8 << 20, other)
    assert [c[0] for c in calls] == [("lt", "k80", 8 << 20), ("bare", 3)] and made[-1] == (False, 8 << 20)
    calls.clear()
    assert not cublas.tune(96, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, 8 << 20, other)
    assert [c[0] for c in calls] == [("workspace", 3, 4 << 20), ("bare", 3)]  # (timed with the rule's fallback)
    assert made[-1] == (False, 4 << 20)  # (the handle gemm() takes, made by tune)
    assert listed[-2:] == [(80, 12 << 20), (96, 12 << 20)]  # (each looked up for the plan's limit)
    calls.clear()
    cublas.gemm(80, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, 8 << 20, other)
    cublas.gemm(80, 1024, 256, 1, 256, False, 2, 256, True, 8, 1024, False, TYPES, 5, 3, 8 << 20, other)
    cublas.gemm(96, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, 8 << 20, other)
    assert [c[0] for c in calls] == [("lt", "k80", 8 << 20), ("workspace", 3, 4 << 20), ("workspace", 3, 4 << 20)]
    assert {n for _, n in made} == {0, 8 << 20, 4 << 20}
    # the limit is part of the shape's key where it is not the default's: a rule with another limit looks it up
    # again, and its stored choice is its own (the default rule's keys stay as they were)
    key = cublas._shape_key(96, 1024, 256, 256, False, 256, True, 1024, False, TYPES, 8 << 20, other)
    assert key in cublas._FIRST and repr(("first", 4 << 20))[1:-1] in cublas._stored_key(3, key, other)
    assert ("limit", 12 << 20) in key and key[:-2] + key[-1:] not in cublas._FIRST
    assert cublas._shape_key(96, 1024, 256, 256, False, 256, True, 1024, False, TYPES, 8 << 20, rule)[-2] != (
        "limit", rule.full)
    # tuning off: cublasGemmEx with the rule's own full workspace
    monkeypatch.setenv("LSTMDSL_TUNE_GEMMS", "0")
    calls.clear()
    made.clear()
    cublas.tune(112, 1024, 256, 1, 256, False, 2, 256, True, 1024, False, TYPES, 5, 3, 8 << 20, other)
    cublas.gemm(112, 1024, 256, 1, 256, False, 2, 256, True, 9, 1024, False, TYPES, 5, 3, 8 << 20, other)
    assert made == [(False, 12 << 20)] * 2 and [c[0] for c in calls] == [("workspace", 3, 12 << 20)]


@pytest.mark.gpu
def test_every_listed_cublaslt_kernel_computes_the_product_and_a_layer_runs_with_them(monkeypatch):
    """On the GPU: each kernel cuBLASLt lists for a few shapes (transposed operands, odd sizes, tf32), on
    addresses it fits (one element past an allocation's start too), writes the product over a NaN-poisoned result
    and adds it where asked; a layer tuned with LSTMDSL_GEMM_LT=1 and every cuBLASLt kernel that was timed
    accepted (so they run; B = 3 and an odd hidden size put some steps' operands off their alignment) gives the
    forward and backward it gives without."""
    import cupy
    import numpy as np

    import lstmdsl
    from lstmdsl.runtime import cublaslt

    rng = np.random.default_rng(0)
    stream = cupy.cuda.get_current_stream().ptr
    cublaslt.load(cublas._load_libcublas()._name)
    shapes = [(16, 2048, 512, False, True, "fp32"), (64, 512, 2048, False, False, "fp32"),
              (33, 100, 77, True, False, "tf32"), (7, 256, 512, False, True, "fp32")]
    for M, N, K, trans_a, trans_b, compute in shapes:
        types = ("f32", "f32", "f32", compute)
        a = rng.standard_normal((K, M) if trans_a else (M, K))
        b = rng.standard_normal((N, K) if trans_b else (K, N))
        want = (a.T if trans_a else a) @ (b.T if trans_b else b)
        h = cublas._handle(0, False, types)
        kernels = cublaslt.candidates(0, M, N, K, a.shape[1], trans_a, b.shape[1], trans_b, N, types,
                                      h.workspace.nbytes)
        assert kernels, (M, N, K)
        for shift in (0, 1):  # (elements past the start)
            A, B = (cupy.asarray(np.concatenate([[0.0] * shift, m.ravel()]), np.float32)[shift:] for m in (a, b))
            for kernel in kernels:
                C = cupy.full(M * N + shift, np.nan, np.float32)[shift:]
                if not kernel.fits(A.data.ptr, B.data.ptr, C.data.ptr):
                    assert shift
                    continue
                for accumulate in (False, True):
                    cublaslt.run(0, kernel, A.data.ptr, B.data.ptr, C.data.ptr, accumulate, cublas._SCALARS[compute],
                                 h.workspace.data.ptr, h.workspace.nbytes, stream)
                    err = float(np.abs(C.get().reshape(M, N) - (1 + accumulate) * want).max() / np.abs(want).max())
                    assert err < (1e-5 if compute == "fp32" else 1e-2), (M, N, K, compute, shift, accumulate, err)

    x = cupy.asarray(rng.standard_normal((6, 3, 127)) * 0.5, np.float32)  # (a step: 1524 bytes)
    dy = cupy.asarray(rng.standard_normal((6, 3, 127)), np.float32)

    def run():
        layer = lstmdsl.compile("vanilla", 127, 127, backend="cuda", schedule="no persistent", seed=3)
        y, _ = layer.forward(x)
        return y.copy(), layer.backward(dy).copy()

    monkeypatch.delenv("LSTMDSL_GEMM_LT", raising=False)
    y, dx = run()
    for name, value in (("_BARE", {}), ("_STORED", {}), ("_store", lambda key, bare: None), ("_LT", {}),
                        ("_STORED_LT", {}), ("_store_lt", lambda key, algo: None), ("TUNE_MARGIN", 1e9)):
        monkeypatch.setattr(cublas, name, value)
    monkeypatch.setenv("LSTMDSL_GEMM_LT", "1")
    y2, dx2 = run()
    assert any(k is not None for k in cublas._LT.values()), cublas._LT
    assert float(cupy.abs(y - y2).max()) < 1e-5 and float(cupy.abs(dx - dx2).max()) < 1e-4


def test_a_handle_is_made_in_relaxed_capture_mode_and_the_thread_keeps_its_own(monkeypatch):
    """A cuBLAS handle and its workspace are made with the thread's stream-capture mode exchanged for relaxed
    (torch captures in global mode, where cublasCreate's allocation ends the capture: a module captured on a
    stream it never ran on) and the thread's own mode is back afterwards, also where the creation fails."""
    from lstmdsl.errors import LstmdslError
    from lstmdsl.runtime import device

    mode = [0]  # the thread's capture mode: CU_STREAM_CAPTURE_MODE_GLOBAL

    class Driver:
        def cuThreadExchangeStreamCaptureMode(self, ref):
            mode[0], ref._obj.value = ref._obj.value, mode[0]
            return 0

    class Call:  # a libcublas function: its argtypes set by _Handle, the mode it ran in recorded
        def __init__(self, status=0):
            self.status, self.modes = status, []

        def __call__(self, *args):
            self.modes.append(mode[0])
            return self.status

    lib = SimpleNamespace(**{name: Call() for name in (
        "cublasCreate_v2", "cublasSetStream_v2", "cublasSetPointerMode_v2", "cublasSetWorkspace_v2", "cublasGemmEx",
        "cublasGemmStridedBatchedEx")})
    made = []
    monkeypatch.setattr(device, "_driver", lambda: Driver())
    monkeypatch.setattr(cublas, "_load_libcublas", lambda: lib)
    monkeypatch.setattr(cublas, "empty", lambda shape, dtype: made.append(mode[0]) or SimpleNamespace(nbytes=shape[0]))
    h = cublas._Handle(1 << 20)
    assert lib.cublasCreate_v2.modes == [2] and made == [2] and h.workspace.nbytes == 1 << 20  # (RELAXED)
    assert mode == [0]
    lib.cublasCreate_v2.status = 1  # (as inside a global-mode capture before)
    with pytest.raises(LstmdslError, match="cublasCreate failed with cuBLAS status 1"):
        cublas._Handle(0)
    assert mode == [0]


def test_a_shape_is_timed_and_run_with_the_workspace_the_plan_gives(monkeypatch):
    """The plan's workspace rule (plan.GemmWorkspace) by batch and type, as `--emit plan` prints it; one shape at
    two workspace sizes (a layer at B = 1 and one at B = 16 in a process) is timed once per size, and gemm() runs
    it on the lane's handle of its size, each the way its own timing chose."""
    import lstmdsl
    from lstmdsl.plan import GemmWorkspace
    from lstmdsl.planformat import format_plan
    from lstmdsl.program import build_program
    from lstmdsl.schedule import Schedule

    rule = GemmWorkspace()
    assert (rule.nbytes(1, False), rule.nbytes(2, False), rule.nbytes(256, False)) == (1 << 20, 32 << 20, 32 << 20)
    assert rule.nbytes(1, True) == rule.nbytes(256, True) == 1 << 20
    # every phase persistent: the small one up to persistent_rows rows of all steps, the full one past them
    assert (rule.nbytes(16, False, 1600), rule.nbytes(16, False, rule.persistent_rows)) == (1 << 20, 1 << 20)
    assert rule.nbytes(16, False, rule.persistent_rows + 1) == 32 << 20
    assert rule.nbytes(16, True, 1600) == 1 << 20
    vanilla = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
    plan = build_program(vanilla.cell, Schedule(), "float32").plan
    sizes = {"input": 8, "hidden": 8}
    assert format_plan(plan, sizes, 1).endswith("32 MiB at B > 1 and 1 MiB at B <= 1 or where every phase a workspace "
                                                "runs is one persistent kernel over T * B <= 2048 rows, 16 MiB on a "
                                                "stack's wavefront lanes at B > 1 (cuBLASLt's first kernel for 32 MiB, "
                                                "or cublasGemmEx with 16 MiB); here 1 MiB")
    # a wavefront's lanes: the wave size from B = 2 on, never over the small or the half one
    assert [rule.nbytes(B, False, 0, True) for B in (1, 2, 64, 256)] == [1 << 20] + [16 << 20] * 3
    assert rule.nbytes(16, True, 0, True) == 1 << 20 and rule.nbytes(16, False, 1600, True) == 1 << 20
    assert rule.first_kernels(rule.wave) and not any(map(rule.first_kernels, (rule.full, rule.small, rule.half)))
    assert rule.fallback(rule.wave) == rule.wave  # (a lane keeps one size)
    gru = lstmdsl.parse(lstmdsl.resources.shipped_specs()["gru"].read_text())  # (a plan without a wavefront)
    gru_plan = build_program(gru.cell, Schedule(wavefront="off"), "float32").plan
    assert gru_plan.wavefront is None and "wavefront lanes" not in format_plan(gru_plan).splitlines()[-1]
    assert format_plan(plan, sizes, 16).endswith("; here 32 MiB with a stepwise phase")
    assert "; here" not in format_plan(plan).splitlines()[-1]
    assert format_plan(plan).splitlines()[-1].startswith("cuBLAS workspace, a lane")  # (the rule without a batch)
    peephole = lstmdsl.parse(lstmdsl.resources.shipped_specs()["peephole"].read_text())  # (float32 vector gradients)
    half = build_program(peephole.cell, Schedule(precision="bf16"), "float32").plan
    assert format_plan(half, sizes, 16).endswith("here 1 MiB (half-precision GEMMs), 32 MiB (float32 GEMMs) with a "
                                                 "stepwise phase")

    times = {}
    calls = _fake(monkeypatch, times)
    monkeypatch.delenv("LSTMDSL_TUNE_GEMMS", raising=False)
    small, full = rule.small, rule.full
    times.update(workspace=1.0, bare=0.5)
    assert cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3, small)
    times.update(workspace=1.0, bare=2.0)
    assert not cublas.tune(16, 512, 128, 1, 128, False, 2, 128, True, 512, False, TYPES, 5, 3, full)
    assert ("workspace", 3, small) in {h for h, _ in calls}  # (timed on the small handle)
    # the stored choices' keys, one a size, in the format they had before the plan chose the sizes
    shape = (16, 512, 128, 128, False, 128, True, 512, False, TYPES)
    assert set(cublas._stored_choices()) == {repr((("NVIDIA H200", 130200), n) + shape) for n in (small, full)}
    calls.clear()
    cublas.gemm(16, 512, 128, 1, 128, False, 2, 128, True, 9, 512, False, TYPES, 5, 3, small)
    cublas.gemm(16, 512, 128, 1, 128, False, 2, 128, True, 9, 512, False, TYPES, 5, 3, full)
    assert [h for h, _ in calls] == [("bare", 3), ("workspace", 3)]
