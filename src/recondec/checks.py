"""Validation of a composed config: the schema's own checks (config.check_schema), then those that need the
layers above it: the backbone registry, the weights, the data on disk (for the torchvision loader, every image file
decodes). Every bad value fails here, before any work.

The Hydra config stops here: ``validate`` turns it into the typed ``Config`` that everything below takes, and
``derive`` makes a sub-job's config (the cached classifier, the reconstruction study's decoders) from a typed one,
checked again. ``as_dict`` / ``as_yaml`` are what a run records: the values it used, normalisation filled in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recondec.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneConf,
    Config,
    ConfigError,
    DataConf,
    Downsample,
    Study,
    _require,
    check_schema,
    dataset_kind,
)


def validate(composed: DictConfig) -> Config:
    """The typed config, every check passed, data.mean / data.std filled in."""
    cfg = check_schema(composed)
    check_backbone(cfg.backbone)
    check_levels(cfg)
    if cfg.data.num_classes is None:
        cfg.filled.append("data.num_classes")
    check_data(cfg.data)
    check_split(cfg)
    fill_normalisation(cfg)
    check_image_files(cfg.data)  # last: the only check that may read every file
    return cfg


def derive(cfg: Config, changes: dict[str, Any]) -> Config:
    """A sub-job's config: `cfg` with `changes` (dotted keys), validated again; `cfg` itself is left as it is. A dict
    value for a config group (`variant`, `schedule`) merges into it, typed by the schema; for a plain dict
    (`logger.tags`, `report.preregistered`) it replaces it. What the checks filled in (`cfg.filled`) and `changes`
    does not set is worked out again for the new job."""
    node = OmegaConf.structured(cfg)
    for key in cfg.filled:
        if key not in changes:
            OmegaConf.update(node, key, None, merge=False)
    node.filled = []
    for key, value in changes.items():
        current = OmegaConf.select(node, key)
        group = isinstance(value, dict) and OmegaConf.is_config(current) and OmegaConf.get_type(current) is not dict
        OmegaConf.update(node, key, value, merge=group)
    return validate(node)


def as_dict(node: Any) -> dict:
    """A typed config, or one of its groups, as plain values (enums as their names): MLflow's params, cache keys."""
    return OmegaConf.to_container(OmegaConf.structured(node), enum_to_str=True)


