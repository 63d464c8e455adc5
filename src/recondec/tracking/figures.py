"""Figures people would rather look at than read: reconstruction grids and error curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _as_picture(t: torch.Tensor, is_image: bool, mean: torch.Tensor):
    """(C, H, W) -> something imshow can draw: an RGB image, or the channel mean of a feature map."""
    if is_image:
        return (t + mean.view(-1, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
    return t.mean(0).numpy()


def reconstruction_grid(inputs: torch.Tensor, recon: torch.Tensor, target: torch.Tensor, level: str,
                        mean: list[float]):
    """One column per image: the input, the target of this level, and its reconstruction."""
    m = torch.tensor(mean, dtype=torch.float32)
    n = inputs.shape[0]
    rows = [("input", inputs, True)]
    if level != "image":
        rows.append((f"{level} (encoder)", target, False))
    rows.append((f"{level} (reconstruction)", recon, level == "image"))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (title, batch, is_image) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_as_picture(batch[c], is_image, m), cmap=None if is_image else "viridis")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=7)
    fig.suptitle(f"level {level}", fontsize=9)
    fig.tight_layout()
    return fig


def error_per_level(history: list[dict[str, float]]):
    """Validation MSE of every reconstructed level over the epochs (log scale)."""
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
