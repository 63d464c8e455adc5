"""In-memory loader for the built-in data sets: tensors resized once, shuffled by (seed, epoch), training batches
augmented (schedule.train_crop=pad_crop) by (seed, epoch, rank, batch).

The order of every epoch is a pure function of (seed, epoch), and each batch's augmentation of (seed, epoch, rank,
batch), so a run resumed mid-epoch can skip the batches it already saw and continue bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from recondec.config import CROP_PADDING, DataConf, TrainCrop
from recondec.data.augment import batch_generator, pad_crop_flip
from recondec.data.base import Loaders, assemble_loaders, epoch_seed, ten_crop_view_size
from recondec.data.builtin import ArraySplit, limit, load_builtin, take
from recondec.data.splits import split_training_set


def to_normalized(images_uint8: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float32 normalized with mean/std given on the 0-1 scale."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - m) / s


class MemoryLoader:
    """Iterates (images, labels) batches of an ArraySplit resized to `image_size`."""

    def __init__(self, split: ArraySplit, image_size: int, batch_size: int, mean, std, *, shuffle: bool,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 crop_padding: Optional[int] = None):
        """`crop_padding`: augment every batch by that many pixels of padding, a random crop and a flip (None: off)."""
        x = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous()
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=True).round().clamp(0, 255).to(torch.uint8)
        self.pixels, self.mean, self.std = x, mean, std  # uint8: a quarter of float32's memory, normalised per batch
        self.labels = torch.from_numpy(split.labels)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size, self.crop_padding = rank, world_size, crop_padding
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        # each rank takes every world_size-th sample of the global batch order (DDP sharding)
        per_rank = n // self.world_size if self.world_size > 1 else n
        return idx[self.rank::self.world_size][:per_rank]

    def __len__(self) -> int:
        n = len(self._indices()) if self.world_size > 1 else len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for b in range(self.skip_batches, len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            pixels = self.pixels[sel]
            if self.crop_padding is not None:
                pixels = pad_crop_flip(pixels, self.crop_padding, batch_generator(self.seed, self.epoch, self.rank, b))
            yield to_normalized(pixels, self.mean, self.std), self.labels[sel]
        self.skip_batches = 0

    @property
    def images(self) -> torch.Tensor:
        """Every image, normalised (what the batches hold)."""
        return to_normalized(self.pixels, self.mean, self.std)


def build_memory_loaders(data: DataConf, image_size: int, batch_size: int, seed: int, *, rank: int = 0,
                         world_size: int = 1, ten_crop: bool = False, unlabelled_batch_size: int = 0,
                         train_crop: TrainCrop = TrainCrop.none, crop_padding: int = CROP_PADDING) -> Loaders:
    """A built-in set: its training split cut into labelled / unlabelled / validation images (splits.py), and its
    official test set. Training images (labelled and unlabelled) are augmented when train_crop is pad_crop."""
    if train_crop not in (TrainCrop.none, TrainCrop.pad_crop):
        raise ValueError(f"schedule.train_crop={train_crop.value}: the memory loader takes none or pad_crop")
    padding = crop_padding if train_crop is TrainCrop.pad_crop else None
    source, test = load_builtin(data.name, data.root, data.test_fraction)
    split = split_training_set(source.labels, data, seed, holdout=True)
    val, test = limit(take(source, split.val), data.val_limit), limit(test, data.test_limit)
    common = dict(mean=data.mean, std=data.std, rank=rank, world_size=world_size)

    def train(rows, batch: int, order_seed: int, labelled: bool) -> MemoryLoader:
        return MemoryLoader(take(source, rows, labelled=labelled), image_size, batch, shuffle=True, seed=order_seed,
                            drop_last=True, crop_padding=padding, **common)

    def evaluation(images: ArraySplit, side: int) -> MemoryLoader:
        return MemoryLoader(images, side, batch_size, shuffle=False, **common)

    return assemble_loaders(split, train, batch_size, seed, unlabelled_batch_size,
                            val=evaluation(val, image_size), num_val=len(val.labels),
                            test=evaluation(test, image_size), num_test=len(test.labels),
                            ten_crop=evaluation(test, ten_crop_view_size(image_size)) if ten_crop else None)
