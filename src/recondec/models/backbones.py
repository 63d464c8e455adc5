"""Encoders split into macro-layers, and the backbone registry.

An encoder keeps torchvision's module layout (``features`` / ``avgpool`` / ``classifier``) so a
torchvision state dict loads unchanged (``alexnet_caffe``, the authors' Caffe net, orders its classifier as
Caffe does). Its *description* (``macro_layers``) says where each macro-layer starts and ends inside
``features`` and which convolutions and pooling it holds; decoders are derived from that description alone
(a backbone whose reference decoder is not the mirror of its encoder writes that decoder into it). A new
backbone is one builder function registered in ``BACKBONES`` (with its level names) plus a
``conf/backbone/<name>.yaml``; a ResNet (resnets.py) describes its macro-layers as residual units.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional
from urllib.error import URLError

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import WeightsEnum, get_model_weights
from torchvision.models import alexnet as tv_alexnet
from torchvision.models.vgg import make_layers

from recondec.models.description import (
    ConvSpec,
    DecoderConv,
    DecoderFC,
    EncoderOutput,
    MacroLayer,
    PoolSpec,
)
from recondec.models.resnets import (
    STAGE_NAMES,
    ResNetEncoder,
    build_resnet18,
    build_resnet18_small,
    build_resnet50,
)


def describe(features: nn.Sequential, names: list[str]) -> tuple[MacroLayer, ...]:
    """Split `features` into macro-layers: a new one starts after every max-pool, and where `names`
    asks for more levels than pools (AlexNet's conv3 / conv4), after every ReLU that ends a conv."""
    n_pools = sum(isinstance(m, nn.MaxPool2d) for m in features)
    split_on_relu = len(names) > n_pools
    layers, convs, start = [], [], 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            convs.append(ConvSpec(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                                  m.groups))
        is_pool = isinstance(m, nn.MaxPool2d)
        next_is_pool = i + 1 < len(features) and isinstance(features[i + 1], nn.MaxPool2d)
        ends_here = is_pool or (split_on_relu and isinstance(m, nn.ReLU) and not next_is_pool)
        if ends_here:
            pool = PoolSpec(_int(m.kernel_size), _int(m.stride), _int(m.padding), m.ceil_mode) if is_pool else None
            layers.append(MacroLayer(names[len(layers)], start, i + 1, tuple(convs), pool))
            convs, start = [], i + 1
    if len(layers) != len(names):
        raise ValueError(f"features split into {len(layers)} macro-layers, but {len(names)} names were given")
    return tuple(layers)


def _int(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else int(v)


class Encoder(nn.Module):
    """A classifier whose forward also returns every macro-layer output and the pooling switches."""

    fc_levels = ("fc6", "fc7", "fc8")  # the fc activations a decoder may start from, bottom first

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Sequential,
                 level_names: list[str], fc_taps: dict[str, int],
                 decoder_convs: Optional[Mapping[str, tuple[DecoderConv, ...]]] = None,
                 fc_decoder: tuple[DecoderFC, ...] = ()):
        """`decoder_convs` (macro-layer name -> its decoder block) and `fc_decoder` describe a reference
        decoder that is not the plain mirror of the encoder; decoders are built from `macro_layers` alone."""
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier
        layers = describe(features, level_names)
        decoder_convs = dict(decoder_convs or {})
        if set(decoder_convs) - set(level_names):
            raise ValueError(f"decoder_convs names {sorted(set(decoder_convs) - set(level_names))}, "
                             f"not macro-layers of this encoder ({level_names})")
        layers = tuple(replace(m, decoder_convs=decoder_convs.get(m.name)) for m in layers)
        self.macro_layers = layers[:-1] + (replace(layers[-1], fc_decoder=tuple(fc_decoder)),)
        self.fc_taps = fc_taps  # name -> index in classifier whose output is that fc activation

    @property
    def fc_features(self) -> dict[str, int]:
        """The width of each fc level."""
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        return {name: m.out_features for name, m in zip(self.fc_levels, linears, strict=True)}

    def forward(self, x: torch.Tensor, need_switches: bool = False) -> EncoderOutput:
        acts, switches, sizes = [], [], []
        for layer in self.macro_layers:
            for i in range(layer.start, layer.end):
                m = self.features[i]
                if isinstance(m, nn.MaxPool2d):
                    sizes.append((x.shape[-2], x.shape[-1]))
                    x, idx = self._pool(m, x, need_switches)
                    switches.append(idx)
                else:
                    x = m(x)
            if layer.pool is None:
                sizes.append((x.shape[-2], x.shape[-1]))
                switches.append(None)
            acts.append(x)
        h = torch.flatten(self.avgpool(x), 1)
        fc = {}
        taps = {i: n for n, i in self.fc_taps.items()}
        for i, m in enumerate(self.classifier):
            h = m(h)
            if i in taps:
                fc[taps[i]] = h
        fc["fc8"] = h
        return EncoderOutput(acts, switches, sizes, fc, h)

    @staticmethod
    def _pool(m: nn.MaxPool2d, x: torch.Tensor, need_switches: bool):
        if not need_switches:
            return m(x), None
        # no gradient flows into the switches: indices are integers and are used only to place values
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)

    def top_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of the last macro-layer's output for a square input of `image_size`."""
        h = image_size
        for layer in self.macro_layers:
            for c in layer.convs:
                h = (h + 2 * c.padding - c.kernel_size) // c.stride + 1
            if layer.pool is not None:
                p = layer.pool
                num = h + 2 * p.padding - p.kernel_size
                h = (-(-num // p.stride) if p.ceil_mode else num // p.stride) + 1
            if h < 1:
                return (self.macro_layers[-1].out_channels, 0, 0)
        return (self.macro_layers[-1].out_channels, h, h)


# ---------------------------------------------------------------- builders

VGG_LEVELS = ["pool1", "pool2", "pool3", "pool4", "pool5"]
ALEXNET_LEVELS = ["pool1", "pool2", "conv3", "conv4", "pool5"]
VGG_FC_TAPS = {"fc6": 1, "fc7": 4}       # Linear, ReLU(1), Dropout, Linear, ReLU(4), Dropout, Linear
ALEXNET_FC_TAPS = {"fc6": 2, "fc7": 5}   # Dropout, Linear, ReLU(2), Dropout, Linear, ReLU(5), Linear


def build_vgg16(num_classes: int, image_size: int, *, width: float = 1.0, dropout: float = 0.5,
                classifier_width: int = 4096, batch_norm: bool = False) -> Encoder:
    """torchvision's VGG-16 (configuration D): the same modules, names and initialisation, built here so that a
    narrower head (small tests, small data) never allocates torchvision's 102M-parameter fc6 first."""
    features = make_layers(VGG16_CFG, batch_norm=batch_norm)
    classifier = _vgg_classifier(512 * 7 * 7, classifier_width, num_classes, dropout)
    _init_like_torchvision_vgg(features, classifier)
    return Encoder(features, nn.AdaptiveAvgPool2d((7, 7)), classifier, VGG_LEVELS, VGG_FC_TAPS)


def _vgg_classifier(in_features: int, width: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, width), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(width, width), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(width, num_classes))


def build_vgg16_bn(num_classes: int, image_size: int, **kw) -> Encoder:
    return build_vgg16(num_classes, image_size, **{**kw, "batch_norm": True})


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build_vgg16_small(num_classes: int, image_size: int, *, width: float = 0.25, dropout: float = 0.5,
                      classifier_width: int = 512, batch_norm: bool = False) -> Encoder:
    """VGG-16 for small images: the same 13 convs and 5 pools, channels x `width`, and a classifier
    sized to the input (no adaptive pooling: pool5 is (image_size/32)^2 cells)."""
    cfg = [v if v == "M" else max(1, round(v * width)) for v in VGG16_CFG]
    features = make_layers(cfg, batch_norm=batch_norm)
    side = image_size // 32
    c5 = cfg[-2]
    classifier = _vgg_classifier(c5 * side * side, classifier_width, num_classes, dropout)
    _init_like_torchvision_vgg(features, classifier)
    return Encoder(features, nn.Identity(), classifier, VGG_LEVELS, VGG_FC_TAPS)


def _init_like_torchvision_vgg(*modules: nn.Module) -> None:
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def build_alexnet(num_classes: int, image_size: int, *, dropout: float = 0.5, **_) -> Encoder:
    """torchvision's AlexNet: no LRN, overlapping 3x3/2 pools; torchvision weights load unchanged."""
    net = tv_alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    return Encoder(net.features, net.avgpool, net.classifier, ALEXNET_LEVELS, ALEXNET_FC_TAPS)


# The authors' AlexNet (YutingZhang/caffe-recon-dec, recon-dec/alexnet: baseline/cls_only_deploy.prototxt and
# recon/SWWAE-first/layer8_deploy.prototxt): Caffe's initialisation and its decoder, written out.
CAFFE_ALEXNET_FC_TAPS = {"fc6": 1, "fc7": 4}  # Linear, ReLU(1), Dropout, Linear, ReLU(4), Dropout, Linear
CAFFE_CONV_INIT = [(0.01, 0.0), (0.01, 0.1), (0.01, 0.0), (0.01, 0.1), (0.01, 0.1)]  # conv1..5: (std, bias)
CAFFE_FC_INIT = [(0.005, 0.1), (0.005, 0.1), (0.01, 0.0)]                           # fc6, fc7, fc8
CAFFE_ALEXNET_DECODER = {  # macro-layer -> its decoder block g_l, decode order; no groups in the decoder
    # the image block: dec:conv1-pre (5x5) + ReLU, dec:conv1-body (deconv 11x11/4) + ReLU, dec:conv1-post (5x5, linear)
    "pool1": (DecoderConv(96, 96, 5, 1, 2), DecoderConv(96, 48, 11, 4, 0), DecoderConv(48, 3, 5, 1, 2)),
    # the others mirror the encoder convs, each starting with the bias of the conv it mirrors
    "pool2": (DecoderConv(256, 96, 5, 1, 2, bias=0.1),),
    "conv3": (DecoderConv(384, 256, 3, 1, 1, bias=0.0),),
    "conv4": (DecoderConv(384, 384, 3, 1, 1, bias=0.1),),
    "pool5": (DecoderConv(256, 384, 3, 1, 1, bias=0.1),),
}
CAFFE_ALEXNET_FC_DECODER = (DecoderFC("fc8", 0.01, 0.0), DecoderFC("fc7", 0.005, 0.1), DecoderFC("fc6", 0.005, 0.1))


def build_alexnet_caffe(num_classes: int, image_size: int, *, dropout: float = 0.5, classifier_width: int = 4096,
                        **_) -> Encoder:
    """The authors' AlexNet, trained from scratch: Caffe widths 96-256-384-384-256, conv2/conv4/conv5 in two
    groups, LRN removed, 227 px; dropout after relu6 and relu7; Caffe's Gaussian initialisation. Its
    classifier indices differ from torchvision's (dropout after, not before, each hidden fc), so only its own
    state dicts load. Its decoder is the reference's (CAFFE_ALEXNET_DECODER)."""
    features = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(True), nn.MaxPool2d(3, 2))
    classifier = _vgg_classifier(256 * 6 * 6, classifier_width, num_classes, dropout)
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in classifier if isinstance(m, nn.Linear)]
    for m, (std, bias) in zip(convs + fcs, CAFFE_CONV_INIT + CAFFE_FC_INIT, strict=True):
        nn.init.normal_(m.weight, 0.0, std)
        nn.init.constant_(m.bias, bias)
    return Encoder(features, nn.AdaptiveAvgPool2d((6, 6)), classifier, ALEXNET_LEVELS, CAFFE_ALEXNET_FC_TAPS,
                   decoder_convs=CAFFE_ALEXNET_DECODER, fc_decoder=CAFFE_ALEXNET_FC_DECODER)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., Encoder]
    size_rule: str
    accepts_size: Callable[[int], bool]
    batch_norm_option: bool = False  # its builder takes batch_norm= (backbone.batch_norm true / false)
    levels: tuple[str, ...] = ()     # the levels a decoder starts from: macro-layers, then fc levels
    downsample_option: bool = False  # its builder takes downsample= (backbone.downsample stride / pool)


