"""Train the EuroSAT CNN with FSDP2: every rank keeps 1/N of the parameters, gradients and Adam state.

    torchrun --standalone --nproc-per-node 2 fsdp_train.py                 # the prepared dataset
    torchrun --standalone --nproc-per-node 2 fsdp_train.py --synthetic 512 --epochs 1   # in memory, no files
    torchrun --standalone --nproc-per-node 2 fsdp_train.py --no-reshard-after-forward  # ZeRO-2 style

Every rank runs this whole file. Only the places marked "FSDP" differ from the
DDP script of notebook 04. Rank 0 alone logs and writes the metrics JSON.

The course's check `fsdp.train` imports this file and calls main([...]) with
--synthetic N, then trains DDP on the same data in the same processes and
compares: bytes held per rank, losses and parameters. So main() must take its
arguments from `argv`.
"""
import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from eurosat.data import describe, load_splits, synthetic_tensors
from eurosat.model import EuroSATNet
from eurosat.train import train_one_epoch

from fsdp_parts import save_full_checkpoint, shard_model

log = logging.getLogger("fsdp_train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per rank: the global batch is this times the ranks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=16, help="channels of the first conv block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only this many images of the prepared dataset")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="train on N synthetic images generated in memory (no dataset files needed)")
    p.add_argument("--reshard-after-forward", action=argparse.BooleanOptionalAction, default=True,
                   help="free gathered parameters after forward (ZeRO-3) or keep them until backward (ZeRO-2)")
    p.add_argument("--metrics", default="fsdp_metrics.json", help="JSON file rank 0 writes at the end")
    p.add_argument("--checkpoint", default="checkpoints/fsdp_eurosat.pt")
    return p.parse_args(argv)


def load_data(args) -> tuple:
    """(train set, validation set, one line saying which data): the same on every rank."""
    if args.synthetic:
        images, labels = synthetic_tensors(args.synthetic, seed=args.seed)
        val_images, val_labels = synthetic_tensors(max(args.synthetic // 4, 16), seed=args.seed + 1)
        mean, std = images.mean(dim=(0, 2, 3), keepdim=True), images.std(dim=(0, 2, 3), keepdim=True)
        train, val = TensorDataset((images - mean) / std, labels), TensorDataset((val_images - mean) / std, val_labels)
        return train, val, f"Dataset: synthetic EuroSAT-like, in memory: train {len(train)} / val {len(val)}"
    splits = load_splits(seed=args.seed, limit=args.limit)
    return splits.train, splits.val, describe(splits)


def setup() -> torch.device:
    """Join the process group torchrun describes (as in notebook 04); return this rank's device."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)   # the default CUDA mesh and NCCL use the current device
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Bytes this rank holds for parameters, gradients and optimizer state: its shards only."""
    def size(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"params": sum(size(p) for p in params),
            "grads": sum(size(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(size(v) for v in state)}


def global_mean(value: float, weight: float, device) -> float:
    """The weighted mean of a per-rank value over all ranks (sum, then divide)."""
    t = torch.tensor([value * weight, weight], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t[0] / t[1]).item()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device) -> tuple[float, float]:
    """(accuracy, number of images) on this rank's share of the validation set."""
    model.eval()
    correct, total = 0, 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += (logits.argmax(dim=1) == labels.to(device)).sum().item()
        total += len(labels)
    model.train()
    return correct / max(total, 1), total


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = setup()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    logging.basicConfig(format=f"[rank {rank}] %(message)s", force=True,
                        level=logging.INFO if rank == 0 else logging.WARNING)   # only rank 0 talks
    try:
        train_set, val_set, about = load_data(args)
        log.info("%s; %d rank(s), %d images per rank per step", about, world_size, args.batch_size)
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
        train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
        # Every forward all-gathers parameters, so every rank must run the same number of batches:
        # the padded DistributedSampler (not an exact split) gives every rank as many images.
        val_loader = DataLoader(val_set, batch_size=256, sampler=DistributedSampler(val_set, shuffle=False))

        # The same initial weights on every rank: fully_shard keeps this rank's slice of its own
        # copy (nothing is broadcast from rank 0, unlike DDP), so the copies must agree.
        torch.manual_seed(args.seed)
        model = EuroSATNet(width=args.width)
        # FSDP 1: shard the model with your shard_model, passing args.reshard_after_forward on.
        ### BEGIN SOLUTION
        model = shard_model(model, reshard_after_forward=args.reshard_after_forward)
        ### END SOLUTION
        # FSDP 2: `optimizer` = Adam over the model's parameters, learning rate args.lr.
        ### BEGIN SOLUTION
        # After sharding: fully_shard replaced every parameter with a sharded DTensor, and Adam
        # must hold (and build its two moments for) those shards, not the old full tensors.
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        ### END SOLUTION
        loss_fn = nn.CrossEntropyLoss()

        history, start = [], time.perf_counter()
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            stats = train_one_epoch(model, train_loader, loss_fn, optimizer, device,
                                    progress=rank == 0, desc=f"epoch {epoch + 1}/{args.epochs}")
            train_loss = global_mean(stats.loss, stats.images, device)
            val_accuracy = global_mean(*evaluate(model, val_loader, device), device)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_accuracy": val_accuracy,
                            "images_per_sec": stats.images_per_sec * world_size})
            log.info("epoch %d: train loss %.3f, val accuracy %.1f%%, %.0f images/s on %d rank(s)",
                     epoch + 1, train_loss, 100 * val_accuracy, stats.images_per_sec * world_size, world_size)

        held = [None] * world_size                       # what each rank holds, for the bar chart
        dist.all_gather_object(held, local_bytes(model, optimizer))
        Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
        # FSDP 3: write the full, unsharded weights to args.checkpoint (every rank calls your function).
        ### BEGIN SOLUTION
        save_full_checkpoint(model, args.checkpoint)
        ### END SOLUTION
        metrics = {"world_size": world_size, "seconds": time.perf_counter() - start, "epochs": history,
                   "bytes_per_rank": held, "reshard_after_forward": args.reshard_after_forward}
        if rank == 0:                                    # one writer for the metrics too
            Path(args.metrics).write_text(json.dumps(metrics, indent=2))
            log.info("per rank: %s MiB of parameters, gradients and Adam state; wrote %s and %s",
                     " / ".join(f"{sum(h.values()) / 2**20:.2f}" for h in held), args.metrics, args.checkpoint)
        return metrics
    finally:
        dist.destroy_process_group()                     # leave no group behind


if __name__ == "__main__":
    main()
