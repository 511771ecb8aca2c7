"""Every shipped spec, and specs whose storage is unusual, through the emulated CUDA runtime under
several schedules (with CUDA graphs captured and replayed, and without), against the float64 reference.
Prints one line per case; exits 1 if any is wrong."""

import os
import sys
import warnings

import numpy as np
import simrt  # sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from unusual_specs import HEADS_ON_INPUT, UNUSUAL  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.resources import shipped_specs  # noqa: E402

SCHEDULES = [None, "no fuse gates; no hoist input; no fuse pointwise; no batch weights", "fuse recurrent; persistent",
             "no hoist input; fuse recurrent; no batch weights; persistent"]

failures = total = 0
cases = [(name, path.read_text()) for name, path in shipped_specs().items()] + list(UNUSUAL.items())
for name, text in cases:
    spec = lstmdsl.parse(text)
    P = 3 if spec.uses_size("proj") else None
    for k, schedule in enumerate(SCHEDULES):
        # graphs, two layers and float64 take turns, so every spec meets each of them
        graphs, L, dtype = k % 2 == 0, 1 + (k == 1), "float64" if k == 3 else "float32"
        I = 6 if L > 1 else 5  # stacked layers need states of one size (I = H)
        bad = simrt.check(spec, P=P, I=I, schedule=schedule, verbose=False, graphs=graphs, L=L, dtype=dtype)
        failures += bool(bad)
        total += 1
        print(f"{name} | {schedule or 'default'} | graphs={graphs} L={L} {dtype} | {'OK' if not bad else f'BAD {bad}'}",
              flush=True)
# zero initial states held through the reverse direction's padding (0 / 0 in the sLSTM's h' = o * (c' / n') unless
# the divisor reads the raw update: masks._singular_inputs), stepwise and persistent
for name in ["slstm", "layernorm"]:
    for schedule in (None, "persistent"):
        bad = simrt.check(lstmdsl.parse(shipped_specs()[name].read_text()), I=6, L=2, verbose=False,
                          bidirectional=True, lengths=np.array([2, 4, 1]), schedule=schedule, zero_states=True)
        failures += bool(bad)
        total += 1
        print(f"{name} | zero states, bidirectional, lengths {schedule or ''} | {'OK' if not bad else f'BAD {bad}'}",
              flush=True)
# variable lengths (a mask per step), both directions and the layer's regularisers, in a stack of two layers
for name in ["vanilla", "peephole", "gru", "lstmp", "layernorm", "slstm", "zoneout_lstm"]:
    spec = lstmdsl.parse(shipped_specs()[name].read_text())
    P = 3 if spec.uses_size("proj") else None
    for k, (bidirectional, lengths, p) in enumerate([(True, None, 0), (False, [4, 1, 3], 0), (True, [2, 4, 1], 0),
                                                      (True, [3, 4, 2], 0.3)]):
        graphs = k != 1  # p: dropout between the layers and DropConnect
        schedule = "persistent" if k >= 2 else None  # the persistent kernel in both directions, with masks
        bad = simrt.check(spec, P=P, I=6, L=2, graphs=graphs, verbose=False, bidirectional=bidirectional,
                          lengths=None if lengths is None else np.array(lengths), dropout=p, dropconnect=p,
                          schedule=schedule)
        failures += bool(bad)
        total += 1
        print(f"{name} | bidirectional={bidirectional} lengths={lengths} dropout=dropconnect={p} {schedule or ''} | graphs={graphs} "
              f"L=2 | {'OK' if not bad else f'BAD {bad}'}", flush=True)

# the two directions one after the other (overlap_directions off: engines of their own, not `beside`; the backward
# runs its forward's engines), stepwise and persistent
for schedule in (None, "persistent"):
    bad = simrt.check("vanilla", I=6, L=2, verbose=False, bidirectional=True, lengths=np.array([2, 4, 1]),
                      schedule=schedule, overlap=False)
    failures += bool(bad)
    total += 1
    print(f"vanilla | bidirectional, lengths, directions one after the other {schedule or ''} | "
          f"{'OK' if not bad else f'BAD {bad}'}", flush=True)
layer = lstmdsl.compile("vanilla", input_size=6, hidden_size=6, backend="cuda", bidirectional=True, seed=3)
alone = lstmdsl.compile("vanilla", input_size=6, hidden_size=6, backend="cuda", bidirectional=True, seed=3)
rng = np.random.default_rng(4)
x1, x2 = (cupy.asarray(rng.standard_normal((3, 2, 6)).astype(np.float32)) for _ in range(2))
layer.forward(x1)  # (overlapped: the beside engines' tapes hold x1)
layer.overlap_directions = alone.overlap_directions = False
y, _ = layer.forward(x2)
layer.overlap_directions = True  # (toggled back before the backward: it runs the serial forward's engines)
dy = cupy.asarray(rng.standard_normal(y.shape).astype(np.float32))
dx = cupy.asnumpy(layer.backward(dy))
alone.forward(x2)
want = cupy.asnumpy(alone.backward(dy))  # (x2 alone, one after the other)
seen = sorted((key[1:], e.beside, len(e.workspaces)) for key, e in layer._engines.items())
bad = seen != [((0, False), False, 1), ((0, True), True, 1), ((1, False), False, 1), ((1, True), True, 1)] or \
    not np.allclose(dx, want, rtol=1e-5, atol=1e-6)
