"""DistributedDataParallel with an lstmdsl.torch module: a few training steps on two processes (each on half
of the batch) end with the same parameters as one process training on the whole batch.

    torchrun --nproc-per-node=2 --standalone tests/ddp_check.py --backend nccl    # two GPUs
    torchrun --nproc-per-node=2 --standalone tests/ddp_check.py --backend gloo    # two CPU processes

Rank 0 prints "DDP OK" and the largest difference. tests/test_torch.py runs the CPU version in CI and the
GPU version where two GPUs are present.
"""

import argparse
import gc
import os

import torch
import torch.distributed as dist

import lstmdsl.torch as lt


class Classifier(torch.nn.Module):
    """An lstmdsl LSTM and a linear head on its last step."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = lt.LSTM(6, 16, 2, dtype=dtype)
        self.head = torch.nn.Linear(16, 3, dtype=dtype)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[-1])


def train(model, batches, part, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, labels in batches:
        loss = torch.nn.functional.cross_entropy(model(x[:, part].to(device)), labels[part].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="nccl", choices=("nccl", "gloo"))
    ap.add_argument("--out", default=".")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
        dtype = torch.float32
    else:
        device, dtype = torch.device("cpu"), torch.float64
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(9, 8 * world, 6, generator=gen, dtype=dtype),
                torch.randint(0, 3, (8 * world,), generator=gen)) for _ in range(args.steps)]

    model = Classifier(dtype).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train(ddp, batches, slice(8 * rank, 8 * (rank + 1)), device)  # each rank: its share of every batch

    if rank == 0:  # one process on the whole batch: DDP averages the ranks' gradients of equal shares
        alone = Classifier(dtype).to(device)
        train(alone, batches, slice(None), device)
        diff = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), alone.parameters()))
        moved = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), Classifier(dtype).to(device).parameters()))
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        print(f"DDP {'OK' if diff <= tol and moved > 1e-3 else 'FAILED'}: {world} processes ({args.backend}, {device.type}) "
              f"against one: largest parameter difference {diff:.2e} after {args.steps} steps (parameters moved "
              f"by up to {moved:.2e})", flush=True)
    # DDP's reducer holds gloo work with tensors: let it go before the group, so no gloo thread still owns
    # Python objects at interpreter exit (a rare SIGABRT at teardown was seen under load otherwise)
    del ddp
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
