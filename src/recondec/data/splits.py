"""Which training images a run learns from, validates on, and sees without labels: one rule for every loader.

The training source of a data set (a built-in set's official training split, an image folder's ``train/``) is
cut into disjoint index sets:

- ``val``: the held-out validation set of a built-in set (``data.val_size`` images, stratified by class, drawn with a
  fixed seed: the same for every run). Everything that selects (``best.pt``, LR probes, loss weights, epochs) looks
  at it; the official test set is read once, at the end of a run. Image folders validate on their ``val/`` folder.
- ``labelled``: what the classification loss sees. ``data.train_limit`` keeps the first N of the rest;
  ``data.labels_per_class=K`` then keeps K per class, drawn with ``data.split_seed`` (default: the run's seed), so
  every arm of one seed sees the same labelled images and another seed other ones.
- ``unlabelled``: the rest of the training pool when ``data.labels_per_class`` is set (labels never read).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recondec.config import ConfigError, DataConf

VAL_SPLIT_SEED = 0  # the held-out validation set never depends on the run's seed


@dataclass(frozen=True)
class TrainingSplit:
    labelled: np.ndarray               # sorted indices into the training source
    unlabelled: Optional[np.ndarray]   # None: every training image of the pool is labelled
    val: Optional[np.ndarray]          # None: the data set's own validation folder

    def digest(self) -> str:
        """Names the labelled subset (and the held-out set): equal digests, equal images."""
        h = hashlib.sha1(self.labelled.astype(np.int64).tobytes())
        if self.val is not None:
            h.update(self.val.astype(np.int64).tobytes())
        return h.hexdigest()[:12]


def stratified_sample(labels: np.ndarray, candidates: np.ndarray, per_class: dict[int, int],
                      rng: np.random.Generator) -> np.ndarray:
    """`per_class[c]` indices of class c drawn without replacement from `candidates`, sorted."""
    chosen = []
    for c, k in sorted(per_class.items()):
        pool = candidates[labels[candidates] == c]
        chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def proportional_counts(labels: np.ndarray, total: int) -> dict[int, int]:
    """`total` spread over the classes in proportion to their sizes (largest remainders), at least one each."""
    classes, sizes = np.unique(labels, return_counts=True)
    exact = total * sizes / sizes.sum()
    counts = np.maximum(1, np.floor(exact).astype(int))
    for i in np.argsort(-(exact - np.floor(exact)))[:max(0, total - counts.sum())]:
        counts[i] += 1
    return {int(c): int(min(k, s)) for c, k, s in zip(classes, counts, sizes)}


def split_training_set(labels: np.ndarray, data: DataConf, seed: int, holdout: bool) -> TrainingSplit:
    """Cut a training source with these `labels` (-1 where unknown) into validation, labelled and unlabelled
    indices. `holdout`: carve data.val_size images out as the validation set (built-in sets)."""
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    val = None
    if holdout:
        if not data.val_size or data.val_size >= len(labels):
            raise ConfigError(f"data.val_size={data.val_size!r} is invalid: allowed an integer in "
                              f"[1, {len(labels) - 1}] (the held-out validation images of the {len(labels)} training "
                              "images)")
        val = stratified_sample(labels, everything, proportional_counts(labels, data.val_size),
                                np.random.default_rng(VAL_SPLIT_SEED))
        pool = np.setdiff1d(everything, val)
    else:
        pool = everything
    if data.train_limit is not None:
        pool = pool[:data.train_limit]
    if data.labels_per_class is None:
        return TrainingSplit(pool, None, val)
    k = data.labels_per_class
    classes, sizes = np.unique(labels[pool], return_counts=True)
    if (classes < 0).any():
        raise ConfigError("data.labels_per_class needs the training images' labels; this training set has "
                          "images without one")
    short = {int(c): int(s) for c, s in zip(classes, sizes) if s < k}
    if short:
        raise ConfigError(f"data.labels_per_class={k} is invalid: allowed at most {min(sizes)}, the images of the "
                          f"smallest class in the training pool (classes with fewer: {short})")
    split_seed = seed if data.split_seed is None else data.split_seed
    labelled = stratified_sample(labels, pool, {int(c): k for c in classes}, np.random.default_rng(split_seed))
    return TrainingSplit(labelled, np.setdiff1d(pool, labelled), val)
