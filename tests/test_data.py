"""eurosat.data, .prepare and .synthetic: synthetic set determinism and layout, prepare idempotence, splits, clear errors, `course data`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from autograder import cli
from eurosat import data, synthetic
from eurosat import prepare as preparing
from eurosat.data import CLASSES, DataError, load_splits, synthetic_tensors
from eurosat.prepare import prepare

PER_CLASS = 12          # 120 images: enough for every split, fast to write and decode


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare(root, source="synthetic", images_per_class=PER_CLASS, seed=0, progress=False)
    return root


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- synthetic set


def test_class_names_are_torchvisions_order():
    """torchvision's EuroSAT is an ImageFolder: labels follow the sorted folder names."""
    assert len(CLASSES) == 10 and list(CLASSES) == sorted(CLASSES)
    assert CLASSES[0] == "AnnualCrop" and CLASSES[-1] == "SeaLake"


def test_synthetic_tensors_deterministic_balanced_and_in_range():
    images, labels = synthetic_tensors(23, seed=3)
    again, again_labels = synthetic_tensors(23, seed=3)
    other, _ = synthetic_tensors(23, seed=4)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other), "another seed must give other images"
    assert images.shape == (23, 3, 64, 64) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    counts = Counter(labels.tolist())
    assert set(counts) == set(range(10)) and max(counts.values()) - min(counts.values()) <= 1
    small, _ = synthetic_tensors(10, seed=0, size=32)
    assert small.shape == (10, 3, 32, 32)


def test_same_seed_writes_the_same_bytes(tmp_path, prepared):
    """Two independent runs with one seed produce byte-identical PNGs; another seed does not."""
    again = prepare(tmp_path / "a", source="synthetic", images_per_class=PER_CLASS, seed=0, progress=False)
    assert _digest(again / data.SYNTHETIC_FOLDER) == _digest(prepared / data.SYNTHETIC_FOLDER)
    other = prepare(tmp_path / "b", source="synthetic", images_per_class=PER_CLASS, seed=1, progress=False)
    assert _digest(other / data.SYNTHETIC_FOLDER) != _digest(prepared / data.SYNTHETIC_FOLDER)


def test_disk_images_are_the_in_memory_generator(prepared):
    """The PNGs are exactly synthetic_tensors' images (same generator, lossless PNG)."""
    first = data._decode_one(prepared / data.SYNTHETIC_FOLDER / "Forest" / "Forest_1.png")
    assert torch.equal(first, synthetic.class_images(CLASSES.index("Forest"), PER_CLASS, 0)[0])


