"""pipeline.split: build_stage(model, example_microbatch, device) -> this rank's PipelineStage, cut between blocks.

Contract: one stage per rank (rank r builds stage r of world_size), each stage a run of the
model's consecutive top-level blocks (the head may join the last block's stage), together
exactly the model's parameters under the model's names, none on two ranks; and the stages
compute the model.

Scenario: every rank gets the whole model (BatchNorm included; weights from the call's secret,
since build_stage takes the whole model) and a secret example microbatch; rank 0 also gets
a batch of secret images. Each rank returns its stage's index, count and parameters (names and
values); the judge checks the split across ranks here. If the stages chain up, one
forward-only GPipe step runs through them and the last rank returns the output, which must
equal the plain model's, microbatch by microbatch (only rank 0 held the images).

Tolerance: parameters exactly equal to the model's (build_stage must not re-initialise or
copy with a cast). Output: relative error 1e-4 (max |difference| / max |expected|): the stages
run the same float32 layers on the same microbatches as the plain model; the traced graph may
order a few sums differently (~1e-6), while a wrong block or a missing one changes the output
by 1e-1 or more.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import children, explain, images, readable, relative_error, secret_model

OUTPUT_RTOL = 1e-4


def _inputs(trial) -> list:
    p = trial.params
    m, mb = int(p["microbatches"]), int(p["microbatch_size"])
    spec, state = secret_model(trial, 1, norm=True, blocks=p["blocks"])
    common = {"model": {**spec, "state": state}, "example": images(trial, mb, 2), "microbatches": m,
              "children": children(spec)}
    batch = images(trial, m * mb, 3)
    return [{**common, "images": batch if r == 0 else None} for r in range(trial.world_size)]


def _expected(trial, inputs):
    from . import reference

    sent = inputs[0]
    spec = {k: v for k, v in sent["model"].items() if k != "state"}
    return reference.pipeline_outputs(spec, sent["model"]["state"], sent["images"], sent["microbatches"])


def _blocks(names) -> list[str]:
    return sorted({n.split(".")[0] for n in names})


def _judge_split(infos: list[dict], held: list[list[str]], state: dict, kids: list[str]) -> None:
    """The first problem with the ranks' stages, as a CheckFailed; nothing when the split is sound."""
    ws = len(infos)
    model_names = [n for n in state if not any(b in n for b in ("running_", "num_batches"))]
    bad = next((i for i in infos if not i["is_stage"]), None)
    if bad is not None:
        raise CheckFailed(f"build_stage returned a {bad['type']}, not a pipeline stage",
                          "Return pipe.build_stage(rank, device) (tracer frontend: pipeline + SplitPoint) or a "
                          "PipelineStage(submodule, rank, world_size, device) (manual frontend).")
    if any(i["stage_index"] != r or i["num_stages"] != ws for r, i in enumerate(infos)):
        got = ", ".join(f"rank {r}: stage {i['stage_index']} of {i['num_stages']}" for r, i in enumerate(infos))
        raise CheckFailed(f"expected one stage per rank (rank r builds stage r of {ws}); got {got}",
                          "Cut the model into exactly world_size stages and build stage number dist.get_rank(): "
                          "one SplitPoint per stage boundary (world_size - 1 of them).")
    unknown = next(((r, n) for r, names in enumerate(held) for n in names if n not in model_names), None)
    if unknown:
        raise CheckFailed(f"rank {unknown[0]}'s stage has a parameter named {unknown[1]!r}, which the model does not "
                          f"have (the model's are like {model_names[0]!r})",
                          "Keep the model's parameter names: build the stage from the model's own blocks (pipeline + "
                          "SplitPoint, or delete the other blocks from a copy). An nn.Sequential of the blocks renames "
                          "them (0.0.weight), and then the stages' checkpoints do not load into the model.")
    if ws > 1 and all(set(names) == set(model_names) for names in held):
        raise CheckFailed(f"every rank's stage holds the whole model (all {len(model_names)} parameters on each "
                          f"of the {ws} ranks)",
                          "Each rank must hold only its own stage: split the model at block boundaries "
                          "(split_spec={'conv_block2': SplitPoint.BEGINNING, ...}) and build only stage "
                          "number rank; wrapping the whole model in PipelineStage on every rank copies it.")
    owners: dict[str, set[int]] = {}
    for rank, names in enumerate(held):
        for block in _blocks(names):
            owners.setdefault(block, set()).add(rank)
    shared = {b: rs for b, rs in owners.items() if len(rs) > 1}
    duplicated = sorted({n for r, names in enumerate(held) for n in names
                         if any(n in other for s, other in enumerate(held) if s != r)})
    if shared and not duplicated:
        block, ranks = next(iter(shared.items()))
        raise CheckFailed(f"block {block!r} is cut in two: its layers are on ranks {sorted(ranks)}",
                          "Cut only between blocks: put SplitPoint.BEGINNING on a top-level block name "
                          f"({', '.join(kids[1:3])}), not on a layer inside a block ({kids[1]}.3).")
    if duplicated:
        raise CheckFailed(f"{len(duplicated)} parameter(s) are on more than one rank, e.g. {duplicated[0]!r}",
                          "Every block must belong to exactly one stage: each rank keeps only its own blocks.")
    missing = sorted(set(model_names) - {n for names in held for n in names})
    if missing:
        raise CheckFailed(f"{len(missing)} parameter(s) are in no stage, e.g. {missing[0]!r}",
                          "Together the stages must hold the whole model: the last stage runs up to and including "
                          "the head.")
    empty = next((r for r, names in enumerate(held) if not names), None)
    if empty is not None:
        raise CheckFailed(f"rank {empty}'s stage holds no parameters",
                          "Give every stage at least one block: cut at world_size - 1 different block boundaries.")
    order = [kids.index(b) for names in held for b in sorted(_blocks(names), key=kids.index)]
    expect(order == sorted(order), "the stages do not follow the model's order (stage r must run before stage r + 1)",
           "Rank 0 takes the first blocks, the last rank the last blocks and the head.")
    import torch

    changed = next(((r, n) for r, i in enumerate(infos) for n, t in i["params"].items()
                    if not (isinstance(t, torch.Tensor) and t.shape == state[n].shape and torch.equal(t, state[n]))),
                   None)
    if changed:
        raise CheckFailed(f"rank {changed[0]}'s {changed[1]!r} differs from the model's (shape or values)",
                          "Build the stages from the model you are given: do not create or re-initialise a model.")