failures += bad
total += 1
print(f"vanilla | the directions' engines beside or not, as they ran; the backward its forward's | "
      f"{'OK' if not bad else f'BAD {seen} {np.abs(dx - want).max()}'}", flush=True)

# block-diagonal recurrent matrices (sLSTM's heads): batches of per-block GEMMs
for k, schedule in enumerate(SCHEDULES[:2]):
    bad = simrt.check(lstmdsl.parse(shipped_specs()["slstm"].read_text()), I=6, H=6, L=1 + k, num_heads=3,
                      schedule=schedule, graphs=k == 0, verbose=False, bidirectional=k == 1)
    failures += bool(bad)
    total += 1
    print(f"slstm num_heads=3 | {schedule or 'default'} | L={1 + k} | {'OK' if not bad else f'BAD {bad}'}", flush=True)
# stored head by head (the default schedule: gate fusion over the heads), with what touches the stacks' copies
for schedule, kw in [(None, dict(L=2, bidirectional=True, lengths=np.array([2, 4, 1]), dropout=0.3, dropconnect=0.3)),
                     ("precision bf16", dict(L=1)), ("precision fp16", dict(L=2, dropconnect=0.3)),
                     ("wavefront", dict(L=3, T=19))]:
    bad = simrt.check(lstmdsl.parse(shipped_specs()["slstm"].read_text()), I=6, H=6, num_heads=3, schedule=schedule,
                      graphs=True, verbose=False, **kw)
    failures += bool(bad)
    total += 1
    print(f"slstm num_heads=3 head by head | {schedule or 'default'} | {kw} | {'OK' if not bad else f'BAD {bad}'}",
          flush=True)
# block-diagonal products that are the output or a state update: those stacks stay in the matrices' order
# (transfers and copies move whole rows), the others are stored head by head
for text in ["cell ho { input x\n state h\n heads R_y, R_i\n y = R_y h\n i = sigmoid(W_i x + R_i h + b_i)\n"
             " h' = i * tanh(W_z x + b_z) + y\n output y }",
             "cell hq { input x\n state h, q\n heads R_i, R_q\n i = sigmoid(W_i x + R_i h + b_i)\n q' = R_q h\n"
             " h' = i * tanh(W_z x + q + b_z)\n output h' }"]:
    bad = simrt.check(lstmdsl.parse(text), I=6, H=6, L=2, num_heads=2, graphs=True, verbose=False)
    failures += bool(bad)
    total += 1
    print(f"{text.split()[1]} num_heads=2 | {'OK' if not bad else f'BAD {bad}'}", flush=True)

# mixed precision: half-precision GEMM operands, weights and saved activations (bf16 and fp16), with the
# tolerances of lstmdsl.check; every shipped spec once, and stacks, directions, lengths and regularisers
for k, (name, _) in enumerate(cases[:len(shipped_specs())]):
    spec = lstmdsl.parse(shipped_specs()[name].read_text())
    P = 3 if spec.uses_size("proj") else None
    schedule = ["precision bf16", "precision fp16; fuse recurrent; persistent",
                "precision bf16; no fuse gates; no hoist input; no fuse pointwise; no batch weights"][k % 3]
    L, bidirectional = 1 + (k % 2), k % 4 == 1
    lengths = np.array([4, 1, 3]) if k % 4 == 3 else None
    kw = dict(num_heads=3) if spec.uses_size("heads") else {}
    bad = simrt.check(spec, P=P, I=6, L=L, schedule=schedule, graphs=k % 2 == 0, verbose=False,
                      bidirectional=bidirectional, lengths=lengths, dropconnect=0.3 if k % 5 == 4 else 0.0, **kw)
    failures += bool(bad)
    total += 1
    print(f"{name} | {schedule} | L={L} bidirectional={bidirectional} lengths={lengths is not None} | "
          f"{'OK' if not bad else f'BAD {bad}'}", flush=True)

# stacks as a layer wavefront: chunks of 2 steps (T = 19: the last one is 1), each layer's streams run
# in an adversarial order (simrt.Wave), so a chunk that reads another layer's work without waiting for it
# reads the poison; every shipped spec and the unusual ones, with graphs and without, lengths, half precision
for k, (name, text) in enumerate(cases):
    spec = lstmdsl.parse(text)
    P = 3 if spec.uses_size("proj") else None
    schedule = ["wavefront", "wavefront; precision bf16", "wavefront; no hoist input", "wavefront auto"][k % 4]
    lengths = np.array([19, 1, 7]) if k % 3 == 1 else None
    kw = dict(num_heads=3) if spec.uses_size("heads") else {}
    with warnings.catch_warnings(record=True) as caught:  # (a stack's layers always read y in place)
        warnings.simplefilter("always")
        bad = simrt.check(spec, T=19, P=P, I=6, H=6, L=3, schedule=schedule, graphs=k % 2 == 0, verbose=False,
                          lengths=lengths, **kw)
    bad = bad or [str(w.message) for w in caught if "not the layer below's y in place" in str(w.message)]
    failures += bool(bad)
    total += 1
    print(f"{name} | {schedule} | L=3 T=19 lengths={lengths is not None} | {'OK' if not bad else f'BAD {bad}'}",
          flush=True)

