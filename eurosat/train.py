"""Training-loop pieces shared by the notebooks and the torchrun scripts: one epoch, evaluation, images/sec."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


@dataclass(frozen=True)
class EpochStats:
    loss: float             # mean loss per sample
    accuracy: float         # fraction of samples classified correctly
    images: int             # samples seen
    seconds: float          # wall time of the epoch
    images_per_sec: float

    def __str__(self) -> str:
        return (f"loss {self.loss:.4f}, accuracy {self.accuracy:.1%}, "
                f"{self.images_per_sec:,.0f} images/s ({self.images:,} in {self.seconds:.1f} s)")


class ImagesPerSecond:
    """Throughput meter: images counted with `update(n)`, time read after the device has finished.

    CUDA runs kernels asynchronously, so the clock is read only after
    `torch.cuda.synchronize`; otherwise the rate would count queued, not finished, work.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.images = 0
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def update(self, n: int) -> None:
        self.images += n

    @property
    def seconds(self) -> float:
        return self._now() - self.start

    @property
    def rate(self) -> float:
        elapsed = self.seconds
        return self.images / elapsed if elapsed > 0 else 0.0


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _launched_from_notebook() -> bool:
    """True in a process that a Jupyter kernel started, e.g. a rank of a `!torchrun` cell.

    Its stderr is the kernel's pseudo-terminal (IPython runs `!` commands under pexpect),
    so it looks like a terminal, but the cell keeps every redraw of a bar as one more line.
    jupyter_client exports JPY_PARENT_PID to the kernel, ipykernel sets MPLBACKEND to its
    inline backend, and the kernel's children inherit both.
    """
    return ("JPY_PARENT_PID" in os.environ
            or os.environ.get("MPLBACKEND", "").startswith("module://matplotlib_inline"))


def show_progress(requested: bool = True) -> bool:
    """Whether to show progress: only if `requested`, and only in a Jupyter kernel or on a terminal.

    Never in logs (stderr not a terminal) nor while nbgrader executes a notebook, where bars
    would only clutter the output.
    """
    if not requested or os.environ.get("NBGRADER_EXECUTION"):
        return False
    return _in_notebook() or sys.stderr.isatty()


LINE_INTERVAL = 30.0   # seconds between two progress lines of a process launched from a notebook


class LineProgress:
    """tqdm's interface as used here (iterate, update, set_postfix, close, disable), printed as whole lines.

    For processes launched from a notebook cell: at most one line every `interval` seconds while
    it runs and one when it ends, so an epoch of a `!torchrun` cell adds one line (two if it lasts
    more than `interval`), where a tqdm bar would add one for every redraw (~10 per second).
    """

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", interval: float = LINE_INTERVAL, file=None):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        self.total = total if total is not None else _len(iterable) if iterable is not None else None
        self.file = file
        self.n = 0
        self.disable = False
        self.postfix = ""
        self.start = self.last = time.perf_counter()
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval and not self._closed:
            self._print(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print(time.perf_counter())

    def _print(self, now: float) -> None:
        from tqdm import tqdm

        self.last = now
        line = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None)
        print(line, file=self.file or sys.stderr, flush=True)


def progress_bar(iterable: Iterable, *, desc: str = "", total: int | None = None, enabled: bool = True,
                 leave: bool = False, unit: str = "batch"):
    """A progress display that suits where the output goes, or a silent pass-through.

    In a Jupyter kernel, tqdm's notebook widget; on a terminal, a tqdm bar redrawn in place; in a
    process launched from a notebook cell (`!torchrun ...`), whole lines (`LineProgress`); in logs
    and under nbgrader, nothing. All four have tqdm's `update`, `set_postfix`, `close`, `disable`.
    """
    if _in_notebook():
        from tqdm.auto import tqdm          # the widget bar; tqdm.auto costs an IPython import elsewhere
    else:
        if show_progress(enabled) and _launched_from_notebook():
            return LineProgress(iterable, desc=desc, total=total, unit=unit)
        from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, unit=unit, disable=not show_progress(enabled))


def train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, *, progress: bool = True, desc: str = "train") -> EpochStats:
    """One pass over `loader` in training mode; loss and accuracy are averaged over samples.

    `loss_fn` must return the batch mean (the default for nn losses); it is weighted by the
    batch size here, so a smaller last batch counts for what it is. Sums stay on the device
    and are read once at the end: a `.item()` per batch would make CUDA wait every step.
    """
    model.train()
    meter = ImagesPerSecond(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    total = _len(loader)
    bar = progress_bar(loader, desc=desc, total=total, enabled=progress)
    for step, (images, labels) in enumerate(bar):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()

        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        meter.update(len(labels))
        if not bar.disable and (step % 10 == 0 or step + 1 == total):   # reading the loss syncs: every 10 steps
            bar.set_postfix(loss=f"{loss_sum.item() / meter.images:.3f}", img_s=f"{meter.rate:,.0f}")
    seconds = meter.seconds
    n = max(meter.images, 1)
    return EpochStats(loss=loss_sum.item() / n, accuracy=correct.item() / n, images=meter.images,
                      seconds=seconds, images_per_sec=meter.images / seconds if seconds > 0 else 0.0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: nn.Module, device: torch.device | str) -> tuple[float, float]:
    """(accuracy, mean loss) over every sample in `loader`, in eval mode (BatchNorm uses running stats).

    Both are sums over samples divided by the number of samples, never a mean of batch
    means: with a smaller last batch, a mean of batch means over-weights that batch.
    The model's training/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += loss_fn(logits, labels).item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        total += len(labels)
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate() got an empty loader")
    return correct / total, loss_sum / total


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Predicted class indices for a batch of images, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    predictions = model(images.to(device)).argmax(dim=1).cpu()
    model.train(was_training)
    return predictions


@torch.no_grad()
def confusion_matrix(model: nn.Module, loader: Iterable, device: torch.device | str,
                     num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, labels in loader:
        predicted = predict(model, images, device)
        matrix += torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).view(num_classes, -1)
    return matrix


def per_class_accuracy(model: nn.Module, loader: Iterable, device: torch.device | str,
                       num_classes: int = 10) -> torch.Tensor:
    """Accuracy of each true class (recall), a float tensor of length num_classes; NaN for absent classes."""
    matrix = confusion_matrix(model, loader, device, num_classes).double()
    return (matrix.diagonal() / matrix.sum(dim=1)).float()


def _len(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
