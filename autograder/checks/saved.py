"""Files the learner's ranks wrote (checkpoints), read on the trusted side: bytes in, tensors and containers out."""
from __future__ import annotations

import io
from typing import Any


def load_saved(raw: bytes) -> tuple[Any, str]:
    """(object, "") from a file's bytes, or (None, why it would not load). Tensors and containers only."""
    import torch

    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True), ""
    except Exception as exc:  # noqa: anything in the bytes may fail to load; the message names it
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items())