VGG_ALL = (*VGG_LEVELS, *Encoder.fc_levels)
ALEXNET_ALL = (*ALEXNET_LEVELS, *Encoder.fc_levels)
RESNET_ALL = (*STAGE_NAMES, *ResNetEncoder.fc_levels)
BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(build_vgg16, "an integer >= 32", lambda s: s >= 32, levels=VGG_ALL),
    "vgg16_bn": BackboneSpec(build_vgg16_bn, "an integer >= 32", lambda s: s >= 32, levels=VGG_ALL),
    "vgg16_small": BackboneSpec(build_vgg16_small, "a positive multiple of 32 (e.g. 32, 64)",
                                lambda s: s >= 32 and s % 32 == 0, batch_norm_option=True, levels=VGG_ALL),
    "alexnet": BackboneSpec(build_alexnet, "an integer >= 63", lambda s: s >= 63, levels=ALEXNET_ALL),
    "alexnet_caffe": BackboneSpec(build_alexnet_caffe, "an integer >= 67 (227 in the paper)", lambda s: s >= 67,
                                  levels=ALEXNET_ALL),
    "resnet18": BackboneSpec(build_resnet18, "an integer >= 32", lambda s: s >= 32, levels=RESNET_ALL,
                             downsample_option=True),
    "resnet50": BackboneSpec(build_resnet50, "an integer >= 32", lambda s: s >= 32, levels=RESNET_ALL,
                             downsample_option=True),
    "resnet18_small": BackboneSpec(build_resnet18_small, "an integer >= 8", lambda s: s >= 8, levels=RESNET_ALL,
                                   downsample_option=True),
}


