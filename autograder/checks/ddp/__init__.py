"""04_ddp (ddp_parts.py, ddp_train.py): what the trusted side of the DDP checks shares.

Models travel as specs with their weights (rank/toolkit.py's build_model rebuilds them in
the rank); the weights are drawn here from the call's secret. Files come back as bytes and
are read here with torch.load(weights_only=True), which refuses anything but tensors and
plain containers: the learner's process made those bytes.
"""
from __future__ import annotations

from .. import one_thread, secret_statistics  # noqa: F401 (one_thread: the assignment's checks import it from here)
from ..replies import reads_rank_results  # noqa: F401 (the assignment's checks import it from here)
from ..saved import is_state_dict, load_saved  # noqa: F401 (the assignment's checks import them from here)

# A small EuroSATNet: the exercises test the wrapping, not the model, and tiny tensors keep the checks fast.
SMALL = {"kind": "eurosat", "width": 4, "blocks": 2}


def expected_devices(trial) -> list[str]:
    """Each rank's device under the call's profile: cuda:LOCAL_RANK with NCCL, else cpu (rank/device.py's rule)."""
    from ...course import load_course
    from ...rank.device import device_name

    cuda = load_course().profiles[trial.profile].backend == "nccl"
    per_node = trial.world_size // trial.nnodes
    return [device_name(r % per_node, cuda) for r in range(trial.world_size)]


def random_state(generator, *, norm: bool, width: int = SMALL["width"], blocks: int = SMALL["blocks"]) -> dict:
    """The state dict of a small EuroSATNet with weights (and BatchNorm statistics) drawn from `generator`.

    PyTorch's own initialisation, seeded from the generator, so the weights look like a real model's;
    the global RNG is left as it was (the harness process may be a notebook kernel).
    """
    import torch

    from eurosat.model import EuroSATNet

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EuroSATNet(width=width, blocks=blocks, norm=norm)
    return secret_statistics({k: v.detach().clone() for k, v in model.state_dict().items()}, generator)


def spec(state: dict, *, norm: bool) -> dict:
    """What a rank needs to rebuild the model: its shape and its exact weights."""
    return {**SMALL, "norm": norm, "state": state}


def max_difference(got: dict, want: dict) -> float:
    """Largest absolute difference over the floating-point tensors two state dicts share (inf if keys differ)."""
    import torch

    if set(got) != set(want):
        return float("inf")
    worst = 0.0
    for key, w in want.items():
        g = got[key]
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            return float("inf")
        if w.is_floating_point():
            worst = max(worst, (g.double() - w.double()).abs().max().item() if w.numel() else 0.0)
        elif not torch.equal(g, w):
            return float("inf")
    return worst


def differing(got: dict, want: dict, tolerance: float = 0.0) -> list[str]:
    """Names of the tensors of `want` that `got` lacks or holds otherwise (beyond `tolerance` for floats)."""
    import torch

    def same(g, w) -> bool:
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            return False
        if w.is_floating_point() and g.is_floating_point():
            return w.numel() == 0 or (g.double() - w.double()).abs().max().item() <= tolerance
        return bool(torch.equal(g, w))

    return [k for k, w in want.items() if k not in got or not same(got[k], w)]


def strict_load_problem(state: dict, model_spec: dict) -> str:
    """Why `state` does not load into the plain model with strict=True ("" when it does)."""
    from eurosat.model import EuroSATNet

    plain = EuroSATNet(width=model_spec["width"], blocks=model_spec["blocks"], norm=model_spec["norm"])
    try:
        plain.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: load_state_dict raises RuntimeError, or others on odd values
        return str(exc).strip().splitlines()[0][:300] + " ..."
    return ""
