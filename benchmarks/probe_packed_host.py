"""Where a pre-packed (PackedSequence) call of the torch module spends its time beyond a padded one's, in fp32
and tf32 (issue 12: a packed batch no slower than the padded one): the event time a caller sees, the GPU's time
alone (timing.time_gpu_only) and the host's time to issue the call, forward and training step; then
torch.profiler's host-side ops of one pre-packed forward, the longest first; also the padded batch with the
module's lengths= (no packing). 2-layer bidirectional vanilla LSTM,
I = H, T = 100, lengths uniform in [T/2, T] (one of them T), lstmdsl.torch.from_torch(cuDNN's). GPU only.

    python3 benchmarks/probe_packed_host.py
"""
import cProfile
import pstats
import statistics
import time

import torch

from bidirectional import packed_case
from lstmdsl.timing import time_gpu, time_gpu_only


def host_ms(fn, repeat=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    torch.cuda.synchronize()
    return statistics.median(times)


def main():
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for B, H, T in ((16, 256, 100), (64, 512, 100)):
            _, ours, x, lengths, pre = packed_case(B, H, T, 2, tf32)
            for name, inp, kw in (("padded", x, {}), ("pre-packed", pre, {}), ("lengths=", x, {"lengths": lengths})):
                def fwd():
                    with torch.no_grad():
                        ours(inp, **kw)

                def train():
                    ours.zero_grad(set_to_none=True)
                    y, _ = ours(inp, **kw)
                    (y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y).sum().backward()
                ours.eval()
                f = (time_gpu(fwd, 20, 3)["ms"], time_gpu_only(fwd, 20, 3)["gpu_ms"], host_ms(fwd))
                ours.train()
                t = (time_gpu(train, 20, 3)["ms"], time_gpu_only(train, 20, 3)["gpu_ms"], host_ms(train))
                print(f"{'tf32' if tf32 else 'fp32'} B={B:3d} H={H} {name:10s} fwd event {f[0]:.3f} gpu {f[1]:.3f} "
                      f"host {f[2]:.3f} | train event {t[0]:.3f} gpu {t[1]:.3f} host {t[2]:.3f}", flush=True)
            if tf32 and B == 16:
                ours.eval()
                with torch.no_grad():
                    for _ in range(3):
                        ours(pre)
                    torch.cuda.synchronize()
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                        for _ in range(10):
                            ours(pre)
                        torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
                cases = ((x, "padded", {}), (pre, "pre-packed", {}), (x, "lengths=", {"lengths": lengths}))
                for inp, name, kw in cases:
                    prof = cProfile.Profile()  # the Python side, lstmdsl's own calls too
                    with torch.no_grad():
                        prof.enable()
                        for _ in range(10):
                            ours(inp, **kw)
                        prof.disable()
                        torch.cuda.synchronize()
                    print(f"cProfile, 10 {name} forwards:", flush=True)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
