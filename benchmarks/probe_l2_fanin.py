"""Probe: how long one round of the exchange's loads takes when every block of a grid reads the same words at
once, as a persistent grid's staging does (stage_exchanged_by: 256 threads, 16 words in flight a thread in
16-byte ld.relaxed.gpu loads), against fewer blocks, fewer words, and the words kept in several copies that
different blocks read (blockIdx % replicas). A question for the exchange's layout, not a schedule: at fp16,
B = 16, H = 256 the staging takes ~2,100 of a step's ~4,100 cycles although no word is late at its first load
(benchmarks/results/probes/generic_step_h200.txt, sections 29-30), and neither half the bytes (section 27) nor
a quarter of the blocks (section 20) shortened the step.

Each round: a grid barrier (an atomic counter, outside the timing), then each block's threads load all the
words (or the block's copy of them) and meet at a block barrier; thread 0 sums the clock64() cycles from
before its loads to after that barrier. With --write each block first stores its share of the words, tagged,
into every copy (as exchange_put stores a step's h), before the grid barrier. Printed: the median and the
slowest block's cycles a round, for each grid size, word count, copies and mode.

    python3 benchmarks/probe_l2_fanin.py [--rounds 200] [--grids 1 16 32 64 128] [--words 1024 2048 4096 8192]
        [--replicas 1 2 4 8 16 128] [--json out.json]   (128 copies: every block its own, no fan-in)
        [--exchange]   (first, the hand-off alone: each round every block stores its share of the words tagged
                        with the round and loads all of them until each carries it, as an exchanging grid's step
                        does without its products and items: the floor of that design's step)

Needs a GPU and CuPy (blocks up to the device's multiprocessors, so that all are resident: the grid barrier
spins). `source()` is the kernel's CUDA text (test_codegen compiles it with nvcc for sm_90).
"""
from __future__ import annotations

import argparse
import json
import statistics

SOURCE = r"""
// a grid barrier (every block resident): thread 0 adds one and waits for the round's count
__device__ __forceinline__ void fanin_barrier(unsigned* count, const unsigned target)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(count, 1u);
        unsigned now = 0;
        do
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(now) : "l"(count) : "memory");
        while (now < target);
    }
    __syncthreads();
}
// the 16-byte load of words e and e + 1 of src (two 64-bit single-copy atomic halves)
__device__ __forceinline__ void load_pair(const unsigned long long* p, unsigned long long& a, unsigned long long& b)
{
    asm volatile("ld.relaxed.gpu.global.v2.u64 { %0, %1 }, [%2];" : "=l"(a), "=l"(b) : "l"(p) : "memory");
}
// one round of a thread's loads from e0: 16 words in flight, eight 16-byte loads blockDim.x pairs apart (the
// staging's pattern); past the words, `fill`
__device__ __forceinline__ void load_round(const unsigned long long* src, const int e0, const int words,
                                           unsigned long long (&w)[16], const unsigned long long fill)
{
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int e = e0 + 2 * k * blockDim.x;
        if (e + 1 < words)
            load_pair(src + e, w[2 * k], w[2 * k + 1]);
        else
            w[2 * k] = fill, w[2 * k + 1] = fill;
    }
}
extern "C" __global__ void __launch_bounds__(256, 1) fanin(unsigned long long* buf, const int words,
                                                            const int replicas, const long long stride,
                                                            const int rounds, const int write, unsigned* count,
                                                            long long* out)
{
    const unsigned long long* const src = buf + (size_t)(blockIdx.x % replicas) * stride;
    const int share = (words + gridDim.x - 1) / gridDim.x, w0 = blockIdx.x * share, w1 = min(words, w0 + share);
    unsigned long long acc = 0;
    long long total = 0;
    for (int r = 0; r < rounds; ++r) {
        if (write)  // the block's share of the words, tagged with the round, into every copy
            for (int e = w0 + threadIdx.x; e < w1; e += blockDim.x)
                for (int q = 0; q < replicas; ++q)
                    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;"
                                 : : "l"(buf + (size_t)q * stride + e), "l"(((unsigned long long)r << 32) | e)
                                 : "memory");
        fanin_barrier(count, (unsigned)(r + 1) * gridDim.x);
        const long long t0 = clock64();
        for (int e0 = 2 * threadIdx.x; e0 < words; e0 += 16 * blockDim.x) {
            unsigned long long w[16];
            load_round(src, e0, words, w, 0);
#pragma unroll
            for (int u = 0; u < 16; ++u) acc += w[u] >> (u & 7);
        }
        __syncthreads();
        total += clock64() - t0;
    }
    if (threadIdx.x == 0)
        out[blockIdx.x] = total;
    if (acc == 0x5eedull)  // (never: keeps the loads)
        out[gridDim.x + blockIdx.x] = (long long)acc;
}
// --exchange: the hand-off alone, as an exchanging grid runs it with no products and no items: at round r each
// block stores its share of the words tagged r into area r & 1, then loads all the words until each carries r
// (the late ones loaded again), and meets its threads at a block barrier. Two areas suffice, as in the kernels
// (pointwise.cu.j2, exchange_put). Thread 0 times all the rounds.
extern "C" __global__ void __launch_bounds__(256, 1) exchange_rounds(unsigned long long* area, const int words,
                                                                      const int rounds, long long* out)
{
    const int share = (words + gridDim.x - 1) / gridDim.x, w0 = blockIdx.x * share, w1 = min(words, w0 + share);
    unsigned long long acc = 0;
    const long long t0 = clock64();
    for (int r = 1; r <= rounds; ++r) {
        unsigned long long* const a = area + (size_t)(r & 1) * words;
        for (int e = w0 + threadIdx.x; e < w1; e += blockDim.x)
            asm volatile("st.relaxed.gpu.global.u64 [%0], %1;"
                         : : "l"(a + e), "l"(((unsigned long long)r << 32) | e) : "memory");
        for (int e0 = 2 * threadIdx.x; e0 < words; e0 += 16 * blockDim.x) {
            unsigned long long w[16];
            load_round(a, e0, words, w, (unsigned long long)r << 32);
            for (;;) {
                bool ready = true;
#pragma unroll
                for (int u = 0; u < 16; ++u) ready = ready && (unsigned)(w[u] >> 32) == (unsigned)r;
                if (ready)
                    break;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const int e = e0 + 2 * k * blockDim.x;
                    if ((unsigned)(w[2 * k] >> 32) != (unsigned)r || (unsigned)(w[2 * k + 1] >> 32) != (unsigned)r)
                        load_pair(a + e, w[2 * k], w[2 * k + 1]);  // (never past the words: those hold r)
                }
            }
#pragma unroll
            for (int u = 0; u < 16; ++u) acc += w[u] >> (u & 7);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0)
        out[blockIdx.x] = clock64() - t0;
    if (acc == 0x5eedull)  // (never: keeps the loads)
        out[gridDim.x + blockIdx.x] = (long long)acc;
}
"""


