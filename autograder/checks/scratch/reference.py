"""The trusted references of 07_from_scratch (not in the student pack): what a correct implementation computes.

- train_data_parallel: data parallelism in one process. At every step each rank's batch goes
  through the model on its own (never one forward over the concatenated batch), the gradients
  are averaged over the ranks (in float64), and SGD steps once. This is what allreduce_gradients
  and BucketedDDP must reproduce, starting from rank 0's weights and buffers.
- train_optimizer: the same, with a plain optimizer (Adam, SGD with momentum) over every
  parameter in one process: ZeRO-1 must give the same weights, its ranks holding disjoint
  shares of this optimizer's state.
- gpipe_gradients: the whole pipeline in one process, microbatch by microbatch, the loss the
  mean of the microbatch losses: the gradients are the full batch's (ScheduleGPipe's scaling).
"""
from __future__ import annotations


def _grads(model) -> dict:
    return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _mean(per_rank: list[dict]) -> dict:
    import torch

    out = {}
    for name, first in per_rank[0].items():
        out[name] = None if first is None else torch.stack([g[name].double() for g in per_rank]).mean(0).to(first.dtype)
    return out


def train_data_parallel(spec: dict, state: dict, batches: list[list], lr: float, optimizer: tuple | None = None,
                        grad_scale: float = 1.0) -> dict:
    """batches[r][s] = rank r's (x, y) at step s. Returns per step the mean gradients and each rank's own
    gradients (for hints), and the final state (parameters and buffers). `grad_scale`: the optimizer steps on the
    mean times this (a mistake's what-if: N for gradients summed instead of averaged)."""
    import torch
    import torch.nn.functional as F

    from ...rank.parts._scratch_models import build_net
    from ...rank.toolkit import state_of

    model = build_net({**spec, "state": state})
    if optimizer is None:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        cls, kwargs = optimizer
        opt = cls(model.parameters(), **kwargs)
    out = {"grads": [], "local": [], "losses": []}
    for step in range(len(batches[0])):
        per_rank, losses = [], []
        for rank_batches in batches:
            model.zero_grad(set_to_none=True)
            x, y = rank_batches[step]
            loss = F.mse_loss(model(x), y)
            loss.backward()
            per_rank.append(_grads(model))
            losses.append(float(loss.detach()))
        mean = _mean(per_rank)
        for name, p in model.named_parameters():
            p.grad = None if mean[name] is None else mean[name] * grad_scale
        opt.step()
        out["grads"].append(mean)
        out["local"].append(per_rank)
        out["losses"].append(losses)
    out["final"] = state_of(model)
    out["state_bytes"] = {name: sum(v.numel() * v.element_size() for v in opt.state[p].values()
                                    if isinstance(v, torch.Tensor))
                          for name, p in model.named_parameters()}
    return out


def train_optimizer(spec: dict, state: dict, batches: list[list], cls_name: str, kwargs: dict,
                    grad_scale: float = 1.0) -> dict:
    import torch

    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[cls_name]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return train_data_parallel(spec, state, batches, 0.0, optimizer=(cls, kwargs), grad_scale=grad_scale)


def gpipe_gradients(stages: list[dict], inputs, labels, n_microbatches: int) -> dict:
    """{"loss": mean microbatch loss, "grads": [stage's {name: grad}, ...]} of one GPipe step in one process."""
    import torch
    import torch.nn.functional as F

    from ...rank.parts._scratch_models import build_stage

    modules = [build_stage(s, paced=False) for s in stages]
    losses = []
    for x, y in zip(inputs.chunk(n_microbatches), labels.chunk(n_microbatches)):
        for module in modules:
            x = module(x)
        losses.append(F.cross_entropy(x, y))
    total = torch.stack(losses).mean()       # = sum of (loss_i / m): ScheduleGPipe's scaling
    total.backward()
    return {"loss": float(total.detach()), "grads": [_grads(m) for m in modules],
            "microbatch_losses": [float(x.detach()) for x in losses]}
