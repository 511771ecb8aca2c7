"""Run one spec's forward and backward on the GPU, for compute-sanitizer (benchmarks/gpu_check.sh):

    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py [spec]
    compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --torch-compile [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --bidirectional-lengths [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --torch-packed [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --torch-half [--fp16] [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --bf16 [spec]   # or --fp16
    compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py --persistent-block [spec]
    compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py --persistent-grid [spec]
    compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py --persistent-split [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --wavefront [spec]
    compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py --persistent-split --specialise [spec]
    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py --fold lstmp

--bidirectional-lengths runs a bidirectional stack (its directions on two streams) on a batch of different
lengths, with dropout between the layers and DropConnect. --torch-packed runs the torch module on a PackedSequence
(its cell's outputs past each end held, not zeroed: masks.with_lengths(held=True)), a bidirectional stack
with dropout between the layers and then a one-direction stack (one op, each layer's y the next one's x in
place); with --persistent-block / -grid / -split and --bf16 / --fp16 as below. --torch-half trains the torch module
with half-precision parameters (`.to(torch.bfloat16)`, with --fp16 `.half()`: the GEMMs read the half weight stacks
in place, the gradients copied out in half), a stack of --layers, twice. --torch-compile runs
the torch module under torch.compile (a compiled training step, then an eager one: the
sequence that once corrupted memory). --bf16 / --fp16 run the spec in mixed precision (half-precision
buffers, converting copies). At its sizes (B = 3, H = 33) the cost model keeps the stepwise loop (in fp32;
in bf16 and fp16 a single-stage cell's forward runs as a grid that splits the batch);
--persistent-block forces `persistent` at B = 1, so the forward and (where the cell has one) the backward run
as one persistent kernel of one block; --persistent-grid makes the layer wide (H = 300) and forces
`persistent`, so the kernels run as a grid of blocks meeting at grid barriers (--hidden=N: H = N, e.g. 256,
whose rows fill the exchange's staging passes evenly; --batch=N: B = N, e.g. 1 with --specialise, a grid's kernels
compiled for one batch row; both also without --persistent-grid, under `persistent auto`); --layers=N: N layers
(default 2; one: a layer's own backward, which in a stack of two runs as a wavefront under auto); --persistent-split forces
`persistent` at B = 40, H = 33, so the grid splits the batch (each block all the weights and its own row). --wavefront forces `wavefront` over 37 steps: the two layers on two
streams, chunks of 3 steps. --specialise adds `specialise`: the persistent kernels compiled for their launch's
shape from the first call (runtime/specialise.py). --fold adds `fold projection` (LSTMP: W P formed before the loop,
the next step's products a step ahead, the projected states over all steps after it: passes/projection.py; the
default), --no-fold `no fold projection`. A spec with block-diagonal matrices runs with 3 heads (4 under torch.compile). Not collected by pytest; the GPU tests check the numbers, this
checks memory accesses and races.
"""

import faulthandler
import os
import sys

# a run that hangs prints every thread's Python stack and exits before benchmarks/gpu_check.sh's 240 s timeout kills
# it silently: the log then says whether the host waited on the GPU (a synchronize) or on itself (a lock, a thread);
# timed from here, before the imports that run slowly under compute-sanitizer
faulthandler.dump_traceback_later(float(os.environ.get("LSTMDSL_SAN_DUMP_S", "220")), exit=True)

import cupy  # noqa: E402
import numpy as np  # noqa: E402

import lstmdsl  # noqa: E402

args = sys.argv[1:]
compiled = "--torch-compile" in args
masked = "--bidirectional-lengths" in args
precision = "bf16" if "--bf16" in args else "fp16" if "--fp16" in args else "fp32"
grid = "--persistent-grid" in args
split = "--persistent-split" in args
forced = grid or split or "--persistent-block" in args
wave = "--wavefront" in args
packed = "--torch-packed" in args
half_module = "--torch-half" in args
special = "; specialise" if "--specialise" in args else ""
special += "; fold projection" if "--fold" in args else "; no fold projection" if "--no-fold" in args else ""
wide = int(next((a.split("=", 1)[1] for a in args if a.startswith("--hidden=")), 300 if grid else 33))
depth = int(next((a.split("=", 1)[1] for a in args if a.startswith("--layers=")), 2))
rows = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--batch=")), None)
args = [a for a in args if not a.startswith("--")]
name = args[0] if args else "peephole"
extra = {"proj_size": 7} if lstmdsl.parse(name).uses_size("proj") else {}
if lstmdsl.parse(name).uses_size("heads"):  # several heads: stacks stored head by head, rows permuted (under
    # `persistent` kept in order, each block's rows expanded in shared memory)
    extra["num_heads"] = 4 if compiled else 3
