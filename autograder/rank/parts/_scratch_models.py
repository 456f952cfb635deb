"""The models of 07_from_scratch's checks, built from specs on both sides of the trust boundary (the harness
computes the expected values with the same builders the rank parts use)."""
from __future__ import annotations

import time


def build_net(spec: dict):
    """A small MLP with uneven layers: {"sizes": [in, h, ..., out], "buffer": bool, "unused": bool, "dtype"?,
    "state"?} ("dtype": "float64" for a model in double precision).

    "buffer": a constant input shift registered as a buffer (used in forward, never trained);
    "unused": a small layer `side`, registered between the first layer and the rest, that forward
    never calls (its parameters' .grad stay None).
    """
    import torch
    from torch import nn

    class ScratchNet(nn.Module):
        def __init__(self, sizes, buffer, unused):
            super().__init__()
            self.first = nn.Linear(sizes[0], sizes[1])
            if unused:
                self.side = nn.Linear(2, 3)
            self.rest = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[1:], sizes[2:]))
            if buffer:
                self.register_buffer("shift", torch.zeros(sizes[0]))

        def forward(self, x):
            if hasattr(self, "shift"):
                x = x - self.shift
            x = self.first(x)
            for layer in self.rest:
                x = layer(torch.tanh(x))
            return x

    model = ScratchNet([int(s) for s in spec["sizes"]], bool(spec.get("buffer")), bool(spec.get("unused")))
    if spec.get("dtype") == "float64":
        model = model.double()
    if spec.get("state") is not None:
        model.load_state_dict(spec["state"], strict=True)
    return model


class _PaceFn:
    """Identity whose forward and backward take a known time per row (time.sleep) and record when they ran."""

    @staticmethod
    def make():
        import torch

        class PaceFn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, pace):
                ctx.pace = pace
                start = time.perf_counter()
                time.sleep(pace.forward_s * x.shape[0])
                pace.events.append(["F", start, time.perf_counter()])
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                pace = ctx.pace
                start = time.perf_counter()
                time.sleep(pace.backward_s * grad.shape[0])
                pace.events.append(["B", start, time.perf_counter()])
                return grad, None

        return PaceFn


def build_stage(spec: dict, *, paced: bool = True):
    """One pipeline stage: {"layers": [["linear", i, o] | ["tanh"] | ["flatten"] | ["unflatten", shape] |
    ["pace", forward_s_per_row, backward_s_per_row], ...], "state"?}. Unpaced (the harness's reference):
    the pace layers are plain identities."""
    import torch
    from torch import nn

    fn = _PaceFn.make() if paced else None

    class Pace(nn.Module):
        def __init__(self, forward_s, backward_s):
            super().__init__()
            self.forward_s, self.backward_s, self.events = float(forward_s), float(backward_s), []

        def forward(self, x):
            return fn.apply(x, self) if fn is not None else x

    layers = []
    for kind, *args in spec["layers"]:
        if kind == "linear":
            layers.append(nn.Linear(int(args[0]), int(args[1])))
        elif kind == "tanh":
            layers.append(nn.Tanh())
        elif kind == "flatten":
            layers.append(nn.Flatten())
        elif kind == "unflatten":
            layers.append(nn.Unflatten(1, tuple(int(s) for s in args[0])))
        elif kind == "pace":
            layers.append(Pace(*args))
        else:
            raise ValueError(f"unknown layer {kind!r}")
    stage = nn.Sequential(*layers)
    if spec.get("state") is not None:
        stage.load_state_dict(spec["state"], strict=True)
    torch.nn.Module.train(stage)
    return stage