def build_encoder(name: str, num_classes: int, image_size: int, **kwargs) -> Encoder | ResNetEncoder:
    if name not in BACKBONES:
        raise KeyError(f"backbone.name={name!r} is unknown: allowed {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    if not spec.accepts_size(image_size):
        raise ValueError(f"backbone.image_size={image_size} is invalid for {name}: allowed {spec.size_rule}")
    return spec.build(num_classes, image_size, **kwargs)


# backbones whose module layout is torchvision's: backbone.pretrained may name torchvision's weights for them
TORCHVISION_NAMES = {"vgg16": "vgg16", "vgg16_bn": "vgg16_bn", "alexnet": "alexnet", "resnet18": "resnet18",
                     "resnet50": "resnet50"}


def weights_names(backbone: str) -> list[str]:
    """The torchvision weights names `backbone.pretrained` accepts for `backbone` (none: no torchvision twin)."""
    return list(get_model_weights(TORCHVISION_NAMES[backbone]).__members__) if backbone in TORCHVISION_NAMES else []


def torchvision_weights(backbone: str, pretrained: str) -> Optional[WeightsEnum]:
    """The torchvision weights `pretrained` names, or None when it is a local file."""
    if os.path.isfile(pretrained):
        return None
    names = weights_names(backbone)
    if pretrained not in names:
        allowed = f"or a torchvision weights name of {backbone}: one of {names}" if names else \
            f"({backbone} has no torchvision counterpart, so no weights names; those are for " \
            f"{sorted(TORCHVISION_NAMES)})"
        raise ValueError(f"backbone.pretrained={pretrained!r} is invalid: allowed a path to an existing local file "
                         f"{allowed}")
    return get_model_weights(TORCHVISION_NAMES[backbone])[pretrained]


def cached_file(weights: WeightsEnum) -> Path:
    """Where torch.hub caches `weights`: $TORCH_HOME/hub/checkpoints/<the URL's file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def ensure_cached(weights: WeightsEnum, progress: bool = True) -> Path:
    """Download `weights` into torch.hub's cache unless they are there already (once per machine)."""
    path = cached_file(weights)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), progress=progress)
        except (URLError, OSError) as e:
            raise FileNotFoundError(
                f"backbone.pretrained={weights.name}: the weights are not cached at {path} and cannot be downloaded "
                f"({e}); download {weights.url} on a machine with network access and place it at {path} "
                f"(or point TORCH_HOME at a folder holding hub/checkpoints/{path.name})") from e
    return path


