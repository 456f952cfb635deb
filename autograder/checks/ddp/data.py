"""ddp.data: make_train_loader(dataset, batch_size) -> DataLoader giving this rank a disjoint share (a
DistributedSampler); start_epoch(loader, epoch) reshuffles (set_epoch).

Scenario: every rank gets the same dataset of `size` samples, and sample i is a secret token
drawn for this call (so the rank reports exactly which samples its loader gave, and no table
of answers from another run fits). Each rank iterates `epochs` epochs, calling start_epoch
before each, and returns the tokens it saw in order. The judge maps tokens back to indices.

Behaviour decides: together the ranks cover the dataset, their shares are disjoint up to
DistributedSampler's padding (drop_last=False pads a size that does not divide by the world
size with ceil(n / ws) * ws - n repeated samples: exactly that much is accepted), every rank
takes the same number of samples, batches hold batch_size samples, and the order changes
between epochs. What the rank says about its loader's type only picks the hint.
"""
from __future__ import annotations

import math

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import reads_rank_results


def _inputs(trial) -> list:
    n = int(trial.params["size"])
    tokens = trial.rng.sample(range(10**6, 2**31), n)
    return [{"tokens": tokens, "batch_size": int(trial.params["batch_size"]),
             "epochs": int(trial.params["epochs"])}] * trial.world_size


def _seen(run: Run) -> list[list[list]]:
    """Per rank, per epoch: the dataset indices the loader gave (a token that is not in the dataset stays as is)."""
    index = {t: i for i, t in enumerate(run.inputs[0]["tokens"])}
    return [[[index.get(t, ("unknown", t)) for t in epoch] for epoch in res["epochs"]] for res in run.results()]


def _judge_epoch(label: str, per_rank: list[list], run: Run) -> None:
    ws, n, results = run.world_size, run.params["size"], run.results()
    padding = math.ceil(n / ws) * ws - n
    if ws > 1 and all(len(set(s)) == n for s in per_rank):
        raise CheckFailed(f"{label}: every rank iterated over the whole dataset ({n} samples each, {ws} ranks)",
                          "Each rank must see only its share: build the DataLoader with "
                          "sampler=DistributedSampler(dataset, shuffle=True) (and no shuffle=True on the "
                          "DataLoader). Without it, every rank repeats the whole epoch.")
    if ws > 1 and all(sorted(map(str, s)) == sorted(map(str, per_rank[0])) for s in per_rank):
        raise CheckFailed(f"{label}: all {ws} ranks received the same samples",
                          "The sampler was built with the wrong rank (the same on every process): leave "
                          "rank and num_replicas out of DistributedSampler(...) so it reads them from the "
                          "process group (or pass dist.get_rank(), not LOCAL_RANK or 0).")
    counts: dict = {}
    for s in per_rank:
        for i in s:
            counts[i] = counts.get(i, 0) + 1
    strange = [i for i in counts if not isinstance(i, int)]
    expect(not strange, f"{label}: the loader produced {len(strange)} items that are not in the dataset",
           "Load the dataset you were given; do not transform the samples.")
    missing = sorted(set(range(n)) - set(counts))
    if missing:
        dropped = any(res["drop_last"] or res["loader_drop_last"] for res in results)
        raise CheckFailed(f"{label}: {len(missing)} of {n} samples were never seen (e.g. indices {missing[:5]})",
                          "Keep drop_last=False (the default) on the sampler and the loader: every sample "
                          "must be used; the sampler pads the last round instead." if dropped
                          else "Together the ranks must cover the dataset: use DistributedSampler with the "
                               "process group's rank and world size.")
    extra = sum(counts.values()) - n
    lengths = [len(s) for s in per_rank]
    expect(extra <= padding,
           f"{label}: {extra} samples were seen more than once (the sampler's padding allows {padding}); "
           f"samples per rank {lengths}",
           "The ranks' shares overlap: the sampler's num_replicas and rank must be the process group's "
           "world size and this process's rank.")
    expect(len(set(lengths)) == 1, f"{label}: ranks saw different numbers of samples: {lengths}",
           "Every rank must take the same number of steps, or DDP's all-reduce waits forever: "
           "DistributedSampler gives equal shares.")


@reads_rank_results
def _judge(run: Run) -> str:
    ws, n, batch_size, epochs = run.world_size, run.params["size"], run.params["batch_size"], run.params["epochs"]
    results = run.results()
    share = math.ceil(n / ws)
    for r, res in enumerate(results):
        expect(res["is_loader"], f"rank {r}: make_train_loader returned a {res['loader']}",
               "Return a torch.utils.data.DataLoader.")
    seen = _seen(run)
    for epoch in range(epochs):
        _judge_epoch(f"epoch {epoch}", [s[epoch] for s in seen], run)
    for r, res in enumerate(results):
        expect(res["distributed"], f"rank {r}: the loader's sampler is a {res['sampler']}, not a DistributedSampler",
               "Use torch.utils.data.DistributedSampler: it splits the data by rank and pads to equal shares.")
        expect(max(res["batch_sizes"] or [0]) == min(batch_size, share),
               f"rank {r}: batches of {res['batch_sizes']} samples; expected batch_size={batch_size}",
               "Pass batch_size to the DataLoader: it is the per-rank batch.")
    for epoch in range(1, epochs):
        if [s[epoch - 1] for s in seen] == [s[epoch] for s in seen]:
            hint = ("Shuffle: DistributedSampler(dataset, shuffle=True) (the default), then start_epoch must call "
                    "loader.sampler.set_epoch(epoch)." if not all(res["shuffle"] for res in results) else
                    "DistributedSampler shuffles with seed + epoch: start_epoch must call "
                    "loader.sampler.set_epoch(epoch), or every epoch repeats the first order.")
            raise CheckFailed(f"epochs {epoch - 1} and {epoch} visited the samples in the same order", hint)
    padding = share * ws - n
    pad = f", {padding} padded" if padding else ""
    return (f"{ws} ranks saw disjoint shares of {share} of {n} secret samples covering them all{pad}, "
            f"reshuffled every epoch ({epochs} epochs)")


def explain(error: dict) -> str | None:
    if "has no attribute 'set_epoch'" in error["message"]:
        return ("Only a DistributedSampler has set_epoch: the loader was built without one. Give the DataLoader "
                "sampler=DistributedSampler(dataset, shuffle=True), and call loader.sampler.set_epoch(epoch).")
    return None


CHECK = Check(id="ddp.data", functions=("make_train_loader", "start_epoch"), inputs=_inputs, judge=_judge,
              explain=explain, defaults={"size": 53, "batch_size": 4, "epochs": 3})
