"""EuroSAT data as the notebooks and scripts load it: train/validation/test splits of the prepared dataset, and
the synthetic set generated in memory.

Making the dataset (download, a given archive, or the offline synthetic PNGs) is `prepare.py`
(`course data` calls it); the synthetic images' generator is `synthetic.py`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

# torchvision's order (sorted folder names), so labels mean the same thing on real and synthetic data.
CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
IMAGE_SIZE = 64
DATA_DIR_ENV = "COURSE_DATA_DIR"
MANIFEST = "dataset.json"               # written last: its presence means "prepared and complete"
REAL_NAME = "EuroSAT"
SYNTHETIC_NAME = "synthetic EuroSAT-like"
SYNTHETIC_FOLDER = "eurosat-synthetic"
REAL_FOLDER = "eurosat"                 # torchvision's layout: <root>/eurosat/2750/<class>/*.jpg
FIX = ("Run `course data` in a terminal (or `course data --archive PATH/EuroSAT.zip` "
       "for the real EuroSAT archive)")


class DataError(RuntimeError):
    """The dataset is missing, incomplete or corrupt; the message says how to fix it."""


class Splits(NamedTuple):
    train: "EuroSATTensors"
    val: "EuroSATTensors"
    test: "EuroSATTensors"
    name: str          # which dataset: "EuroSAT" or "synthetic EuroSAT-like"
    n_images: int      # images in the prepared dataset (before `limit`)


def data_root() -> Path:
    """Where the dataset lives: $COURSE_DATA_DIR, else <repo>/data."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[1] / "data"


# --------------------------------------------------------------------------- datasets


class EuroSATTensors(Dataset):
    """Decoded images kept as uint8 (N, 3, 64, 64); items are normalised float images and int labels.

    Keeping uint8 in memory (12 KB per image) and normalising per item keeps even the full
    27,000-image EuroSAT small enough to hold in every rank's memory.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        self.images, self.labels = images, labels
        self.mean, self.std = mean.view(3, 1, 1), std.view(3, 1, 1)
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i].float() / 255 - self.mean) / self.std, int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All items at once: (float images (N, 3, 64, 64), int64 labels (N,))."""
        return (self.images.float() / 255 - self.mean) / self.std, self.labels.clone()


