"""A warm start of the CUDA backend renders no source (without a GPU): the kernels compiled for a launch's shape
(runtime/specialise.py) are read from the disk cache like the program's, so a second process's compile and first
forward import no jinja2. Run with LSTMDSL_CACHE set to an empty folder; exits 1 on a failure."""

import os
import subprocess
import sys

if len(sys.argv) > 1:  # one process's compile and forward: prints the jinja2 import and the special launches
    import simrt  # noqa: F401 (sets up the fake CuPy)

    import cupy
    import lstmdsl
    from lstmdsl.runtime import nvrtc

    layer = lstmdsl.compile(lstmdsl.parse("vanilla"), input_size=5, hidden_size=6, backend="cuda",
                            schedule="persistent; specialise")
    layer.forward(cupy.zeros((3, 2, 5), dtype=cupy.float32), train=False)
    nvrtc.settle()
    print("jinja2" in sys.modules, len(simrt.SPECIAL))
    sys.exit(0)

runs = [subprocess.run([sys.executable, __file__, "run"], capture_output=True, text=True) for _ in range(2)]
for r in runs:
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        sys.exit(1)
(cold_jinja, cold_special), (warm_jinja, warm_special) = (r.stdout.split()[-2:] for r in runs)
ok = cold_jinja == "True" and warm_jinja == "False" and int(cold_special) > 0 and warm_special == cold_special
print(f"cold: jinja2 imported {cold_jinja}, {cold_special} special launches; warm: jinja2 imported {warm_jinja}, "
      f"{warm_special} special launches | {'OK' if ok else 'BAD'}")
sys.exit(0 if ok else 1)
