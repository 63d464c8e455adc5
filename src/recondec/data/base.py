"""What every loader shares: the BatchLoader protocol, the Loaders a job gets, and the seeds of sample orders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

from recondec.data.splits import TrainingSplit


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's sample order: the order is a pure function of (seed, epoch), so a resumed run can
    skip the batches it already saw (the memory and torchvision loaders; ffcv seeds its own from the epoch)."""
    return seed * 100_003 + epoch


UNLABELLED_SEED = 7_919  # the unlabelled stream's order: its own seed, never the labelled stream's


@runtime_checkable
class BatchLoader(Protocol):
    """What the Trainer iterates; MemoryLoader, the ffcv GuardedLoader and the TorchvisionLoader implement it."""

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


# (rows of the training split, batch size, seed, labelled) -> a shuffled, drop-last loader of those rows
TrainLoaderFactory = Callable[["np.ndarray", int, int, bool], BatchLoader]


def assemble_loaders(split: TrainingSplit, train: TrainLoaderFactory, batch_size: int, seed: int,
                     unlabelled_batch_size: int, *, val: BatchLoader, num_val: int, test: Optional[BatchLoader] = None,
                     num_test: int = 0, ten_crop: Optional[BatchLoader] = None) -> Loaders:
    """What every loader builder returns: the labelled rows' training loader, validation, the test set and 10 crops
    as given, and, when a step asks for unlabelled images and the split has some, their own stream (own seed, labels
    never read)."""
    loaders = Loaders(train(split.labelled, batch_size, seed, True), val, len(split.labelled), num_val, split, test,
                      num_test, ten_crop)
    if split.unlabelled is not None and unlabelled_batch_size and len(split.unlabelled):
        loaders.unlabelled = train(split.unlabelled, unlabelled_batch_size, seed + UNLABELLED_SEED, False)
    return loaders
