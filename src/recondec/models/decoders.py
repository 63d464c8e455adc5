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
from recondec.models.description import (
    DOWNSAMPLE_POOL,
    ConvSpec,
    DecoderConv,
    DecoderFC,
    EncoderOutput,
    MacroLayer,
    PoolSpec,
    ResidualUnit,
    UnitTrace,
)
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
    if scheme is DecoderInit.he:  # residual branches start closed, so that a residual decoder keeps the scale of
        for block in decoder.blocks:  # its input (torchvision's zero_init_residual does this with a branch's last BN)
            for m in block.branch_ends():
                nn.init.zeros_(m.weight)


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

    def branch_ends(self) -> list[nn.Module]:
        return []  # no residual branch

    def forward(self, h: torch.Tensor, switches: Optional[torch.Tensor], pre_pool_size: tuple[int, int],
                out_size: tuple[int, int]) -> torch.Tensor:
        """`out_size`: spatial size of the reconstructed level (the transposed conv needs it exactly)."""
        if self.pool is not None:
            h = unpool_with(self.unpool, h, switches, self.pool, pre_pool_size)
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


def unpool_with(unpool: Unpool, h: torch.Tensor, switches: Optional[torch.Tensor], pool: PoolSpec,
                size: tuple[int, int]) -> torch.Tensor:
    return switch_unpool(h, switches, pool, size) if unpool is Unpool.switch else fixed_unpool(h, pool, size)


class ResidualUnitDecoder(nn.Module):
    """Mirrors one residual unit: its main path's convs in reverse order (out -> in channels; a stride-2 conv by a
    transposed conv to the unit's input size; a conv followed by a 2x2 max-pool by unpooling, then the conv), a ReLU
    between them where the encoder has one, the shortcut's 1x1 conv mirrored the same way (identity stays identity),
    the two summed, then a ReLU unless it is the last layer of the pathway. The stem's max-pool is unpooled first."""

    def __init__(self, unit: ResidualUnit, unpool: Unpool, final_linear: bool):
        super().__init__()
        self.unit, self.unpool, self.final_linear = unit, unpool, final_linear
        self.main = nn.ModuleList(make_conv(mirror(c)) for c in unit.main)  # main[i] mirrors unit.main[i]
        self.shortcut = make_conv(mirror(unit.shortcut)) if unit.shortcut is not None else None

    def branch_ends(self) -> list[nn.Module]:
        """The layer that closes the residual branch, zero at He init, where the shortcut is an identity. Not where
        it is a strided (or unpooled) 1x1 conv: that writes one cell in four, and with the branch closed the rest
        would start at exactly zero, where the ReLU passes no gradient."""
        return [self.main[0]] if self.unit.residual and self.unit.shortcut is None else []

    def forward(self, h: torch.Tensor, trace: UnitTrace) -> torch.Tensor:
        u = self.unit
        if u.maxpool is not None:
            h = unpool_with(self.unpool, h, trace.maxpool_switches, u.maxpool, trace.maxpool_size)
        out = h
        for i in reversed(range(len(self.main))):
            if i == u.pool_after:
                out = unpool_with(self.unpool, out, trace.main_switches, DOWNSAMPLE_POOL, trace.pool_size)
            out = _apply(self.main[i], out, trace.in_size)
            if i > 0:
                out = torch.relu(out)
        if u.residual:
            skip = h
            if self.shortcut is not None:
                if u.pool_after is not None:
                    skip = unpool_with(self.unpool, skip, trace.shortcut_switches, DOWNSAMPLE_POOL, trace.pool_size)
                skip = _apply(self.shortcut, skip, trace.in_size)
            out = out + skip
        return out if self.final_linear else torch.relu(out)


def _apply(conv: nn.Module, h: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    return conv(h, output_size=out_size) if isinstance(conv, nn.ConvTranspose2d) else conv(h)


class ResidualStageDecoder(nn.Module):
    """g_l for a ResNet macro-layer (the stem, layer1 .. layer4): its units mirrored, last unit first. Only the
    pathway's very last layer (the stem's, to the image) is linear."""

    def __init__(self, layer: MacroLayer, unpool: Unpool, final_linear: bool):
        super().__init__()
        self.units = nn.ModuleList(ResidualUnitDecoder(u, unpool, final_linear and i == 0)
                                   for i, u in enumerate(layer.units))

    def initial_values(self):
        return [(m, INIT_STD, 0.0) for unit in self.units for m in [*unit.main, unit.shortcut] if m is not None]

    def branch_ends(self) -> list[nn.Module]:
        return [m for unit in self.units for m in unit.branch_ends()]

    def forward(self, h: torch.Tensor, traces: tuple[UnitTrace, ...], pre_pool_size: tuple[int, int],
                out_size: tuple[int, int]) -> torch.Tensor:
        for unit, trace in zip(reversed(self.units), reversed(traces)):
            h = unit(h, trace)
        return h


def decoder_block(layer: MacroLayer, unpool: Unpool, final_linear: bool) -> nn.Module:
    """g_l for macro-layer `layer`: the residual mirror for a ResNet's, else the conv / unpool mirror."""
    if layer.units:
        return ResidualStageDecoder(layer, unpool, final_linear)
    return DecoderBlock(layer, unpool, final_linear)


class FCDecoder(nn.Module):
    """Maps an fc activation back to the top conv map through the fc levels below it, each mirrored by a Linear
    with a ReLU (VGG: fc8 -> 4096 -> 4096 -> C*H*W; ResNet: fc -> avgpool's width -> C*H*W)."""

    def __init__(self, level: str, fc_levels: tuple[str, ...], fc_features: dict[str, int],
                 top_shape: tuple[int, int, int]):
        super().__init__()
        k = fc_levels.index(level)
        self.mirrors = list(reversed(fc_levels[:k + 1]))  # the encoder fc level each Linear mirrors, in order
        widths = [fc_features[name] for name in self.mirrors] + [math.prod(top_shape)]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(True)]
        self.net = nn.Sequential(*layers)
        self.top_shape = top_shape
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
        self.blocks = nn.ModuleList(decoder_block(layers[i], unpool, final_linear=(i == 0)) for i in range(start + 1))
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
        self.blocks = nn.ModuleList(decoder_block(layers[i], unpool, final_linear=(i == 0)) for i in range(top + 1))

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
