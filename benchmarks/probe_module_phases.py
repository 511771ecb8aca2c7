"""Where the torch module's training step spends the host's time, by phase (the vanilla LSTM, T = 100, one
layer, fp32, medians of 50 steps, us): the module's call up to Eager.forward, Eager.forward (forward_impl: the
runtime's work), back to the caller; y.sum(); backward() up to EagerBackward, EagerBackward (backward_impl),
back to the caller (AccumulateGrad among it); with the parameters' gradients accumulated over the steps or
set to None before each (zero_grad(set_to_none=True), as a training loop), x wanting a gradient or not.

    python3 benchmarks/probe_module_phases.py B H

Needs a GPU, CuPy and torch."""
import statistics, sys, time
import torch
import lstmdsl.torch as lt
from lstmdsl.torch import ops
B, H = int(sys.argv[1]), int(sys.argv[2])
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
m = lt.LSTM(H, H, 1).cuda()
marks = {}
f0, b0 = ops.Eager.forward, ops.Eager.backward
def fwd(ctx, *a):
    marks["f_in"] = time.perf_counter(); r = f0(ctx, *a); marks["f_out"] = time.perf_counter(); return r
def bwd(ctx, *a):
    marks["b_in"] = time.perf_counter(); r = b0(ctx, *a); marks["b_out"] = time.perf_counter(); return r
ops.Eager.forward, ops.Eager.backward = staticmethod(fwd), staticmethod(bwd)
for xgrad in (True, False):
    x = torch.randn(100, B, H, device="cuda", requires_grad=xgrad)
    for none in (False, True):
        rows = {}
        for i in range(60):
            if none:
                m.zero_grad(set_to_none=True); x.grad = None
            torch.cuda.synchronize()
            t0 = time.perf_counter(); y, _ = m(x); t1 = time.perf_counter()
            loss = y.sum(); t2 = time.perf_counter(); loss.backward(); t3 = time.perf_counter()
            if i < 10:
                continue
            for k, v in (("call->Eager.forward", marks["f_in"] - t0),
                         ("Eager.forward", marks["f_out"] - marks["f_in"]),
                         ("Eager.forward->return", t1 - marks["f_out"]), ("y.sum()", t2 - t1),
                         ("backward()->EagerBackward", marks["b_in"] - t2),
                         ("EagerBackward", marks["b_out"] - marks["b_in"]),
                         ("EagerBackward->return", t3 - marks["b_out"]), ("step", t3 - t0)):
                rows.setdefault(k, []).append(v)
        print(f"x.requires_grad={xgrad} grads set to None each step={none}: " +
              ", ".join(f"{k} {1e6 * statistics.median(v):.0f}" for k, v in rows.items()) + " (us)")
