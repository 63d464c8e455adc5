"""Validation of a composed config: the schema's own checks (config.check_schema), then those that need the
layers above it: the backbone registry, the weights, the data on disk. Every bad value fails here, before any work.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recondec.config import IMAGENET_MEAN, IMAGENET_STD, BackboneConf, Config, ConfigError, DataConf, _require, \
    check_schema, dataset_kind


def validate(cfg: DictConfig) -> Config:
    """The typed config, every check passed, data.mean / data.std filled in."""
    conf = check_schema(cfg)
    check_backbone(conf.backbone)
    check_data(conf.data)
    check_split(conf)
    fill_normalisation(conf)
    return conf


def check_split(conf: Config) -> None:
    """A built-in set's held-out and labelled images can be drawn (data.val_size, data.labels_per_class against its
    class sizes): read from its labels alone, before any work."""
    if not dataset_kind(conf.data.name).builtin:
        return  # an image folder's classes are counted when its loader lists it
    from recondec.data.builtin import training_labels
    from recondec.data.splits import split_training_set

    try:
        labels = training_labels(conf.data.name, conf.data.root, conf.data.test_fraction)
    except FileNotFoundError as e:
        raise ConfigError(f"data.root={conf.data.root!r} is invalid: {e}") from None
    split_training_set(labels, conf.data, conf.trainer.seed, holdout=True)


def check_backbone(backbone: BackboneConf) -> None:
    from recondec.models.backbones import BACKBONES, ensure_cached, torchvision_weights

    _require(backbone.name in BACKBONES, "backbone.name", f"one of {sorted(BACKBONES)}", backbone.name)
    spec = BACKBONES[backbone.name]
    _require(spec.accepts_size(backbone.image_size), "backbone.image_size", spec.size_rule, backbone.image_size)
    if backbone.pretrained is not None:
        try:  # a weights name is fetched into torch.hub's cache now, so a job never fails on it later
            weights = torchvision_weights(backbone.name, backbone.pretrained)
            if weights:
                ensure_cached(weights)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None


def check_data(data: DataConf) -> None:
    """A set whose classes are its folders (data=folder): data.num_classes counted, or checked against them."""
    train = Path(str(data.root), "train")
    if dataset_kind(data.name).classes_from_folders and (data.num_classes is None or train.is_dir()):
        data.num_classes = _count_classes(train, data.num_classes)
    _require(data.num_classes is not None and data.num_classes > 0, "data.num_classes", "an integer > 0",
             data.num_classes)


def _count_classes(train: Path, given) -> int:
    from recondec.data.images import list_classes

    try:
        found = len(list_classes(train))
    except FileNotFoundError as e:
        raise ConfigError(f"data.num_classes=null cannot be inferred: {e}; set data.num_classes=N") from None
    _require(given in (None, found), "data.num_classes", f"null or {found}, the number of class folders in {train}",
             given)
    return found


def fill_normalisation(conf: Config) -> None:
    """data.mean / data.std left null: those of the torchvision weights named by backbone.pretrained (their
    transforms' metadata), else ImageNet's. (Their resize / crop sizes, 256 / 224 for every weights of the
    torchvision backbones here, are the loaders' fixed 256/224 ratio and backbone.image_size.)"""
    if conf.data.mean is not None and conf.data.std is not None:
        return
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if conf.backbone.pretrained:
        from recondec.models.backbones import torchvision_weights

        weights = torchvision_weights(conf.backbone.name, conf.backbone.pretrained)
        if weights is not None:
            transforms = weights.transforms()
            mean, std = list(transforms.mean), list(transforms.std)
    conf.data.mean = conf.data.mean if conf.data.mean is not None else mean
    conf.data.std = conf.data.std if conf.data.std is not None else std
