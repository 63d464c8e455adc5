"""The torchvision fallback: ImageFolder + DataLoader with the ffcv loaders' transforms and normalisation.

Same files, classes and indices as the .beton writer (class folders sorted as ImageFolder sorts them, a flat
val/ folder through its label file) and the same RGB conversion (recondec.data.images.open_rgb). Bad images are
found before the loader is built, with the writer's check (data/folder_check.py, cached per folder): refused with a
message naming them (data.bad_images=refuse), or left out of the data sets (skip), never a worker's traceback mid-run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from recondec.config import DataConf, TrainCrop
from recondec.data.base import Loaders, assemble_loaders, epoch_seed, ten_crop_view_size
from recondec.data.folder_check import excluded_images
from recondec.data.images import label_problem, list_classes, list_split, open_rgb
from recondec.data.splits import split_training_set


def train_transform(size: int, mean, std, crop: TrainCrop = TrainCrop.random_resized) -> Callable:
    if crop is TrainCrop.resize_crop:  # the paper era: 224 crops of images whose shorter side is 256
        cropping = [T.Resize(ten_crop_view_size(size)), T.RandomCrop(size)]
    else:
        cropping = [T.RandomResizedCrop(size)]
    return T.Compose([*cropping, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def val_transform(size: int, mean, std, crop_ratio: float = 224 / 256) -> Callable:
    """The shorter side resized to size / crop_ratio, then the centre size x size crop."""
    return T.Compose([T.Resize(round(size / crop_ratio)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


class _ClassFolder(ImageFolder):
    """ImageFolder whose classes come from train/, so val/ keeps the indices even when it lacks a class; the files
    in `exclude` (those that do not decode) are left out."""

    def __init__(self, root: str, classes: list[str], transform: Callable, exclude: frozenset[str] = frozenset()):
        self._classes = classes
        super().__init__(root, transform=transform, loader=open_rgb, allow_empty=True)
        if exclude:
            self.samples = [(p, y) for p, y in self.samples if p not in exclude]
            self.imgs, self.targets = self.samples, [y for _, y in self.samples]

    def find_classes(self, directory):
        return self._classes, {c: i for i, c in enumerate(self._classes)}


class _Listed(Dataset):
    """A flat folder plus a label file; files without a valid label are left out, as the writer reports them."""

    def __init__(self, samples: list[tuple[str, int]], num_classes: int, transform: Callable,
                 exclude: frozenset[str] = frozenset()):
        self.samples = [(p, y) for p, y in samples if label_problem(y, num_classes) is None and p not in exclude]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(open_rgb(path)), label


def image_dataset(root: str, split: str, classes: list[str], transform: Callable,
                  exclude: frozenset[str] = frozenset()) -> Dataset:
    split_dir = Path(root) / split
    if split_dir.is_dir() and any(p.is_dir() for p in split_dir.iterdir()):
        return _ClassFolder(str(split_dir), classes, transform, exclude)
    return _Listed(list_split(root, split, classes).samples, len(classes), transform, exclude)


class TorchvisionLoader:
    """DataLoader with the loader protocol: set_epoch forwards to the DistributedSampler and skips batches."""

    def __init__(self, loader: DataLoader, sampler: Optional[DistributedSampler], seed: int,
                 order: Optional[torch.Generator] = None):
        self.loader, self.sampler, self.seed, self.order = loader, sampler, seed, order
        self.skip_batches = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        elif self.order is not None:  # reseeded: an epoch's order is a function of (seed, epoch)
            self.order.manual_seed(epoch_seed(self.seed, epoch))
        self.skip_batches = skip_batches

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches, 0
        for i, batch in enumerate(self.loader):
            if i >= skip:  # the sample order is kept; skipped batches are still decoded
                yield batch


def _loader(dataset: Dataset, data: DataConf, batch_size: int, seed: int, train: bool, rank: int,
            world_size: int) -> TorchvisionLoader:
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                 drop_last=train) if world_size > 1 else None
    # the sampler's own generator: the DataLoader's would also seed its workers, drawn once per fresh iterator but
    # not when persistent workers are reused, so the same epoch seed gave another order in a resumed process
    order = torch.Generator().manual_seed(epoch_seed(seed, 0)) if train and sampler is None else None
    if order is not None:
        sampler = RandomSampler(dataset, generator=order)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                        num_workers=data.num_workers, persistent_workers=data.num_workers > 0,
                        pin_memory=torch.cuda.is_available())
    return TorchvisionLoader(loader, sampler if order is None else None, seed, order)


def _limit(dataset: Dataset, n: Optional[int]) -> Dataset:
    return dataset if n is None or n >= len(dataset) else Subset(dataset, range(n))


class _Unlabelled(Dataset):
    """Training images whose labels must not be seen: label -1 (a classification loss on them fails loudly)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i][0], -1


def build_torchvision_loaders(data: DataConf, image_size: int, batch_size: int, seed: int, *, rank: int = 0,
                         world_size: int = 1, ten_crop: bool = False, train_crop: TrainCrop = TrainCrop.random_resized,
                         unlabelled_batch_size: int = 0) -> Loaders:
    """train/ (its labelled and unlabelled images: splits.py), val/, and test/ where the tree has one, without the
    files that do not decode (data.bad_images=skip; refuse: a ConfigError naming them)."""
    exclude = excluded_images(data, announce=rank == 0)
    classes = list_classes(Path(data.root) / "train")
    transform = train_transform(image_size, data.mean, data.std, train_crop)
    source = image_dataset(data.root, "train", classes, transform, exclude)
    split = split_training_set(np.asarray([y for _, y in source.samples]), data, seed, holdout=False)

    def eval_loader(name: str, transform: Callable, limit: Optional[int]) -> TorchvisionLoader:
        dataset = _limit(image_dataset(data.root, name, classes, transform, exclude), limit)
        return _loader(dataset, data, batch_size, seed, False, rank, world_size)

    def train(rows, batch: int, order_seed: int, labelled: bool) -> TorchvisionLoader:
        pool = Subset(source, rows.tolist())
        return _loader(pool if labelled else _Unlabelled(pool), data, batch, order_seed, True, rank, world_size)

    val = eval_loader("val", val_transform(image_size, data.mean, data.std), data.val_limit)
    has_test = (Path(data.root) / "test").is_dir()
    test = eval_loader("test", val_transform(image_size, data.mean, data.std), data.test_limit) if has_test else None
    crops = None
    if ten_crop:
        view = ten_crop_view_size(image_size)
        crops = eval_loader("test" if has_test else "val", val_transform(view, data.mean, data.std, crop_ratio=1.0),
                            data.test_limit if has_test else data.val_limit)
    return assemble_loaders(split, train, batch_size, seed, unlabelled_batch_size,
                            val=val, num_val=len(val.loader.dataset), test=test,
                            num_test=len(test.loader.dataset) if test is not None else 0, ten_crop=crops)