# a step's independent GEMMs at once (passes/fanout.py: FGR's four each way), their streams run in adversarial
# orders at each join (simrt.Wave), so a GEMM that read another's output unwaited would read the poison; with
# graphs and without, with the fan switched off (one after another), with lengths (a forward group only),
# in bf16 and in both directions, in a stack (its forward a wavefront: the fan in its backward only); and
# the fan really forks where it is on
from lstmdsl.runtime import issue as issue_module  # noqa: E402

forks = []
_fanned = issue_module.Issue.fanned
issue_module.Issue.fanned = lambda self, *a: (forks.append(1), _fanned(self, *a))[1]
for graphs, fanout, schedule, kw in [
        (True, True, None, {}), (False, True, None, {}), (True, False, None, {}), (False, False, None, {}),
        (True, True, None, dict(lengths=np.array([4, 1, 3]))), (True, True, "precision bf16", dict(bidirectional=True)),
        (False, True, "no hoist input; no batch weights", dict(lengths=np.array([2, 4, 1]))),
        (True, True, "fuse recurrent", {}), (True, True, None, dict(L=2))]:
    forks.clear()
    bad = simrt.check(lstmdsl.parse(shipped_specs()["fgr"].read_text()), I=6, graphs=graphs, fanout=fanout,
                      schedule=schedule, verbose=False, **kw)
    said = bool(forks) == fanout
    failures += bool(bad) or not said
    total += 1
    print(f"fgr | fanout={fanout} {schedule or 'default'} {kw} | graphs={graphs} forks={len(forks)} | "
          f"{'OK' if not bad and said else f'BAD {bad}'}", flush=True)
issue_module.Issue.fanned = _fanned

# a stack deeper than the cuBLAS lanes (one per layer of a wavefront) runs its layers one after the other
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    bad = simrt.check(lstmdsl.parse(shipped_specs()["vanilla"].read_text()), T=3, I=4, H=4, L=17,
                      schedule="wavefront", verbose=False)
said = [str(w.message) for w in caught if "more than 16 layers" in str(w.message)]
failures += bool(bad) or not said
total += 1
print(f"vanilla | wavefront | L=17: layer after layer, said so | {'OK' if not bad and said else f'BAD {bad} {said}'}",
      flush=True)

# new lengths on the next call are read from device memory: the captured graphs replay, none is captured anew
from lstmdsl.runtime import device  # noqa: E402

captured = []
_graph_init = device.Graph.__init__


def _count(self, *a, **k):
    captured.append(1)
    _graph_init(self, *a, **k)


device.Graph.__init__ = _count
layer = lstmdsl.compile("vanilla", 5, 6, 2, backend="cuda", bidirectional=True)
x = simrt.cupy.asarray(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32))
from lstmdsl.runtime import nvrtc  # noqa: E402

for k in range(2):  # (the kernels compiled for the shape, runtime/specialise.py, are in use from the second call:
    # their graphs are captured once more then)
    y, _ = layer.forward(x, lengths=np.array([3, 3, 3]))
    layer.backward(simrt.cupy.asarray(np.ones(y.shape, np.float32)))
    nvrtc.settle()
warm = len(captured)
captured.clear()
counts = []
for lengths in ([4, 1, 3], [2, 4, 4], [1, 1, 1]):
    y, _ = layer.forward(x, lengths=np.array(lengths))
    layer.backward(simrt.cupy.asarray(np.ones(y.shape, np.float32)))
    counts.append(len(captured))
ok = warm > 0 and counts == [0, 0, 0]
failures += not ok
total += 1
print(f"new lengths replay the captured graphs | {warm} captured by two calls first, then after each call {counts} | "
      f"{'OK' if ok else 'BAD'}")

# no initial state given: the engine zeroes the layer's state regions inside its captured graph (Engine._run), so a
# replay after a call that copied states in must start from zeros again (a stack's wavefront zeroes them before
# its graph); one layer and two, stepwise and persistent, float32 and bf16
for name, schedule, L in [("vanilla", None, 1), ("vanilla", None, 2), ("gru", "persistent", 2),
                          ("peephole", "precision bf16", 1)]:
    layer = lstmdsl.compile(name, 5, 5, L, backend="cuda", seed=4, schedule=schedule)
    layer.use_graphs = True
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    given = {k: rng.standard_normal(s).astype(np.float32) for k, s in layer.state_shapes(3).items()}
    ref = lstmdsl.compile(name, 5, 5, L, backend="numpy", seed=4)
    ref.load_state_dict(layer.state_dict())
    want, _ = ref.forward(x.astype(ref.dtype), train=False)
    runs = []
    for state in (given, None, given, None):  # capture, then replay, each after a call that copied states in
        y, _ = layer.forward(cupy.asarray(x), None if state is None else {k: cupy.asarray(v) for k, v in state.items()},
                             train=False)
        runs.append(np.asarray(y))
    tol = 5e-2 if schedule == "precision bf16" else 1e-4
    ok = all(np.abs(runs[i] - want).max() <= tol * (1 + np.abs(want).max()) for i in (1, 3)) and \
        np.abs(runs[0] - runs[1]).max() > 0
    failures += not ok
    total += 1
    print(f"{name} {schedule or 'default'} L={L}: no state given zeroes the states, also in a replayed graph | "
          f"{'OK' if ok else 'BAD'}")

