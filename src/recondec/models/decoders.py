"""Decoding pathways, derived from the encoder's macro-layer description.

Decoder block g_l mirrors macro-layer l: unpool (fixed or switch) to the pre-pool size, then one conv per
encoder conv in reverse order with channel counts mirrored (out -> in), ReLU after each, except the very
last layer of the pathway (to the image), which is linear. No batch norm, no dropout, no weight tying;
weights N(0, 0.001^2), biases 0 (the reference initialisation).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from recondec.config import Unpool
from recondec.models.backbones import ConvSpec, EncoderOutput, MacroLayer
from recondec.models.unpool import fixed_unpool, switch_unpool

INIT_STD = 1e-3


def init_decoder(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            nn.init.zeros_(m.bias)


def mirror_conv(spec: ConvSpec) -> nn.Module:
    """out_channels -> in_channels with the same kernel and padding. A strided conv (AlexNet's conv1)
    is mirrored by a transposed conv with the same geometry, so the spatial size is restored."""
    if spec.stride == 1:
        return nn.Conv2d(spec.out_channels, spec.in_channels, spec.kernel_size, padding=spec.padding)
    return nn.ConvTranspose2d(spec.out_channels, spec.in_channels, spec.kernel_size, stride=spec.stride,
                              padding=spec.padding)


class DecoderBlock(nn.Module):
    """g_l: reconstructs the input of macro-layer l (a_{l-1}, or the image for l = 1) from its output."""

    def __init__(self, layer: MacroLayer, unpool: Unpool, final_linear: bool):
        super().__init__()
        if any(c.stride != 1 for c in layer.convs[1:]):
            raise NotImplementedError(f"{layer.name}: a strided conv can only be the first of a macro-layer")
        self.pool, self.unpool = layer.pool, unpool
        self.convs = nn.ModuleList(mirror_conv(c) for c in reversed(layer.convs))
        self.final_linear = final_linear

    def forward(self, h: torch.Tensor, switches: Optional[torch.Tensor], pre_pool_size: tuple[int, int],
                out_size: tuple[int, int]) -> torch.Tensor:
        """`out_size`: spatial size of the reconstructed level (the transposed conv needs it exactly)."""
        if self.pool is not None:
            if self.unpool is Unpool.switch:
                h = switch_unpool(h, switches, self.pool, pre_pool_size)
            else:
                h = fixed_unpool(h, self.pool, pre_pool_size)
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            if isinstance(conv, nn.ConvTranspose2d):
                h = conv(h, output_size=out_size)
            else:
                h = conv(h)
            if not (self.final_linear and i == last):
                h = torch.relu(h)
        return h


class FCDecoder(nn.Module):
    """Maps an fc activation back to the top conv map: fc8 -> 4096 -> 4096 -> C*H*W (ReLU after each)."""

    def __init__(self, level: str, fc_width: int, num_classes: int, top_shape: tuple[int, int, int]):
        super().__init__()
        in_features = num_classes if level == "fc8" else fc_width
        hidden = {"fc6": 0, "fc7": 1, "fc8": 2}[level]
        layers: list[nn.Module] = []
        for _ in range(hidden):
            layers += [nn.Linear(in_features, fc_width), nn.ReLU(True)]
            in_features = fc_width
        layers += [nn.Linear(in_features, math.prod(top_shape)), nn.ReLU(True)]
        self.net = nn.Sequential(*layers)
        self.top_shape = top_shape

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).view(h.shape[0], *self.top_shape)


class StackedDecoder(nn.Module):
    """One pathway from the top: â_L = a_L (or a decoded fc activation), â_{l-1} = g_l(â_l), x̂ = â_0.
    Returns every intermediate reconstruction, keyed by the level it reconstructs ("image", "pool1", ...)."""

    def __init__(self, layers: tuple[MacroLayer, ...], unpool: Unpool, start: int,
                 fc: Optional[FCDecoder] = None, fc_level: Optional[str] = None):
        super().__init__()
        self.layers, self.start = layers, start  # decode from the output of macro-layer `start` (0-based)
        self.blocks = nn.ModuleList(DecoderBlock(layers[i], unpool, final_linear=(i == 0)) for i in range(start + 1))
        self.fc, self.fc_level = fc, fc_level

    def forward(self, enc: EncoderOutput, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        h = self.fc(enc.fc[self.fc_level]) if self.fc is not None else enc.activations[self.start]
        recons = {}
        for i in range(self.start, -1, -1):
            h = self.blocks[i](h, enc.switches[i], enc.pre_pool_sizes[i], _size_below(enc, i, image_size))
            recons[level_name(self.layers, i - 1)] = h
        return recons


class LayerwiseDecoder(nn.Module):
    """A separate one-block decoder per macro-layer, fed by the clean encoder output: â_{l-1} = g_l(a_l)."""

    def __init__(self, layers: tuple[MacroLayer, ...], unpool: Unpool, top: int):
        super().__init__()
        self.layers = layers
        self.blocks = nn.ModuleList(DecoderBlock(layers[i], unpool, final_linear=(i == 0)) for i in range(top + 1))

    def forward(self, enc: EncoderOutput, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        recons = {}
        for i, block in enumerate(self.blocks):
            recons[level_name(self.layers, i - 1)] = block(
                enc.activations[i], enc.switches[i], enc.pre_pool_sizes[i], _size_below(enc, i, image_size))
        return recons


def level_name(layers: tuple[MacroLayer, ...], index: int) -> str:
    """Index -1 is the image; index i the output of macro-layer i."""
    return "image" if index < 0 else layers[index].name


def _size_below(enc: EncoderOutput, i: int, image_size: tuple[int, int]) -> tuple[int, int]:
    return image_size if i == 0 else tuple(enc.activations[i - 1].shape[-2:])
