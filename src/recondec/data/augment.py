"""Training augmentation of the built-in sets (memory loader): pad-and-crop plus horizontal flip, the small-image
standard (schedule.train_crop=pad_crop).

The random offsets and flips of a batch are a pure function of (the loader's seed, epoch, rank, batch index): every
arm of a seed (the same seed, the same sample order) sees exactly the same augmented images, whatever else it
draws from torch's global generator (dropout, decoders' initialisation), and a run resumed mid-epoch sees the
batches it would have seen.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


def batch_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """A generator of its own for one batch's augmentation (a hash: nearby keys give unrelated streams)."""
    key = hashlib.sha1(f"augment/{seed}/{epoch}/{rank}/{batch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def pad_crop_flip(pixels: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) images, zero-padded by `padding` on every side, then a random H x W crop of each, mirrored
    left-right with probability 1/2. Zero is the background of the built-in sets (black)."""
    b, _, h, w = pixels.shape
    padded = F.pad(pixels, (padding, padding, padding, padding)) if padding else pixels
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)                      # (B, H)
    cols = dx[:, None] + torch.arange(w)                      # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)     # a mirrored crop reads its columns backwards
    index = torch.arange(b)[:, None, None, None], torch.arange(pixels.shape[1])[None, :, None, None]
    return padded[index[0], index[1], rows[:, None, :, None], cols[:, None, None, :]]
