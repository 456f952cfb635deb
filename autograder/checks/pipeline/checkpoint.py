"""pipeline.checkpoint: save_stage(stage, path) with torch.distributed.checkpoint; load_full_model(model, path).

Contract: every rank calls save_stage with its stage (DCP: each rank writes its own part);
then load_full_model, in one process, fills a whole model with every stage's tensors
(parameters and BatchNorm buffers) and returns it.

Scenario: a round trip. The harness draws a model's weights and BatchNorm statistics from the
call's secret, splits it into one stage per rank and sends each rank only its own blocks; every
rank calls save_stage; then the last rank alone (as pipeline_train.py does) calls load_full_model
on a fresh model with other secret weights and returns the weights it holds afterwards. They
must equal, tensor for tensor, the weights the harness sent to all the ranks together. How
the checkpoint is laid out is the learner's choice: any layout that save_stage writes with DCP
and load_full_model reads back passes (the stage's state dict as it is, or nested under a key
as DCP's recipes do). The saved keys are read only to explain a failed round trip.

Tolerance: exact (torch.equal): a checkpoint stores the tensors' bytes.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import explain, readable, secret_model, stage_shares


def _inputs(trial) -> list:
    ws = trial.world_size
    spec, state = secret_model(trial, 1, norm=True)
    fresh_spec, fresh_state = secret_model(trial, 2, norm=True)
    folder = f"pipeline-checkpoint-{trial.rng.getrandbits(48):012x}"
    return [{"stage": share, "folder": folder, "fresh": {**fresh_spec, "state": fresh_state} if r == ws - 1 else None}
            for r, share in enumerate(stage_shares(spec, state, ws))]


def _expected(trial, inputs) -> dict:
    """The whole model's state: the union of what the ranks were sent."""
    return {k: v for x in inputs for k, v in x["stage"]["state"].items()}


def _present(key: str, saved: list[str]) -> bool:
    """Whether the checkpoint holds `key`, under its own name or nested (model.conv_block1.0.weight)."""
    return any(s == key or s.endswith("." + key) for s in saved)


def _explain_round_trip(run: Run, seen_by_rank: list[dict], last: dict) -> None:
    """Why the round trip failed, from what the ranks saw: a CheckFailed naming the likeliest mistake."""
    ws = run.world_size
    seen = last["seen"]
    skipped = [r for r, s in enumerate(seen_by_rank) if s.get("skipped")]
    if skipped:
        savers = [r for r in range(ws) if r not in skipped]
        raise CheckFailed(f"only rank(s) {savers} called dcp.save in save_stage; rank(s) {skipped} returned "
                          "without saving, so their stages are not in the checkpoint (and the savers waited for them)",
                          "Every rank must save its own stage: call dcp.save(stage.submod.state_dict(), "
                          "checkpoint_id=path) on every rank, not only on rank 0. DCP is collective: each rank "
                          "writes its own part, rank 0 writes the metadata.")
    if seen.get("collective_load"):
        raise CheckFailed("load_full_model waited for the other ranks: its dcp.load ran as a collective although "
                          "only one process loads",
                          "Load in one process: dcp.load takes no_dist=True for that (see its docs); without it, "
                          "DCP coordinates with every rank of the process group.")
    saved = seen.get("saved_keys")
    expect(saved is not None, "save_stage wrote no torch.distributed.checkpoint checkpoint at the given path",
           "Save the stage module's state dict with torch.distributed.checkpoint (dcp.save), at the given path.")
    for r, sent in enumerate(run.inputs):
        absent = [k for k in sent["stage"]["state"] if not _present(k, saved)]
        if absent:
            complete = [s for s, x in enumerate(run.inputs) if all(_present(k, saved) for k in x["stage"]["state"])]
            buffers = all("running_" in k or "num_batches" in k for k in absent)
            hint = ("Save stage.submod.state_dict(): it holds the BatchNorm running statistics too, which "
                    "named_parameters() leaves out." if buffers else
                    "Every rank must save its own stage: call save_stage (dcp.save) on every rank, not only on "
                    "rank 0.")
            raise CheckFailed(f"stage {r}'s {len(absent)} tensor(s) are not in the checkpoint (e.g. {absent[0]!r}); "
                              f"complete stages: {complete}", hint)
    if seen.get("load_error"):
        raise CheckFailed(f"load_full_model raised {seen['load_error']}",
                          "Load in one process, without a process group (no_dist=True), into a state dict of the "
                          "whole model that DCP fills in place under the keys you saved with, then load that into "
                          "the model.")


@readable
def _judge(run: Run) -> str:
    import torch

    ws = run.world_size
    seen_by_rank = [o.result["seen"] for o in run.ranks]
    last = run.ranks[-1].result
    loaded = last.get("state")
    if loaded is None:
        _explain_round_trip(run, seen_by_rank, last)
        raise CheckFailed("load_full_model returned no model", "Return the model you loaded the checkpoint into.")
    want = run.expected
    missing = [k for k in want if k not in loaded]
    wrong = [k for k in want if k in loaded and not (isinstance(loaded[k], torch.Tensor)
                                                      and loaded[k].shape == want[k].shape
                                                      and torch.equal(loaded[k], want[k]))]
    if missing or wrong:
        _explain_round_trip(run, seen_by_rank, last)
        expect(not missing, f"the reassembled model lacks {missing[:3]}",
               "Load into the whole model's state_dict() and load_state_dict it strictly.")
        raise CheckFailed(f"after load_full_model, {len(wrong)} tensor(s) differ from the stages that were saved "
                          f"(e.g. {wrong[0]!r})",
                          "dcp.load fills the state dict you pass; then call model.load_state_dict(state) (strict) "
                          "so that the model takes the loaded values.")
    return (f"all {ws} stages saved with DCP; load_full_model, in one process, reassembled the whole model: every "
            f"tensor ({len(want)}, BatchNorm statistics included) equals the secret weights the stages held")


CHECK = Check(id="pipeline.checkpoint", functions=("save_stage", "load_full_model"), inputs=_inputs,
              expected=_expected, judge=_judge, explain=explain, defaults={})
