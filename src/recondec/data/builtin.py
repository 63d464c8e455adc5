"""Built-in data sets: scikit-learn's digits, and Fashion-MNIST from Debian's package (offline) or through
torchvision's data set class (downloaded once where the network allows).

Both are returned as uint8 RGB arrays (N, H, W, 3) at their native size plus int64 labels; loaders resize
them to the backbone's input size. Gray images are replicated to three channels so every backbone sees
the same input format as on ImageNet.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recondec.config import REPO_ROOT

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLIT_SEED = 0  # the digits train/test split never depends on the training seed


@dataclass
class ArraySplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64


def fashion_mnist_hint() -> str:
    return ("Fashion-MNIST comes from Debian's package (`apt-get install dataset-fashion-mnist`, files in "
            f"{FASHION_MNIST_DIR}), from a folder with the four idx .gz files (data.root=...), or from torchvision's "
            "FashionMNIST download into data.root (default <repo>/data), which needs the network once.")


def _gray_to_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images[..., None], 3, axis=-1)


def load_digits(test_fraction: float = 0.2) -> tuple[ArraySplit, ArraySplit]:
    """scikit-learn's 1797 8x8 digits, 0-16 scaled to 0-255: (train, test), split by class with a fixed seed."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = []
    for c in np.unique(labels):  # stratified: every class keeps the same test fraction
        idx = np.flatnonzero(labels == c)
        test_idx.extend(rng.choice(idx, size=max(1, round(len(idx) * test_fraction)), replace=False))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    rgb = _gray_to_rgb(images)
    return ArraySplit(rgb[~is_test], labels[~is_test]), ArraySplit(rgb[is_test], labels[is_test])


def _read_idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _idx_paths(folder: str, prefix: str) -> tuple[str, str]:
    return (os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"),
            os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))


def has_idx_files(folder: str) -> bool:
    return all(os.path.isfile(p) for prefix in ("train", "t10k") for p in _idx_paths(folder, prefix))


def load_fashion_mnist(root: Optional[str] = None) -> tuple[ArraySplit, ArraySplit]:
    """The official 60,000 / 10,000 split of Fashion-MNIST, 28x28 gray: the four idx .gz files in `root`
    (null: Debian's folder), else torchvision's FashionMNIST under `root` (null: <repo>/data), downloaded there
    when it is not there yet."""
    folder = root or FASHION_MNIST_DIR
    if not has_idx_files(folder):
        return _torchvision_fashion_mnist(root or str(REPO_ROOT / "data"))
    splits = []
    for prefix in ("train", "t10k"):
        img_path, lbl_path = _idx_paths(folder, prefix)
        labels = _read_idx(lbl_path, 8).astype(np.int64)
        images = _read_idx(img_path, 16).reshape(len(labels), 28, 28)
        splits.append(ArraySplit(_gray_to_rgb(images), labels))
    return splits[0], splits[1]


def _torchvision_fashion_mnist(root: str) -> tuple[ArraySplit, ArraySplit]:
    from torchvision.datasets import FashionMNIST

    splits = []
    for train in (True, False):
        try:
            data = FashionMNIST(root, train=train, download=True)
        except Exception as e:  # no network: torchvision's URLError / RuntimeError names only the mirror
            raise FileNotFoundError(f"Fashion-MNIST is not in {root} and could not be downloaded there "
                                    f"({type(e).__name__}: {' '.join(str(e).split())}). {fashion_mnist_hint()}") from e
        splits.append(ArraySplit(_gray_to_rgb(data.data.numpy()), data.targets.numpy().astype(np.int64)))
    return splits[0], splits[1]


def source_folder(name: str, root: Optional[str]) -> Optional[str]:
    """The folder a built-in set is read from (root for any other data set)."""
    if name == "digits":
        return None  # scikit-learn's
    if name == "fashion_mnist" and root is None:
        return FASHION_MNIST_DIR if has_idx_files(FASHION_MNIST_DIR) else str(REPO_ROOT / "data")
    return root


def load_builtin(name: str, root: str | None = None, test_fraction: float = 0.2) -> tuple[ArraySplit, ArraySplit]:
    """(the training source, the test set) of a built-in set; the validation set is cut from the first (splits.py)."""
    if name == "digits":
        return load_digits(test_fraction)
    if name == "fashion_mnist":
        return load_fashion_mnist(root)
    raise ValueError(f"data.name={name!r} is not a built-in data set: allowed digits, fashion_mnist")


def training_labels(name: str, root: str | None = None, test_fraction: float = 0.2) -> np.ndarray:
    """The labels of a built-in set's training source, without decoding its images where the files allow it."""
    folder = root or FASHION_MNIST_DIR
    if name == "fashion_mnist" and has_idx_files(folder):
        return _read_idx(_idx_paths(folder, "train")[1], 8).astype(np.int64)
    return load_builtin(name, root, test_fraction)[0].labels


def limit(split: ArraySplit, n: int | None) -> ArraySplit:
    return split if n is None else ArraySplit(split.images[:n], split.labels[:n])


def take(split: ArraySplit, rows: np.ndarray, labelled: bool = True) -> ArraySplit:
    """The images at `rows`; labelled=False: their labels replaced by -1 (a classification loss on them fails
    loudly instead of learning from labels it must not see)."""
    labels = split.labels[rows] if labelled else np.full(len(rows), -1, dtype=np.int64)
    return ArraySplit(split.images[rows], labels)
