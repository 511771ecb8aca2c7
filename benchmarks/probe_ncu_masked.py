"""ncu driver (fifty-seventh session: benchmarks/results/probes/ncu_masked_h100.txt): one no-grad forward of the
2-layer bidirectional vanilla module (fp32, B = 16, H = 256, T = 100), padded or pre-packed, inside cudaProfilerStart/Stop after warm-up calls, so that
`ncu --profile-from-start off -k regex:persistent` profiles its four persistent kernels (layer 1 and 2, both
directions; ncu runs them one at a time).
    ncu --profile-from-start off --set full --import-source no -k regex:persistent -f -o /tmp/ncu_MODE \
        python3 benchmarks/probe_ncu_masked.py MODE          # MODE: padded or pre-packed
    ncu --import /tmp/ncu_MODE.ncu-rep --print-summary per-kernel"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bidirectional import packed_case  # noqa: E402

mode = sys.argv[1]
_, ours, x, lengths, pre = packed_case(16, 256, 100, 2, False)
inp = x if mode == "padded" else pre
with torch.no_grad():
    for _ in range(3):
        ours(inp)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    ours(inp)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
print(mode, "done")
