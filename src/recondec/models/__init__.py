"""Models: encoders (backbones.py), unpooling, decoders, the augmented network and its losses."""
from recondec.models.augmented import AugmentedNet, AugmentedOutput, Classifier, build_model
from recondec.models.backbones import BACKBONES, Encoder, build_encoder, load_pretrained
from recondec.models.losses import AugmentedLoss, build_loss

__all__ = ["AugmentedNet", "AugmentedOutput", "Classifier", "build_model", "BACKBONES", "Encoder", "build_encoder",
           "load_pretrained", "AugmentedLoss", "build_loss"]