if compiled:
    import torch

    import lstmdsl.torch

    m = lstmdsl.torch.RNN(name, 64, 128, 2, **extra)
    x = torch.randn(50, 8, 64, device="cuda", requires_grad=True)
    cm = torch.compile(m)
    y, _ = cm(x)
    y.sum().backward()
    y, _ = m(x)
    y.sum().backward()
    torch.cuda.synchronize()
    print(f"{name} under torch.compile, then eager: |x.grad| = {float(x.grad.norm()):.4f}")
    sys.exit(0)
if half_module:
    import torch

    import lstmdsl.torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    m = lstmdsl.torch.RNN(name, 5, wide, depth, **extra).cuda().to(dtype)
    x = torch.randn(7, rows or 3, 5, device="cuda", dtype=dtype, requires_grad=True)
    for _ in range(2):  # the first call captures the CUDA graphs, the second replays them
        y, _ = m(x)
        y.float().sum().backward()
    torch.cuda.synchronize()
    grads = sum(float(p.grad.float().norm()) for p in m.parameters())
    print(f"{name}: the torch module in {dtype}, forward and backward ran; "
          f"|x.grad| = {float(x.grad.float().norm()):.4f}, sum of |grad| = {grads:.4f}")
    sys.exit(0)
if packed:
    import torch

    import lstmdsl.torch

    B = 40 if split else 1 if "--persistent-block" in sys.argv else 3
    schedule = "; ".join([f"precision {precision}"] + (["persistent"] if forced else [])) + special
    x = torch.randn(7, B, 5, device="cuda", requires_grad=True)
    lengths = torch.tensor([7, 2, 5]) if B == 3 else torch.from_numpy(np.random.default_rng(1).integers(1, 8, B))
    # both directions layer by layer (dropout between), then one direction's stack as one op (in place)
    for options in (dict(bidirectional=True, dropout=0.3), {}):
        m = lstmdsl.torch.RNN(name, 5, wide if grid else 33, 2, **options, **extra, schedule=schedule).cuda()
        for _ in range(2):  # the first call captures the CUDA graphs, the second replays them
            with torch.no_grad():
                m(torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
            y, _ = m(torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
            y.data.sum().backward()
    torch.cuda.synchronize()
    print(f"{name}: the torch module on a packed batch, forward and backward; |x.grad| = {float(x.grad.norm()):.4f}")
    sys.exit(0)
options = dict(bidirectional=True, dropout=0.3, dropconnect=0.3) if masked else {}
layer = lstmdsl.compile(name, input_size=5, hidden_size=wide, num_layers=depth, backend="cuda", **options,
                        **extra, schedule=f"precision {precision}" + ("; persistent" if forced else "")
                        + ("; wavefront" if wave else "") + special)
B = rows or (40 if split else 1 if "--persistent-block" in sys.argv else 3)  # (one block: one row; more split)
x = cupy.asarray(np.random.default_rng(0).standard_normal((37 if wave else 7, B, 5)).astype(np.float32))
lengths = (np.array([7, 2, 5]) if B == 3 else np.random.default_rng(1).integers(1, 8, B)) if masked else None
for _ in range(2):  # the first call captures the CUDA graphs, the second replays them
    y0, _ = layer.forward(x, train=False, lengths=lengths)  # the forward-only workspace
    y, state = layer.forward(x, lengths=lengths)
    dx = layer.backward(cupy.ones_like(y))
cupy.cuda.Device().synchronize()
print(f"{name}: forward and backward ran; |y| = {float(cupy.linalg.norm(y)):.4f}, |dx| = {float(cupy.linalg.norm(dx)):.4f}")
