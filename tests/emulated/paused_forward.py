"""Engine.forward_parts paused at its first launch while another engine's whole forward runs, then resumed (what
lstmdsl/torch/pair.py does with a bidirectional layer's two directions), through the emulated runtime, with CUDA
graphs captured at the first call and replayed at the second, persistent and stepwise: each layer's outputs and
final states are exactly those of the same calls run one after the other. Prints "paused forward: OK"."""
import os
import sys
from collections import deque

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simrt  # noqa: E402,F401 - sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

import lstmdsl  # noqa: E402
from lstmdsl.runtime import executor  # noqa: E402

SPECS = lstmdsl.resources.shipped_specs()
plain = executor.Engine.forward
waiting: list = []  # the forward to run inside the next paused one


def interleaved(self, *args, **kw):
    parts = self.forward_parts(*args, **kw)
    next(parts)  # (set up, the GEMMs tuned: paused before the first launch)
    if waiting:
        waiting.pop()()
    deque(parts, maxlen=0)


def layer(name, schedule, H, seed, directions=False):
    out = lstmdsl.compile(lstmdsl.parse(SPECS[name].read_text()), input_size=5, hidden_size=H, backend="cuda",
                          seed=seed, schedule=schedule, bidirectional=directions)
    out.use_graphs = True
    return out


def results(a, b, xa, xb, lengths):
    """a's training forward and backward with b's whole forward inside a's paused engine forward, then the same
    again (the graphs replayed)."""
    got = []
    for _ in range(2):
        inner = []
        waiting.append(lambda: inner.append(b.forward(xb, train=False)))
        y, final = a.forward(xa, lengths=lengths)
        dx = a.backward(cupy.asarray(np.ones(y.shape, np.float32)))
        if executor.Engine.forward is plain:  # (one after the other)
            waiting.pop()()
        assert not waiting and inner, "the paused forward did not run the other one"
        got.append([cupy.asnumpy(t).copy() for t in (y, *final.values(), dx, inner[0][0], *inner[0][1].values())])
    return got


rng = np.random.default_rng(0)
failures = []
for name, schedule in [("vanilla", None), ("vanilla", "persistent"), ("gru", "persistent"), ("peephole", None)]:
    xa = cupy.asarray(rng.standard_normal((4, 3, 5)).astype(np.float32))
    xb = cupy.asarray(rng.standard_normal((5, 2, 5)).astype(np.float32))
    lengths = np.array([4, 2, 3])
    expected = None
    for engine_forward in (plain, interleaved):
        executor.Engine.forward = engine_forward
        a = layer(name, schedule, 6, 1, directions=True)  # (each a fresh layer: graphs captured anew)
        b = layer("cifg", schedule, 7, 2)  # (another spec: the emulator knows a kernel by its name alone)
        got = results(a, b, xa, xb, lengths)
        if expected is None:
            expected = got
            continue
        for call, (e, g) in enumerate(zip(expected, got)):
            if any(not np.array_equal(p, q) for p, q in zip(e, g)):
                failures.append(f"{name} {schedule} call {call}")
executor.Engine.forward = plain
if failures:
    print("paused forward: BAD", failures)
    sys.exit(1)
print("paused forward: OK")
