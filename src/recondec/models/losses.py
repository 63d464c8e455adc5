"""Classification + weighted reconstruction losses, every term returned separately.

Reference form (the Caffe EuclideanLoss): sum over all elements of (pred - target)^2 / (2 * batch).
Mean form: the mean over all elements. For one level with C*H*W elements per image,

    w_mean = w_reference * C*H*W / 2        (e.g. image 3x224x224: 1e-4 -> 7.53)

so both forms give the same total; ``convert_weight`` does this. The image target is the input in the
0-1 scale minus the mean pixel, i.e. the reference's (x - mean) / 255 on its 0-255 scale.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recondec.config import ConfigError, LossConf, LossForm
from recondec.models.augmented import AugmentedNet, AugmentedOutput


def euclidean(pred: torch.Tensor, target: torch.Tensor, form: LossForm) -> torch.Tensor:
    """In float32 whatever the autocast dtype; mse_loss is one fused kernel each way (the difference, its square
    and the sum), where the written-out form made three passes over every reconstructed map."""
    pred, target = pred.float(), target.float()
    if form is LossForm.reference:
        return F.mse_loss(pred, target, reduction="sum") / (2 * pred.shape[0])
    return F.mse_loss(pred, target)


def convert_weight(weight: float, numel_per_sample: int, to: LossForm) -> float:
    """Convert a weight given in the other form into form `to` (same total loss)."""
    if to is LossForm.mean:
        return weight * numel_per_sample / 2
    return weight * 2 / numel_per_sample


def resolve_weights(levels: list[str], loss: LossConf) -> dict[str, float]:
    scale = 1.0 if loss.scale is None else loss.scale  # a LossConf made without the checks
    weights = {}
    for level in levels:
        w = loss.weights.get(level, None if level == "image" else loss.default_weight)
        if w is None:
            raise ConfigError(f"loss.weights.{level} is missing: the variant reconstructs {levels}; give a weight "
                              f"for each (or loss.default_weight for feature levels)")
        weights[level] = float(w) * scale
    return weights


class AugmentedLoss(nn.Module):
    def __init__(self, weights: dict[str, float], form: LossForm, image_std: list[float],
                 classification_weight: float = 1.0, detach_targets: bool = False):
        super().__init__()
        self.weights, self.form = weights, form
        self.classification_weight, self.detach_targets = classification_weight, detach_targets
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1))

    def image_target(self, x: torch.Tensor) -> torch.Tensor:
        """x is normalized ((x01 - mean) / std); the target is x01 - mean."""
        return x.float() * self.image_std

    def forward(self, out: AugmentedOutput, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy over the first len(y) rows (the labelled ones: a semi-supervised batch puts its unlabelled
        images after them), each reconstruction term over every row of `x`."""
        ce = F.cross_entropy(out.logits[:y.shape[0]].float(), y)
        recon = self.recon_terms(out, x)
        total = self.classification_weight * ce + self.weighted_recon(recon)
        return {"ce": ce, **recon, "total": total}

    def recon_terms(self, out: AugmentedOutput, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted reconstruction term of every level that carries a loss ("recon/<level>")."""
        terms = {}
        for level in self.weights:
            target = self.image_target(x) if level == "image" else out.targets[level]
            if self.detach_targets:
                target = target.detach()
            terms[f"recon/{level}"] = euclidean(out.recons[level], target, self.form)
        return terms

    def weighted_recon(self, terms: dict[str, torch.Tensor]) -> torch.Tensor | float:
        return sum(w * terms[f"recon/{level}"] for level, w in self.weights.items())


def build_loss(model: AugmentedNet, loss: LossConf, image_std: list[float]) -> AugmentedLoss:
    return AugmentedLoss(resolve_weights(model.loss_levels, loss), loss.form, image_std,
                         loss.classification, loss.detach_targets)
