"""Does a loss term act? Each term's size, its share of the loss and its share of the gradient at the first conv.

The reference weights were set for Caffe's 0-255 inputs; under another input convention a term can be too small
to matter whatever the reconstruction. This measures it on real batches of a config: the RMS of every level's
activation, each weighted term, and the norm of its gradient at the encoder's first conv weight against the norm of
the whole loss's gradient there (the path every term shares on its way into the encoder).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from recondec.config import Config
from recondec.data import build_loaders
from recondec.models import build_loss, build_model


@dataclass
class TermRow:
    term: str
    weight: float
    value: float        # weight * term, mean over batches
    loss_share: float   # value / total loss
    grad_norm: float    # |d(weight * term) / d conv1_1| (Frobenius), mean over batches
    grad_share: float   # grad_norm / |d total / d conv1_1|


def measure_term_shares(cfg: Config, batches: int = 2) -> tuple[dict[str, float], list[TermRow]]:
    """(RMS of each level's activation, one row per loss term) for the config's model on `batches` train batches.
    The model is in eval mode (no dropout noise), at its initialisation or its backbone.pretrained weights."""
    torch.manual_seed(cfg.trainer.seed)
    loaders = build_loaders(cfg.data, cfg.backbone.image_size, cfg.schedule.batch_size, cfg.trainer.seed,
                            train_crop=cfg.schedule.train_crop, crop_padding=cfg.schedule.crop_padding)
    model = build_model(cfg.backbone, cfg.variant, cfg.data.num_classes).eval()
    loss_fn = build_loss(model, cfg.loss, cfg.data.std)
    conv1 = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)).weight
    weights = {"ce": loss_fn.classification_weight, **{f"recon/{k}": w for k, w in loss_fn.weights.items()}}
    rms, value, grad = defaultdict(float), defaultdict(float), defaultdict(float)
    loaders.train.set_epoch(0)
    for n, (x, y) in enumerate(loaders.train):
        if n == batches:
            break
        out = model(x)
        rms["image"] += loss_fn.image_target(x).pow(2).mean().sqrt().item() / batches
        for level, a in out.targets.items():
            rms[level] += a.pow(2).mean().sqrt().item() / batches
        terms = loss_fn(out, x, y)
        for name, w in [*weights.items(), ("total", 1.0)]:
            weighted = w * terms[name]
            value[name] += weighted.item() / batches
            g, = torch.autograd.grad(weighted, conv1, retain_graph=True, allow_unused=True)
            grad[name] += (0.0 if g is None else g.norm().item()) / batches
    rows = [TermRow(name, w, value[name], value[name] / value["total"], grad[name],
                    grad[name] / grad["total"] if grad["total"] else float("nan")) for name, w in weights.items()]
    return dict(rms), rows


def format_term_table(rms: dict[str, float], rows: list[TermRow]) -> str:
    lines = ["| level | activation RMS |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in rms.items()]
    lines += ["", "| term | weight | weighted value | share of loss | grad norm at conv1_1 | share of grad |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r.term} | {r.weight:.4g} | {r.value:.4g} | {r.loss_share:.3g} | {r.grad_norm:.4g} | "
              f"{r.grad_share:.3g} |" for r in rows]
    return "\n".join(lines)