# DropConnect: an evaluation forward with given masks, between a training forward and its backward, must
# leave the backward's masked weights alone
def grads_after(evaluation_between):
    layer = lstmdsl.compile("vanilla", 5, 6, 2, backend="cuda", dropconnect=0.5, seed=3)
    x = simrt.cupy.asarray(np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32))
    y, _ = layer.forward(x)
    if evaluation_between:
        other = {k: simrt.cupy.asarray(np.ones(v.shape, np.float32)) for k, v in layer.last_noise().items()}
        layer.forward(x, train=False, noise=other)
    dx = layer.backward(simrt.cupy.asarray(np.ones(y.shape, np.float32)))
    return [np.asarray(dx)] + [np.asarray(g) for g in layer.grads().values()]


ok = all(np.array_equal(a, b) for a, b in zip(grads_after(False), grads_after(True)))
failures += not ok
total += 1
print(f"DropConnect: an evaluation between forward and backward changes no gradient | {'OK' if ok else 'BAD'}")
# a forward-only workspace keeps the states other than the output in a ring of two areas (storage.inference_rings):
# at an odd T the final state is in area 1, the initial one in area 0; stepwise and persistent, two bidirectional
# layers over lengths, every shipped spec
for name, path in shipped_specs().items():
    spec = lstmdsl.parse(path.read_text())
    for schedule in (None, "persistent"):
        bad = simrt.check(spec, T=5, P=3 if spec.uses_size("proj") else None, I=6, L=2, bidirectional=True,
                          lengths=np.array([5, 1, 3]), schedule=schedule, verbose=False, graphs=schedule is None)
        failures += bool(bad)
        total += 1
        print(f"{name} | {schedule or 'default'} | T=5, two bidirectional layers, lengths 5 1 3: forward-only rings | "
              f"{'OK' if not bad else f'BAD {bad}'}", flush=True)

# a forced `persistent` that cannot run says why (here the layer norm's backward: its rows' reductions), and runs
# the stepwise loop there
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    bad = simrt.check(lstmdsl.parse(shipped_specs()["layernorm"].read_text()), I=6, H=7, schedule="persistent",
                      verbose=False)  # (H = 7: not the shape whose kernels the specialise cases below compile)
said = [str(w.message) for w in caught if "schedule 'persistent'" in str(w.message)]
ok = not bad and len(said) == 1 and "reduces rows" in said[0] and said[0].endswith("(backward)")
failures += not ok
total += 1
print(f"layernorm under a forced persistent: a warning, then the stepwise loop | {'OK' if ok else f'BAD {bad} {said}'}")
# block-diagonal matrices (the sLSTM's heads) under a forced `persistent`: both loops persistent, each block's rows
# kept expanded (CachedWeights.heads), both directions with lengths (whose held gradient, folded into the
# backward's sum, keeps it stepwise under `fold sums`, as for every cell), in a stack, graphs and not, float32 and 64,
# fp16's half copies with DropConnect's masked ones
for heads, H, schedule, kw in [(3, 6, "persistent; no fold sums",
                                dict(L=2, bidirectional=True, lengths=np.array([2, 4, 1]), graphs=True)),
                               (3, 6, "persistent", dict(L=2, bidirectional=True, graphs=False)),
                               (2, 10, "persistent", dict(L=1, graphs=False, dtype="float64")),
                               (3, 6, "precision fp16; persistent", dict(L=1, graphs=True, dropconnect=0.3)),
                               (1, 5, "persistent", dict(L=1, graphs=True, I=5))]:
    simrt.PERSISTENT.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = simrt.check(lstmdsl.parse(shipped_specs()["slstm"].read_text()), **(dict(I=6) | kw), H=H,
                          num_heads=heads, schedule=schedule, verbose=False)
    said = [str(w.message) for w in caught if "schedule 'persistent'" in str(w.message)]
    ran = {name for name, *_ in simrt.PERSISTENT}
    ok = not bad and not said and any("fwd" in n for n in ran) and any("bwd" in n for n in ran)
    failures += not ok
    total += 1
    print(f"slstm num_heads={heads} H={H} {schedule} {kw} | {'OK' if ok else f'BAD {bad} {said} {sorted(ran)}'}",
          flush=True)

# the sLSTM under `persistent auto` (HEADS_LIMITS, HEADS_BACKWARD_LIMITS): both kernels on the stacks' head-by-head
# copy, the backward staging each gate's gradients by gathering them (no lengths: their held gradient folds into
# the backward's sum, stepwise there, unless `no fold sums`)
for kw in [dict(L=2, bidirectional=True, dropout=0.3, dropconnect=0.3, H=6, heads=3),
           dict(L=1, H=12, heads=4, I=5), dict(L=1, H=10, heads=5, B=5),
           dict(L=2, bidirectional=True, H=6, heads=3, schedule="persistent auto; no fold sums",
                lengths=np.array([2, 4, 1]))]:
    simrt.PERSISTENT.clear()
    heads = kw.pop("heads")
    bad = simrt.check(lstmdsl.parse(shipped_specs()["slstm"].read_text()), **(dict(I=6) | kw), num_heads=heads,
                      graphs=True, verbose=False)
    ran = {name for name, *_ in simrt.PERSISTENT}
    ok = not bad and any("fwd" in n for n in ran) and any("bwd" in n for n in ran)
    failures += not ok
    total += 1
    print(f"slstm num_heads={heads} persistent auto {kw} | {'OK' if ok else f'BAD {bad} {sorted(ran)}'}", flush=True)
