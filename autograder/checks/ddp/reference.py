"""Trusted references for 04_ddp: what a correct DDP implementation produces, computed in one process.

Imported only inside expected() (never by a rank, and not shipped in the student pack).
The script-level reference of ddp.train is not here: it is the source notebook's own
ddp_parts.py and ddp_train.py, run as a job beside the learner's (checks/ddp/train.py).
"""
from __future__ import annotations


def sgd(start: dict, model_spec: dict, batches: list, *, lr: float, momentum: float) -> dict:
    """SGD with momentum from the weights `start`, one step per (images, labels) batch; the final state dict.

    With the global batches this is what DDP must reproduce: DDP averages the ranks' gradients
    of their mean losses, which for equal slices is the gradient of the mean loss over the
    global batch. With one rank's slices it is that rank training alone.

    The update is torch.optim.SGD's (dampening 0, no Nesterov), written out: the optimizer's
    first step imports torch._dynamo, seconds of CPU in the harness while the ranks start up.
    """
    import torch
    import torch.nn.functional as F

    from ...rank.toolkit import build_model

    model = build_model({**model_spec, "state": start})
    params = list(model.parameters())
    velocity = [None] * len(params)
    for images, labels in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                velocity[i] = g.clone() if velocity[i] is None else velocity[i].mul_(momentum).add_(g)
                p.add_(velocity[i], alpha=-lr)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def metrics(counts: list[tuple[int, int, float]], rank: int) -> dict[str, tuple[float, float]]:
    """(accuracy, mean loss) that reduce_metrics returns on `rank`: "right", and each usual mistake by name.

    `counts[r]` is rank r's (correct, total, loss_sum). The right answer sums every count over
    the ranks before dividing: the ranks hold different numbers of samples.
    """
    c, t, loss = (sum(x[i] for x in counts) for i in range(3))
    mine = counts[rank]
    means = [(x[0] / x[1], x[2] / x[1]) for x in counts]
    return {
        "right": (c / t, loss / t),
        "local": (mine[0] / mine[1], mine[2] / mine[1]),
        "summed": (c / t, loss),
        "summed_means": (c / t, sum(m[1] for m in means)),
        "mean_of_means": (sum(m[0] for m in means) / len(counts), sum(m[1] for m in means) / len(counts)),
        "loss_by_local_count": (c / t, loss / mine[1]),
    }
