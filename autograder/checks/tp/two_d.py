"""tp.two_d: parallelize_2d(model, mesh), 2D parallelism: tensor parallelism over "tp", then FSDP over "dp".

Scenario: the small secret ViT of tp.dtensor, a 2 x 2 mesh ("dp", "tp") of 4 ranks (rank = dp x 2 + tp, as
init_device_mesh lays them out), secret global batches of labelled images; the ranks of data-parallel group d train
on half d of each global batch (mean cross-entropy), plain SGD for `steps` steps. Evidence, on every rank, against
one process training the whole model on the whole global batches:
- every parameter after training (made whole with full_tensor) equals the single process's;
- the bytes of the parameters the rank holds are about 1/4 of the model's for the four split Linear layers of every
  block and 1/2 for the rest (FSDP alone gives 1/2 everywhere, TP alone leaves the rest whole): at most
  `max_share` x that ideal (with FSDP's padding to equal shards counted in the ideal).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...verdict import CheckFailed, expect
from .. import Check, Run
from ..replies import reads_rank_results
from . import close, gap, secret_tensor
from .dtensor import SPLIT_LAYERS, secret_vit

MESH = (2, 2)   # ("dp", "tp")


@dataclass(frozen=True)
class ShardThresholds:
    max_share: float   # a rank's parameter bytes / the 2D ideal: at most this


def _draw(trial) -> dict:
    import torch

    p, g = trial.params, trial.generator(6)
    model = secret_vit(trial, 5)
    size, batch = model["image_size"], int(p["batch"])
    batches = [[secret_tensor(g, batch, 3, size, size), torch.randint(0, 10, (batch,), generator=g)]
               for _ in range(int(p["steps"]))]
    return {"model": model, "batches": batches, "lr": float(p["lr"])}


def _inputs(trial) -> list:
    if trial.world_size != MESH[0] * MESH[1]:
        raise ValueError(f"tp.two_d runs on a {MESH[0]} x {MESH[1]} mesh: 4 ranks, not {trial.world_size}")
    d = _draw(trial)
    per_dp = int(trial.params["batch"]) // MESH[0]
    out = []
    for rank in range(trial.world_size):
        dp = rank // MESH[1]
        mine = [[x[dp * per_dp:(dp + 1) * per_dp], y[dp * per_dp:(dp + 1) * per_dp]] for x, y in d["batches"]]
        out.append({"model": d["model"], "batches": mine, "lr": d["lr"], "mesh": list(MESH)})
    return out


def ideal_bytes(state: dict) -> int:
    """What one rank of the 2 x 2 mesh holds at best: the split layers' weights (and the colwise biases) in 1/4,
    everything else in 1/2 (FSDP pads dim 0 up to equal shards)."""
    dp, tp = MESH
    total = 0
    for name, t in state.items():
        layer = name.rsplit(".", 1)[0].split(".", 2)[-1] if name.startswith("blocks.") else ""
        split = layer in SPLIT_LAYERS and (name.endswith("weight") or layer in ("attn.qkv", "mlp.fc1"))
        rows = t.shape[0] if t.ndim else 1
        rest = t.numel() // rows if rows else 0
        if split and layer in ("attn.qkv", "mlp.fc1"):
            rows //= tp          # tp takes rows
        elif split:
            rest //= tp          # tp takes columns
        total += -(-rows // dp) * rest * t.element_size()
    return total


def _expected(trial, inputs) -> dict:
    from . import reference

    d = _draw(trial)
    state = d["model"]["state"]
    # What-if, to name a mistake: rank 0's data-parallel group trained alone on its half (gradients not averaged).
    alone = reference.train(d["model"], inputs[0]["batches"], d["lr"])
    return {"final": reference.train(d["model"], d["batches"], d["lr"]), "alone": alone, "ideal": ideal_bytes(state),
            "whole": sum(t.numel() * t.element_size() for t in state.values())}


@reads_rank_results
def _judge(run: Run):
    want, t = run.expected, run.thresholds
    shares = []
    for o in run.ranks:
        where, got = f"rank {o.rank}", o.result
        missing = sorted(set(want["final"]) - set(got["final"]))
        expect(not missing, f"{where}: the trained model has no parameter {missing[:1]} any more",
               "parallelize_module and fully_shard keep the model's parameter names: apply them in place.")
        wrong = [n for n, w in want["final"].items() if not close(got["final"][n], w)]
        if wrong and o.rank == 0 and all(close(got["final"][n], w) for n, w in want["alone"].items()):
            raise CheckFailed(f"{where}: trained exactly as its data-parallel group would alone, on its half of each "
                              f"batch: the gradients were not averaged over mesh['dp']",
                              "After TP over mesh['tp'], fully_shard every block and the root over mesh['dp']: FSDP "
                              "reduce-scatters (averages) the gradients over the data-parallel groups.")
        if wrong:
            name = wrong[0]
            raise CheckFailed(f"{where}: after {len(got['losses'])} SGD steps {len(wrong)} parameter(s) differ from "
                              f"training the whole model on the whole batch, {name} first "
                              f"({gap(got['final'][name], want['final'][name])})",
                              "TP over mesh['tp'] first (parallelize_vit), then fully_shard every block and the "
                              "root over mesh['dp']: FSDP averages the gradients over the data-parallel groups.")
        share = got["param_bytes"] / want["ideal"]
        shares.append(share)
        if share > t.max_share:
            whole = got["param_bytes"] / want["whole"]
            raise CheckFailed(f"{where}: holds {got['param_bytes']:,} bytes of parameters, {whole:.2f}x the whole "
                              f"model's and {share:.2f}x what a 2 x 2 mesh needs (the split layers in 1/4, the rest "
                              f"in 1/2)", "Both: the blocks' Linear layers split over mesh['tp'] (parallelize_vit) "
                              "and every parameter sharded over mesh['dp'] (fully_shard each block, then the root).")
    return (f"parallelize_2d trained like one process on the whole batch (4 ranks as 2 x 2: dp x tp); each rank "
            f"holds {max(o.result['param_bytes'] for o in run.ranks) / want['whole']:.2f}x the model's parameter "
            f"bytes ({max(shares):.2f}x the 2D ideal)",
            {"memory": {"param_bytes": [o.result["param_bytes"] for o in run.ranks], "ideal": want["ideal"],
                        "whole": want["whole"]}})


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "DTensor" in text or "device_mesh" in text.lower() or "mesh" in text:
        return ("Apply tensor parallelism first (parallelize_vit over mesh['tp']), then fully_shard over "
                "mesh['dp']: FSDP shards the DTensors TP made, not the other way round.")
    return None


CHECK = Check(id="tp.two_d", functions=("parallelize_2d",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=_explain, thresholds=ShardThresholds,
              defaults={"image_size": 16, "width": 48, "heads": 12, "depth": 2, "batch": 4, "steps": 3, "lr": 0.2})