# whole recurrent matrices stored head by head (they share their gradients' buffer with the block-diagonal input
# matrices): no kernel under `persistent auto` (it would read the head-by-head copy as if in order: wrong numbers
# before the thirty-second session), both kernels under `persistent` (stacks in order there)
for schedule, want in ((None, set()), ("persistent", {"hw_fwd_persistent", "hw_bwd_persistent_reverse"})):
    simrt.PERSISTENT.clear()
    bad = simrt.check(lstmdsl.parse(HEADS_ON_INPUT), I=6, H=6, num_heads=3, schedule=schedule, graphs=True,
                      verbose=False)
    ran = {name for name, *_ in simrt.PERSISTENT}
    ok = not bad and ran == want
    failures += not ok
    total += 1
    print(f"heads on the input's matrices | {schedule or 'default'} | {'OK' if ok else f'BAD {bad} {sorted(ran)}'}",
          flush=True)

# a stack reads each layer's input in place from the layer below's output (Storage.stack_input): one buffer
# fewer per layer above the first, and the results above already cover its correctness
for name, kw in [("vanilla", {}), ("lstmp", {"proj_size": 3}), ("gru", {"schedule": "precision bf16"})]:
    layer = lstmdsl.compile(name, input_size=6 if name != "lstmp" else 3, hidden_size=6, num_layers=3, backend="cuda",
                            **kw)
    layer.forward(cupy.asarray(np.zeros((4, 2, layer.input_size), np.float32)))
    (engine,) = layer._engines.values()
    (wss,) = engine.workspaces.values()
    ok = engine.program.plan.storage.stack_input and all(
        upper.base["x"] == engine.output_region(lower, "y")[0] for lower, upper in zip(wss, wss[1:]))
    failures += not ok
    total += 1
    print(f"{name} {kw}: a stack's x is the layer below's y, in place | {'OK' if ok else 'BAD'}")
# each GEMM runs with the cuBLAS workspace the plan's rule gives at its batch and type (plan.GemmWorkspace): the
# small one at B = 1 in fp32, the wavefront's at B = 3 on a stack's lanes (forward and backward run as wavefronts
# for vanilla) with cuBLASLt's first kernel looked up for each of its shapes (the parameter gradients' too), the full one
# there without the wavefront, the half one in bf16 (forward and backward, a stack of two); the small one where
# one layer's forward and backward both run persistent (16 x 64: T * B = 48 rows), the full one there with the
# stepwise loop; cuBLASLt's looked up for no shape but the wavefront's
rule = lstmdsl.plan.GemmWorkspace()
for B, schedule, want, H, L in [(1, "no persistent", {("f32", rule.small)}, 6, 2),
                                (3, "no persistent", {("f32", rule.wave)}, 6, 2),
                                (3, "no persistent; no wavefront", {("f32", rule.full)}, 6, 2),
                                (3, "precision bf16; no persistent", {("bf16", rule.half)}, 6, 2),
                                (16, "persistent", {("f32", rule.small)}, 64, 1),
                                (16, "no persistent", {("f32", rule.full)}, 64, 1)]:
    simrt.WORKSPACES.clear()
    simrt.LT_ASKED.clear()
    bad = simrt.check(lstmdsl.parse(shipped_specs()["vanilla"].read_text()), B=B, L=L, H=H, I=H, T=3,
                      schedule=schedule, verbose=False)
    if ("f32", rule.wave) in want:  # (the weight gradients' [4H, H] x T * B: the recurrent one among them)
        bad = bad or ({n for *_, n in simrt.LT_ASKED} != {rule.wave} or (4 * H, H, 3 * B, rule.wave) not in
                      simrt.LT_ASKED and f"cuBLASLt asked for {sorted(simrt.LT_ASKED)}")
    elif simrt.LT_ASKED:
        bad = bad or f"cuBLASLt asked for {sorted(simrt.LT_ASKED)}"
    ok = not bad and simrt.WORKSPACES == want
    failures += not ok
    total += 1
    print(f"vanilla B={B} H={H} L={L} {schedule}: the GEMMs' cuBLAS workspace | "
          f"{'OK' if ok else f'BAD {bad} {simrt.WORKSPACES}'}")
# the small one needs every phase persistent over at most persistent_rows rows: past them (16 x 129 = 2064 rows) the
# full one; with the backward's kernel made not to fit (the stepwise loop) the training workspace takes the full one
# and the forward-only one (check's eval-mode call) the small one
from lstmdsl.runtime import executor as executor_module  # noqa: E402
from lstmdsl.program import build_program  # noqa: E402
from lstmdsl.schedule import Schedule  # noqa: E402

vanilla = lstmdsl.parse(shipped_specs()["vanilla"].read_text())
backward_kernel = build_program(vanilla.cell, Schedule(), "float32").plan.backward.loop.persistent.name
fits = executor_module.launch_shape
for T, shape, want in [(129, fits, {("f32", rule.full)}),
                       (3, lambda pers, *a: None if pers.name == backward_kernel else fits(pers, *a),
                        {("f32", rule.small), ("f32", rule.full)})]:
    simrt.WORKSPACES.clear()
    executor_module.launch_shape = shape
    try:
        bad = simrt.check(vanilla, B=16, L=1, H=64, I=64, T=T, verbose=False)
    finally:
        executor_module.launch_shape = fits
    ok = not bad and simrt.WORKSPACES == want
    failures += not ok
    total += 1
    print(f"vanilla B=16 H=64 T={T}{'' if shape is fits else ', the backward stepwise'}: the GEMMs' cuBLAS "
          f"workspace | {'OK' if ok else f'BAD {bad} {simrt.WORKSPACES}'}")