@readable
def _judge(run: Run) -> str:
    import torch

    ws = run.world_size
    infos = [r.result for r in run.ranks]
    sent = run.inputs[0]
    kids = sent["children"]
    held = [list(i.get("params") or {}) for i in infos]
    _judge_split(infos, held, sent["model"]["state"], kids)
    out = infos[-1]["output"]
    expect(isinstance(out, torch.Tensor), "the pipeline's last stage returned no output for a GPipe step",
           "The stages must chain up: stage r's output is stage r + 1's input, the last stage returns the logits.")
    err = relative_error(out, run.expected) if tuple(out.shape) == tuple(run.expected.shape) else float("inf")
    expect(err <= OUTPUT_RTOL,
           f"the pipeline's output differs from the plain model's (relative error {err:.2g}, tolerance "
           f"{OUTPUT_RTOL:g}; output shape {tuple(out.shape)}, expected {tuple(run.expected.shape)})",
           "The stages hold the right blocks but do not compute the model: keep the blocks' order and run "
           "them unchanged.")
    split = " | ".join(", ".join(sorted(_blocks(names), key=kids.index)) for names in held)
    return (f"{ws} stages, cut between blocks ({split}); together exactly the model's parameters; one GPipe step "
            f"through them computes the plain model's output on secret images")


CHECK = Check(id="pipeline.split", functions=("build_stage",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=explain, defaults={"microbatches": 2, "microbatch_size": 2, "blocks": 3})
