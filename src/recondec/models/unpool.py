"""Unpooling: fixed (SAE) and switch / "what-where" (SWWAE).

Both are written with slicing and scatter_add rather than ``max_unpool2d``: that op refuses
``torch.use_deterministic_algorithms(True)`` and keeps an arbitrary value when overlapping pools send
two values to one cell, where the reference code averages them.
"""
from __future__ import annotations

import torch

from recondec.models.backbones import PoolSpec


def fixed_unpool(x: torch.Tensor, pool: PoolSpec, output_size: tuple[int, int]) -> torch.Tensor:
    """Write each pooled value into the fixed cell (kernel//2, kernel//2) of its window, zeros elsewhere
    (the reference code's offset: the bottom-right cell of a 2x2 window, the centre of a 3x3 one)."""
    n, c, h, w = x.shape
    off = pool.kernel_size // 2 - pool.padding
    out = x.new_zeros(n, c, *output_size)
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
    flat = x.reshape(n, c, h * w)
    idx = switches.reshape(n, c, h * w)
    area = output_size[0] * output_size[1]
    out = x.new_zeros(n, c, area).scatter_add_(2, idx, flat)
    if pool.overlapping:
        hits = torch.zeros_like(out).scatter_add_(2, idx, torch.ones_like(flat))
        out = out / hits.clamp_(min=1)
    return out.view(n, c, *output_size)