# the backward writes an LSTM's gate gradients over the gates (Storage.in_place): a second backward of one
# forward is refused with a message, and a new forward makes it possible again with the same gradients
layer = lstmdsl.compile("vanilla", 5, 6, 2, backend="cuda", seed=3)
x = cupy.asarray(np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32))
dy = cupy.asarray(np.ones((4, 3, 6), np.float32))
layer.forward(x)
first = np.asarray(layer.backward(dy))
try:
    layer.backward(dy)
    said = ""
except lstmdsl.LstmdslError as e:
    said = str(e)
layer.forward(x)
ok = "used by a backward already" in said and np.array_equal(np.asarray(layer.backward(dy)), first)
failures += not ok
total += 1
print(f"a second backward of one forward: refused with a message, fine after a forward | {'OK' if ok else f'BAD {said}'}")
# a training forward whose outputs cannot be allocated (they are, once its first layer's work is issued,
# over the activations an earlier forward of the same shape left): that earlier forward's backward is refused
layer.forward(x)
empty = cupy.empty
try:
    cupy.empty = lambda *a, **k: (_ for _ in ()).throw(MemoryError("out of memory (emulated)"))
    layer.forward(x)
    said = "no error"
except MemoryError:
    said = ""
finally:
    cupy.empty = empty
try:
    layer.backward(dy)
except lstmdsl.LstmdslError as e:
    said += str(e)
layer.forward(x)
ok = "needs a forward() with train=True first" in said and np.array_equal(np.asarray(layer.backward(dy)), first)
failures += not ok
total += 1
print(f"outputs not allocated after the launch: the earlier forward's backward refused | {'OK' if ok else f'BAD {said}'}")

# persistent kernels compiled for their launch's shape (runtime/specialise.py): `specialise` from the first call,
# `specialise auto` once its compile on the thread has finished (each compare waits for it here: the call after
# drops the captured graphs and captures the new kernel), none under `no specialise`; every such launch's
# constants checked against its arguments (simrt.launch_cooperative)

_compare = simrt.compare
simrt.compare = lambda *a, **k: (nvrtc.settle(), _compare(*a, **k))[1]
for name, schedule, graphs, L, kw, want in [
        ("vanilla", "fuse recurrent; persistent; specialise", False, 1, {}, "all"),
        ("gru", "persistent; specialise", True, 2, dict(bidirectional=True, lengths=np.array([2, 4, 1])), "all"),
        ("vanilla", "persistent; specialise; precision bf16", True, 1, {}, "all"),
        ("layernorm", "persistent", True, 1, {}, "some"), ("vanilla", "persistent", True, 1, dict(B=7), "some"),
        ("vanilla", "persistent; no specialise", True, 1, {}, "none")]:
    launches = len(simrt.PERSISTENT)
    simrt.SPECIAL.clear()
    bad = simrt.check(lstmdsl.parse(shipped_specs()[name].read_text()), I=6, L=L, schedule=schedule, graphs=graphs,
                      verbose=False, **kw)
    n, special = len(simrt.PERSISTENT) - launches, len(simrt.SPECIAL)
    ok = not bad and n > 0 and {"all": special == n, "some": 0 < special < n, "none": special == 0}[want]
    failures += not ok
    total += 1
    print(f"{name} | {schedule} {kw} L={L} graphs={graphs} | {special} of {n} persistent launches compiled for "
          f"their shape ({want}) | {'OK' if ok else f'BAD {bad}'}", flush=True)
simrt.compare = _compare

# The grid rules of a layer of one direction: fp32's past B = 16 (passes/persistent.py ALONE_LIMITS): B = 32,
# H = 128 runs the persistent grid, and so does each layer of a dropout stack (a unit each); FGR's at B <= 16 from
# 2^23 (MANY_ALONE_LIMITS): B = 9, H = 300; the directions of a bidirectional layer, each on half the
# multiprocessors, to 2^25 in fp32 (BESIDE_LIMITS: B = 32, H = 128 a grid each, B = 64, H = 512 the stepwise loop),
# FGR's not past B = 1 (no rule of its own for them: MANY_LIMITS only). Then: the units that run the forward's
# persistent kernel (each at least twice: the forward-only call and training's; a dropout stack's more), each launch
# on half the 132 multiprocessors or fewer (True: a direction beside the other) or on more (False), or none (None)
ONE_DIRECTION = [("vanilla", dict(T=3, B=32, H=128), 1, False),
                 ("vanilla", dict(T=3, B=32, H=128, L=2, I=128, dropout=0.3), 2, False),
                 ("vanilla", dict(T=3, B=32, H=128, bidirectional=True), 2, True),
                 ("vanilla", dict(T=3, B=16, H=256, bidirectional=True, schedule="precision bf16"), 2, True),
                 ("vanilla", dict(T=2, B=64, H=512, I=8, bidirectional=True), 0, None),
                 ("vanilla", dict(T=2, B=64, H=512, I=8, bidirectional=True, overlap=False), 2, False),  # (one
                 # after the other: engines of their own, with a layer of one direction's rules)
                 ("fgr", dict(T=2, B=9, H=300), 1, False), ("fgr", dict(T=2, B=9, H=300, bidirectional=True), 0, None)]
