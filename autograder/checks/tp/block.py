"""tp.block: shard_block(block), one ViT Block made tensor-parallel with the learner's own layers.

Scenario: a secret Block (width, heads, MLP ratio, bias), the same on every rank, a secret input (batch x tokens x
width) and a secret upstream gradient, both the same on every rank (a tensor-parallel group sees one activation).
Evidence, on every rank, against the whole block in one process:
- the output and the input's gradient equal the whole block's;
- each parameter's gradient, as the rank holds it, is its slice of the whole block's: qkv and fc1 their rows (qkv's
  rows are head-major, so rows are whole heads), proj and fc2 their columns (their biases whole), the layer norms
  whole;
- the bytes the job sent over its own loopback during the task (read from outside, sandboxed gloo only): four ring
  all-reduces of the activations (two in forward, two in backward) and not much more.
Read, not run: shard_block may not reach DTensor or the library's differentiable collectives (`avoid`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...verdict import CheckFailed, expect
from .. import Check, Run
from ..replies import reads_rank_results
from . import BY_HAND, close, gap, matches, my_slice, secret_tensor, secret_weights, weight_and_bias, wire

# How each of the block's Linear layers is split: by rows (output features) or by columns (input features).
SPLIT = {"attn.qkv": "rows", "attn.proj": "columns", "mlp.fc1": "rows", "mlp.fc2": "columns"}


@dataclass(frozen=True)
class WireThresholds:
    syncs_min: float   # bytes sent / four ring all-reduces of the activations: at least this
    syncs_max: float   # and at most this


def _draw(trial) -> dict:
    import torch

    from eurosat.vit import Block

    p, g = trial.params, trial.generator(2)
    spec = {"width": int(p["width"]), "heads": int(p["heads"]), "mlp_ratio": int(p["mlp_ratio"]),
            "bias": bool(p["bias"])}
    with torch.random.fork_rng(devices=[]):
        state = secret_weights(Block(**spec), g)
    shape = (int(p["batch"]), int(p["tokens"]), spec["width"])
    return {"block": {**spec, "state": state}, "x": secret_tensor(g, *shape), "upstream": secret_tensor(g, *shape)}


def _inputs(trial) -> list:
    heads, ws = int(trial.params["heads"]), trial.world_size
    if heads % ws:
        raise ValueError(f"tp.block: {heads} heads do not split over {ws} ranks (use a world size that divides them)")
    return [_draw(trial)] * ws


def _expected(trial, inputs) -> dict:
    from . import reference

    d = _draw(trial)
    return reference.backward_of(reference.block(d["block"]), d["x"], d["upstream"])


def _slice_of(name: str, full, rank: int, ws: int):
    """The part of the whole block's tensor `name` that rank `rank` holds."""
    module, _, kind = name.rpartition(".")
    split = SPLIT.get(module)
    if split == "rows":
        return full[my_slice(full.shape[0], rank, ws)]
    if split == "columns" and kind == "weight":
        return full[:, my_slice(full.shape[1], rank, ws)]
    return full


def _params(run: Run, o, where: str) -> None:
    ws, grads = run.world_size, run.expected["grads"]
    state = run.inputs[0]["block"]["state"]
    held = o.result["params"]
    for module in ("norm1", "norm2"):
        for kind in ("weight", "bias"):
            name = f"{module}.{kind}"
            got = next((e for n, e in held.items() if ("." + n).endswith("." + name)), None)
            expect(got is not None and close(got["grad"], grads[name]), f"{where}: {name}'s gradient differs from "
                   f"the whole block's ({gap(got['grad'], grads[name]) if got else 'not found'})",
                   "Keep the layer norms as they are on every rank: the input's gradient reaching them must be the "
                   "whole one (all-reduced in backward by the column-parallel layers).")
    for module, split in SPLIT.items():
        weight, bias = weight_and_bias(held, module)
        want_w = _slice_of(f"{module}.weight", state[f"{module}.weight"], o.rank, ws)
        expect(weight is not None, f"{where}: no 2-D parameter under {module}",
               f"Replace {module} by your own parallel layer holding its {split} of the weight.")
        if ws > 1 and weight["value"].numel() > want_w.numel():
            raise CheckFailed(f"{where}: {module} holds {weight['value'].numel()} weight elements, the whole "
                              f"layer's, not its {want_w.numel()}", f"Make {module} "
                              + ("column-parallel (its rows)" if split == "rows" else "row-parallel (its columns)")
                              + " with your layers from tp.layers.")
        expect(matches(weight["value"], want_w), f"{where}: {module}'s weight is not this rank's {split} of the "
               "whole layer's", "qkv and fc1 column-parallel (rank r keeps rows [r n/N, (r + 1) n/N): for qkv, "
               "heads r H/N to (r + 1) H/N), proj and fc2 row-parallel (the matching columns).")
        want_g = _slice_of(f"{module}.weight", grads[f"{module}.weight"], o.rank, ws)
        expect(matches(weight["grad"], want_g), f"{where}: {module}'s weight gradient differs from its {split} of "
               f"the whole block's ({gap(weight['grad'], want_g) if weight['grad'] is not None else 'no gradient'})",
               "Every slice's gradient follows once the output and the input's gradient are right.")
        if f"{module}.bias" in grads and bias is not None:
            want_b = _slice_of(f"{module}.bias", grads[f"{module}.bias"], o.rank, ws)
            expect(close(bias["grad"], want_b), f"{where}: {module}'s bias gradient differs "
                   f"({gap(bias['grad'], want_b)})", "Split qkv's and fc1's biases with their rows; keep proj's and "
                   "fc2's whole and add them once.")


