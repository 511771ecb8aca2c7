"""The benchmarks' two timings, without a GPU: CuPy's events and the spin kernel replaced by a model of
one GPU stream (a clock that work advances, events stamped when the stream reaches them), so what each
timing measures is checked against what the model's GPU did."""

from __future__ import annotations

import sys
import types

from lstmdsl import timing


class Stream:
    """One GPU stream: `gpu` is when it has finished everything issued; the host's clock is `host`."""

    def __init__(self):
        self.gpu = self.host = 0.0

    def issue(self, ms: float, host_ms: float = 0.0) -> None:  # host_ms to issue it, then ms on the GPU
        self.host += host_ms
        self.gpu = max(self.gpu, self.host) + ms

    def sync(self) -> None:
        self.host = max(self.host, self.gpu)


def fake_cupy(stream: Stream):
    class Event:
        def record(self):
            self.at = max(stream.gpu, stream.host)  # reached once the stream is past the work before it

        def synchronize(self):
            stream.sync()

    cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: b.at - a.at,
                                 Device=lambda: types.SimpleNamespace(synchronize=stream.sync))
    return types.SimpleNamespace(cuda=cuda)


def test_gpu_time_alone_leaves_out_the_host_and_the_call_includes_it(monkeypatch):
    """A call that takes 0.3 ms of host time to issue 0.5 ms of GPU work (issued at its end, as a launch
    after a Python preamble): time_gpu sees 0.8 ms, time_gpu_only 0.5, each call behind a spin longer than
    the host's issue (spun once per call, before its start event)."""
    stream = Stream()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(stream))
    spins = []

    def spin(ms):
        spins.append(ms)
        stream.issue(ms)

    monkeypatch.setattr(timing, "spin", spin)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: stream.host / 1e3)  # the host's clock, seconds

    def call():
        stream.issue(0.5, host_ms=0.3)

    assert abs(timing.time_gpu(call, repeat=5)["ms"] - 0.8) < 1e-9
    assert not spins
    alone = timing.time_gpu_only(call, repeat=5)
    assert abs(alone["gpu_ms"] - 0.5) < 1e-9 and abs(alone["gpu_min_ms"] - 0.5) < 1e-9
    assert len(spins) == 5 and all(ms >= 1.0 + 2 * 0.3 - 1e-9 for ms in spins)