for name, kw, count, half in ONE_DIRECTION:
    launches = len(simrt.PERSISTENT)
    bad = simrt.check(lstmdsl.parse(shipped_specs()[name].read_text()), **kw, verbose=False)
    runs = [blocks for kernel, blocks, _, _ in simrt.PERSISTENT[launches:] if "_fwd_" in kernel]
    ran = bool(runs)
    ok = not bad and (len(runs) >= 2 * count if count else not runs) and all((blocks <= 66) == half for blocks in runs)
    failures += not ok
    total += 1
    print(f"{name} {kw} | persistent auto: {'a grid' if ran else 'stepwise'} | {'OK' if ok else f'BAD {bad}'}",
          flush=True)

# dx over dy (passes/overlay.py): where the sizes agree a layer's dx lives in its dy's memory, zeroed after the loop
# (in a backward wavefront after each chunk's steps, the streams in adversarial orders), and not where I != H (a
# stack's first layer, a bidirectional stack's upper layer) or under `no hoist input` (dx formed in the loop);
# every workspace poisoned, so a read of dx's rows before their zeroing, or of dy's after dx's GEMM, shows up
from lstmdsl.runtime import workspace as workspace_module  # noqa: E402

made, chunks = [], []
_ws_init, _chunk = workspace_module.Workspace.__init__, issue_module.Issue.backward_chunk
workspace_module.Workspace.__init__ = lambda self, *a, **k: (_ws_init(self, *a, **k), made.append(self))[0]
issue_module.Issue.backward_chunk = lambda self, *a: (chunks.append(1), _chunk(self, *a))[1]
for name, schedule, kw, want, wave in [
        ("vanilla", None, dict(I=6), [True], False), ("vanilla", None, dict(I=5), [False], False),
        ("vanilla", None, dict(I=5, L=3), [False, True, True], True),
        ("vanilla", "no hoist input", dict(I=6, L=2), [False] * 2, False),
        ("vanilla", None, dict(I=6, L=2, bidirectional=True), [True, True, False, False], False),
        ("gru", "wavefront", dict(I=6, L=3, T=19), [True] * 3, False),
        ("vanilla", "wavefront; precision bf16", dict(I=6, L=3, T=19, lengths=np.array([19, 1, 7])), [True] * 3, True),
        ("zoneout_lstm", "wavefront", dict(I=5, L=3, T=19), [False, True, True], True),
        ("slstm", "wavefront; precision fp16", dict(I=6, L=2, T=19, num_heads=3), [True] * 2, True),
        ("vanilla", "persistent", dict(I=6, L=2), [True] * 2, False),
        ("layernorm", "precision bf16", dict(I=6, L=2), [True] * 2, False),
        ("lstmp", None, dict(I=3, P=3, L=2), [True] * 2, False),
        ("slstm", None, dict(I=6, num_heads=3), [True], False)]:
    made.clear(), chunks.clear()
    bad = simrt.check(lstmdsl.parse(shipped_specs()[name].read_text()), schedule=schedule, graphs=True, verbose=False,
                      **kw)
    got = [bool(w.overlaid) for w in made if w.train]  # (in the order made: a stack's layers from the bottom)
    waved = bool(chunks) == wave
    ok = not bad and got == want and waved
    failures += not ok
    total += 1
    print(f"{name} | {schedule or 'default'} {kw} | dx over dy in {got.count(True)} of {len(got)} training workspaces "
          f"(want {want.count(True)}), backward wavefront {bool(chunks)} | {'OK' if ok else f'BAD {bad}'}", flush=True)
workspace_module.Workspace.__init__, issue_module.Issue.backward_chunk = _ws_init, _chunk
# a layer whose dx keeps its own memory does not take a lower layer's dx, which lives in dy's memory there (it would
# zero the dy just copied in): not met by a real stack, whose layers above the first have I = H
from lstmdsl.program import build_program  # noqa: E402
from lstmdsl.schedule import parse_schedule  # noqa: E402

vanilla = lstmdsl.parse(shipped_specs()["vanilla"].read_text())
storage = build_program(vanilla.cell, parse_schedule("precision bf16", vanilla.schedule), "float32").plan.storage
low = workspace_module.Workspace(storage, {"input": 6, "hidden": 6}, 4, 3, True, 0)
high = workspace_module.Workspace(storage, {"input": 5, "hidden": 6}, 4, 3, True, 0, [low])
ok = (set(low.overlaid), set(high.overlaid)) == ({"dx"}, set()) and high.base["dx"] != high.base["dy"]
failures += not ok
total += 1
print(f"dx over dy below, not above: the layer above keeps its own dx | {'OK' if ok else 'BAD'}", flush=True)

# a forward-only workspace keeps one chunk's steps of the input products and runs its forward chunk by chunk
# (plan.Chunks): here from any size (min_bytes and min_rows 0) in chunks of 3 steps (the wavefront's too), so at T = 7 and 9 the
# last chunk is shorter and the ring's areas are reused; one layer, a bidirectional stack over lengths and a
# wavefront of three layers, stepwise (the persistent kernel reads every step's products: no chunks there)
import lstmdsl.passes.wavefront as wavefront_pass  # noqa: E402

_chunks, _wave, made = wavefront_pass.Chunks, wavefront_pass.Wavefront, []
wavefront_pass.Chunks = lambda: _chunks(chunks=3, min_bytes=0, min_rows=0)
wavefront_pass.Wavefront = lambda **kw: _wave(chunks=3, **kw)