def _output(run: Run, o, where: str) -> None:
    ws, want, got = run.world_size, run.expected, o.result
    heads = run.inputs[0]["block"]["heads"]
    expect(got["shape"] == list(want["out"].shape), f"{where}: returned shape {got['shape']}, expected "
           f"{list(want['out'].shape)}", "shard_block returns the block; its forward returns the whole activation.")
    if not close(got["out"], want["out"]):
        if ws > 1 and got.get("heads") == heads:
            raise CheckFailed(f"{where}: the output differs from the whole block's, and attn.heads is still {heads}: "
                              f"this rank's qkv slice holds {heads // ws} whole heads, so attention with {heads} "
                              f"heads cuts every head in {ws}", f"Each rank runs attention on its own heads: set "
                              f"attn.heads to heads // world size ({heads // ws} here).")
        raise CheckFailed(f"{where}: the output differs from the whole block's ({gap(got['out'], want['out'])})",
                          "qkv column-parallel (whole heads per rank: the rows are head-major), proj row-parallel, "
                          "fc1 column-, fc2 row-parallel, attn.heads = heads // world size; tp.layers must pass.")
    expect(got["x_grad"] is not None, f"{where}: the input received no gradient",
           "Keep the block in autograd's graph (your layers' Functions return the input's gradient).")
    expect(close(got["x_grad"], want["x_grad"]), f"{where}: the output is right but the input's gradient differs "
           f"({gap(got['x_grad'], want['x_grad'])})", "The column-parallel layers must all-reduce the input's "
           "gradient in backward (Megatron's f), the row-parallel ones pass it through (g's backward).")


def _judge_bytes(run: Run) -> str:
    t, p = run.thresholds, run.params
    elements = 4 * int(p["batch"]) * int(p["tokens"]) * int(p["width"])
    syncs, figures = wire(run, elements)
    if syncs is None:
        return figures
    expect(syncs <= t.syncs_max, f"right output and gradients, but the step sent {figures}: more than the four "
                                 "all-reduces of the activations that Megatron's block needs",
           "One all-reduce per sub-block in forward (after proj, after fc2) and one per sub-block in backward (into "
           "qkv's and fc1's input): no all-gather of the outputs, no extra broadcast.")
    expect(syncs >= t.syncs_min, f"right output and gradients, but the step sent only {figures}: the activations "
                                 "did not travel through the process group", "Sum the partial outputs with "
                                 "dist.all_reduce in your layers' Functions.")
    return figures


@reads_rank_results
def _judge(run: Run):
    for o in run.ranks:
        where = f"rank {o.rank}"
        _output(run, o, where)
        _params(run, o, where)
    figures = _judge_bytes(run)
    p, ws = run.params, run.world_size
    elements = 4 * int(p["batch"]) * int(p["tokens"]) * int(p["width"])
    return (f"shard_block matched the whole block on {ws} rank(s) (width {p['width']}, {p['heads']} heads"
            f"{'' if p['bias'] else ', no bias'}): the output, the input's gradient and each rank's slice of every "
            f"gradient; {figures}", {"bytes": {"sent": run.sent_bytes, "allreduces": 2 * (ws - 1) * 4 * elements}})


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "view" in text and "shape" in text:
        return ("Attention reshapes qkv's output by attn.heads: on each rank it holds heads // world size heads, so "
                "set attn.heads accordingly.")
    if "mat1 and mat2" in text:
        return "proj and fc2 take this rank's slice of their input features: make them row-parallel."
    return None


CHECK = Check(id="tp.block", functions=("shard_block",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=_explain, avoid=BY_HAND, thresholds=WireThresholds,
              defaults={"width": 48, "heads": 12, "mlp_ratio": 4, "bias": True, "batch": 4, "tokens": 64})
