"""What FGR's forward step's GEMMs would cost side by side (issue 14: FGR 1.52x cuDNN's vanilla forward at B = 64,
H = 512, fp32). Today a step runs four GEMMs at once on four streams: h @ [2048 x 512]^T and each of the states i, f,
o @ [1536 x 512]^T (k = 512). Stored side by side ([i|f|o] one buffer, the three weight stacks one [1536 x 1536]
formed once a forward), the three are one GEMM with k = 1536; with h too, [64 x 2048] k = 2048 (z's blocks zero).
Each variant captured in a CUDA graph of 100 repetitions (the four-stream one forked and joined by events),
strict fp32 through the runtime's own GEMM call (lstmdsl.runtime.cublas.gemm, one lane per stream; CuPy's
matmul refuses to run inside a capture: the first run, on 2026-12-05, stopped there), GPU time per repetition
(us), median of 7 graph launches.
    python3 benchmarks/probe_fgr_gemms.py [B H]      # default B = 64, H = 512

The batched variants (added 2026-12-06): the three gate GEMMs as one strided-batched cuBLAS call, forward and
backward (bwd_*: the backward step's GEMMs), which needs only the operands at constant strides in memory.
"""
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())
import cupy  # noqa: E402

from lstmdsl.runtime import cublas  # noqa: E402

B, H = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (64, 512)
REP = 100
rng = cupy.random.default_rng(0)
f32 = cupy.float32
h, i, f, o = (rng.standard_normal((B, H), dtype=f32) for _ in range(4))
ifo = rng.standard_normal((B, 3 * H), dtype=f32)
hifo = rng.standard_normal((B, 4 * H), dtype=f32)
Whh = rng.standard_normal((4 * H, H), dtype=f32)
Wg = [rng.standard_normal((3 * H, H), dtype=f32) for _ in range(3)]
Wc = rng.standard_normal((3 * H, 3 * H), dtype=f32)
Wall = rng.standard_normal((4 * H, 4 * H), dtype=f32)
Wz = rng.standard_normal((H, H), dtype=f32)
out = {k: cupy.empty((B, n), f32) for k, n in (("g1", 4 * H), ("g2", 3 * H), ("g3", 3 * H), ("g4", 3 * H),
                                               ("c", 3 * H), ("all", 4 * H), ("z", H))}
main, sides = cupy.cuda.Stream(non_blocking=True), [cupy.cuda.Stream(non_blocking=True) for _ in range(3)]
LANES = {s.ptr: lane for lane, s in enumerate((main, *sides))}
TYPES = ("f32", "f32", "f32", "fp32")


def mm(a, w, c):
    """c[M, N] = a[M, K] @ w[N, K]^T, row-major, as the runtime issues a GEMM (lstmdsl.runtime.cublas.gemm: its
    own handles, one lane per stream), on the current stream."""
    (M, K), N = a.shape, w.shape[0]
    assert w.shape[1] == K and c.shape == (M, N) and a.flags.c_contiguous and c.flags.c_contiguous
    stream = cupy.cuda.get_current_stream().ptr
    cublas.gemm(M, N, K, a.data.ptr, K, False, w.data.ptr, w.strides[0] // 4, True, c.data.ptr, N, False, TYPES,
                stream, LANES[stream])


def at_once(first, *others):
    """first() on the main stream and each of others on a side stream of its own, forked from and joined back to
    the main stream by events (as runtime/fanout.py runs a step's GEMMs)."""
    fork = cupy.cuda.Event(disable_timing=True)
    fork.record(main)
    joins = []
    for s, fn in zip(sides, others):
        s.wait_event(fork)
        with s:
            fn()
        e = cupy.cuda.Event(disable_timing=True)
        e.record(s)
        joins.append(e)
    with main:
        first()
    for e in joins:
        main.wait_event(e)


def four_streams():
    gates = zip((i, f, o), Wg, ("g2", "g3", "g4"))
    at_once(lambda: mm(h, Whh, out["g1"]),
            *(lambda a=a, w=w, k=k: mm(a, w, out[k]) for a, w, k in gates))


def serial4():
    with main:
        mm(h, Whh, out["g1"])
        for a, w, k in zip((i, f, o), Wg, ("g2", "g3", "g4")):
            mm(a, w, out[k])


def two_side_by_side():  # h @ Whh^T and [i|f|o] @ Wc^T, one after the other
    with main:
        mm(h, Whh, out["g1"])
        mm(ifo, Wc, out["c"])


def two_streams():  # the same two GEMMs at once
    at_once(lambda: mm(h, Whh, out["g1"]), lambda: mm(ifo, Wc, out["c"]))


def one_k2048():  # [h|i|f|o] @ Wall^T, z's i/f/o blocks zero
    with main:
        mm(hifo, Wall, out["all"])


def k2048_plus_z():  # gates i, f, o over [h|i|f|o] (k = 2048) and z over h alone
    with main:
        mm(hifo, Wall[:3 * H], out["c"])
        mm(h, Wz, out["z"])


