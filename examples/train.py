"""Train an SE-ResNet from se_kernels.models on scikit-learn's digits, with DDP under torchrun.

    torchrun --standalone --nproc_per_node=2 examples/train.py --epochs 30 --out runs/digits
    torchrun --standalone --nproc_per_node=2 examples/train.py --resume runs/digits/last.safetensors
    python examples/train.py --epochs 5           # one process, no process group

Data: the 1797 8x8 handwritten digits that ship with scikit-learn (nothing is downloaded),
split 80/20 (stratified, fixed seed), scaled to [0, 1], normalised with the training set's
mean and std and upsampled (bilinear) to --image-size; training batches are shifted by up to
one original pixel (pad and random crop).

Optimiser: the paper's recipe (Section 5.1: synchronous SGD, momentum 0.9, lr 0.6 for a
minibatch of 1024, divided by 10 every 30 of 100 epochs), scaled down: lr = 0.6 * global
batch / 1024 unless --lr is given, a linear warm-up (Goyal et al.) over --warmup-epochs,
divided by 10 at 30%, 60% and 90% of --epochs, weight decay 1e-4 (the ResNets' usual value;
the paper does not state one).

Each step's loss and accuracy (averaged over ranks) go to a progress bar on rank 0 and to
OUT/metrics.jsonl; the test set is evaluated every --eval-every epochs. Checkpoints
(OUT/last.safetensors, after every epoch and at the end) hold the model's state, the SGD
momentum buffers and the step in safetensors metadata; --resume continues from one exactly
where it stopped (the data order and the augmentation are functions of the seed and the step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="se_resnet18", help="a se_kernels.models constructor")
    p.add_argument("--se-backend", default="auto",
                   help="fused_se backend of the SE blocks: auto, reference, cpu, triton, cuda")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps (the schedule still spans --epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; default 0.6 * global batch / 1024 (the paper's)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process; default: CPU cores / local processes")
    p.add_argument("--out", type=Path, default=Path("runs/digits"))
    p.add_argument("--resume", type=Path, default=None, help="a checkpoint to continue from")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between test evaluations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ---- data -----------------------------------------------------------------------------------

def load_digits_split(image_size: int, seed: int = 0):
    """(x_train, y_train, x_test, y_test, (mean, std)): x as (N, 1, S, S) float32, normalised
    with the training set's statistics, upsampled from 8x8 to S x S."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2,
                                           stratify=y.numpy(), random_state=seed)
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean().item(), x_train.std().item()

    def prep(t):
        t = (t - mean) / std
        return F.interpolate(t, size=(image_size, image_size), mode="bilinear",
                             align_corners=False)

    return prep(x_train), y[idx_train], prep(x_test), y[idx_test], (mean, std)


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The shuffled sample order of an epoch: the same on every rank and every resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


def shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero-padded crop), per sample."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    return torch.stack([xp[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(offs.tolist())])


# ---- schedule, checkpoints ------------------------------------------------------------------

def learning_rate(step: int, steps_per_epoch: int, args, peak: float) -> float:
    """Linear warm-up to ``peak``, then /10 at 30%, 60% and 90% of the epochs."""
    warm = args.warmup_epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    epoch = step / steps_per_epoch
    drops = sum(epoch >= f * args.epochs for f in (0.3, 0.6, 0.9))
    return peak * 0.1**drops