def _made(self, *args, **kw):
    _ws_init(self, *args, **kw)
    made.append(self)


workspace_module.Workspace.__init__ = _made
for name in ["vanilla", "gru", "peephole", "zoneout_lstm", "recurrent_dropout", "fgr", "lstmp", "layernorm"]:
    spec = lstmdsl.parse(shipped_specs()[name].read_text())
    folds = ("fold projection; no persistent; wavefront", "fold projection; no persistent; wavefront; precision tf32") \
        if name == "lstmp" else ()  # (the projection folded: its states formed after each chunk's steps)
    for schedule in ("no persistent; wavefront", "no persistent; wavefront; precision bf16") + folds:
        for L, bidirectional, T, wave in ((1, False, 7, 0), (2, True, 7, 0), (3, False, 9, 3)):
            made.clear()
            bad = simrt.check(spec, T=T, I=6, L=L, P=3 if spec.uses_size("proj") else None, schedule=schedule,
                              bidirectional=bidirectional, lengths=np.array([T, 1, 4]) if bidirectional else None,
                              verbose=False, graphs=True)
            inference = [w for w in made if not w.train]
            ran = inference and all(w.chunk == 3 for w in inference) and (inference[0].wave or 0) == wave
            failures += bool(bad) or not ran
            total += 1
            print(f"{name} | {schedule} | T={T} L={L}{' bidirectional' if bidirectional else ''}: forward-only "
                  f"chunks {[w.chunk for w in inference]}, wavefront {inference[0].wave if inference else None} | "
                  f"{'OK' if not bad and ran else f'BAD {bad}'}", flush=True)
# the folded projection chunk by chunk: one layer each way (a reverse layer's first chunk is its last), a
# bidirectional stack without lengths, a wavefront of three layers; forward-only workspaces hold the fold's buffer
lstmp = lstmdsl.parse(shipped_specs()["lstmp"].read_text())
old_output = lstmdsl.parse(shipped_specs()["lstmp"].read_text().replace("output h'", "output h"))
for schedule in ("fold projection; no persistent; wavefront", "fold projection; no persistent"):
    for spec, L, bidirectional, T in ((lstmp, 1, False, 7), (lstmp, 1, True, 8), (lstmp, 2, True, 7),
                                      (lstmp, 3, False, 9), (lstmp, 3, False, 10), (old_output, 3, False, 10)):
        made.clear()
        bad = simrt.check(spec, T=T, I=6, L=L, P=3, schedule=schedule, bidirectional=bidirectional,
                          verbose=False, graphs=True)
        inference = [w for w in made if not w.train]
        ran = inference and all(w.chunk == -(-T // 3) and "folded" in w.steps for w in inference)  # (3 chunks)
        failures += bool(bad) or not ran
        total += 1
        print(f"{'lstmp' if spec is lstmp else 'lstmp, output h'} | {schedule} | T={T} L={L}"
              f"{' bidirectional' if bidirectional else ''}: folded, forward-only "
              f"chunks {[w.chunk for w in inference]}, wavefront {inference[0].wave if inference else None} | "
              f"{'OK' if not bad and ran else f'BAD {bad}'}", flush=True)
workspace_module.Workspace.__init__ = _ws_init
wavefront_pass.Chunks, wavefront_pass.Wavefront = _chunks, _wave

# LSTMP's projection folded into the next step's GEMM (passes/projection.py): the first step's products before the
# loop at the loop's first step (t = T - 1 in reverse), W P at every forward (DropConnect's masked copies included),
# the projected states over all steps after it. The lengths case runs unfolded (a masked update is not the
# projection's product: passes/projection.py), the check that it folds is of the same layer without lengths. A cell
# whose output is the state read at each step (h, not h'), folded too: its outputs come from the after-loop GEMM
lstmp = lstmdsl.parse(shipped_specs()["lstmp"].read_text())
for kw in (dict(), dict(bidirectional=True, L=2, I=6, graphs=True)):
    bad = simrt.check(old_output, P=3, schedule="fold projection", verbose=False, **kw)
    failures += bool(bad)
    total += 1
    print(f"lstmp, output h | fold projection | {kw} | {'OK' if not bad else f'BAD {bad}'}", flush=True)
for schedule, kw in [("fold projection", dict()), ("fold projection", dict(graphs=True, T=1)),
                     ("fold projection", dict(L=2, I=6, B=1, T=7)), ("fold projection", dict(dtype="float64", graphs=True)),
                     ("fold projection", dict(bidirectional=True, L=2, I=6, graphs=True)),
                     ("fold projection", dict(bidirectional=True, L=2, I=6, dropout=0.3, dropconnect=0.3, graphs=True)),
                     ("fold projection", dict(bidirectional=True, L=2, I=6, lengths=np.array([2, 4, 1]), graphs=True)),
                     ("fold projection; precision tf32", dict(graphs=True, H=33, I=7))]:
    bad = simrt.check(lstmp, P=3, schedule=schedule, verbose=False, **kw)
    folded = [type(op).__name__ for op in lstmdsl.compile(lstmp, input_size=5, hidden_size=6, proj_size=3,
                                                          backend="cuda", schedule=schedule).program.plan.forward.before]
    bad = bad or ({} if "Fold" in folded else {"not folded": 1})
    failures += bool(bad)
    total += 1
    print(f"lstmp | {schedule} | {kw} | {'OK' if not bad else f'BAD {bad}'}", flush=True)

print(f"{total - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
