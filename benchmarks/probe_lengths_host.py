"""Where the torch module's `lengths=` call spends its host time beyond the padded call's (issue 12: a
variable-length batch no slower than the padded one), 2-layer bidirectional vanilla LSTM, I = H, T = 100, lengths
uniform in [T/2, T] (bidirectional.packed_case). GPU only. Three sections:

- alternating: padded and lengths= calls in turn (the order swapped each round), each after a synchronize: the
  host's time to issue the call and the call's wall time, medians of 55 rounds after 5, fp32 and tf32, forward
  and training, at 16 x 256 and 64 x 512 (taking turns keeps a host whose speed drifts from favouring either);
- profile: cProfile of 50 forwards of each at 16 x 256 (fp32), each after a synchronize, and the functions whose
  cumulative time differs most between the two, per call;
- parts: the host time of the pieces of lengths= outside the runtime (length_mask, its copy, the padding zeroed,
  the output masked), 300 calls each without synchronizing;
- issue: when the runtime issues its GPU work within a forward (no grad), padded and lengths= in turn after a
  synchronize: the host's time from the call to the runtime's first launch or copy, to the first on a second stream
  (the other direction's, pair.py), to its last, and how many, medians of 40 rounds after 5 (the GPU waits for the
  host until the first; the second direction's start waits for the second).

    python3 benchmarks/probe_lengths_host.py [alternating] [profile] [parts] [issue]
"""
import cProfile
import pstats
import statistics
import sys
import time

import torch

from bidirectional import packed_case
from lstmdsl.torch.packing import length_mask


def alternating():
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for B, H in ((16, 256), (64, 512)):
            _, ours, x, lengths, _ = packed_case(B, H, 100, 2, tf32)
            for mode in ("fwd", "train"):
                ours.train(mode == "train")

                def call(kw):
                    if mode == "fwd":
                        with torch.no_grad():
                            ours(x, **kw)
                    else:
                        ours.zero_grad(set_to_none=True)
                        y, _ = ours(x, **kw)
                        y.sum().backward()
                ways = {"padded": {}, "lengths": {"lengths": lengths}}
                host, wall = {k: [] for k in ways}, {k: [] for k in ways}
                for i in range(60):
                    for k, kw in (ways.items() if i % 2 else reversed(list(ways.items()))):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        call(kw)
                        t1 = time.perf_counter()
                        torch.cuda.synchronize()
                        t2 = time.perf_counter()
                        if i >= 5:
                            host[k].append(1e3 * (t1 - t0))
                            wall[k].append(1e3 * (t2 - t0))
                m = {k: (statistics.median(host[k]), statistics.median(wall[k])) for k in ways}
                print(f"{'tf32' if tf32 else 'fp32'} {B}x{H} {mode:5s} padded host {m['padded'][0]:.3f} wall "
                      f"{m['padded'][1]:.3f} | lengths= host {m['lengths'][0]:.3f} wall {m['lengths'][1]:.3f} | "
                      f"ratio wall {m['lengths'][1] / m['padded'][1]:.2f}", flush=True)


def profile():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    _, ours, x, lengths, _ = packed_case(16, 256, 100, 2, False)
    ours.eval()
    stats = {}
    for kw, name in (({}, "padded"), ({"lengths": lengths}, "lengths")):
        with torch.no_grad():
            for _ in range(5):
                ours(x, **kw)
            p = cProfile.Profile()
            for _ in range(50):
                torch.cuda.synchronize()
                p.enable()
                ours(x, **kw)
                p.disable()
            torch.cuda.synchronize()
        stats[name] = pstats.Stats(p).stats
    a, b = stats["padded"], stats["lengths"]
    rows = []
    for k in set(a) | set(b):
        ca, cb = a.get(k, (0, 0, 0, 0)), b.get(k, (0, 0, 0, 0))
        rows.append((cb[3] - ca[3], cb[2] - ca[2], ca[1], cb[1], k))
    rows.sort(key=lambda r: -abs(r[0]))
    for dc, dt, na, nb, k in rows[:28]:
        print(f"cum {1e6 * dc / 50:8.1f} us  tot {1e6 * dt / 50:7.1f} us  calls {na / 50:5.1f}->{nb / 50:5.1f}  "
              f"{k[0].split('/')[-1]}:{k[1]}({k[2]})")