def test_imagefolder_layout(prepared):
    """root/<dataset>/<class>/*.png, 64x64 RGB, as torchvision's ImageFolder reads it."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(prepared / data.SYNTHETIC_FOLDER))
    assert folder.classes == list(CLASSES)
    assert len(folder) == 10 * PER_CLASS
    image, label = folder[0]
    assert image.size == (64, 64) and image.mode == "RGB" and label == 0
    manifest = json.loads((prepared / data.MANIFEST).read_text())
    assert manifest["name"] == data.SYNTHETIC_NAME and manifest["n_images"] == 10 * PER_CLASS


def test_colour_alone_does_not_separate_the_classes():
    """Not trivially separable: a linear classifier on the mean colour stays far from 100%.

    (Measured 43% on 4,000 images; the CNN needs texture to go beyond.)
    """
    images, labels = synthetic_tensors(1000, seed=0)
    feats = images.mean(dim=(2, 3))
    feats = (feats - feats.mean(0)) / feats.std(0)
    w = torch.zeros(3, 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(feats[:700] @ w + b, labels[:700])
        loss.backward()
        return loss

    opt.step(closure)
    accuracy = ((feats[700:] @ w + b).argmax(1) == labels[700:]).float().mean().item()
    print(f"mean-colour linear classifier: {accuracy:.1%}")
    assert 0.2 < accuracy < 0.65, accuracy


# --------------------------------------------------------------------------- prepare


def test_prepare_is_idempotent_unless_forced(tmp_path, capsys):
    root = prepare(tmp_path, source="synthetic", images_per_class=2, progress=False)
    assert "synthetic EuroSAT-like, 20 images" in capsys.readouterr().out
    png = root / data.SYNTHETIC_FOLDER / "River" / "River_1.png"
    png.write_bytes(b"marker")                 # a second prepare() must not touch the files
    prepare(tmp_path, source="synthetic", images_per_class=2, progress=False)
    assert "already prepared" in capsys.readouterr().out
    assert png.read_bytes() == b"marker"
    prepare(tmp_path, source="auto", images_per_class=2, progress=False)   # auto takes what is there
    assert png.read_bytes() == b"marker"
    prepare(tmp_path, source="synthetic", images_per_class=2, progress=False, force=True)
    assert png.read_bytes() != b"marker"
    png.write_bytes(b"marker")
    prepare(tmp_path, source="synthetic", images_per_class=3, progress=False)   # another size: rebuilt
    assert "Replacing" in capsys.readouterr().out and png.read_bytes() != b"marker"
    assert json.loads((tmp_path / data.MANIFEST).read_text())["n_images"] == 30


def test_auto_without_network_or_archive_falls_back_to_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(preparing, "_reachable", lambda host, **kw: False)
    prepare(tmp_path, source="auto", images_per_class=2, progress=False)
    out = capsys.readouterr().out
    assert "unreachable" in out and "synthetic" in out
    assert json.loads((tmp_path / data.MANIFEST).read_text())["kind"] == "synthetic"
    with pytest.raises(DataError, match="--archive"):
        prepare(tmp_path / "real", source="eurosat", progress=False)


def test_failed_download_falls_back_or_says_what_to_do(tmp_path, monkeypatch, capsys):
    """The server answers but the download breaks: auto falls back, source="eurosat" explains --archive."""
    import torchvision.datasets

    def broken(root, download=False, **kw):
        (Path(root) / "eurosat").mkdir(parents=True, exist_ok=True)   # a partial download ...
        raise OSError("connection reset")

    monkeypatch.setattr(preparing, "_reachable", lambda host, **kw: True)
    monkeypatch.setattr(torchvision.datasets, "EuroSAT", broken)
    prepare(tmp_path, source="auto", images_per_class=2, progress=False)
    assert "Downloading EuroSAT failed (connection reset)" in capsys.readouterr().out
    assert not (tmp_path / "eurosat").exists(), "... is removed, so it is never mistaken for a dataset"
    assert load_splits(tmp_path).name == data.SYNTHETIC_NAME
    with pytest.raises(DataError, match="course data --archive"):
        prepare(tmp_path / "real", source="eurosat", progress=False)


def test_prepare_from_an_archive(tmp_path, prepared):
    """An offline cluster's EuroSAT zip (2750/<class>/*) is extracted and loads as the real dataset."""
    archive = tmp_path / "EuroSAT.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for png in sorted((prepared / data.SYNTHETIC_FOLDER).rglob("*.png")):
            zf.write(png, f"2750/{png.parent.name}/{png.name}")
    root = prepare(tmp_path / "data", archive=archive, progress=False)
    splits = load_splits(root)
    assert splits.name == "EuroSAT" and splits.n_images == 10 * PER_CLASS
    assert (root / "eurosat" / "2750" / "SeaLake").is_dir()
    (root / data.MANIFEST).unlink()            # as if unpacked by hand: found without a download attempt
    prepare(root, source="eurosat", progress=False)
    assert json.loads((root / data.MANIFEST).read_text())["folder"] == "eurosat/2750"


def test_bad_archive_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path, archive=tmp_path / "missing.zip", progress=False)
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("readme.txt", "not EuroSAT")
    with pytest.raises(DataError, match="no EuroSAT class folders"):
        prepare(tmp_path, archive=wrong, progress=False)


# --------------------------------------------------------------------------- splits


