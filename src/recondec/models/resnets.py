"""Residual encoders: torchvision's ResNet-18 / ResNet-50, and a width-scaled ResNet-18 for small images.

The module layout is torchvision's (conv1, bn1, relu, maxpool, layer1 .. layer4, avgpool, fc; its BasicBlock and
Bottleneck), so a torchvision state dict loads unchanged and gives the same logits. The macro-layers, the levels
decoders reconstruct, are the stem and layer1 .. layer4; the fc levels are the pooled features ("avgpool") and the
logits ("fc"). A stride-2 convolution records no switches, so ``downsample="pool"`` (from scratch only) replaces
each one by a stride-1 convolution followed by a 2x2 max-pool: SWWAE then unpools with switches at every stage.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from recondec.models.description import (
    DOWNSAMPLE_POOL,
    ConvSpec,
    EncoderOutput,
    MacroLayer,
    PoolSpec,
    ResidualUnit,
    UnitTrace,
)

STAGE_NAMES = ["stem", "layer1", "layer2", "layer3", "layer4"]
DOWNSAMPLE_MODES = ("stride", "pool")


def conv_spec(m: nn.Conv2d) -> ConvSpec:
    return ConvSpec(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.groups)


class ResNetEncoder(nn.Module):
    """A ResNet whose forward also returns every macro-layer output and, per residual unit, what its decoder needs
    (UnitTrace: sizes, and the switches of its max-pools when asked)."""

    fc_levels = ("avgpool", "fc")

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks: list[int], num_classes: int, *,
                 small_stem: bool = False, base_width: int = 64, downsample: str = "stride", dropout: float = 0.0):
        super().__init__()
        if downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"backbone.downsample={downsample!r} is invalid: allowed {list(DOWNSAMPLE_MODES)}")
        self.pooled = downsample == "pool"
        self.dropout = dropout  # before fc; no parameters, so torchvision's state dict is unchanged
        stem_stride = 1 if small_stem or self.pooled else 2
        if small_stem:  # the usual small-image form: a 3x3 stem at stride 1, no max-pool
            self.conv1 = nn.Conv2d(3, base_width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, base_width, 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        in_channels = base_width
        for i, n in enumerate(blocks):
            stage, in_channels = self._stage(block, in_channels, base_width * 2 ** i, n, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)
        _init_like_torchvision_resnet(self)
        self.macro_layers = self._describe(small_stem)

    def _stage(self, block, in_channels: int, planes: int, n: int, stride: int) -> tuple[nn.Sequential, int]:
        """torchvision's ResNet._make_layer; under downsample=pool the stride-2 convs keep stride 1 (the forward
        pools after them)."""
        out_channels = planes * block.expansion
        conv_stride = 1 if self.pooled else stride
        shortcut = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=conv_stride, bias=False),
                                     nn.BatchNorm2d(out_channels))
        units = [block(in_channels, planes, conv_stride, shortcut)]
        units += [block(out_channels, planes) for _ in range(1, n)]
        if self.pooled:
            for unit in units:
                unit.halves = unit is units[0] and stride == 2
        return nn.Sequential(*units), out_channels

    # ------------------------------------------------------------ description
    def _describe(self, small_stem: bool) -> tuple[MacroLayer, ...]:
        stem = ResidualUnit((conv_spec(self.conv1),), residual=False,
                            pool_after=0 if self.pooled and not small_stem else None,
                            maxpool=None if small_stem else PoolSpec(3, 2, 1))
        layers = [MacroLayer("stem", 0, 0, stem.main, None, units=(stem,))]
        for name in STAGE_NAMES[1:]:
            units = tuple(self._describe_unit(u) for u in getattr(self, name))
            layers.append(MacroLayer(name, 0, 0, tuple(c for u in units for c in u.main), None, units=units))
        return tuple(layers)

    def _describe_unit(self, unit: BasicBlock | Bottleneck) -> ResidualUnit:
        convs = _main_convs(unit)
        shortcut = conv_spec(unit.downsample[0]) if unit.downsample is not None else None
        pool_after = _strided_index(unit) if getattr(unit, "halves", False) else None
        return ResidualUnit(tuple(conv_spec(c) for c, _ in convs), shortcut, pool_after=pool_after)

    @property
    def fc_features(self) -> dict[str, int]:
        return {"avgpool": self.fc.in_features, "fc": self.fc.out_features}

    def top_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of layer4's output for a square input of `image_size`."""
        h = image_size
        for layer in self.macro_layers:
            for unit in layer.units:
                for i, c in enumerate(unit.main):
                    h = (h + 2 * c.padding - c.kernel_size) // c.stride + 1
                    if i == unit.pool_after:
                        h //= 2
                if unit.maxpool is not None:
                    p = unit.maxpool
                    h = (h + 2 * p.padding - p.kernel_size) // p.stride + 1
        return (self.macro_layers[-1].out_channels, h, h)

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, need_switches: bool = False) -> EncoderOutput:
        x, stem_trace = self._stem(x, need_switches)
        acts, traces = [x], [(stem_trace,)]
        for name in STAGE_NAMES[1:]:
            stage_traces = []
            for unit in getattr(self, name):
                x, trace = self._unit(unit, x, need_switches)
                stage_traces.append(trace)
            acts.append(x)
            traces.append(tuple(stage_traces))
        sizes = [t[0].in_size for t in traces]
        pooled = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(F.dropout(pooled, self.dropout, self.training) if self.dropout else pooled)
        return EncoderOutput(acts, traces, sizes, {"avgpool": pooled, "fc": logits}, logits)

    def _stem(self, x: torch.Tensor, need_switches: bool) -> tuple[torch.Tensor, UnitTrace]:
        trace = UnitTrace(_size(x))
        x = self.relu(self.bn1(self.conv1(x)))
        if self.macro_layers[0].units[0].pool_after is not None:
            trace.pool_size = _size(x)
            x, trace.main_switches = _pool(x, DOWNSAMPLE_POOL, need_switches)
        if isinstance(self.maxpool, nn.MaxPool2d):
            trace.maxpool_size = _size(x)
            x, trace.maxpool_switches = _pool(x, PoolSpec(3, 2, 1), need_switches)
        return x, trace

    def _unit(self, unit: BasicBlock | Bottleneck, x: torch.Tensor, need_switches: bool
              ) -> tuple[torch.Tensor, UnitTrace]:
        trace = UnitTrace(_size(x))
        if not getattr(unit, "halves", False):
            return unit(x), trace  # torchvision's own forward: identical logits
        # downsample=pool: torchvision's forward, the strided conv at stride 1 and a 2x2 max-pool of its activation
        # (after its batch norm and ReLU, as VGG pools: the switches are the argmax of what the next conv reads);
        # the shortcut conv likewise, after its batch norm
        convs = _main_convs(unit)
        at = _strided_index(unit)
        out = x
        for i, (conv, bn) in enumerate(convs):
            out = bn(conv(out))
            if i < len(convs) - 1:
                out = unit.relu(out)
            if i == at:
                trace.pool_size = _size(out)
                out, trace.main_switches = _pool(out, DOWNSAMPLE_POOL, need_switches)
        conv, bn = unit.downsample
        shortcut, trace.shortcut_switches = _pool(bn(conv(x)), DOWNSAMPLE_POOL, need_switches)
        return unit.relu(out + shortcut), trace


