"""Where a packed bidirectional batch spends its time in lstmdsl.torch, against the padded one: host time
to issue a training step, GPU time, and torch.profiler's top CUDA kernels (a diagnostic, GPU only).

    python3 benchmarks/packed_profile.py [--batch 16] [--hidden 256] [--steps 100]
"""
import argparse
import time

import torch

import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--hidden", type=int, default=256)
ap.add_argument("--steps", type=int, default=100)
args = ap.parse_args()
B, H, T = args.batch, args.hidden, args.steps
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
ref = torch.nn.LSTM(H, H, 2, bidirectional=True).cuda()
ours = lt.from_torch(ref)
x = torch.randn(T, B, H, device="cuda", requires_grad=True)
lengths = torch.randint(T // 2, T + 1, (B,))
lengths[0] = T
for batch in ("padded", "packed", "packed-sorted"):
    def inputs():
        if batch == "padded":
            return x
        return torch.nn.utils.rnn.pack_padded_sequence(x, lengths.sort(descending=True)[0] if batch == "packed-sorted"
                                                       else lengths, enforce_sorted=batch == "packed-sorted")

    def train():
        y, _ = ours(inputs())
        (y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y).sum().backward()

    def fwd():
        with torch.no_grad():
            ours(inputs())
    for _ in range(3):
        train()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        train()
    host = (time.perf_counter() - t0) / 10 * 1e3
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        fwd()
    host_f = (time.perf_counter() - t0) / 10 * 1e3
    g, f = time_gpu(train, 10, 3), time_gpu(fwd, 10, 3)
    print(f"{batch}: train {g['ms']:.3f} ms GPU, host issue {host:.3f} ms; forward {f['ms']:.3f} ms, host {host_f:.3f}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            train()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60))
