"""build_loaders: the loader data.loader names (memory, ffcv, torchvision), each imported only when used."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from recondec.config import CROP_PADDING, IMAGENET_MEAN, IMAGENET_STD, TRAIN_CROPS, DataConf, Loader, TrainCrop
from recondec.data.base import Loaders


def build_loaders(data: DataConf, image_size: int, batch_size: int, seed: int, *, device: str = "cpu",
                  rank: int = 0, world_size: int = 1, ten_crop: bool = False,
                  train_crop: Optional[TrainCrop] = None, unlabelled_batch_size: int = 0,
                  crop_padding: int = CROP_PADDING) -> Loaders:
    """Train, validation and test loaders (data/splits.py says which images each holds); with ten_crop, also a
    loader of whole test (else validation) images at ten_crop_view_size (the shorter side resized to it, then its
    centre square). `train_crop` is the training augmentation (config.TRAIN_CROPS says which loader takes which;
    `crop_padding` is pad_crop's); None: the loader's default (config.TRAIN_CROPS)."""
    train_crop = train_crop or TRAIN_CROPS[data.loader.value][0]
    if data.mean is None or data.std is None:  # a DataConf made without validate(): ImageNet's normalisation
        data = replace(data, mean=data.mean or IMAGENET_MEAN, std=data.std or IMAGENET_STD)
    if data.loader is Loader.memory:
        from recondec.data.memory import build_memory_loaders

        return build_memory_loaders(data, image_size, batch_size, seed, rank=rank, world_size=world_size,
                                    ten_crop=ten_crop, unlabelled_batch_size=unlabelled_batch_size,
                                    train_crop=train_crop, crop_padding=crop_padding)
    if data.loader is Loader.ffcv:
        from recondec.data.ffcv_loader import build_ffcv_loaders

        return build_ffcv_loaders(data, image_size, batch_size, seed, device=device, rank=rank,
                                  world_size=world_size, ten_crop=ten_crop, train_crop=train_crop,
                                  unlabelled_batch_size=unlabelled_batch_size)
    from recondec.data.torchvision_loader import build_torchvision_loaders

    return build_torchvision_loaders(data, image_size, batch_size, seed, rank=rank, world_size=world_size,
                                ten_crop=ten_crop, train_crop=train_crop, unlabelled_batch_size=unlabelled_batch_size)