def test_splits_sizes_fixed_generator_and_disjoint(prepared):
    splits = load_splits(prepared, seed=0)
    n = 10 * PER_CLASS
    assert (len(splits.train), len(splits.val), len(splits.test)) == (96, 12, 12)
    assert splits.n_images == n and splits.name == data.SYNTHETIC_NAME
    image, label = splits.train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and isinstance(label, int)
    train_images, _ = splits.train.tensors()
    assert train_images.mean(dim=(0, 2, 3)).abs().max() < 1e-4, "normalised with the train split's mean"

    again = load_splits(prepared, seed=0)          # same generator seed: the same split
    assert torch.equal(splits.test.images, again.test.images) and torch.equal(splits.test.labels, again.test.labels)
    other = load_splits(prepared, seed=1)
    assert not torch.equal(splits.test.images, other.test.images)

    rows = {bytes(img.numpy()) for part in splits[:3] for img in part.images}
    assert len(rows) == n, "train, val and test must be disjoint and cover the dataset"
    assert Counter(torch.cat([part.labels for part in splits[:3]]).tolist()) == {c: PER_CLASS for c in range(10)}


def test_limit_and_describe(prepared):
    splits = load_splits(prepared, limit=50)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 5, 5) and splits.n_images == 120
    line = data.describe(splits)
    assert "synthetic EuroSAT-like" in line and "50 of 120 images" in line and "train 40 / val 5 / test 5" in line
    with pytest.raises(ValueError, match="empty split"):
        load_splits(prepared, limit=5)


# --------------------------------------------------------------------------- clear errors


def test_missing_dataset_says_how_to_fix_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_splits(tmp_path / "nothing")
    message = str(info.value)
    assert "No EuroSAT dataset" in message and "course data" in message and "--archive" in message


def test_truncated_png_says_which_file_and_how_to_fix_it(tmp_path, prepared):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns(".cache"))
    victim = root / data.SYNTHETIC_FOLDER / "Highway" / "Highway_3.png"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError) as info:
        load_splits(root)
    message = str(info.value)
    assert "Highway_3.png" in message and "damaged" in message and "course data --force" in message


def test_damaged_manifest_or_missing_class_is_a_clear_error(tmp_path, prepared):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns(".cache"))
    shutil.rmtree(root / data.SYNTHETIC_FOLDER / "Pasture")
    with pytest.raises(DataError, match="no folder for Pasture.*course data --force"):
        load_splits(root)
    (root / data.MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="damaged.*course data --force"):
        load_splits(root)


def test_decoded_images_are_cached_and_a_changed_file_invalidates_the_cache(tmp_path, prepared):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns(".cache"))
    first = load_splits(root)
    assert len(list((root / ".cache").glob("images-*.pt"))) == 1
    victim = root / data.SYNTHETIC_FOLDER / "Forest" / "Forest_1.png"
    victim.write_bytes(victim.read_bytes()[:50])        # size changes: the cache must not hide it
    with pytest.raises(DataError, match="Forest_1.png"):
        load_splits(root)
    assert torch.equal(first.train.images, load_splits(prepared).train.images)


# --------------------------------------------------------------------------- `course data`


def test_course_data_cli_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "d"))
    assert cli.main(["data", "--source", "synthetic", "--images-per-class", "2"]) == 0
    assert "synthetic EuroSAT-like, 20 images" in capsys.readouterr().out
    assert cli.main(["data", "--source", "synthetic", "--images-per-class", "2"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert cli.main(["data", "--archive", str(tmp_path / "missing.zip")]) == 2
    assert "course data: The archive" in capsys.readouterr().err
    assert cli.main(["data", "--images-per-class", "0", "--source", "synthetic", "--force"]) == 2
    assert "images_per_class must be positive" in capsys.readouterr().err
    assert cli.main(["data", "--source", "nonsense"]) == 2


def test_course_data_console_script(tmp_path):
    """The installed `course` command, as students type it."""
    course = Path(sys.executable).parent / "course"
    env = {**os.environ, data.DATA_DIR_ENV: str(tmp_path)}
    done = subprocess.run([str(course), "data", "--source", "synthetic", "--images-per-class", "3"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Dataset ready: synthetic EuroSAT-like, 30 images" in done.stdout
    assert data.data_root() != tmp_path and (tmp_path / data.MANIFEST).is_file()