def _main_convs(unit: BasicBlock | Bottleneck) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    pairs = [(unit.conv1, unit.bn1), (unit.conv2, unit.bn2)]
    return pairs + [(unit.conv3, unit.bn3)] if isinstance(unit, Bottleneck) else pairs


def _strided_index(unit: BasicBlock | Bottleneck) -> int:
    """Which main-path conv torchvision strides: conv1 of a BasicBlock, conv2 (the 3x3) of a Bottleneck."""
    return 1 if isinstance(unit, Bottleneck) else 0


def _size(x: torch.Tensor) -> tuple[int, int]:
    return (x.shape[-2], x.shape[-1])


def _pool(x: torch.Tensor, p: PoolSpec, need_switches: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if not need_switches:
        return F.max_pool2d(x, p.kernel_size, p.stride, p.padding, ceil_mode=p.ceil_mode), None
    return F.max_pool2d(x, p.kernel_size, p.stride, p.padding, ceil_mode=p.ceil_mode, return_indices=True)


def _init_like_torchvision_resnet(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- builders

def build_resnet18(num_classes: int, image_size: int, *, dropout: float = 0.0, downsample: str = "stride",
                   **_) -> ResNetEncoder:
    """torchvision's ResNet-18 (BasicBlock x [2, 2, 2, 2]); its weights load by name."""
    return ResNetEncoder(BasicBlock, [2, 2, 2, 2], num_classes, downsample=downsample, dropout=dropout)


def build_resnet50(num_classes: int, image_size: int, *, dropout: float = 0.0, downsample: str = "stride",
                   **_) -> ResNetEncoder:
    """torchvision's ResNet-50 (Bottleneck x [3, 4, 6, 3], stride on the 3x3 conv: v1.5); its weights load by name."""
    return ResNetEncoder(Bottleneck, [3, 4, 6, 3], num_classes, downsample=downsample, dropout=dropout)


def build_resnet18_small(num_classes: int, image_size: int, *, width: float = 0.25, dropout: float = 0.0,
                         downsample: str = "stride", **_) -> ResNetEncoder:
    """ResNet-18 for small images: a 3x3 stride-1 stem without max-pool, channels 64 x `width` doubling per stage."""
    return ResNetEncoder(BasicBlock, [2, 2, 2, 2], num_classes, small_stem=True,
                         base_width=max(1, round(64 * width)), downsample=downsample, dropout=dropout)