def load_pretrained(encoder: Encoder, pretrained: str, backbone: Optional[str] = None,
                    progress: bool = True) -> list[str]:
    """Load a state dict in the backbone's own layout (torchvision's, for the torchvision backbones) from a
    local file, or torchvision's weights named `pretrained` for `backbone` (IMAGENET1K_V1, DEFAULT) through
    torch.hub's download cache. Names must match exactly (another architecture is an error: a torchvision
    AlexNet into alexnet_caffe, whose classifier indices differ); tensors whose shapes differ (another class
    count) keep their initialisation, and their names are returned."""
    weights = torchvision_weights(backbone, pretrained) if backbone else None
    path = ensure_cached(weights, progress) if weights else pretrained
    try:  # torchvision's own loader for named weights: it reads the file just cached
        state = weights.get_state_dict(progress=progress, map_location="cpu", weights_only=True) if weights \
            else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download or another file: name it, so it can be deleted / replaced
        raise ValueError(f"{path} is not a state dict of this backbone: it cannot be read ({e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict of this backbone: it holds a {type(state).__name__}")
    own = encoder.state_dict()
    unknown, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
    if unknown or missing:
        raise ValueError(f"{path} is not a state dict of this backbone: unexpected keys {unknown[:5]}, "
                         f"missing keys {missing[:5]}")
    skipped = [k for k, v in state.items() if own[k].shape != v.shape]
    encoder.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return skipped
