"""EuroSAT data: prepare it (real download, a given archive, or an offline synthetic stand-in) and load splits."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import threading
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
DEFAULT_IMAGES_PER_CLASS = 300          # 3,000 images: a few CPU minutes of training
DATA_DIR_ENV = "COURSE_DATA_DIR"
MANIFEST = "dataset.json"               # written last: its presence means "prepared and complete"
REAL_NAME = "EuroSAT"
SYNTHETIC_NAME = "synthetic EuroSAT-like"
SYNTHETIC_FOLDER = "eurosat-synthetic"
REAL_FOLDER = "eurosat"                 # torchvision's layout: <root>/eurosat/2750/<class>/*.jpg
DOWNLOAD_HOST = "huggingface.co"        # where torchvision.datasets.EuroSAT downloads from
GENERATOR_VERSION = 1                   # bump when the synthetic images change
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
    files, labels = _list_images(folder)
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
                        "or call eurosat.data.prepare() in the notebook.")
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


def _list_images(folder: Path) -> tuple[list[Path], torch.Tensor]:
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


# --------------------------------------------------------------------------- prepare


def prepare(root: str | Path | None = None, *, source: str = "auto", archive: str | Path | None = None,
            images_per_class: int = DEFAULT_IMAGES_PER_CLASS, seed: int = 0, force: bool = False,
            progress: bool = True) -> Path:
    """Make a dataset ready under `root` (default data_root()) and return `root`.

    source="auto": the real EuroSAT from `archive` if given, else downloaded through
    torchvision if the download server answers within seconds, else the synthetic set.
    source="synthetic": the deterministic offline EuroSAT-like set (`images_per_class`
    PNGs per class, from `seed`). source="eurosat": the real one or a DataError.
    Idempotent: a prepared dataset (its manifest is written last) that answers the request is
    kept unless `force`: the real EuroSAT answers "auto"; a synthetic set answers a request
    for the same size and seed. Prints which dataset is ready and how many images it has.
    """
    if source not in ("auto", "synthetic", "eurosat"):
        raise ValueError(f"source must be 'auto', 'synthetic' or 'eurosat', got {source!r}")
    root = Path(root) if root is not None else data_root()
    root.mkdir(parents=True, exist_ok=True)
    current = _current(root)
    if current and not force:
        if _satisfies(current, source, archive is not None, images_per_class, seed):
            print(f"Dataset ready: {current['name']}, {current['n_images']:,} images in "
                  f"{root} (already prepared; use --force / force=True to rebuild).")
            return root
        print(f"Replacing the prepared {current['name']} ({current['n_images']:,} images): another dataset "
              "was asked for.")

    shutil.rmtree(root / ".cache", ignore_errors=True)   # decoded images of the dataset being replaced
    extracted = _find_class_folder(root / REAL_FOLDER) if (root / REAL_FOLDER).is_dir() else None
    if archive is not None:
        manifest = _from_archive(root, Path(archive), progress)
    elif source in ("auto", "eurosat") and extracted is not None:     # unpacked by hand, or downloaded before
        manifest = {"name": REAL_NAME, "kind": "eurosat", "source": "found extracted",
                    "folder": extracted.relative_to(root).as_posix(), "n_images": len(_list_images(extracted)[0])}
    elif source in ("auto", "eurosat") and _reachable(DOWNLOAD_HOST):
        try:
            manifest = _download(root)
        except Exception as exc:
            if source == "eurosat":
                raise DataError(f"Downloading EuroSAT failed ({exc}). Download EuroSAT.zip elsewhere and run "
                                "`course data --archive PATH/EuroSAT.zip`.") from None
            print(f"Downloading EuroSAT failed ({exc}); generating the synthetic stand-in instead.")
            manifest = _write_synthetic(root, images_per_class, seed, progress)
    elif source == "eurosat":
        raise DataError(f"Cannot reach {DOWNLOAD_HOST} to download EuroSAT. Download EuroSAT.zip elsewhere "
                        "and run `course data --archive PATH/EuroSAT.zip`.")
    else:
        if source == "auto":
            print(f"EuroSAT cannot be downloaded here ({DOWNLOAD_HOST} unreachable) and no --archive was "
                  "given: generating the synthetic EuroSAT-like stand-in.")
        manifest = _write_synthetic(root, images_per_class, seed, progress)
    _save_manifest(root, manifest)
    print(f"Dataset ready: {manifest['name']}, {manifest['n_images']:,} images in "
          f"{root / manifest['folder'] if not Path(manifest['folder']).is_absolute() else manifest['folder']}.")
    return root


def _satisfies(current: dict, source: str, archive: bool, images_per_class: int, seed: int) -> bool:
    """Does the prepared dataset answer this request? (Then prepare() leaves it alone.)"""
    if current.get("kind") == "eurosat":
        return source != "synthetic"          # the real one answers "auto" and "eurosat", archive or not
    if archive or source == "eurosat":
        return False
    return (current.get("images_per_class"), current.get("seed"), current.get("generator_version")) == (
        images_per_class, seed, GENERATOR_VERSION)


def _current(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        return manifest if "n_images" in manifest and "folder" in manifest else None
    except (OSError, ValueError):
        return None


def _save_manifest(root: Path, manifest: dict) -> None:
    manifest = {**manifest, "classes": list(CLASSES)}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection opens within `timeout` s (DNS included, hence the thread)."""
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _download(root: Path) -> dict:
    from torchvision.datasets import EuroSAT

    (root / MANIFEST).unlink(missing_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)           # a stalled connection fails instead of hanging forever
    try:
        dataset = EuroSAT(str(root), download=True)
    except BaseException:
        shutil.rmtree(root / REAL_FOLDER, ignore_errors=True)
        raise
    finally:
        socket.setdefaulttimeout(previous)
    return {"name": REAL_NAME, "kind": "eurosat", "source": "torchvision download",
            "folder": f"{REAL_FOLDER}/2750", "n_images": len(dataset)}


