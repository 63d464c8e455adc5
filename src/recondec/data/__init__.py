"""Data: built-in sets, .beton writing, and the three loaders (memory, ffcv, torchvision), each a BatchLoader."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator, Optional, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

from recondec.config import IMAGENET_MEAN, IMAGENET_STD, DataConf, Loader, TrainCrop
from recondec.data.splits import TrainingSplit


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's sample order: the order is a pure function of (seed, epoch), so a resumed run can
    skip the batches it already saw (the memory and torchvision loaders; ffcv seeds its own from the epoch)."""
    return seed * 100_003 + epoch


UNLABELLED_SEED = 7_919  # the unlabelled stream's order: its own seed, never the labelled stream's


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
    val: BatchLoader                            # selects: best.pt, LR probes, the diagnostics' fixed batches
    num_train: int
    num_val: int
    split: Optional[TrainingSplit]              # which training images are labelled, unlabelled, validation
    test: Optional[BatchLoader] = None          # read once, at the end of a run (None: the data set has none)
    num_test: int = 0
    # the uncropped view 10-crop evaluation cuts crops from: of the test set when there is one, else validation
    ten_crop: Optional[BatchLoader] = None
    unlabelled: Optional[BatchLoader] = None    # semi-supervised: the images without labels (labels -1), own order

    @property
    def ten_crop_split(self) -> str:
        return "test" if self.test is not None else "val"


def ten_crop_view_size(image_size: int) -> int:
    """The side of the image that 10 crops of image_size are cut from: 256 for 224 (the VGG protocol)."""
    return round(image_size * 256 / 224)


def build_loaders(data: DataConf, image_size: int, batch_size: int, seed: int, *, device: str = "cpu",
                  rank: int = 0, world_size: int = 1, ten_crop: bool = False,
                  train_crop: TrainCrop = TrainCrop.random_resized, unlabelled_batch_size: int = 0) -> Loaders:
    """Train, validation and test loaders (data/splits.py says which images each holds); with ten_crop, also a
    loader of whole test (else validation) images at ten_crop_view_size (the shorter side resized to it, then its
    centre square). `train_crop` is the image-folder loaders' training augmentation; the built-in sets (memory
    loader) are not augmented."""
    if data.mean is None or data.std is None:  # a DataConf made without validate(): ImageNet's normalisation
        data = replace(data, mean=data.mean or IMAGENET_MEAN, std=data.std or IMAGENET_STD)
    if data.loader is Loader.memory:
        from recondec.data.memory import build_memory_loaders

        return build_memory_loaders(data, image_size, batch_size, seed, rank=rank, world_size=world_size,
                                    ten_crop=ten_crop, unlabelled_batch_size=unlabelled_batch_size)
    if data.loader is Loader.ffcv:
        from recondec.data.ffcv_loader import build_ffcv_loaders

        return build_ffcv_loaders(data, image_size, batch_size, seed, device=device, rank=rank,
                                  world_size=world_size, ten_crop=ten_crop, train_crop=train_crop,
                                  unlabelled_batch_size=unlabelled_batch_size)
    from recondec.data.folder import build_folder_loaders

    return build_folder_loaders(data, image_size, batch_size, seed, rank=rank, world_size=world_size,
                                ten_crop=ten_crop, train_crop=train_crop, unlabelled_batch_size=unlabelled_batch_size)
