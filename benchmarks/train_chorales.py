"""Train on the JSB-like chorales: lstmdsl's vanilla and peephole specs on the GPU, and torch.nn.LSTM
(cuDNN) trained the same way as the baseline for the vanilla cell.

    python3 benchmarks/train_chorales.py [--epochs 30] [--hidden 256] [--lr 3e-3] [--batch 32]
                                         [--specs vanilla peephole zoneout_lstm ...] [--update-results]
                                         [--precisions fp32 bf16 fp16] [--name train_chorales_precision]

Same data (lstmdsl.data.chorales), same batches in the same order (lengths padded to multiples of 32
frames and masked), Adam, global-norm clipping at 1.0, forget-gate bias 1.0, a dense sigmoid output,
binary cross-entropy; strict fp32 (TF32 off) everywhere, except lstmdsl's runs at the other --precisions
(bf16, fp16: mixed precision, float32 master weights; the cuDNN baseline stays fp32). Reports validation NLL per frame after each
epoch, test NLL per frame at the end and wall time per training epoch (median). Writes
NAME.json, .md and .png (--name, default train_chorales; and each run's folder) into benchmarks/out, or into
benchmarks/results with --update-results. The spec's own regularisers (zoneout_lstm, recurrent_dropout)
are active in training only; validation and test use their expectations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from lstmdsl.train import TrainConfig, _Task, run

HERE = Path(__file__).resolve().parent


def torch_baseline(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    task = _Task("chorales", None)
    P, H = task.input_size, cfg.hidden_size
    lstm = torch.nn.LSTM(P, H).cuda()
    head = torch.nn.Linear(H, P).cuda()
    with torch.no_grad():  # one bias per gate, forget gate at 1.0, as the lstmdsl runs
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0[H:2 * H] = cfg.forget_bias
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)

    def nll(split_or_batch, train: bool):
        x, target, mask = split_or_batch
        x, target, mask = (torch.as_tensor(a).cuda() for a in (x, target, mask))
        logits = head(lstm(x)[0])
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        frames = mask.sum()
        loss = (per * mask[..., None]).sum() / (frames * P)
        return loss, float(loss) * float(frames) * P, float(frames)

    def evaluate(split):
        total = count = 0.0
        with torch.no_grad():
            n = task.count(split)
            for start in range(0, n, cfg.batch):
                _, num, den = nll(task.batch(split, np.arange(start, min(n, start + cfg.batch))), False)
                total, count = total + num, count + den
        return total / count

    n = task.count("train")
    history = []
    for epoch in range(1, cfg.epochs + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        order = rng.permutation(n)
        total = count = 0.0
        for k in range(0, n, cfg.batch):
            loss, num, den = nll(task.batch("train", order[k:k + cfg.batch]), True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            total, count = total + num, count + den
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train": total / count, "valid": evaluate("valid"), "seconds": seconds})
        print(f"torch epoch {epoch}: train {total / count:.3f} valid {history[-1]['valid']:.3f} {seconds:.2f} s",
              flush=True)
    return {"history": history, "test": evaluate("test"),
            "seconds_per_epoch": float(np.median([h["seconds"] for h in history]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--specs", nargs="+", default=["vanilla", "peephole"], help="lstmdsl specs to train")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "tf32", "bf16", "fp16"),
                    help="lstmdsl's precisions (each spec is trained at each)")
    ap.add_argument("--name", default="train_chorales", help="the results' file name")
    ap.add_argument("--update-results", action="store_true",
                    help="write into benchmarks/results (the committed figures) instead of benchmarks/out")
    args = ap.parse_args()
    RESULTS = HERE / ("results" if args.update_results else "out")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    base = TrainConfig(spec="vanilla", task="chorales", epochs=args.epochs, hidden_size=args.hidden, lr=args.lr,
                       batch=args.batch, backend="cuda", clip=1.0, forget_bias=1.0, seed=0)
    runs = {}
    for spec in args.specs:
        for precision in args.precisions:
            cfg = dataclasses.replace(base, spec=spec, precision=precision)
            key = f"lstmdsl {spec}" + (f" {precision}" if precision != "fp32" else "")
            folder = f"{args.name}_{spec}" + (f"_{precision}" if precision != "fp32" else "")
            runs[key] = run(cfg, RESULTS / folder, log=None)
            r = runs[key]
            print(f"{key}: test NLL {r['test']:.3f}, {r['seconds_per_epoch']:.2f} s/epoch", flush=True)
    runs["torch.nn.LSTM (cuDNN) vanilla"] = torch_baseline(base)
    RESULTS.mkdir(exist_ok=True)
    meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
            "config": dataclasses.asdict(base), "precision": "fp32 (TF32 off)"}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "runs": {k: {kk: vv for kk, vv in v.items() if kk != "config"} for k, v in runs.items()}},
        indent=2) + "\n")
    lines = [f"# JSB-like chorales, next-frame prediction: H = {args.hidden}, {args.epochs} epochs, Adam lr {args.lr}, "
             f"batch {args.batch}, fp32 unless the model says otherwise", "",
             f"`python3 benchmarks/train_chorales.py --epochs {args.epochs} --hidden {args.hidden} --lr {args.lr} "
             f"--batch {args.batch} --specs {' '.join(args.specs)} --precisions {' '.join(args.precisions)}"
             + (f" --name {args.name}" if args.name != "train_chorales" else "") + f"` on {meta['gpu']}, torch {meta['torch']}, cuDNN {meta['cudnn']}.", "",
             "| model | best valid NLL/frame | test NLL/frame (last epoch) | seconds per training epoch (median) |",
             "|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {min(h['valid'] for h in r['history']):.3f} | {r['test']:.3f} | "
                     f"{r['seconds_per_epoch']:.2f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in runs.items():
        ax.plot([h["epoch"] for h in r["history"]], [h["valid"] for h in r["history"]], label=f"{name}, valid")
        ax.plot([h["epoch"] for h in r["history"]], [h["train"] for h in r["history"]], linestyle=":",
                label=f"{name}, train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL per frame (nats)")
    ax.set_title(f"JSB-like chorales, H = {args.hidden}, {meta['gpu']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)


if __name__ == "__main__":
    main()