def _from_archive(root: Path, archive: Path, progress: bool) -> dict:
    """The real EuroSAT RGB from a zip/tar (extracted under <root>/eurosat) or an extracted folder."""
    if not archive.exists():
        raise DataError(f"The archive {archive} does not exist. Give the path of the EuroSAT RGB zip "
                        "(EuroSAT.zip or EuroSAT_RGB.zip): `course data --archive PATH`.")
    (root / MANIFEST).unlink(missing_ok=True)
    if archive.is_dir():
        folder = _find_class_folder(archive)
        if folder is None:
            raise DataError(f"{archive} has no EuroSAT class folders ({CLASSES[0]}, {CLASSES[1]}, ...).")
        record = str(folder.resolve())
    else:
        from torchvision.datasets.utils import extract_archive

        target = root / REAL_FOLDER
        shutil.rmtree(target, ignore_errors=True)
        print(f"Extracting {archive} ...")
        try:
            extract_archive(str(archive), str(target))
        except Exception as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise DataError(f"Cannot extract {archive} ({exc}): is it the EuroSAT RGB zip?") from None
        folder = _find_class_folder(target)
        if folder is None:
            shutil.rmtree(target, ignore_errors=True)
            raise DataError(f"{archive} has no EuroSAT class folders ({CLASSES[0]}, {CLASSES[1]}, ...): "
                            "is it the EuroSAT RGB zip (not the multispectral one)?")
        record = folder.relative_to(root).as_posix()
    files, _ = _list_images(folder)
    return {"name": REAL_NAME, "kind": "eurosat", "source": f"archive {archive}", "folder": record,
            "n_images": len(files)}


def _find_class_folder(top: Path, depth: int = 3) -> Path | None:
    if all((top / c).is_dir() for c in CLASSES):
        return top
    if depth == 0:
        return None
    for child in sorted(p for p in top.iterdir() if p.is_dir()):
        found = _find_class_folder(child, depth - 1)
        if found is not None:
            return found
    return None


def _write_synthetic(root: Path, images_per_class: int, seed: int, progress: bool) -> dict:
    from PIL import Image

    from .train import progress_bar

    if images_per_class < 1:
        raise ValueError(f"images_per_class must be positive, got {images_per_class}")
    (root / MANIFEST).unlink(missing_ok=True)
    target = root / SYNTHETIC_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    bar = progress_bar(None, total=images_per_class * len(CLASSES), desc="Generating synthetic EuroSAT",
                       unit="img", enabled=progress)
    for label, name in enumerate(CLASSES):
        (target / name).mkdir(parents=True)
        images = _class_images(label, images_per_class, seed)
        for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            # fixed PNG settings and no metadata: the same seed gives the same bytes
            Image.fromarray(image).save(target / name / f"{name}_{i + 1}.png", compress_level=6)
            bar.update(1)
    bar.close()
    return {"name": SYNTHETIC_NAME, "kind": "synthetic", "source": "generated offline",
            "folder": SYNTHETIC_FOLDER, "n_images": images_per_class * len(CLASSES),
            "images_per_class": images_per_class, "seed": seed, "generator_version": GENERATOR_VERSION}


# --------------------------------------------------------------------------- synthetic images