def source() -> str:
    return SOURCE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--grids", type=int, nargs="*", default=[1, 16, 32, 64, 128])
    ap.add_argument("--words", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--replicas", type=int, nargs="*", default=[1, 2, 4, 8, 16, 128])
    ap.add_argument("--exchange", action="store_true",
                    help="also the hand-off alone: each round every block stores its share and polls all the words")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    import cupy

    kernel = cupy.RawKernel(SOURCE, "fanin", options=("-std=c++17",))
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    rows = []
    if args.exchange:
        rounds = cupy.RawKernel(SOURCE, "exchange_rounds", options=("-std=c++17",))
        print(f"{'grid':>5} {'words':>6} {'KB':>4} | the hand-off alone, cycles a round: median  slowest")
        for grid in (g for g in args.grids if 1 < g <= sms):
            for words in args.words:
                area, out = cupy.zeros(2 * words, cupy.uint64), cupy.zeros(2 * grid, cupy.int64)
                rounds((grid,), (256,), (area, cupy.int32(words), cupy.int32(args.rounds), out))
                cupy.cuda.Device().synchronize()
                per = (out[:grid].get() / args.rounds).tolist()
                row = dict(mode="exchange", grid=grid, words=words, median=statistics.median(per), slowest=max(per))
                rows.append(row)
                print(f"{grid:>5} {words:>6} {words * 8 // 1024:>4} | {row['median']:>35.0f} {row['slowest']:>8.0f}")
    print(f"{'grid':>5} {'words':>6} {'KB':>4} {'copies':>6} {'mode':>5} | cycles a round: median  slowest")
    for grid in args.grids:
        if grid > sms:
            print(f"(grid {grid} skipped: more blocks than the device's {sms} multiprocessors)")
            continue
        for words in args.words:
            for replicas in args.replicas:
                stride = (words + 1023) // 1024 * 1024 + 512  # copies apart by whole KB of words and a half
                buf = cupy.zeros(stride * replicas + 16, cupy.uint64)
                for write in (0, 1):
                    count = cupy.zeros(1, cupy.uint32)
                    out = cupy.zeros(2 * grid, cupy.int64)
                    kernel((grid,), (256,), (buf, cupy.int32(words), cupy.int32(replicas), cupy.int64(stride),
                                             cupy.int32(args.rounds), cupy.int32(write), count, out))
                    cupy.cuda.Device().synchronize()
                    per = (out[:grid].get() / args.rounds).tolist()
                    row = dict(grid=grid, words=words, replicas=replicas, write=bool(write),
                               median=statistics.median(per), slowest=max(per))
                    rows.append(row)
                    print(f"{grid:>5} {words:>6} {words * 8 // 1024:>4} {replicas:>6} {'write' if write else 'read':>5}"
                          f" | {row['median']:>21.0f} {row['slowest']:>8.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
