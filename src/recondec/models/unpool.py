"""Unpooling: fixed (SAE) and switch / "what-where" (SWWAE).

Both are written with slicing and scatter_add rather than ``max_unpool2d``: that op refuses
``torch.use_deterministic_algorithms(True)`` and keeps an arbitrary value when overlapping pools send
two values to one cell, where the reference code averages them. Both keep the input's memory format:
a channels_last map (the GPU fast path) is unpooled as (N, H*W, C) rows, with no copy to and from NCHW.
"""
from __future__ import annotations

import torch

from recondec.models.backbones import PoolSpec


def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _zeros_like_layout(x: torch.Tensor, n: int, c: int, size: tuple[int, int]) -> torch.Tensor:
    """An (n, c, *size) zero map in x's memory format."""
    if _channels_last(x):
        return x.new_zeros(n, *size, c).permute(0, 3, 1, 2)
    return x.new_zeros(n, c, *size)


def fixed_unpool(x: torch.Tensor, pool: PoolSpec, output_size: tuple[int, int]) -> torch.Tensor:
    """Write each pooled value into the fixed cell (kernel//2, kernel//2) of its window, zeros elsewhere
    (the reference code's offset: the bottom-right cell of a 2x2 window, the centre of a 3x3 one)."""
    n, c, h, w = x.shape
    off = pool.kernel_size // 2 - pool.padding
    out = _zeros_like_layout(x, n, c, output_size)
    s = pool.stride
    # windows that would place their cell outside the map (ceil_mode tails) are dropped
    rows = min(h, (output_size[0] - 1 - off) // s + 1)
    cols = min(w, (output_size[1] - 1 - off) // s + 1)
    out[:, :, off:off + s * (rows - 1) + 1:s, off:off + s * (cols - 1) + 1:s] = x[:, :, :rows, :cols]
    return out


def switch_unpool(x: torch.Tensor, switches: torch.Tensor, pool: PoolSpec,
                  output_size: tuple[int, int]) -> torch.Tensor:
    """Write each pooled value at the argmax position its max-pool recorded. Where overlapping windows
    put several values on one cell, they are summed and divided by the number of hits (as the
    reference code does). Gradients flow to `x` only; the switches are integer indices."""
    n, c, h, w = x.shape
    area = output_size[0] * output_size[1]
    if _channels_last(x):  # positions along dim 1 of (N, H*W, C): a view of the channels_last memory
        flat, idx, dim = x.permute(0, 2, 3, 1).reshape(n, h * w, c), switches.permute(0, 2, 3, 1).reshape(
            n, h * w, c), 1
        out = x.new_zeros(n, area, c)
    else:
        flat, idx, dim = x.reshape(n, c, h * w), switches.reshape(n, c, h * w), 2
        out = x.new_zeros(n, c, area)
    out = out.scatter_add_(dim, idx, flat)
    if pool.overlapping:
        hits = torch.zeros_like(out).scatter_add_(dim, idx, torch.ones_like(flat))
        out = out / hits.clamp_(min=1)
    if dim == 1:
        return out.view(n, *output_size, c).permute(0, 3, 1, 2)
    return out.view(n, c, *output_size)
