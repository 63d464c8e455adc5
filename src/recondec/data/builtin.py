"""Built-in data sets that exist offline: scikit-learn's digits and Debian's Fashion-MNIST.

Both are returned as uint8 RGB arrays (N, H, W, 3) at their native size plus int64 labels; loaders resize
them to the backbone's input size. Gray images are replicated to three channels so every backbone sees
the same input format as on ImageNet.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLIT_SEED = 0  # the digits train/val split never depends on the training seed


@dataclass
class ArraySplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64


def fashion_mnist_hint() -> str:
    return ("Fashion-MNIST comes from Debian's package: `apt-get install dataset-fashion-mnist` "
            f"(files land in {FASHION_MNIST_DIR}), or set data.root to a folder with the four idx .gz files.")


def _gray_to_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images[..., None], 3, axis=-1)


def load_digits(val_fraction: float = 0.2) -> tuple[ArraySplit, ArraySplit]:
    """scikit-learn's 1797 8x8 digits, 0-16 scaled to 0-255, split by class with a fixed seed."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    val_idx = []
    for c in np.unique(labels):  # stratified: every class keeps the same val fraction
        idx = np.flatnonzero(labels == c)
        val_idx.extend(rng.choice(idx, size=max(1, round(len(idx) * val_fraction)), replace=False))
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    rgb = _gray_to_rgb(images)
    return ArraySplit(rgb[~is_val], labels[~is_val]), ArraySplit(rgb[is_val], labels[is_val])


def _read_idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(root: str = FASHION_MNIST_DIR) -> tuple[ArraySplit, ArraySplit]:
    """The official 60,000 / 10,000 split of Fashion-MNIST, 28x28 gray."""
    splits = []
    for prefix in ("train", "t10k"):
        img_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
        lbl_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
        if not (os.path.isfile(img_path) and os.path.isfile(lbl_path)):
            raise FileNotFoundError(f"{img_path} or {lbl_path} not found. {fashion_mnist_hint()}")
        labels = _read_idx(lbl_path, 8).astype(np.int64)
        images = _read_idx(img_path, 16).reshape(len(labels), 28, 28)
        splits.append(ArraySplit(_gray_to_rgb(images), labels))
    return splits[0], splits[1]


def load_builtin(name: str, root: str | None = None, val_fraction: float = 0.2) -> tuple[ArraySplit, ArraySplit]:
    if name == "digits":
        return load_digits(val_fraction)
    if name == "fashion_mnist":
        return load_fashion_mnist(root or FASHION_MNIST_DIR)
    raise ValueError(f"data.name={name!r} is not a built-in data set: allowed digits, fashion_mnist")


def limit(split: ArraySplit, n: int | None) -> ArraySplit:
    return split if n is None else ArraySplit(split.images[:n], split.labels[:n])
