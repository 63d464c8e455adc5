"""Decoding pathways, derived from the encoder's macro-layer description.

Decoder block g_l mirrors macro-layer l: unpool (fixed or switch) to the pre-pool size, then one conv per
encoder conv in reverse order with channel counts mirrored (out -> in), ReLU after each, except the very
last layer of the pathway (to the image), which is linear. No batch norm, no dropout, no weight tying;
weights N(0, 0.001^2), biases 0 (the reference initialisation). A backbone whose reference decoder differs
(alexnet_caffe: a three-layer image block, ungrouped convs, some biases 0.1, its own fc decoder init) writes
it out in its macro-layer description (``MacroLayer.decoder_convs`` / ``fc_decoder``), and that is built instead.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from recondec.config import DecoderInit, Unpool
from recondec.models.backbones import ConvSpec, DecoderConv, DecoderFC, EncoderOutput, MacroLayer
from recondec.models.unpool import fixed_unpool, switch_unpool

INIT_STD = 1e-3     # decoder convs (the reference prototxts)
FC_INIT_STD = 1e-2  # fc decoders (the reference's .extra reconstruction models)


def init_decoder(decoder: "StackedDecoder | LayerwiseDecoder", scheme: DecoderInit = DecoderInit.reference) -> None:
    """`reference`: each layer's weights N(0, std^2) and its bias constant, as the decoder says (`initial_values`:
    INIT_STD and 0, FC_INIT_STD for fc decoders, or a backbone's reference decoder's own). `he`: He-normal weights
    for the ReLU after each layer (fan-in of the input a layer sees; for a transposed conv its fan-out), biases 0."""
    for m, std, bias in decoder.initial_values():
        if scheme is DecoderInit.he:
            mode = "fan_out" if isinstance(m, nn.ConvTranspose2d) else "fan_in"  # torch's fans of a transposed conv
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")  # are swapped: fan_out is its input
            nn.init.zeros_(m.bias)
        else:
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.constant_(m.bias, bias)


def mirror(spec: ConvSpec) -> DecoderConv:
    """The decoder layer mirroring an encoder conv: out_channels -> in_channels, the same kernel, stride,
    padding and groups."""
    return DecoderConv(spec.out_channels, spec.in_channels, spec.kernel_size, spec.stride, spec.padding, spec.groups)


def make_conv(spec: DecoderConv) -> nn.Module:
    """A conv for stride 1; for stride > 1 a transposed conv with that geometry (it restores the size: AlexNet's
    strided conv1 is mirrored by one)."""
    if spec.stride == 1:
        return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, padding=spec.padding,
                         groups=spec.groups)
    return nn.ConvTranspose2d(spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                              padding=spec.padding, groups=spec.groups)


class DecoderBlock(nn.Module):
    """g_l: reconstructs the input of macro-layer l (a_{l-1}, or the image for l = 1) from its output."""

    def __init__(self, layer: MacroLayer, unpool: Unpool, final_linear: bool):
        super().__init__()
        specs = layer.decoder_convs if layer.decoder_convs is not None else tuple(map(mirror, reversed(layer.convs)))
        _check_block(layer, specs)
        self.pool, self.unpool = layer.pool, unpool
        self.convs = nn.ModuleList(make_conv(s) for s in specs)
        self.init_biases = [s.bias for s in specs]
        self.final_linear = final_linear

    def initial_values(self):
        """(layer, weight std, bias) of the reference initialisation."""
        return [(conv, INIT_STD, bias) for conv, bias in zip(self.convs, self.init_biases)]

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
            if isinstance(conv, nn.ConvTranspose2d):  # strided; the layers after it keep the size
                h = conv(h, output_size=out_size)
            else:
                h = conv(h)
            if not (self.final_linear and i == last):
                h = torch.relu(h)
        return h


def _check_block(layer: MacroLayer, specs: tuple[DecoderConv, ...]) -> None:
    """Channels chain from the layer's output to its input; a strided (transposed) conv must be followed only
    by size-keeping ones, as it is given the size of the level it reconstructs."""
    channels = [layer.out_channels] + [s.out_channels for s in specs]
    if [s.in_channels for s in specs] != channels[:-1] or channels[-1] != layer.in_channels:
        raise ValueError(f"{layer.name}: decoder channels {[(s.in_channels, s.out_channels) for s in specs]} do not "
                         f"lead from {layer.out_channels} back to {layer.in_channels}")
    strided = [i for i, s in enumerate(specs) if s.stride != 1]
    if len(strided) > 1 or (strided and any(2 * s.padding != s.kernel_size - 1 or s.stride != 1
                                            for s in specs[strided[0] + 1:])):
        raise NotImplementedError(f"{layer.name}: a strided conv can only be the first of a macro-layer "
                                  "(the last decoder layer, or followed by size-keeping convs)")


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
        self.mirrors = ["fc8", "fc7", "fc6"][-(hidden + 1):]  # the encoder fc each Linear mirrors, in order
        self.init = {name: (FC_INIT_STD, 0.0) for name in self.mirrors}  # a backbone's reference may set its own

    def set_init(self, specs: tuple[DecoderFC, ...]) -> None:
        """Give the Linear mirroring each `spec.mirrors` its own initialisation."""
        self.init.update({spec.mirrors: (spec.std, spec.bias) for spec in specs if spec.mirrors in self.init})

    def initial_values(self):
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return [(linear, *self.init[name]) for name, linear in zip(self.mirrors, linears)]

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
        if fc is not None:  # the fc decoder produces the top layer's output; that layer says how it starts
            fc.set_init(layers[-1].fc_decoder)

    def initial_values(self):
        return [v for block in self.blocks for v in block.initial_values()] + \
            (self.fc.initial_values() if self.fc is not None else [])

    def forward(self, enc: EncoderOutput, image_size: tuple[int, int], layerwise: bool = False
                ) -> dict[str, torch.Tensor]:
        """layerwise=True: each block on the clean encoder activation instead (the pre-training stage)."""
        if layerwise:
            return decode_each_block(self.blocks, self.layers, enc, image_size)
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

    def initial_values(self):
        return [v for block in self.blocks for v in block.initial_values()]

    def forward(self, enc: EncoderOutput, image_size: tuple[int, int], layerwise: bool = True
                ) -> dict[str, torch.Tensor]:
        return decode_each_block(self.blocks, self.layers, enc, image_size)


def decode_each_block(blocks: nn.ModuleList, layers: tuple[MacroLayer, ...], enc: EncoderOutput,
                      image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """â_{l-1} = g_l(a_l) for every block: each fed by the clean encoder output of its own level."""
    return {level_name(layers, i - 1): block(enc.activations[i], enc.switches[i], enc.pre_pool_sizes[i],
                                             _size_below(enc, i, image_size))
            for i, block in enumerate(blocks)}


def level_name(layers: tuple[MacroLayer, ...], index: int) -> str:
    """Index -1 is the image; index i the output of macro-layer i."""
    return "image" if index < 0 else layers[index].name


def _size_below(enc: EncoderOutput, i: int, image_size: tuple[int, int]) -> tuple[int, int]:
    return image_size if i == 0 else tuple(enc.activations[i - 1].shape[-2:])
