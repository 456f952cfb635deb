"""Messages between the trusted harness and the rank drivers: framing and a pickle-free codec.

A message is a 4-byte big-endian length, then the encoded value. The codec carries
None, bool, int, float (nan and inf included), str, bytes, lists, tuples (as lists),
dicts with str keys, and torch tensors (as dtype, shape and raw bytes). Decoding never
runs code: the harness decodes what the learner's processes send, and a pickle would
let them run anything in the harness.
"""
from __future__ import annotations

import json
import socket
import struct
from typing import Any

MAGIC = b"CRS1"
HEADER = struct.Struct(">I")
MAX_MESSAGE = 512 * 2**20   # bytes; a rank that sends more is treated as broken


class WireError(Exception):
    """A message that is too large, truncated, or not in this format."""


def _tensor_bytes(t) -> tuple[str, list[int], bytes]:
    import torch

    t = t.detach().to("cpu").contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:     # numpy has no bfloat16: ship its bits
        raw = t.view(torch.int16).numpy().tobytes()
    else:
        raw = t.numpy().tobytes()
    return dtype, list(t.shape), raw


def encode(value: Any) -> bytes:
    """Encode `value` (see the module docstring for what it may hold)."""
    blobs: list[bytes] = []

    def walk(v):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v if abs(v) < 2**53 else {"__int__": str(v)}
        if isinstance(v, float):
            return v if v == v and abs(v) != float("inf") else {"__float__": repr(v)}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise TypeError("dict keys must be strings")
            return {"__dict__": {k: walk(x) for k, x in v.items()}}
        if isinstance(v, (bytes, bytearray)):
            blobs.append(bytes(v))
            return {"__bytes__": len(blobs) - 1}
        if type(v).__module__.startswith("torch") and hasattr(v, "dtype") and hasattr(v, "shape"):
            dtype, shape, raw = _tensor_bytes(v)
            blobs.append(raw)
            return {"__tensor__": len(blobs) - 1, "dtype": dtype, "shape": shape}
        if hasattr(v, "item") and callable(v.item):   # numpy scalars
            return walk(v.item())
        raise TypeError(f"cannot send a {type(v).__name__}")

    header = json.dumps({"value": walk(value), "sizes": [len(b) for b in blobs]}).encode()
    return MAGIC + HEADER.pack(len(header)) + header + b"".join(blobs)


def decode(data: bytes) -> Any:
    """The value `encode` encoded; WireError for anything else (never executes anything)."""
    if data[:4] != MAGIC or len(data) < 8:
        raise WireError("not a course message")
    (n,) = HEADER.unpack(data[4:8])
    try:
        header = json.loads(data[8:8 + n])
        sizes = [int(s) for s in header["sizes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"bad header: {exc}") from None
    offsets, pos = [], 8 + n
    for size in sizes:
        offsets.append((pos, pos + size))
        pos += size
    if pos != len(data):
        raise WireError("truncated message")

    def blob(i) -> bytes:
        start, end = offsets[int(i)]
        return data[start:end]

    def walk(v):
        if isinstance(v, list):
            return [walk(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__dict__" in v:
            return {str(k): walk(x) for k, x in v["__dict__"].items()}
        if "__int__" in v:
            return int(v["__int__"])
        if "__float__" in v:
            return float(v["__float__"])
        if "__bytes__" in v:
            return blob(v["__bytes__"])
        if "__tensor__" in v:
            return _tensor(blob(v["__tensor__"]), str(v["dtype"]), [int(s) for s in v["shape"]])
        raise WireError(f"unknown tag in {sorted(v)[:3]}")

    return walk(header["value"])


def _tensor(raw: bytes, dtype: str, shape: list[int]):
    import torch

    kind = getattr(torch, dtype, None)
    if not isinstance(kind, torch.dtype):
        raise WireError(f"unknown dtype {dtype!r}")
    if not raw:
        return torch.empty(shape, dtype=kind)
    if kind == torch.bfloat16:
        return torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16).reshape(shape).clone()
    return torch.frombuffer(bytearray(raw), dtype=kind).reshape(shape).clone()


# ------------------------------------------------------------------ framing

def frame(value: Any) -> bytes:
    """One message as it goes over the wire: its length, then `value` encoded."""
    payload = encode(value)
    return HEADER.pack(len(payload)) + payload


def send(sock: socket.socket, value: Any) -> None:
    sock.sendall(frame(value))


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> Any:
    """One message (blocking)."""
    (n,) = HEADER.unpack(_exactly(sock, HEADER.size))
    if n > MAX_MESSAGE:
        raise WireError(f"message of {n} bytes is over the limit")
    return decode(_exactly(sock, n))


class Reader:
    """Incremental reader for a non-blocking socket: feed bytes, take whole messages."""

    def __init__(self, limit: int = MAX_MESSAGE):
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        out = []
        while len(self.buffer) >= HEADER.size:
            (n,) = HEADER.unpack(self.buffer[:HEADER.size])
            if n > self.limit:
                raise WireError(f"message of {n} bytes is over the limit of {self.limit}")
            if len(self.buffer) < HEADER.size + n:
                break
            payload = bytes(self.buffer[HEADER.size:HEADER.size + n])
            del self.buffer[:HEADER.size + n]
            out.append(decode(payload))
        return out