# One strided-batched call (cublasGemmStridedBatchedEx) for the three gate GEMMs: the states i, f, o adjacent in
# one allocation ([3, B, H]), the three weight stacks adjacent ([3, 3H, H]), the outputs adjacent ([3, B, 3H]):
# what storage would have to guarantee; no side-by-side matrix to form, no regrouping of the cell's sums.
ifo3 = rng.standard_normal((3, B, H), dtype=f32)
Wg3 = rng.standard_normal((3, 3 * H, H), dtype=f32)
out3 = cupy.empty((3, B, 3 * H), f32)


def batched3():
    stream = cupy.cuda.get_current_stream().ptr
    stream = stream if stream in LANES else main.ptr
    cublas.gemm_batched(B, 3 * H, H, ifo3.data.ptr, H, False, Wg3.data.ptr, H, True, out3.data.ptr, 3 * H, False,
                        TYPES, stream, LANES[stream], 3, (B * H, 3 * H * H, B * 3 * H))


def h_and_batched3():  # h's GEMM beside the batched one (two streams)
    at_once(lambda: mm(h, Whh, out["g1"]), batched3)


# The backward step: dh = G0 @ R (G0 [B, 4H], k = 4H) and, for each state s of i, f, o, ds = G3 @ R_s (G3 [B, 3H]
# the gate gradients of i, f, o, R_s [3H, H]): four GEMMs on four streams today; the three as one batched call
# (A shared: stride 0; the weight stacks and the outputs adjacent).
G0 = rng.standard_normal((B, 4 * H), dtype=f32)
G3 = rng.standard_normal((B, 3 * H), dtype=f32)
dh, ds3 = cupy.empty((B, H), f32), cupy.empty((3, B, H), f32)


def bmm(a, w, c):  # c[M, N] = a[M, K] @ w[K, N]
    stream = cupy.cuda.get_current_stream().ptr
    (M, K), N = a.shape, w.shape[1]
    cublas.gemm(M, N, K, a.data.ptr, K, False, w.data.ptr, N, False, c.data.ptr, N, False, TYPES, stream,
                LANES[stream])


def bwd_four_streams():
    at_once(lambda: bmm(G0, Whh, dh), *(lambda k=k: bmm(G3, Wg3[k], ds3[k]) for k in range(3)))


def bwd_batched3():
    stream = cupy.cuda.get_current_stream().ptr
    stream = stream if stream in LANES else main.ptr
    cublas.gemm_batched(B, H, 3 * H, G3.data.ptr, 3 * H, False, Wg3.data.ptr, H, False, ds3.data.ptr, H, False,
                        TYPES, stream, LANES[stream], 3, (0, 3 * H * H, B * H))


def bwd_h_and_batched3():
    at_once(lambda: bmm(G0, Whh, dh), bwd_batched3)


Wc_b = rng.standard_normal((3 * H, 3 * H), dtype=f32)  # [R_i. | R_f. | R_o.] side by side: ds = G3 @ Wc_b
ds_c = cupy.empty((B, 3 * H), f32)


def bwd_side_by_side():
    with main:
        bmm(G3, Wc_b, ds_c)


def bwd_h_and_side_by_side():
    at_once(lambda: bmm(G0, Whh, dh), lambda: bmm(G3, Wc_b, ds_c))


def bwd_vanilla():
    with main:
        bmm(G0, Whh, dh)


def vanilla():  # the vanilla LSTM's step GEMM, for scale
    with main:
        mm(h, Whh, out["g1"])


def time_graph(step):
    for _ in range(3):
        step()
    main.synchronize()
    main.begin_capture()
    for _ in range(REP):
        step()
    graph = main.end_capture()
    graph.launch(main)
    main.synchronize()
    times = []
    for _ in range(7):
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record(main)
        graph.launch(main)
        e.record(main)
        e.synchronize()
        times.append(1e3 * cupy.cuda.get_elapsed_time(s, e) / REP)
    return statistics.median(times)


with main:
    mm(h, Whh, out["g1"])
main.synchronize()
assert float(cupy.abs(out["g1"] - h @ Whh.T).max()) < 1e-4 * float(cupy.abs(out["g1"]).max()), "mm is wrong"
print(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cupy", cupy.__version__, f"B={B} H={H}")
with main:
    batched3()
    bwd_batched3()
main.synchronize()
assert float(cupy.abs(out3[1] - ifo3[1] @ Wg3[1].T).max()) < 1e-4 * float(cupy.abs(out3[1]).max()), "batched"
assert float(cupy.abs(ds3[2] - G3 @ Wg3[2]).max()) < 1e-4 * float(cupy.abs(ds3[2]).max()), "bwd batched"
for fn in (vanilla, four_streams, serial4, two_side_by_side, two_streams, one_k2048, k2048_plus_z, batched3,
           h_and_batched3, bwd_vanilla, bwd_four_streams, bwd_batched3, bwd_h_and_batched3,
           bwd_side_by_side, bwd_h_and_side_by_side):
    print(f"{fn.__name__:18s} {time_graph(fn):7.2f} us a step", flush=True)
