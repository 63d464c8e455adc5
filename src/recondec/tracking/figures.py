"""Figures people would rather look at than read: reconstruction grids and error curves.

Grids are plain images (torchvision's make_grid), cheap enough to log during training; matplotlib is imported
only for the one line plot drawn at the end of a run.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid


def _feature_picture(maps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, 3, H, W) gray pictures of their channel mean, scaled by [lo, hi] per image."""
    m = maps.mean(1, keepdim=True)
    m = ((m - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return F.interpolate(m, size=size, mode="nearest").expand(-1, 3, -1, -1)


def reconstruction_grid(inputs: torch.Tensor, recon: torch.Tensor, target: torch.Tensor, level: str,
                        mean: list[float]) -> np.ndarray:
    """An (H, W, 3) uint8 picture, one column per image: the input; for a feature level the encoder's
    activation (channel mean, gray) above its reconstruction, on the same per-image scale; for the image its
    reconstruction."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    rows = [(inputs + m).clamp(0, 1)]
    if level == "image":
        rows.append((recon + m).clamp(0, 1))
    else:
        channel_mean = target.mean(1, keepdim=True)
        lo = channel_mean.amin(dim=(1, 2, 3), keepdim=True)
        hi = channel_mean.amax(dim=(1, 2, 3), keepdim=True)
        size = tuple(inputs.shape[-2:])
        rows += [_feature_picture(target, lo, hi, size), _feature_picture(recon, lo, hi, size)]
    grid = make_grid(torch.cat(rows), nrow=inputs.shape[0], padding=2, pad_value=1.0)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def error_per_level(history: list[dict[str, float]]):
    """Validation MSE of every reconstructed level over the epochs (log scale), a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    levels = sorted({k[len("val/mse/"):] for h in history for k in h if k.startswith("val/mse/")})
    for level in levels:
        pts = [(h["epoch"], h[f"val/mse/{level}"]) for h in history if f"val/mse/{level}" in h]
        ax.plot(*zip(*pts), marker="o", label=level)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE")
    ax.set_title("reconstruction error per level")
    if levels:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
