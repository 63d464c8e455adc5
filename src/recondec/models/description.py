"""What an encoder says about itself, and all that decoders are built from: its macro-layers (the levels a decoder
reconstructs), the convolutions and pools inside each, and what its forward records for the decoders (activations,
pooling switches, sizes). VGG / AlexNet macro-layers are convs ending in one max-pool; a ResNet macro-layer (its
stem, layer1 .. layer4) is a sequence of residual units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class ConvSpec:
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    groups: int = 1


@dataclass(frozen=True)
class DecoderConv(ConvSpec):
    """One decoder layer written out by a backbone whose reference decoder is not the plain mirror of its
    encoder: in -> out channels, stride 1 a conv, stride > 1 a transposed conv (Caffe's Deconvolution) to the
    size of the level it reconstructs. Weights start N(0, 0.001^2) like every decoder conv; `bias` is the
    initial bias."""
    bias: float = 0.0


@dataclass(frozen=True)
class DecoderFC:
    """Initialisation of the fc decoder layer that mirrors encoder layer `mirrors` ("fc6", "fc7", "fc8")."""
    mirrors: str
    std: float
    bias: float = 0.0


@dataclass(frozen=True)
class PoolSpec:
    kernel_size: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False

    @property
    def overlapping(self) -> bool:
        return self.kernel_size > self.stride


@dataclass(frozen=True)
class MacroLayer:
    """features[start:end] of the encoder: convs (with BN/ReLU) optionally ending in one max-pool."""
    name: str                      # the name of its output, e.g. "pool3" or "conv4"
    start: int
    end: int
    convs: tuple[ConvSpec, ...]
    pool: Optional[PoolSpec]
    # A backbone whose reference decoder is not the mirror of its encoder says so here (alexnet_caffe):
    decoder_convs: Optional[tuple[DecoderConv, ...]] = None  # g_l in decode order; None: mirror `convs`
    fc_decoder: tuple[DecoderFC, ...] = ()  # top layer only: init of the fc decoder that produces its output
    units: tuple["ResidualUnit", ...] = ()  # a ResNet macro-layer: its units in order (`convs`: their main paths)

    @property
    def in_channels(self) -> int:
        return self.convs[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.convs[-1].out_channels


@dataclass
class EncoderOutput:
    activations: list[torch.Tensor]             # a_1 .. a_L, one per macro-layer
    # per macro-layer: its max-pool's argmax indices (None: not asked / no pool); for a ResNet macro-layer the
    # UnitTrace of each of its units
    switches: list[Any]
    pre_pool_sizes: list[tuple[int, int]]       # spatial size before each macro-layer's pool (a ResNet's: its input)
    fc: dict[str, torch.Tensor]                 # each fc level: "fc6", "fc7" (post-ReLU), "fc8" (the logits); ResNet
                                                # "avgpool" (the pooled features), "fc" (the logits)
    logits: torch.Tensor




@dataclass(frozen=True)
class ResidualUnit:
    """One unit of a ResNet macro-layer: its main-path convs in order (each followed by batch norm, and by a ReLU
    except the last), an optional 1x1 shortcut conv (None: identity shortcut; `residual` False: no shortcut at all,
    the stem), and where it halves the size. With `backbone.downsample=stride` a conv of the main path and the
    shortcut have stride 2; with `pool` they have stride 1 and a 2x2 max-pool follows main-path conv `pool_after`
    (after its batch norm and ReLU) and the shortcut conv (after its batch norm), so that SWWAE has switches there.
    The stem may end in a max-pool (`maxpool`)."""
    main: tuple[ConvSpec, ...]
    shortcut: Optional[ConvSpec] = None
    residual: bool = True
    pool_after: Optional[int] = None
    maxpool: Optional[PoolSpec] = None

    @property
    def in_channels(self) -> int:
        return self.main[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.main[-1].out_channels


DOWNSAMPLE_POOL = PoolSpec(2, 2)  # what replaces a stride-2 conv's stride under backbone.downsample=pool


@dataclass
class UnitTrace:
    """What a residual unit's forward recorded for its decoder: its input size (a strided conv's transposed mirror
    restores it), and for each of its max-pools the size before it and (when asked) the switches."""
    in_size: tuple[int, int]
    pool_size: Optional[tuple[int, int]] = None        # before the 2x2 pools of downsample=pool
    main_switches: Optional[torch.Tensor] = None
    shortcut_switches: Optional[torch.Tensor] = None
    maxpool_size: Optional[tuple[int, int]] = None     # before the stem's max-pool
    maxpool_switches: Optional[torch.Tensor] = None
