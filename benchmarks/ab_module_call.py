"""A/B of two source trees through the torch module, by the call: the vanilla LSTM's training step (forward and
backward of y.sum(), T = 100, one layer; x wanting a gradient or not) at 1 x 512 fp32, 16 x 256 fp32 and fp16, timed
with CUDA events around the call (timing.time_gpu, the host's time to issue it beside), each tree in its own
process, alternated `rounds` times (default 3); medians over the rounds.

    python3 benchmarks/ab_module_call.py OLD_TREE NEW_TREE [rounds]

A tree is a folder holding the lstmdsl package (`git archive REV lstmdsl grammars templates specs | tar -x -C DIR`).
Needs a GPU, CuPy and torch. (benchmarks/ab_torch_module.py compares GPU time alone at T = 1000.)"""
import json, os, statistics, subprocess, sys
PROBE = r'''
import json, torch
import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
out = {}
for B, H, prec in ((1, 512, "fp32"), (16, 256, "fp32"), (16, 256, "fp16")):
    m = lt.LSTM(H, H, 1, schedule=f"precision {prec}").cuda()
    for grad in (True, False):
        x = torch.randn(100, B, H, device="cuda", requires_grad=grad)
        def train():
            y, _ = m(x)
            y.sum().backward()
        r = time_gpu(train, 40, 5)
        out[f"{B}x{H} {prec} x.grad={grad}"] = (r["ms"], r["host_ms"])
print("RESULT" + json.dumps(out))
'''
trees, rounds = sys.argv[1:3], int(sys.argv[3]) if len(sys.argv) > 3 else 3
res = {t: [] for t in trees}
for _ in range(rounds):
    for t in trees:
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(t)] + rest))
        r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd="/tmp")
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
        if not line:
            print(r.stderr[-2000:]); sys.exit(1)
        res[t].append(json.loads(line[0][6:]))
print(f"{'case':28} | ms by the call: " + " ".join(trees) + " | host ms: the same")
for case in res[trees[0]][0]:
    ms = [statistics.median(r[case][0] for r in res[t]) for t in trees]
    host = [statistics.median(r[case][1] for r in res[t]) for t in trees]
    print(f"{case:28} | " + " ".join(f"{v:.3f}" for v in ms) + f" {ms[1] / ms[0]:.2f}x | "
          + " ".join(f"{v:.3f}" for v in host) + f" {host[1] / host[0]:.2f}x")
