"""Data: built-in sets, .beton writing, and the three loaders (memory, ffcv, torchvision), each a BatchLoader."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator, Optional, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

from recondec.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, DataConf, Loader, TrainCrop, dataset_kind


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's sample order: the order is a pure function of (seed, epoch), so a resumed run can
    skip the batches it already saw (the memory and torchvision loaders; ffcv seeds its own from the epoch)."""
    return seed * 100_003 + epoch


UNLABELLED_SEED = 7_919  # the unlabelled stream's order: its own seed, never the labelled stream's
SPLIT_SEED = 0  # which images of an image folder are labelled: fixed, the same for every job and seed


def labelled_split(n: int, data: DataConf) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The indices (sorted) of the labelled and the unlabelled training images for data.labelled = N, or
    (None, None) when all are labelled. Built-in sets are stored in random order: their first N images are
    labelled (as data.train_limit=N takes them). Image folders are stored class by class: a fixed random N."""
    if data.labelled is None:
        return None, None
    if data.labelled > n:
        raise ConfigError(f"data.labelled={data.labelled} is invalid: allowed at most {n}, the training images "
                          "(after data.train_limit)")
    order = np.arange(n) if dataset_kind(data.name).builtin else np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[:data.labelled]), np.sort(order[data.labelled:])


@runtime_checkable
class BatchLoader(Protocol):
    """What the Trainer iterates; MemoryLoader, the ffcv GuardedLoader and the torchvision FolderLoader implement it."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next iteration is epoch `epoch` (its order a function of (seed, epoch)), without its first
        `skip_batches` batches (a run resumed mid-epoch)."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def __iter__(self) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """(images, labels): float32 (N, 3, S, S) normalised with data.mean / data.std, int64 labels."""


@dataclass
class Loaders:
    train: BatchLoader
    val: BatchLoader
    num_train: int
    num_val: int
    val_ten_crop: Optional[BatchLoader] = None  # the uncropped validation view 10-crop evaluation cuts crops from
    unlabelled: Optional[BatchLoader] = None    # semi-supervised: the images without labels (labels -1), own order


def ten_crop_view_size(image_size: int) -> int:
    """The side of the image that 10 crops of image_size are cut from: 256 for 224 (the VGG protocol)."""
    return round(image_size * 256 / 224)


def build_loaders(data: DataConf, image_size: int, batch_size: int, seed: int, *, device: str = "cpu",
                  rank: int = 0, world_size: int = 1, ten_crop: bool = False,
                  train_crop: TrainCrop = TrainCrop.random_resized, unlabelled_batch_size: int = 0) -> Loaders:
    """Train and val loaders; with ten_crop, also a val loader of whole images at ten_crop_view_size
    (the shorter side resized to it, then its centre square). `train_crop` is the image-folder loaders'
    training augmentation; the built-in sets (memory loader) are not augmented."""
    if data.mean is None or data.std is None:  # a DataConf made without validate(): ImageNet's normalisation
        data = replace(data, mean=data.mean or IMAGENET_MEAN, std=data.std or IMAGENET_STD)
    if data.loader is Loader.memory:
        from recondec.data.builtin import limit, load_builtin, split_labelled
        from recondec.data.memory import MemoryLoader

        train, val = load_builtin(data.name, data.root, data.val_fraction)
        train, val = limit(train, data.train_limit), limit(val, data.val_limit)
        train, unlabelled = split_labelled(train, *labelled_split(len(train.labels), data))
        common = dict(batch_size=batch_size, mean=data.mean, std=data.std, rank=rank, world_size=world_size)
        loaders = Loaders(MemoryLoader(train, image_size, shuffle=True, seed=seed, drop_last=True, **common),
                          MemoryLoader(val, image_size, shuffle=False, **common), len(train.labels), len(val.labels))
        if unlabelled is not None and unlabelled_batch_size and len(unlabelled.labels):
            loaders.unlabelled = MemoryLoader(unlabelled, image_size, shuffle=True, seed=seed + UNLABELLED_SEED,
                                              drop_last=True, **{**common, "batch_size": unlabelled_batch_size})
        if ten_crop:
            loaders.val_ten_crop = MemoryLoader(val, ten_crop_view_size(image_size), shuffle=False, **common)
        return loaders
    if data.loader is Loader.ffcv:
        from recondec.data.ffcv_loader import build_ffcv_loaders

        return build_ffcv_loaders(data, image_size, batch_size, seed, device=device, rank=rank,
                                  world_size=world_size, ten_crop=ten_crop, train_crop=train_crop,
                                  unlabelled_batch_size=unlabelled_batch_size)
    from recondec.data.folder import build_folder_loaders

    return build_folder_loaders(data, image_size, batch_size, seed, rank=rank, world_size=world_size,
                                ten_crop=ten_crop, train_crop=train_crop, unlabelled_batch_size=unlabelled_batch_size)
