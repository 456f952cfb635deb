"""tp.dtensor: parallelize_vit(model, tp_mesh), the same tensor parallelism with DTensor's parallel plans.

Scenario: a small secret ViT (16x16 images of 8x8 patches, width 48, 12 heads: they split over 1 to 4 ranks,
2 blocks), the same on every rank, secret images and a secret upstream gradient for the logits, the same on every
rank; a 1-D mesh of every rank. Evidence, on every rank, against the whole model in one process:
- the logits and every parameter's gradient (made whole with full_tensor) equal the whole model's;
- each block's qkv, proj, fc1 and fc2 weights are split: the rank holds 1/N of each (a plan that leaves them whole
  gives the same numbers and fails here); the placements only name a mistake (plans swapped).
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from ..replies import reads_rank_results
from . import close, gap, secret_tensor, secret_weights

SPLIT_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
PLACEMENT = {"attn.qkv": "S(0)", "mlp.fc1": "S(0)", "attn.proj": "S(1)", "mlp.fc2": "S(1)"}   # str(Shard(d))


def vit_spec(params: dict) -> dict:
    return {"image_size": int(params["image_size"]), "patch_size": 8, "width": int(params["width"]),
            "heads": int(params["heads"]), "depth": int(params["depth"]), "mlp_ratio": 2}


def secret_vit(trial, salt: int) -> dict:
    import torch

    from eurosat.vit import ViT

    spec = vit_spec(trial.params)
    with torch.random.fork_rng(devices=[]):
        model = ViT(**spec)
        state = secret_weights(model, trial.generator(salt), scale=0.2)
    return {**spec, "state": state}


def _draw(trial) -> dict:
    p, g = trial.params, trial.generator(4)
    model = secret_vit(trial, 3)
    size = model["image_size"]
    return {"model": model, "images": secret_tensor(g, int(p["batch"]), 3, size, size),
            "upstream": secret_tensor(g, int(p["batch"]), 10)}


def _inputs(trial) -> list:
    heads, ws = int(trial.params["heads"]), trial.world_size
    if heads % ws:
        raise ValueError(f"tp.dtensor: {heads} heads do not split over {ws} ranks")
    return [_draw(trial)] * ws


def _expected(trial, inputs) -> dict:
    from . import reference

    d = _draw(trial)
    return reference.backward_of(reference.vit(d["model"]), d["images"], d["upstream"])


def _sharding(run: Run, o, where: str) -> None:
    ws, held = run.world_size, o.result["params"]
    depth = run.inputs[0]["model"]["depth"]
    state = run.inputs[0]["model"]["state"]
    for i in range(depth):
        for layer in SPLIT_LAYERS:
            name = f"blocks.{i}.{layer}.weight"
            entry = held.get(name)
            expect(entry is not None, f"{where}: the model has no parameter {name} any more",
                   "parallelize_module keeps the model's names; parallelize the blocks' Linear layers in place.")
            full = state[name].numel()
            if entry["value"].numel() * ws != full:
                placements = entry.get("placements")
                raise CheckFailed(f"{where}: {name} holds {entry['value'].numel()} of its {full} elements, not "
                                  f"1/{ws}" + (f" (placements {placements})" if placements else " (not a DTensor)"),
                                  "Give parallelize_module a plan for every block's attn.qkv, attn.proj, mlp.fc1 "
                                  "and mlp.fc2 over the tp mesh.")


def _swapped(run: Run, o) -> str | None:
    """Which layers carry the other plan's placement (a hint only)."""
    held = o.result["params"]
    wrong = [f"{layer} ({', '.join(held[n]['placements'])})" for layer, want in PLACEMENT.items()
             for n in [f"blocks.0.{layer}.weight"] if held.get(n, {}).get("placements") not in (None, [want])]
    return ", ".join(wrong) or None


@reads_rank_results
def _judge(run: Run) -> str:
    ws, want = run.world_size, run.expected
    heads = run.inputs[0]["model"]["heads"]
    for o in run.ranks:
        where, got = f"rank {o.rank}", o.result
        if not close(got["out"], want["out"]):
            if ws > 1 and heads in got["heads"]:
                raise CheckFailed(f"{where}: the logits differ from the whole model's, and attn.heads is still "
                                  f"{heads} in blocks {[i for i, h in enumerate(got['heads']) if h == heads]}: each "
                                  f"rank's qkv shard holds {heads // ws} whole heads, so attention with {heads} heads "
                                  f"cuts every head in {ws}", f"After parallelize_module, set each block's "
                                  f"attn.heads to heads // tp mesh size ({heads // ws} here).")
            swapped = _swapped(run, o)
            if swapped:
                raise CheckFailed(f"{where}: the logits differ from the whole model's, and the plans put "
                                  f"{swapped}", "Colwise for the layers that widen (qkv, fc1: weight Shard(0)), "
                                  "rowwise for the layers that come back (proj, fc2: Shard(1)); the colwise output "
                                  "feeds the rowwise input without any communication.")
            raise CheckFailed(f"{where}: the logits differ from the whole model's ({gap(got['out'], want['out'])})",
                              f"ColwiseParallel on qkv and fc1, RowwiseParallel on proj and fc2, and each block's "
                              f"attn.heads set to the heads a rank holds ({heads} // {ws}).")
        for name, grad in want["grads"].items():
            got_grad = got["grads"].get(name)
            expect(close(got_grad, grad), f"{where}: the logits are right but {name}'s gradient differs "
                   f"({gap(got_grad, grad) if got_grad is not None else 'no gradient'})",
                   "Let parallelize_module's plans carry the gradients (no detach, no hand-made copies).")
        if ws > 1:
            _sharding(run, o, where)
    return (f"parallelize_vit matched the whole ViT on {ws} rank(s): the logits and every gradient, with each "
            f"block's qkv, proj, fc1 and fc2 split 1/{ws} per rank")


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "view" in text or "shape" in text and "invalid" in text:
        return ("Attention reshapes qkv's output by attn.heads: after the plan each rank holds heads // tp size "
                "heads, so set every block's attn.heads accordingly.")
    if "mat1 and mat2" in text or "same reduction dim" in text:
        return ("The matmul's shapes do not meet: are the plans swapped? Colwise on the layers that widen (qkv, fc1: "
                "weight Shard(0), output features split), rowwise on those that come back (proj, fc2: Shard(1), "
                "taking the split features).")
    return None


CHECK = Check(id="tp.dtensor", functions=("parallelize_vit",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=_explain, defaults={"image_size": 16, "width": 48, "heads": 12, "depth": 2, "batch": 3})