def as_yaml(cfg: Config) -> str:
    """The config as YAML: a run's config_resolved.yaml, every value the run used."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def check_split(cfg: Config) -> None:
    """A built-in set's held-out and labelled images can be drawn (data.val_size, data.labels_per_class against its
    class sizes): read from its labels alone, before any work."""
    if not dataset_kind(cfg.data.name).builtin:
        return  # an image folder's classes are counted when its loader lists it
    from recondec.data.builtin import training_labels
    from recondec.data.splits import split_training_set

    try:
        labels = training_labels(cfg.data.name, cfg.data.root, cfg.data.test_fraction)
    except FileNotFoundError as e:
        raise ConfigError(f"data.root={cfg.data.root!r} is invalid: {e}") from None
    split_training_set(labels, cfg.data, cfg.trainer.seed, holdout=True)


def check_backbone(backbone: BackboneConf) -> None:
    from recondec.models.backbones import BACKBONES, ensure_cached, torchvision_weights

    _require(backbone.name in BACKBONES, "backbone.name", f"one of {sorted(BACKBONES)}", backbone.name)
    spec = BACKBONES[backbone.name]
    _require(spec.accepts_size(backbone.image_size), "backbone.image_size", spec.size_rule, backbone.image_size)
    _require(backbone.batch_norm is None or spec.batch_norm_option, "backbone.batch_norm",
             f"null for backbone={backbone.name} (its layout is fixed: vgg16 / vgg16_bn for VGG-16 without / with "
             "batch norm; vgg16_small takes true or false)", backbone.batch_norm)
    _require(backbone.downsample is None or spec.downsample_option, "backbone.downsample",
             f"null for backbone={backbone.name} (only the ResNets take stride or pool)", _value(backbone.downsample))
    names = backbone.pretrained is not None and not Path(backbone.pretrained).is_file()  # torchvision's weights
    _require(backbone.downsample is not Downsample.pool or not names, "backbone.downsample",
             f"stride or null with backbone.pretrained={backbone.pretrained!r} (torchvision's weights were trained "
             "with stride-2 convolutions; pool is for training from scratch, or a local file trained with it)",
             _value(backbone.downsample))
    if backbone.pretrained is not None:
        try:  # a weights name is fetched into torch.hub's cache now, so a job never fails on it later
            weights = torchvision_weights(backbone.name, backbone.pretrained)
            if weights:
                ensure_cached(weights)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None


def check_levels(cfg: Config) -> None:
    """variant.decode_from and recon.levels name levels of the backbone; recon.levels null: all of them."""
    from recondec.models.backbones import BACKBONES

    levels = list(BACKBONES[cfg.backbone.name].levels)
    if not levels:  # a backbone registered without its level names: the model checks decode_from when built
        _require(cfg.study is not Study.recon or cfg.recon.levels is not None, "recon.levels",
                 f"a list of levels (backbone={cfg.backbone.name} does not name its own)", None)
        return
    _require(cfg.variant.decode_from in [None, *levels], "variant.decode_from", f"null or one of {levels}",
             cfg.variant.decode_from)
    if cfg.study is not Study.recon:
        return
    if cfg.recon.levels is None:
        cfg.recon.levels = levels
        cfg.filled.append("recon.levels")
    unknown = [lv for lv in cfg.recon.levels if lv not in levels]
    _require(not unknown, "recon.levels", f"levels of backbone={cfg.backbone.name}: {levels}", cfg.recon.levels)


def _value(option):
    return option.value if option is not None else None


def check_data(data: DataConf) -> None:
    """A set whose classes are its folders (data=folder): data.num_classes counted, or checked against them."""
    train = Path(str(data.root), "train")
    if dataset_kind(data.name).classes_from_folders and (data.num_classes is None or train.is_dir()):
        data.num_classes = _count_classes(train, data.num_classes)
    _require(data.num_classes is not None and data.num_classes > 0, "data.num_classes", "an integer > 0",
             data.num_classes)


def check_image_files(data: DataConf) -> None:
    """data.loader=torchvision on an image folder: every file it will read decodes, or data.bad_images=skip leaves
    the bad ones out (data/folder_check.py; cached per folder, so a second job pays for the listing only)."""
    from recondec.data.folder_check import applies, check_image_folders

    if applies(data):
        check_image_folders(data)


def _count_classes(train: Path, given) -> int:
    from recondec.data.images import list_classes

    try:
        found = len(list_classes(train))
    except FileNotFoundError as e:
        raise ConfigError(f"data.num_classes=null cannot be inferred: {e}; set data.num_classes=N") from None
    _require(given in (None, found), "data.num_classes", f"null or {found}, the number of class folders in {train}",
             given)
    return found


def fill_normalisation(cfg: Config) -> None:
    """data.mean / data.std left null: those of the torchvision weights named by backbone.pretrained (their
    transforms' metadata), else ImageNet's. (Their resize / crop sizes, 256 / 224 for every weights of the
    torchvision backbones here but resnet50's IMAGENET1K_V2 (DEFAULT: 232 / 224), are the loaders' fixed 256/224
    ratio and backbone.image_size.)"""
    cfg.filled += [f"data.{key}" for key in ("mean", "std") if getattr(cfg.data, key) is None]
    if cfg.data.mean is not None and cfg.data.std is not None:
        return
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if cfg.backbone.pretrained:
        from recondec.models.backbones import torchvision_weights

        weights = torchvision_weights(cfg.backbone.name, cfg.backbone.pretrained)
        if weights is not None:
            transforms = weights.transforms()
            mean, std = list(transforms.mean), list(transforms.std)
    cfg.data.mean = cfg.data.mean if cfg.data.mean is not None else mean
    cfg.data.std = cfg.data.std if cfg.data.std is not None else std
