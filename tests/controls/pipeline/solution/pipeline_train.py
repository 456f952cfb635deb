"""Train the EuroSAT CNN with pipeline parallelism: one stage per rank, each batch split into microbatches.

    torchrun --standalone --nproc-per-node 2 pipeline_train.py --microbatches 4
    torchrun --standalone --nproc-per-node 2 pipeline_train.py --microbatches 1    # no overlap: the baseline
    torchrun --standalone --nproc-per-node 2 pipeline_train.py --data synthetic --limit 400   # in memory

Every rank runs this whole file and reads the same batches in the same order; the first stage
feeds the images, the last stage the labels. At the end every rank saves its stage with
torch.distributed.checkpoint, and the last rank reassembles the whole model to evaluate it.
Only the places marked "PIPE" are yours; the rest is given.

The course's check `pipeline.train` imports this file and calls main([...]) several times in
the same processes (after creating the process group itself): with --microbatches 1 and
--microbatches m, alternately, to measure the speed-up.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from eurosat.model import EuroSATNet
from pipeline_parts import build_stage, load_full_model, make_schedule, save_stage, train_step


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--microbatches", type=int, default=4, help="microbatches per batch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many batches (0: no limit)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=["eurosat", "synthetic"], default="eurosat",
                   help="eurosat: the dataset `course data` prepared; synthetic: images generated in memory")
    p.add_argument("--limit", type=int, default=2000, help="number of images to use")
    p.add_argument("--checkpoint", default="checkpoints/pipeline", help="folder for the stages' checkpoint")
    p.add_argument("--metrics", default="pipeline_metrics.json")
    return p.parse_args(argv)


def init_distributed():
    """The process group (NCCL on GPUs, gloo on CPUs) and this rank's device; safe to call again."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def load_data(args):
    """(train images, train labels, val images, val labels, description): the same on every rank."""
    if args.data == "synthetic":
        from eurosat.data import synthetic_tensors

        images, labels = synthetic_tensors(args.limit, seed=args.seed)
        n_val = max(len(images) // 5, 1)
        return (images[n_val:], labels[n_val:], images[:n_val], labels[:n_val],
                f"Dataset: synthetic EuroSAT-like, {args.limit} images generated in memory")
    from eurosat.data import describe, load_splits

    splits = load_splits(seed=args.seed, limit=args.limit)
    return (*splits.train.tensors(), *splits.val.tensors(), describe(splits))


def batches(images, labels, batch_size, seed):
    """Whole batches in a seeded order, identical on every rank. The last partial batch is
    dropped, so that every batch splits into equal microbatches."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]


@torch.no_grad()
def accuracy(model, images, labels, batch_size=256):
    """Accuracy of a plain (whole) model in eval mode: BatchNorm uses its running statistics."""
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def main(argv=None):
    args = parse_args(argv)
    device = init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    is_last = rank == world_size - 1          # the last stage has the loss: it logs and writes the metrics
    if args.batch_size % args.microbatches:
        raise SystemExit(f"--batch-size {args.batch_size} does not split into {args.microbatches} microbatches")
    train_x, train_y, val_x, val_y, about = load_data(args)
    if is_last:
        print(f"{about}\n{world_size} stages; batches of {args.batch_size} images in {args.microbatches} "
              f"microbatch(es)", flush=True)
    torch.manual_seed(args.seed)              # the same initial weights on every rank
    model = EuroSATNet().to(device)

    # PIPE 1: `stage`, this rank's stage of `model`, traced with an example microbatch.
    ### BEGIN SOLUTION
    microbatch = args.batch_size // args.microbatches
    stage = build_stage(model, train_x[:microbatch].to(device), device)   # one real microbatch: 3 x 64 x 64
    ### END SOLUTION
    # PIPE 2: `schedule`, running args.microbatches microbatches with the cross-entropy loss.
    ### BEGIN SOLUTION
    schedule = make_schedule(stage, args.microbatches, F.cross_entropy)
    ### END SOLUTION
    # PIPE 3: `optimizer`, SGD (lr=args.lr, momentum=0.9) over what this rank trains.
    ### BEGIN SOLUTION
    optimizer = torch.optim.SGD(stage.submod.parameters(), lr=args.lr, momentum=0.9)   # this stage only
    ### END SOLUTION

    losses, step_seconds = [], []              # losses: on the last rank only
    for epoch in range(args.epochs):
        for step, (images, labels) in enumerate(batches(train_x, train_y, args.batch_size, args.seed + epoch)):
            if args.max_steps and step >= args.max_steps:
                break
            start = time.perf_counter()
            # PIPE 4: one training step on (images, labels); `loss` is its mean loss (None off the last rank).
            ### BEGIN SOLUTION
            loss = train_step(schedule, optimizer, images.to(device), labels.to(device))
            ### END SOLUTION
            step_seconds.append(time.perf_counter() - start)
            if loss is not None:
                losses.append(loss)
        if is_last and losses:
            recent = losses[-10:]
            print(f"epoch {epoch + 1}: mean loss of its last {len(recent)} steps {sum(recent) / len(recent):.4f}, "
                  f"{args.batch_size / (sum(step_seconds[-10:]) / len(step_seconds[-10:])):.0f} images/s",
                  flush=True)

    # PIPE 5: save every rank's stage into args.checkpoint.
    ### BEGIN SOLUTION
    save_stage(stage, args.checkpoint)         # collective: returns once every stage is written
    ### END SOLUTION
    val_accuracy = None
    if is_last:
        # PIPE 6: `val_accuracy` of the whole model, reassembled from the checkpoint (accuracy() is given).
        ### BEGIN SOLUTION
        # Traced stages stay in training mode (BatchNorm on batch statistics): evaluate the plain model.
        whole = load_full_model(EuroSATNet().to(device), args.checkpoint)
        val_accuracy = accuracy(whole, val_x.to(device), val_y.to(device))
        ### END SOLUTION

    metrics = {"world_size": world_size, "microbatches": args.microbatches, "batch_size": args.batch_size,
               "steps": len(step_seconds), "losses": losses, "step_seconds": step_seconds,
               "val_accuracy": val_accuracy, "checkpoint": os.path.abspath(args.checkpoint)}
    if is_last:
        with open(args.metrics, "w") as f:
            json.dump(metrics, f, indent=1)
        print(f"validation accuracy of the reassembled model: {val_accuracy:.1%}; metrics in {args.metrics}",
              flush=True)
    return metrics


if __name__ == "__main__":
    main()
    dist.destroy_process_group()