def synthetic_tensors(n: int, *, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` synthetic EuroSAT-like images in memory: (float (n, 3, size, size) in [0, 1], int64 labels).

    Balanced labels (counts differ by at most one), in a seeded shuffled order; the same
    generator as the PNGs that `prepare(source="synthetic")` writes.
    """
    counts = [n // len(CLASSES) + (c < n % len(CLASSES)) for c in range(len(CLASSES))]
    images = torch.cat([_class_images(c, k, seed, size) for c, k in enumerate(counts)])
    labels = torch.cat([torch.full((k,), c, dtype=torch.int64) for c, k in enumerate(counts)])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return images[order].float() / 255, labels[order]


# Per-class palettes (RGB in [0, 1]): (colour A, colour B). Neighbouring classes share colours on
# purpose (vegetation greens, built-up greys, water blues), so colour alone does not decide.
_PALETTES = {
    "AnnualCrop": ((0.55, 0.47, 0.33), (0.36, 0.48, 0.26)),
    "Forest": ((0.10, 0.22, 0.12), (0.20, 0.34, 0.18)),
    "HerbaceousVegetation": ((0.30, 0.40, 0.22), (0.48, 0.46, 0.30)),
    "Highway": ((0.40, 0.44, 0.30), (0.62, 0.61, 0.60)),
    "Industrial": ((0.45, 0.44, 0.44), (0.72, 0.70, 0.68)),
    "Pasture": ((0.38, 0.50, 0.26), (0.46, 0.55, 0.32)),
    "PermanentCrop": ((0.52, 0.45, 0.32), (0.28, 0.42, 0.20)),
    "Residential": ((0.42, 0.40, 0.36), (0.66, 0.50, 0.44)),
    "River": ((0.34, 0.44, 0.26), (0.16, 0.26, 0.34)),
    "SeaLake": ((0.08, 0.18, 0.30), (0.16, 0.28, 0.38)),
}
# Which class's texture leaks into which (as in the real data: crops vs orchards, meadow vs shrub, ...).
_CONFUSED_WITH = {
    "AnnualCrop": "PermanentCrop", "Forest": "HerbaceousVegetation", "HerbaceousVegetation": "Pasture",
    "Highway": "River", "Industrial": "Residential", "Pasture": "HerbaceousVegetation",
    "PermanentCrop": "AnnualCrop", "Residential": "Industrial", "River": "Highway", "SeaLake": "River",
}


class _Draw:
    """Vectorised texture primitives for a batch of `n` images; every draw uses the same generator."""

    def __init__(self, n: int, size: int, g: torch.Generator):
        self.n, self.size, self.g = n, size, g
        axis = torch.linspace(0, 1, size)
        self.y, self.x = axis.view(1, size, 1), axis.view(1, 1, size)

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(self.n, *shape, generator=self.g)

    def smooth(self, cells: int, mode: str = "bilinear") -> torch.Tensor:
        """(n, size, size) noise with about `cells` features across: upsampled coarse Gaussian noise."""
        coarse = torch.randn(self.n, 1, cells + 1, cells + 1, generator=self.g)
        kw = {"align_corners": False} if mode == "bilinear" else {}
        up = torch.nn.functional.interpolate(coarse, size=(self.size, self.size), mode=mode, **kw)
        return up[:, 0]

    def direction(self):
        angle = self.uniform(0, math.pi, 1, 1)
        return torch.cos(angle), torch.sin(angle)

    def stripes(self, period_px: tuple[float, float]) -> torch.Tensor:
        """Oriented sine stripes in [-1, 1], random angle, period and phase per image."""
        c, s = self.direction()
        freq = self.size / self.uniform(*period_px, 1, 1)
        phase = self.uniform(0, 2 * math.pi, 1, 1)
        return torch.sin(2 * math.pi * freq * (self.x * c + self.y * s) + phase)

    def band(self, width_px: tuple[float, float], curve: float) -> torch.Tensor:
        """A soft band (road, river) through the image: 1 on the band, 0 away from it."""
        c, s = self.direction()
        offset = self.uniform(-0.25, 0.25, 1, 1)
        across = (self.x - 0.5) * c + (self.y - 0.5) * s - offset
        along = -(self.x - 0.5) * s + (self.y - 0.5) * c
        wiggle = curve * self.uniform(0.5, 1, 1, 1) * torch.sin(
            2 * math.pi * self.uniform(0.5, 1.5, 1, 1) * along + self.uniform(0, 6.3, 1, 1))
        width = self.uniform(*width_px, 1, 1) / self.size
        return torch.sigmoid((width / 2 - (across - wiggle).abs()) * self.size * 1.5)

    def mix(self, palette, t: torch.Tensor, jitter: float = 0.05) -> torch.Tensor:
        """Blend the palette's two colours by t in [0, 1]; colours jittered per image (mostly together)."""
        shared = jitter * torch.randn(self.n, 3, 1, 1, generator=self.g)
        a, b = (torch.tensor(col).view(1, 3, 1, 1) + shared + 0.5 * jitter * torch.randn(self.n, 3, 1, 1, generator=self.g)
                for col in palette)
        t = t.clamp(0, 1).unsqueeze(1)
        return a + (b - a) * t


def _texture(name: str, d: _Draw) -> torch.Tensor:
    """(n, 3, size, size) float images of one class, before noise and jitter."""
    p = _PALETTES[name]
    if name == "AnnualCrop":          # striped fields, two orientations split by a smooth boundary
        fields = (d.smooth(2) > 0).float()
        t = 0.5 + 0.45 * (fields * d.stripes((5, 9)) + (1 - fields) * d.stripes((4, 8)))
        return d.mix(p, t)
    if name == "Forest":              # dark, fine canopy grain
        t = 0.5 + 0.25 * d.smooth(20) + 0.15 * d.smooth(6)
        return d.mix(p, t)
    if name == "HerbaceousVegetation":  # patchy medium-scale texture
        t = 0.5 + 0.3 * d.smooth(8) + 0.12 * d.smooth(24)
        return d.mix(p, t)
    if name == "Highway":             # a straight grey road across fields
        ground = d.mix(_PALETTES["HerbaceousVegetation"], 0.5 + 0.25 * d.smooth(6))
        road = d.band((3, 7), curve=0.02).unsqueeze(1)
        grey = torch.tensor(p[1]).view(1, 3, 1, 1) + 0.05 * torch.randn(d.n, 1, 1, 1, generator=d.g)
        return ground * (1 - road) + grey * road
    if name == "Industrial":          # large bright blocks on grey
        t = 0.5 + 0.5 * torch.tanh(2 * d.smooth(5, mode="nearest")) + 0.1 * d.smooth(16)
        return d.mix(p, t)
    if name == "Pasture":             # smooth, almost uniform meadow
        t = 0.5 + 0.35 * d.smooth(2) + 0.05 * d.smooth(12)
        return d.mix(p, t)
    if name == "PermanentCrop":       # orchard rows: a rotated grid of dots
        c, s = d.direction()
        period = d.size / d.uniform(4, 7, 1, 1)
        u, v = d.x * c + d.y * s, -d.x * s + d.y * c
        dots = torch.sin(2 * math.pi * period * u) * torch.sin(2 * math.pi * period * v)
        return d.mix(p, 0.5 + 0.45 * dots + 0.1 * d.smooth(4))
    if name == "Residential":         # dense small houses: fine blocks, reddish roofs
        t = 0.5 + 0.5 * torch.tanh(2 * d.smooth(14, mode="nearest")) + 0.1 * d.smooth(4)
        return d.mix(p, t)
    if name == "River":               # a winding dark band across vegetation
        ground = d.mix(_PALETTES["Pasture"], 0.5 + 0.3 * d.smooth(5))
        water = d.band((5, 12), curve=0.12).unsqueeze(1)
        blue = torch.tensor(p[1]).view(1, 3, 1, 1) + 0.04 * torch.randn(d.n, 3, 1, 1, generator=d.g)
        return ground * (1 - water) + (blue + 0.04 * d.smooth(12).unsqueeze(1)) * water
    if name == "SeaLake":             # water: dark, smooth, faint ripples
        t = 0.5 + 0.3 * d.smooth(3) + 0.15 * d.stripes((3, 6)) * d.smooth(4).abs()
        return d.mix(p, t)
    raise KeyError(name)


def _class_images(label: int, n: int, seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 (n, 3, size, size) images of class `label`, a deterministic function of (label, n, seed)."""
    name = CLASSES[label]
    g = torch.Generator().manual_seed(seed * 1_000_003 + label * 7919 + GENERATOR_VERSION)
    d = _Draw(n, size, g)
    images = _texture(name, d)
    # Overlap: part of each image carries a confusable class's texture, so classes are not cleanly
    # separable (the real EuroSAT has the same kind of mixed scenes).
    other = _texture(_CONFUSED_WITH[name], d)
    amount = d.uniform(0, 1, 1, 1, 1) ** 2 * 0.6
    region = torch.sigmoid(4 * d.smooth(2)).unsqueeze(1)
    images = images + amount * region * (other - images)
    # Sensor-like variation: brightness, contrast, colour cast, pixel noise.
    images = (images - 0.4) * d.uniform(0.75, 1.25, 1, 1, 1) + 0.4 * d.uniform(0.8, 1.2, 1, 1, 1)
    images = images + 0.04 * torch.randn(n, 3, 1, 1, generator=g) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
