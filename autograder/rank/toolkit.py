"""Helpers for the rank parts (and the harness, where both must build the same thing): the error line,
full float32, patching a function for the length of a call, environment variables, a script run's
own store, and models rebuilt from the specs and weights the harness sends.
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def error_line(exc: BaseException) -> str:
    """'TypeName: first line of the message', also for an exception without a message (a bare assert)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def describe_exception(exc: BaseException, learner_file: str | None) -> dict[str, Any]:
    """Type, message, the learner's line where it was raised, and the traceback (trimmed)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(frames)
                  if learner_file and Path(f.filename).name == Path(learner_file).name), "")
    return {"type": type(exc).__name__, "message": str(exc).strip()[:2000], "line": error_line(exc),
            "where": where, "traceback": "".join(traceback.format_exception(exc))[-6000:]}


@contextmanager
def float32():
    """Full float32 on GPUs (no TF32) for the block, so results compare with a CPU reference; restored after."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def patched(owner, name: str, replacement, learner=None):
    """Replace owner.name for the block; also any name in the learner's module bound to the original
    (`from torch import save` binds the function itself, which patching the module would miss)."""
    original = getattr(owner, name)
    aliases = [k for k, v in vars(learner).items() if v is original] if learner is not None else []
    setattr(owner, name, replacement)
    for k in aliases:
        setattr(learner, k, replacement)
    try:
        yield original
    finally:
        setattr(owner, name, original)
        for k in aliases:
            setattr(learner, k, original)


@contextmanager
def environment(values: dict[str, str | None]):
    """Set (or, for None, remove) environment variables for the block."""
    saved = {k: os.environ.get(k) for k in values}

    def apply(items):
        for k, v in items.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    try:
        yield
    finally:
        apply(saved)


@contextmanager
def script_store(port: int, rank: int, world: int, timeout: float = 60.0, patience: float = 3.0):
    """The torchrun variables for one run of a learner's script on `world` ranks, with its store already up.

    Rank 0 hosts a fresh TCPStore on `port` before the script starts, and every rank's init_process_group
    joins it as a client (TORCHELASTIC_USE_AGENT_STORE, as under torchrun's agent); the other ranks wait
    here, polling every millisecond, until it accepts connections. Were rank 0's init_process_group to start
    the server, a rank that reached it ~20 ms earlier would be refused and retry after a back-off of 0.3-0.6 s
    (measured on torch 2.14): a random stall in a timed run of half a second. A rank waits at most `patience`
    seconds: a rank 0 that has come and gone already (a script that fails at once, as a blank stub does) must
    not hold the others for the store's whole timeout.
    """
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = None
    if rank == 0:
        store = TCPStore("127.0.0.1", port, world, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=timeout))
    else:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.001)
    try:
        with environment({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                          "WORLD_SIZE": str(world), "TORCHELASTIC_USE_AGENT_STORE": "True"}):
            yield
    finally:
        del store


# ------------------------------------------------------------------ models from specs

def build_model(spec: dict):
    """A model from a spec the harness sent: {"kind": "eurosat", "width", "blocks", "norm", "state"?}, or
    {"kind": "mlp", "width", "hidden", "blocks", "state"?}: `blocks` residual-free MLP blocks (Linear width ->
    hidden, GELU, Linear hidden -> width), then a Linear to 10 classes: activations (batch x hidden per block)
    that dwarf the weights, for checks that measure what activation checkpointing saves.

    With "state" (a state dict) the weights are loaded exactly; without it the model keeps
    the initialisation of whatever random state is current. With "dtype": "float64" the model is in float64
    (the state is loaded into it: float32 values convert exactly).
    """
    from torch import nn

    from eurosat.model import EuroSATNet

    kind = spec.get("kind", "eurosat")
    if kind == "eurosat":
        model = EuroSATNet(width=int(spec.get("width", 16)), blocks=int(spec.get("blocks", 3)),
                           norm=bool(spec.get("norm", True)))
    elif kind == "mlp":
        width, hidden = int(spec["width"]), int(spec["hidden"])
        model = nn.Sequential(*[nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
                                for _ in range(int(spec["blocks"]))], nn.Linear(width, 10))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    if spec.get("dtype") == "float64":
        model = model.double()
    if spec.get("state") is not None:
        model.load_state_dict(spec["state"], strict=True)
    return model


def state_of(module) -> dict:
    """A detached CPU copy of a module's state dict (parameters and buffers), ready to send."""
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def secret_synthetic_tensors(inputs: dict):
    """(eurosat.data.synthetic_tensors, a stand-in for it) for a script run on the harness's secret data.

    `inputs["train"]` and `inputs["val"]` are (uint8 images, labels) for seeds inputs["seed"] and +1: the
    stand-in returns them (as synthetic_tensors' float values, copies) when asked for that size and seed, and
    anything else from the real function.
    """
    import eurosat.data

    seed, given = inputs["seed"], {}
    for name, offset in (("train", 0), ("val", 1)):
        images, labels = inputs[name]
        given[len(labels), seed + offset] = (images.float() / 255, labels)   # exactly synthetic_tensors' values
    real = eurosat.data.synthetic_tensors

    def injected(n, *, seed=0, size=eurosat.data.IMAGE_SIZE):
        found = given.get((n, seed)) if size == eurosat.data.IMAGE_SIZE else None
        return (found[0].clone(), found[1].clone()) if found else real(n, seed=seed, size=size)

    return real, injected
