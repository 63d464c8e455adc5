"""The augmented network: an encoder plus the decoding pathway its variant describes.

A variant is data (``VariantConf``: topology, unpooling, which levels carry a loss), not a class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from recondec.config import BackboneConf, ChannelOrder, DecoderInit, LossLevels, Topology, Unpool, VariantConf
from recondec.models.backbones import Encoder, EncoderOutput, build_encoder, load_pretrained
from recondec.models.decoders import FCDecoder, LayerwiseDecoder, StackedDecoder, init_decoder, level_name
from recondec.models.resnets import ResNetEncoder

log = logging.getLogger(__name__)


@dataclass
class AugmentedOutput:
    logits: torch.Tensor
    recons: dict[str, torch.Tensor] = field(default_factory=dict)   # level -> reconstruction
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # level -> encoder activation (not "image")

    def take(self, rows: slice) -> "AugmentedOutput":
        """The outputs of some samples of the batch (samples never mix: no batch norm in the decoders)."""
        return AugmentedOutput(self.logits[rows], {k: v[rows] for k, v in self.recons.items()},
                               {k: v[rows] for k, v in self.targets.items()})


class AugmentedNet(nn.Module):
    def __init__(self, encoder: Encoder | ResNetEncoder, variant: VariantConf, image_size: int,
                 channel_order: ChannelOrder = ChannelOrder.rgb, decoder_init: DecoderInit = DecoderInit.reference):
        super().__init__()
        self.encoder, self.variant, self.image_size = encoder, variant, image_size
        self.bgr = channel_order is ChannelOrder.bgr  # Caffe-converted weights read BGR
        self.decoder = self._build_decoder(variant)
        if self.decoder is not None:
            init_decoder(self.decoder, decoder_init)
        self.encoder_frozen = False

    # ------------------------------------------------------------ structure
    @property
    def levels(self) -> list[str]:
        """Every level the decoder reconstructs, bottom first ("image", "pool1", ...)."""
        if self.decoder is None:
            return []
        return [level_name(self.encoder.macro_layers, i - 1) for i in range(len(self.decoder.blocks))]

    @property
    def loss_levels(self) -> list[str]:
        if self.decoder is None:
            return []
        return self.levels if self.variant.losses is LossLevels.all else ["image"]

    def _build_decoder(self, v: VariantConf) -> Optional[nn.Module]:
        layers = self.encoder.macro_layers
        top = len(layers) - 1
        if v.topology is Topology.none:
            return None
        if v.topology is Topology.layerwise:
            return LayerwiseDecoder(layers, v.unpool, top)
        names = [m.name for m in layers]
        fc_levels = self.encoder.fc_levels
        if v.decode_from is None or v.decode_from in fc_levels:
            fc = None
            if v.decode_from is not None:
                fc = FCDecoder(v.decode_from, fc_levels, self.encoder.fc_features,
                               self.encoder.top_shape(self.image_size))
            return StackedDecoder(layers, v.unpool, top, fc, v.decode_from)
        if v.decode_from not in names:
            raise ValueError(f"variant.decode_from={v.decode_from!r} is invalid: allowed {names + list(fc_levels)}")
        return StackedDecoder(layers, v.unpool, names.index(v.decode_from))

    # ------------------------------------------------------------ training stages
    def set_encoder_frozen(self, frozen: bool) -> None:
        """Stage 1 of the protocol trains the decoders only: no gradients into the encoder, and the
        encoder in eval mode (BN statistics and dropout as at test time)."""
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, decode: bool = True, layerwise: bool = False) -> AugmentedOutput:
        """layerwise=True: every decoder block on the clean activation of its level (decoder pre-training)."""
        decode = decode and self.decoder is not None
        enc = self.encode(x, switches=decode)
        return self.decode(enc, x, layerwise) if decode else AugmentedOutput(enc.logits)

    def encode(self, x: torch.Tensor, switches: bool = True) -> EncoderOutput:
        """The encoder on RGB images `x`, fed in the weights' channel order; pooling switches where the decoder
        unpools with them."""
        need_switches = switches and self.decoder is not None and self.variant.unpool is Unpool.switch
        return self.encoder(x.flip(1) if self.bgr else x, need_switches=need_switches)

    def decode(self, enc: EncoderOutput, x: torch.Tensor, layerwise: bool = False) -> AugmentedOutput:
        """The decoding pathway on an encoder output (of images `x`): reconstructions and their targets."""
        recons = self.decoder(enc, (x.shape[-2], x.shape[-1]), layerwise=layerwise)
        if self.bgr:  # the image pathway speaks the weights' channel order; everything outside the model is RGB
            recons["image"] = recons["image"].flip(1)
        targets = {m.name: a for m, a in zip(self.encoder.macro_layers, enc.activations) if m.name in recons}
        return AugmentedOutput(enc.logits, recons, targets)


class Classifier(nn.Module):
    """The inference view of an AugmentedNet: images in, class logits out (no decoding). What is logged to MLflow
    as the run's model, so that ``mlflow.pytorch.load_model(...)(images)`` gives logits directly."""

    def __init__(self, net: AugmentedNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, decode=False).logits


def build_model(backbone: BackboneConf, variant: VariantConf, num_classes: int) -> AugmentedNet:
    options = {} if backbone.batch_norm is None else {"batch_norm": backbone.batch_norm}
    if backbone.downsample is not None:  # the ResNets' choice (checks.py refuses it elsewhere)
        options["downsample"] = backbone.downsample.value
    encoder = build_encoder(backbone.name, num_classes, backbone.image_size, width=backbone.width,
                            dropout=backbone.dropout, classifier_width=backbone.classifier_width, **options)
    if backbone.pretrained:
        skipped = load_pretrained(encoder, backbone.pretrained, backbone.name)
        if skipped:
            log.warning("pretrained weights: %d tensors kept their initialisation (shape differs): %s",
                        len(skipped), ", ".join(skipped))
    return AugmentedNet(encoder, variant, backbone.image_size, backbone.channel_order, backbone.decoder_init)
