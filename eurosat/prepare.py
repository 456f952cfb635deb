"""Making the EuroSAT dataset ready (`course data`): the real one downloaded or from a given archive, or the offline
synthetic stand-in written as PNGs; a manifest, written last, says which one is there."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

from .data import (CLASSES, MANIFEST, REAL_FOLDER, REAL_NAME, SYNTHETIC_FOLDER, SYNTHETIC_NAME, DataError, data_root,
                   list_images)
from .synthetic import GENERATOR_VERSION, class_images

DEFAULT_IMAGES_PER_CLASS = 300          # 3,000 images: a few CPU minutes of training
DOWNLOAD_HOST = "huggingface.co"        # where torchvision.datasets.EuroSAT downloads from


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
                    "folder": extracted.relative_to(root).as_posix(), "n_images": len(list_images(extracted)[0])}
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
    files, _ = list_images(folder)
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
        images = class_images(label, images_per_class, seed)
        for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            # fixed PNG settings and no metadata: the same seed gives the same bytes
            Image.fromarray(image).save(target / name / f"{name}_{i + 1}.png", compress_level=6)
            bar.update(1)
    bar.close()
    return {"name": SYNTHETIC_NAME, "kind": "synthetic", "source": "generated offline",
            "folder": SYNTHETIC_FOLDER, "n_images": images_per_class * len(CLASSES),
            "images_per_class": images_per_class, "seed": seed, "generator_version": GENERATOR_VERSION}
