"""Parameter counts and forward FLOPs (torch's own FlopCounterMode: 2 FLOPs per multiply-add)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from recondec.models.augmented import AugmentedNet


def count_params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@torch.no_grad()
def forward_flops(model: AugmentedNet, image_size: int) -> int:
    """FLOPs of one forward pass of one image (encoder + decoder), counted on the meta device."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops()


def profile_table(backbone, variants: dict, num_classes: int) -> list[dict]:
    """Parameters (encoder, decoder) and forward GFLOPs per image of each variant on one backbone."""
    rows = []
    for name, variant in variants.items():
        from recondec.models.augmented import build_model

        model = build_model(backbone, variant, num_classes)
        rows.append({"variant": name, "encoder_params": count_params(model.encoder),
                     "decoder_params": count_params(model.decoder),
                     "gflops": forward_flops(model, backbone.image_size) / 1e9})
    return rows
