"""ddp.checkpoint: save_checkpoint(model, path) gets the DDP-wrapped model and the same path on every rank; one
rank (rank 0) writes the plain model's state dict, and no rank returns before the file is complete.

Scenario: a small EuroSATNet with BatchNorm (its buffers must be saved too) whose weights and
statistics are drawn from the secret, sent to every rank, wrapped in DDP by the rank driver. Each
rank calls save_checkpoint and, right after it returns, reads the file and sends back its bytes
(or that there was none). Here the bytes are loaded with torch.load(weights_only=True) and must
be a state dict that loads into the plain model with strict=True and equals, tensor for tensor,
what was sent. No tolerance: saving copies the bits.

The rank also watches torch.save: which ranks called it, with what, and it delays every write
by half a second, so that a rank that does not wait for the writer (no barrier) finds no file.
These observations name the failures "several writers" and "not rank 0"; they cannot pass a
file that does not hold the secret weights.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import differing, is_state_dict, load_saved, random_state, reads_rank_results, spec, strict_load_problem


def _inputs(trial) -> list:
    state = random_state(trial.generator(), norm=True)
    nonce = f"{trial.rng.getrandbits(64):016x}"
    return [{"model": spec(state, norm=True), "filename": trial.params["filename"], "nonce": nonce}
            ] * trial.world_size


def _judge_writers(run: Run) -> None:
    results = run.results()
    writers = [r for r, res in enumerate(results) if res["saves"]]
    if len(writers) > 1:
        raise CheckFailed(f"ranks {writers} all called torch.save on the same file",
                          "Only one rank should write: `if dist.get_rank() == 0: torch.save(...)`. Several "
                          "writers to one file can leave it corrupt, and waste I/O on every rank.")
    if writers and writers != [0]:
        raise CheckFailed(f"rank {writers[0]} wrote the checkpoint, not rank 0",
                          "By convention rank 0 writes (dist.get_rank() == 0): it exists in every job, whatever "
                          "its size.")
    saves = results[0]["saves"]
    expect(len(saves) <= 1, f"rank 0 called torch.save {len(saves)} times", "Save the checkpoint once.")
    if saves and saves[0]["kind"].startswith("module"):
        raise CheckFailed(f"rank 0 saved the whole {saves[0]['kind'][7:]} object, not a state dict",
                          "Save model.module.state_dict(): a state dict loads into any EuroSATNet, a pickled "
                          "module depends on the class's code and DDP's internals.")


@reads_rank_results
def _judge(run: Run) -> str:
    _judge_writers(run)
    sent = run.inputs[0]["model"]
    want = sent["state"]
    for o in run.ranks:
        r, raw = o.rank, o.result["file"]
        if raw is None:
            anyone = any(res["saves"] for res in run.results())
            raise CheckFailed(f"rank {r}: no checkpoint at {run.params['filename']} right after save_checkpoint() "
                              "returned" + (" (rank 0 was still writing)" if anyone else ""),
                              "Add dist.barrier() after rank 0's torch.save (on every rank, outside the if): "
                              "nobody returns before the file is complete." if anyone else
                              "On rank 0, torch.save the plain model's state dict (model.module.state_dict()) "
                              "to the path you were given.")
        saved, error = load_saved(raw)
        if error:
            raise CheckFailed(f"rank {r}: the checkpoint could not be loaded (weights_only) right after "
                              f"save_checkpoint() returned: {error}",
                              "Save a state dict (tensors only), and add dist.barrier() after rank 0's "
                              "torch.save so nobody reads a half-written file.")
        if not is_state_dict(saved):
            raise CheckFailed(f"rank {r}: the checkpoint holds a {type(saved).__name__}, not a state dict",
                              "Save model.module.state_dict(): a dict of the plain model's tensors.")
        prefixed = sum(k.startswith("module.") for k in saved)
        if prefixed:
            raise CheckFailed(f"the saved state dict's keys start with 'module.' ({prefixed} of {len(saved)} "
                              f"keys): it is the DDP wrapper's",
                              "Save the wrapped model's state dict, model.module.state_dict(): its keys have no "
                              "'module.' prefix, so the file loads into the plain model with strict=True.")
        problem = strict_load_problem(saved, sent)
        if problem:
            raise CheckFailed(f"rank {r}: the checkpoint does not load into the plain model with strict=True: "
                              f"{problem}",
                              "Save model.module.state_dict(): the whole state of the wrapped model, with its "
                              "own key names.")
        differ = differing(saved, want)   # saving copies the bits: no tolerance
        if differ:
            raise CheckFailed(f"rank {r}: the checkpoint's {', '.join(differ[:3])} differ from the model's",
                              "Save the model's current state at the time of the call, not an earlier copy "
                              "or a new model.")
    return (f"rank 0 alone wrote {len(want)} tensors; on all {run.world_size} rank(s) the file was complete when "
            f"save_checkpoint() returned, loaded into the plain model with strict=True and held the model's "
            f"secret weights and statistics")


def _explain(error: dict) -> str | None:
    if "module" in error["message"] and "has no attribute" in error["message"]:
        return "save_checkpoint receives the DDP-wrapped model: its .module is the plain model."
    return None


CHECK = Check(id="ddp.checkpoint", functions=("save_checkpoint",), inputs=_inputs, judge=_judge, explain=_explain,
              defaults={"filename": "model.pt"})
