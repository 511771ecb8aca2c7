"""ncu driver: one no-grad forward of a shipped spec's layer (one layer, T = 100, float32) under a schedule that runs
the persistent kernel, inside cudaProfilerStart/Stop after warm-up calls, so that ncu profiles that launch only:

    ncu --profile-from-start off --set full --import-source no -k regex:persistent -c 1 -f -o /tmp/p \
        python3 benchmarks/probe_ncu_persistent.py fgr 64 512 ["precision fp32; persistent; no specialise"]
    ncu --import /tmp/p.ncu-rep --page source --csv --print-source sass > /tmp/sass.csv
    python3 benchmarks/ncu_summary.py /tmp/sass.csv --top 12       # where the warps wait (needs no GPU)
    ncu --import /tmp/p.ncu-rep --print-summary per-kernel

For FGR's products at B = 64 (issue 14: 1.52x cuDNN's vanilla forward at 64 x 512, fp32): whether shared memory's
loads bound them, as estimated (benchmarks/trials/README.md), before more tiling work. Needs a GPU and CuPy."""
import sys

import lstmdsl
from lstmdsl import api
from lstmdsl.errors import LstmdslError


def main() -> None:
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    name, B, H = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    schedule = sys.argv[4] if len(sys.argv) > 4 else "precision fp32; persistent; no specialise"
    try:
        import cupy
        from lstmdsl.runtime import nvrtc
        spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()[name].read_text())
        layer = api.compile(spec, H, H, 1, backend="cuda", schedule=schedule, seed=0)
    except (ImportError, LstmdslError, KeyError) as e:
        sys.exit(f"probe_ncu_persistent.py: {e}")
    x = cupy.random.standard_normal((100, B, H), dtype=cupy.float32)
    for _ in range(3):
        layer.forward(x, train=False)
    nvrtc.settle()  # (a kernel compiled for the shape on a thread: in use from the next call)
    layer.forward(x, train=False)
    cupy.cuda.Device().synchronize()
    cupy.cuda.runtime.profilerStart()
    layer.forward(x, train=False)
    cupy.cuda.Device().synchronize()
    cupy.cuda.runtime.profilerStop()
    print(name, B, H, schedule, "profiled")


if __name__ == "__main__":
    main()
