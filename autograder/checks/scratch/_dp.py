"""Data-parallel training scenarios shared by scratch.naive and scratch.bucketed: secret inputs, expected
values, and the judge that names the mistake.

Every rank trains the same small MLP with SGD on batches only it receives; after each backward
the learner's code must leave every parameter's .grad equal to the mean over the ranks of their
own gradients. The harness computes that mean (reference.train_data_parallel) and compares, step
by step, the gradients each rank had after the sync, then the final weights and buffers.
"""
from __future__ import annotations

from ...verdict import CheckFailed
from . import bucket_plan, close, fmt_names, mismatched, mlp_spec, param_sizes, ratio, secret_batches, secret_state


def _sizes(rng, hidden: int = 4) -> list[int]:
    """Uneven layer widths: no two parameters share a size by design."""
    return ([rng.randint(5, 9), rng.randint(12, 24), rng.randint(3, 7), rng.randint(9, 15), rng.randint(2, 4)]
            if hidden == 4 else [rng.randint(5, 9), rng.randint(10, 20), rng.randint(2, 4)])


def scenarios(trial, kind: str) -> list[dict]:
    """The trusted description of every scenario (spec, cap, per-rank initial states and batches)."""
    rng, ws, steps = trial.rng, trial.world_size, int(trial.params["steps"])
    lr = round(rng.uniform(0.05, 0.2), 3)
    if kind == "naive":
        plans = [("an MLP with uneven layers, a buffer and a layer the loss never uses",
                  dict(buffer=True, unused=True), None)]
    else:
        plans = [("bucket_cap_mb smaller than every parameter (one bucket per parameter)", dict(buffer=True), "tiny"),
                 ("bucket_cap_mb larger than the whole model (one bucket)", dict(buffer=True), "huge"),
                 ("buckets of a few parameters, a buffer, and a layer the loss never uses",
                  dict(buffer=True, unused=True), "mixed")]
    out = []
    for i, (title, extra, cap_kind) in enumerate(plans):
        spec = mlp_spec(_sizes(rng), **extra)
        sizes = param_sizes(spec)
        cap_mb = None
        if cap_kind == "tiny":
            cap_mb = (4 * min(n for _, n in sizes) // 2) / 2**20
        elif cap_kind == "huge":
            cap_mb = 4 * sum(n for _, n in sizes) * 3 / 2**20
        elif cap_kind == "mixed":
            cap_mb = (4 * max(n for _, n in sizes) * 5 // 4 + 2) / 2**20
        # Rank 0's initial weights are the truth; with BucketedDDP every other rank starts elsewhere.
        states = [secret_state(trial, spec, 100 * i + (r if kind == "bucketed" else 0)) for r in range(ws)]
        rows = rng.randint(4, 6)
        batches = [secret_batches(trial, 1000 + 100 * i + r, steps, rows, spec["sizes"][0], spec["sizes"][-1])
                   for r in range(ws)]
        out.append({"title": title, "spec": spec, "cap_mb": cap_mb, "states": states, "batches": batches, "lr": lr,
                    "sizes": sizes})
    return out


def inputs(trial, kind: str) -> list:
    described = scenarios(trial, kind)
    return [{"scenarios": [{"model": {**s["spec"], "state": s["states"][r]}, "cap_mb": s["cap_mb"], "lr": s["lr"],
                            "batches": s["batches"][r], "title": s["title"], "sizes": s["sizes"]} for s in described]}
            for r in range(trial.world_size)]


def expected(trial, inputs_: list) -> list:
    from . import reference

    out = []
    for i, first in enumerate(inputs_[0]["scenarios"]):
        model = {k: v for k, v in first["model"].items() if k != "state"}
        out.append(reference.train_data_parallel(model, first["model"]["state"],
                                                 [x["scenarios"][i]["batches"] for x in inputs_], first["lr"]))
    return out


# ------------------------------------------------------------------ the judge

def _who(kind: str) -> str:
    return "allreduce_gradients(model)" if kind == "naive" else "finish_gradient_sync()"


def _after_init(kind: str, r: int, got: dict, sent: list, where: str) -> None:
    """BucketedDDP(...) must leave every rank with rank 0's parameters and buffers."""
    truth, own = sent[0], sent[r]
    wrong = mismatched(got, truth, 0.0, 0.0)
    if not wrong:
        return
    params = [n for n in wrong if not n.endswith("shift")]
    kept = all(close(got.get(n), own[n], 0.0, 0.0) for n in wrong)
    if kept and params:
        raise CheckFailed(f"{where}: after BucketedDDP(model, ...) rank {r} still has its own initial values of "
                          f"{fmt_names(wrong)}, not rank 0's",
                          "Every rank must start from the same weights: in __init__, broadcast every parameter and "
                          "every buffer of the module from rank 0 (dist.broadcast with src=0), once, before training.")
    if kept:
        raise CheckFailed(f"{where}: after BucketedDDP(model, ...) rank {r}'s buffer {fmt_names(wrong)} is its own, "
                          f"not rank 0's (the parameters were broadcast)",
                          "Broadcast the module's buffers too (module.buffers(), e.g. BatchNorm statistics or a "
                          "fixed input shift): they are part of the model every rank must share.")
    raise CheckFailed(f"{where}: after BucketedDDP(model, ...) rank {r}'s {fmt_names(wrong)} are neither rank 0's "
                      f"values nor its own",
                      "Broadcast from rank 0 (src=0), in place, with torch.no_grad(): dist.broadcast(p.data or p, src=0).")


def _launched_zeros(spy, step: int) -> bool:
    """Whether every all-reduce the rank launched during step `step` (backward to synced) carried only zeros (what
    its spy saw: a hint, never evidence)."""
    try:
        begin, end = spy["marks"]["backward"][step], spy["marks"]["synced"][step]
        calls = [c for c in spy["calls"] if begin <= c["start"] <= end]
        return bool(calls) and all(c.get("zeros") is True for c in calls)
    except (KeyError, IndexError, TypeError):
        return False


def _diagnose_grads(kind: str, r: int, ws: int, got: dict, want: dict, local: dict, where: str,
                    scenario: dict, launched_zeros: bool = False) -> None:
    """Name the mistake behind a rank's wrong gradients after the sync (raises CheckFailed)."""
    unused = [n for n in want if want[n] is None and got.get(n) is not None]
    if unused:
        raise CheckFailed(f"{where}: rank {r}: {fmt_names(unused)} received a gradient, but the loss never uses "
                          f"{'it' if len(unused) == 1 else 'them'} (its .grad must stay None)",
                          "A parameter whose gradient never arrived keeps .grad None: all-reduce a zero stand-in for "
                          "it in its bucket if you like, but do not write the result back into its .grad.")
    missing = [n for n in want if want[n] is not None and got.get(n) is None]
    if missing:
        raise CheckFailed(f"{where}: rank {r}: {fmt_names(missing)} have no gradient (.grad is None) after "
                          f"{_who(kind)}",
                          "Average the gradients in place (or copy the averaged values into the existing .grad); "
                          "do not set .grad to None.")
    wrong = mismatched(got, want)
    ratios = [ratio(got[n], want[n]) for n in wrong]
    if ws > 1 and ratios and all(q is not None and abs(q - ws) < 0.02 * ws for q in ratios):
        raise CheckFailed(f"{where}: rank {r}: the gradients are {ws}x the mean over the ranks: they were summed, "
                          f"not averaged",
                          "dist.all_reduce adds the ranks' tensors (ReduceOp.SUM): divide by the world size "
                          "afterwards (or use ReduceOp.AVG).")
    if kind == "bucketed":
        plan = bucket_plan(scenario["sizes"], scenario["cap_mb"])
        if scenario["model"].get("unused"):
            stuck = next(i for i, b in enumerate(plan) if any(n.startswith("side.") for n in b))
            after = {n for b in plan[stuck:] for n in b}
            if all(n in after for n in wrong):
                raise CheckFailed(f"{where}: rank {r}: {fmt_names(wrong)} were not averaged: they share a bucket "
                                  f"with, or come after, the layer the loss never uses",
                                  "A parameter without gradient never calls its hook, so its bucket never fills: "
                                  "in finish_gradient_sync() launch every bucket that is not launched yet (in "
                                  "bucket order), then wait for all of them.")
        late = {n for bucket in plan for n in bucket[1:]}     # parameters whose gradient is not the bucket's first
        if all(n in late for n in wrong) and len(wrong) < len(want):
            zeros = all(float(got[n].abs().max()) == 0.0 for n in wrong)
            raise CheckFailed(f"{where}: rank {r}: {fmt_names(wrong)} got wrong gradients"
                              + (" (zeros)" if zeros else "") + ", and each shares a bucket with a parameter whose "
                              "gradient became ready before it, while every bucket's first parameter is right",
                              "A bucket's all-reduce must start only when the last of its gradients is ready: count "
                              "the gradients still missing per bucket in the hook and launch at zero, not at the "
                              "first (or any earlier) gradient.")
    if ws > 1 and all(close(got[n], local[n]) for n in wrong):
        raise CheckFailed(f"{where}: rank {r}: after {_who(kind)} the gradients of {fmt_names(wrong)} are still this "
                          f"rank's own, not the mean over the {ws} ranks",
                          "Each rank only saw its own batch: all-reduce every gradient (SUM, then divide by the "
                          "world size) and make sure the result ends up in param.grad."
                          if kind == "naive" else
                          "Wait for each bucket's all-reduce, divide the flat buffer by the world size, and copy its "
                          "slices back into every parameter's .grad in finish_gradient_sync().")
    if all(float(got[n].abs().max()) == 0.0 for n in wrong) and kind == "bucketed" and launched_zeros:
        raise CheckFailed(f"{where}: rank {r}: the gradients of {fmt_names(wrong)} are zero after {_who(kind)}, and "
                          f"every bucket this rank all-reduced held only zeros when it was launched: the buckets were "
                          f"filled before autograd had written .grad",
                          "A hook registered with register_hook runs before autograd writes .grad: fill the bucket "
                          "with the gradient the hook receives (its argument), or use "
                          "register_post_accumulate_grad_hook, which runs once .grad holds it.")
    if all(float(got[n].abs().max()) == 0.0 for n in wrong):
        raise CheckFailed(f"{where}: rank {r}: the gradients of {fmt_names(wrong)} are zero after {_who(kind)}",
                          "Write the averaged values back into the gradients (param.grad.copy_(...)) after waiting "
                          "for the all-reduce; do not zero them.")
    worst = max(wrong, key=lambda n: float((got[n].double() - want[n].double()).abs().max()))
    raise CheckFailed(f"{where}: rank {r}: after {_who(kind)} the gradients of {fmt_names(wrong)} differ from the "
                      f"mean over the ranks (e.g. {worst}: {float(got[worst].double().norm()):.4g} vs "
                      f"{float(want[worst].double().norm()):.4g} in norm)",
                      "After the sync every .grad must be the mean of the ranks' gradients for the same parameter.")


def judge(run, kind: str) -> str:
    ws = run.world_size
    for i, expected in enumerate(run.expected):
        sent = [x["scenarios"][i] for x in run.inputs]
        title = sent[0]["title"]
        where = f"scenario {i + 1} ({title})"
        if kind == "bucketed":     # every rank's start first: a rank that kept its own spoils everyone's mean
            for o in run.ranks:
                _after_init(kind, o.rank, o.result["scenarios"][i]["after_init"], [s["model"]["state"] for s in sent],
                            where)
        for o in run.ranks:
            r, res = o.rank, o.result["scenarios"][i]
            for step, (got, want) in enumerate(zip(res["grads"], expected["grads"])):
                names = [n for n in want if not close(got.get(n), want[n])]
                if names:
                    _diagnose_grads(kind, r, ws, got, want, expected["local"][step][r],
                                    f"{where}, step {step + 1}", sent[r], _launched_zeros(res.get("spy"), step))
            wrong = mismatched(res["state"], expected["final"])
            if wrong:
                raise CheckFailed(f"{where}: rank {r}: after {len(res['grads'])} steps {fmt_names(wrong)} differ from "
                                  f"single-process training on all the ranks' batches",
                                  f"Every rank must end with the same weights: the same start (rank 0's) and, after "
                                  f"every backward, the mean gradient ({_who(kind)}).")
    n = len(run.expected)
    what = ("allreduce_gradients() averaged every gradient" if kind == "naive" else
            f"BucketedDDP matched single-process training in {n} scenarios (bucket caps below one parameter, above "
            f"the whole model and in between; a buffer; a parameter without gradient)")
    if kind == "naive":
        what += (f" over {ws} rank(s): every step's gradients and the final weights match single-process training on "
                 f"all the ranks' batches")
    return what + f" (each rank held only its own batches{'' if kind == 'naive' else ' and initial weights'})"
