"""Half precision at hidden sizes that are not multiples of 8: lstmdsl's vanilla cell against cuDNN at
H = 500, 504, 508, 512 (B = 16 and 256, T = 100, one layer), bf16 and fp16, forward and training.

    python3 benchmarks/alignment.py

Prints one line per case. The committed results (benchmarks/results/alignment_h200.{json,md}) are two
runs of it, before and after half-precision storage was aligned to 16 bytes (Storage.align).
"""
import lstmdsl
from lstmdsl.bench import bench_case

spec = lstmdsl.parse("vanilla")
for p in ("bf16", "fp16"):
    for B in (16, 256):
        for H in (500, 504, 508, 512):
            for mode in ("forward", "train"):
                r = bench_case(spec, B, H, 100, 1, mode, p, 7, ("lstmdsl", "cudnn"))
                res = r["results"]
                print(f"{p} B={B} H={H} {mode}: lstmdsl {res['lstmdsl']['ms']:.3f} ms "
                      f"({res['lstmdsl']['ms'] * 512 / H:.3f} per 512) cuDNN {res['cudnn']['ms']:.3f}", flush=True)