def load_splits(root: str | Path | None = None, *, seed: int = 0, limit: int | None = None,
                fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Splits:
    """Train/validation/test splits of the prepared dataset (real or synthetic).

    The split is a permutation drawn from `torch.Generator().manual_seed(seed)`, so every
    process and every run gets the same split. `limit` keeps that many images (a random,
    seeded subset) for fast runs. Normalisation uses the train split's per-channel statistics.
    Raises DataError, with how to fix it, if the dataset is missing or corrupt.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    root = Path(root) if root is not None else data_root()
    manifest = _read_manifest(root)
    folder = _resolve_folder(root, manifest)
    files, labels = list_images(folder)
    n_total = len(files)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    if limit is not None:
        order = order[:max(int(limit), 0)]
    n = len(order)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise ValueError(f"limit={limit} leaves an empty split; use at least {math.ceil(3 / min(fractions))} images")

    images = _decode(root, folder, files, order)
    labels = labels[order]
    mean, std = _channel_stats(images[:n_train])
    cut = [0, n_train, n_train + n_val, n]
    parts = [EuroSATTensors(images[a:b], labels[a:b], mean, std) for a, b in zip(cut, cut[1:])]
    return Splits(*parts, name=manifest.get("name", REAL_NAME), n_images=n_total)


def _channel_stats(images: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images in [0, 1], in chunks (no full float copy of the set)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for part in images.split(chunk):
        part = part.double() / 255
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


def describe(splits: Splits) -> str:
    """One line: which dataset, how many images, and how many in each split."""
    used = len(splits.train) + len(splits.val) + len(splits.test)
    count = f"{used:,} images" if used == splits.n_images else f"{used:,} of {splits.n_images:,} images"
    note = (" (offline stand-in; `course data --archive EuroSAT.zip` gives the real one)"
            if splits.name == SYNTHETIC_NAME else "")
    return (f"Dataset: {splits.name}{note}, {count}: train {len(splits.train):,} / "
            f"val {len(splits.val):,} / test {len(splits.test):,}")


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.exists():
        if (root / REAL_FOLDER / "2750").is_dir():      # extracted by hand, torchvision's layout
            return {"name": REAL_NAME, "folder": f"{REAL_FOLDER}/2750"}
        raise DataError(f"No EuroSAT dataset in {root} (no {MANIFEST}). {FIX}, "
                        "or call eurosat.prepare.prepare() in the notebook.")
    try:
        manifest = json.loads(path.read_text())
        manifest["folder"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"The dataset description {path} is damaged ({exc}). "
                        f"{FIX.replace('course data', 'course data --force')}.") from None
    return manifest


def _resolve_folder(root: Path, manifest: dict) -> Path:
    folder = Path(manifest["folder"])
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        raise DataError(f"The dataset folder {folder} is missing. {FIX.replace('course data', 'course data --force')}.")
    return folder


def list_images(folder: Path) -> tuple[list[Path], torch.Tensor]:
    """ImageFolder layout: <folder>/<class>/<image>, classes in CLASSES order, files sorted."""
    missing = [c for c in CLASSES if not (folder / c).is_dir()]
    if missing:
        raise DataError(f"The dataset in {folder} has no folder for {', '.join(missing)}. "
                        f"{FIX.replace('course data', 'course data --force')}.")
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif"))
        if not found:
            raise DataError(f"The dataset folder {folder / name} has no images. "
                            f"{FIX.replace('course data', 'course data --force')}.")
        files += found
        labels += [label] * len(found)
    return files, torch.tensor(labels)


def _decode(root: Path, folder: Path, files: list[Path], order: torch.Tensor) -> torch.Tensor:
    """uint8 images (len(order), 3, 64, 64) for files[order]; the full set is cached on disk."""
    stats = [(str(f.relative_to(folder)), *_size_mtime(f)) for f in files]
    key = hashlib.sha1(json.dumps([str(folder), stats]).encode()).hexdigest()[:16]
    cache = root / ".cache" / f"images-{key}.pt"
    if cache.exists():
        try:
            return torch.load(cache, weights_only=True)[order]
        except Exception:                  # a damaged cache is only a cache: decode again
            pass
    full = len(order) == len(files)
    wanted = list(range(len(files))) if full else order.tolist()
    images = torch.empty(len(wanted), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for out, i in enumerate(_maybe_progress(wanted, "Decoding images")):
        images[out] = _decode_one(files[i])
    if not full:
        return images
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(images, tmp)
        os.replace(tmp, cache)             # atomic: ranks that load at the same time never see half a file
    except OSError:                        # a read-only data folder: no cache, no harm
        pass
    return images[order]


def _maybe_progress(items: list, desc: str, at_least: int = 5000):
    """A progress bar for long decodes (the full real EuroSAT) where bars are shown; else the items."""
    from .train import progress_bar

    return progress_bar(items, desc=desc, unit="img") if len(items) >= at_least else items


def _size_mtime(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _decode_one(path: Path) -> torch.Tensor:
    """uint8 (3, 64, 64) RGB; any size or mode is converted (the real EuroSAT is 64x64 JPEG already)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"The dataset is damaged: {path} cannot be read ({reason}). "
                        f"{FIX.replace('course data', 'course data --force')}.") from None


def synthetic_tensors(n: int, *, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` synthetic EuroSAT-like images in memory: (float (n, 3, size, size) in [0, 1], int64 labels).

    Balanced labels (counts differ by at most one), in a seeded shuffled order; the same
    generator as the PNGs that `prepare(source="synthetic")` writes.
    """
    from .synthetic import class_images

    counts = [n // len(CLASSES) + (c < n % len(CLASSES)) for c in range(len(CLASSES))]
    images = torch.cat([class_images(c, k, seed, size) for c, k in enumerate(counts)])
    labels = torch.cat([torch.full((k,), c, dtype=torch.int64) for c, k in enumerate(counts)])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return images[order].float() / 255, labels[order]