def parts():
    T, B = 100, 16
    lengths = torch.randint(50, 101, (B,))
    x = torch.randn(T, B, 256, device="cuda")

    def t(name, fn, n=300):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        print(f"{name:34s} {1e6 * (t1 - t0) / n:7.1f} us host/call", flush=True)
    cpu_mask = (torch.arange(T)[:, None] < lengths[None, :]).float().unsqueeze(2)
    t("host build (arange<,float,unsq)",
      lambda: (torch.arange(T)[:, None] < lengths[None, :]).to(torch.float32).unsqueeze(2))
    t("pin_memory", lambda: cpu_mask.pin_memory())
    pinned = cpu_mask.pin_memory()
    t("to(cuda, non_blocking) pinned", lambda: pinned.to("cuda", non_blocking=True))
    t("pin+to", lambda: cpu_mask.pin_memory().to("cuda", non_blocking=True))
    t("length_mask whole", lambda: length_mask(lengths, T, B, x.device, torch.float32))
    t("length_mask list", lambda: length_mask(lengths.tolist(), T, B, x.device, torch.float32))
    m = length_mask(lengths, T, B, x.device, torch.float32)
    t("masked_fill(mask==0)", lambda: x.masked_fill(m == 0, 0))
    t("y*mask", lambda: x * m)
    ar = torch.arange(T, device="cuda")[:, None]
    t("gpu build from pinned lengths",
      lambda: (ar < lengths.pin_memory().to("cuda", non_blocking=True)[None, :]).float().unsqueeze(2))
    t("torch.empty cuda", lambda: torch.empty(T, B, 1, device="cuda"))


def issue():
    from lstmdsl.runtime import cublas, cublaslt, device

    events = []  # (host time, stream) of each piece of GPU work the runtime issues

    def wrap(fn):
        def recorded(*args, **kw):
            events.append((time.perf_counter(), kw.get("stream", args[-1] if args else None)))
            return fn(*args, **kw)
        return recorded
    for module, name in ((device, "launch"), (device, "launch_cooperative"), (device, "copy_rows"), (device, "zero"),
                         (device, "zero_rows"), (device.Graph, "launch"), (cublas, "_gemm"), (cublaslt, "run")):
        setattr(module, name, wrap(getattr(module, name)))
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for B, H in ((16, 256), (64, 512)):
            _, ours, x, lengths, _ = packed_case(B, H, 100, 2, tf32)
            ours.eval()
            ways = {"padded": {}, "lengths": {"lengths": lengths}}
            rows = {k: [] for k in ways}
            with torch.no_grad():
                for i in range(45):
                    for k, kw in (ways.items() if i % 2 else reversed(list(ways.items()))):
                        torch.cuda.synchronize()
                        events.clear()
                        t0 = time.perf_counter()
                        ours(x, **kw)
                        t1 = time.perf_counter()
                        first_stream = events[0][1]
                        second = next((t for t, s in events if s != first_stream), t1)
                        if i >= 5:
                            rows[k].append((events[0][0] - t0, second - t0, events[-1][0] - t0, t1 - t0,
                                            len(events)))
            med = {k: [statistics.median(r[j] for r in v) for j in range(5)] for k, v in rows.items()}
            for k, (first, second, last, whole, n) in med.items():
                print(f"{'tf32' if tf32 else 'fp32'} {B}x{H} {k:8s} first {1e6 * first:6.0f} us  second stream "
                      f"{1e6 * second:6.0f} us  last {1e6 * last:6.0f} us  call {1e6 * whole:6.0f} us  pieces {n:4.0f}",
                      flush=True)


if __name__ == "__main__":
    for section in sys.argv[1:] or ["alternating", "profile", "parts", "issue"]:
        {"alternating": alternating, "profile": profile, "parts": parts, "issue": issue}[section]()