def save_checkpoint(path: Path, model, optimizer, step: int, args, norm) -> None:
    """model.* (state dict), optim.momentum.<i> (SGD buffers, parameter order) and metadata."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.momentum.{i}"] = buf.detach().cpu().contiguous().clone()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta = {"step": str(step), "arch": args.arch, "num_classes": "10", "in_channels": "1",
            "image_size": str(args.image_size), "norm": json.dumps(norm),
            "config": json.dumps(config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path):
    """(model state dict, {param index: momentum buffer}, metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    momentum = {int(k.rsplit(".", 1)[1]): v for k, v in tensors.items()
                if k.startswith("optim.momentum.")}
    return state, momentum, meta


def build_model(arch: str, se_backend: str):
    from se_kernels import models

    return models.get_model(arch, num_classes=10, in_channels=1, backend=se_backend)


# ---- training -------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = parse_args(argv)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        rank, world, local, local_world = 0, 1, 0, 1
    device = torch.device(f"cuda:{local}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_world))

    x_train, y_train, x_test, y_test, norm = load_digits_split(args.image_size, args.seed)
    steps_per_epoch = len(y_train) // (args.batch_size * world)
    total = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    peak = args.lr if args.lr is not None else 0.6 * args.batch_size * world / 1024

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP checks)
    model = build_model(args.arch, args.se_backend).to(device)
    start = 0
    momentum = {}
    if args.resume is not None:
        state, momentum, meta = load_checkpoint(args.resume)
        model.load_state_dict(state)
        start = int(meta["step"])
    decay, no_decay = [], []  # no weight decay on BN parameters and biases
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=peak, momentum=args.momentum)
    for i, p in enumerate(decay + no_decay):
        if i in momentum:
            optimizer.state[p]["momentum_buffer"] = momentum[i].to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    def all_sum(*values):
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(t)
        return t.tolist()

    def evaluate():
        model.eval()
        xs, ys = x_test[rank::world].to(device), y_test[rank::world].to(device)
        with torch.no_grad():
            logits = model(xs)
            loss = F.cross_entropy(logits, ys, reduction="sum").item()
            correct = (logits.argmax(1) == ys).sum().item()
        model.train()
        loss, correct, n = all_sum(loss, correct, len(ys))
        return loss / n, correct / n

    out = args.out
    metrics = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        metrics = open(out / "metrics.jsonl", "a")
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, disable=rank != 0 or args.no_progress,
               desc=f"{args.arch} x{world}", unit="step", dynamic_ncols=True)
    history = {"loss": [], "acc": [], "test": []}
    model.train()
    t0, step = time.time(), start
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        order = epoch_order(len(y_train), epoch, args.seed)
        per_rank = order[: steps_per_epoch * args.batch_size * world][rank::world]
        for b in range(first, steps_per_epoch):
            if step >= total:
                break
            idx = per_rank[b * args.batch_size:(b + 1) * args.batch_size]
            gen = torch.Generator().manual_seed((args.seed * 7919 + step) * 64 + rank)
            xb = shift(x_train[idx], args.image_size // 8, gen).to(device)
            yb = y_train[idx].to(device)
            lr = learning_rate(step, steps_per_epoch, args, peak)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum, correct, n = all_sum(loss.item() * len(yb),
                                           (logits.argmax(1) == yb).sum().item(), len(yb))
            rec = {"step": step, "epoch": epoch, "lr": lr, "loss": loss_sum / n,
                   "acc": correct / n}
            history["loss"].append(rec["loss"])
            history["acc"].append(rec["acc"])
            if rank == 0:
                metrics.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.2f}",
                                lr=f"{lr:.3g}")
            bar.update(1)
        end_of_epoch = step % steps_per_epoch == 0
        if (end_of_epoch and (step // steps_per_epoch) % args.eval_every == 0) or step >= total:
            test_loss, test_acc = evaluate()
            rec = {"eval": True, "step": step, "epoch": step / steps_per_epoch,
                   "test_loss": test_loss, "test_acc": test_acc,
                   "elapsed_s": round(time.time() - t0, 1)}
            history["test"].append(rec)
            if rank == 0:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                bar.write(f"epoch {rec['epoch']:.2f}  step {step}  test loss {test_loss:.4f}  "
                          f"test acc {test_acc:.4f}")
        if rank == 0 and (end_of_epoch or step >= total):
            save_checkpoint(out / "last.safetensors", model, optimizer, step, args, norm)
        if distributed:
            dist.barrier()
    bar.close()
    if rank == 0:
        metrics.close()
    if distributed:
        dist.destroy_process_group()
    return history


if __name__ == "__main__":
    main(sys.argv[1:])
