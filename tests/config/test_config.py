"""Config composition (Hydra's compose API) and the named errors for bad values."""
import json
import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from recondec.checks import validate
from recondec.config import CONF_DIR, REPO_ROOT, ConfigError, variant_option

GROUPS = ["backbone", "variant", "loss", "schedule", "data", "trainer", "logger", "experiment"]
NEEDS_DATA = {"imagenet", "folder"}  # need data.root to validate


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes_and_validates(compose_cfg, tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if option in NEEDS_DATA or "imagenet" in option:
        overrides.append(f"data.root={tmp_path}")
    if option == "folder":
        overrides.append("data.num_classes=3")
    cfg = compose_cfg(*overrides)
    if group == "backbone":
        assert cfg.backbone.name == option
    if "imagenet" in option and group == "experiment":  # torchvision's weights: not cached, and tests are offline
        with pytest.raises(ConfigError, match="backbone.pretrained"):
            validate(cfg)
        return
    validate(cfg)


def leaves(node: dict, prefix: str):
    for key, value in node.items():
        if key != "defaults":
            yield from leaves(value, f"{prefix}.{key}") if isinstance(value, dict) else [(f"{prefix}.{key}", value)]


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])  # presets override other options
def test_no_option_file_repeats_a_schema_default(group):
    """The schema (src/recondec/config.py) is the one place for a default: an option file holds what differs."""
    import yaml

    from recondec.config import Config

    schema = OmegaConf.structured(Config)
    repeated = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        for key, value in leaves(yaml.safe_load(path.read_text()) or {}, group):
            parent, leaf = key.rsplit(".", 1)
            node = OmegaConf.select(schema, parent)
            if not OmegaConf.is_config(node) or leaf not in node or OmegaConf.is_missing(node, leaf):
                continue  # a dict entry (loss weights) or a value the schema leaves to the options
            default = node[leaf]
            default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
            if getattr(default, "value", default) == value:
                repeated.append(f"{path.name}: {key}={value!r}")
    assert not repeated, repeated


def test_hydra_group_composes_with_distinct_job_folders(compose_cfg):
    cfg = compose_cfg(return_hydra_config=True)
    # microseconds in the folder name, and the job number in each job's sub-folder
    assert re.fullmatch(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", cfg.hydra.sweep.dir)
    assert re.fullmatch(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", cfg.hydra.run.dir)
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"


def test_unknown_variant_lists_the_allowed_ones(compose_cfg):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg("variant=swwae_everything")
    assert "variant" in str(err.value) and "sae_layerwise" in str(err.value)


@pytest.mark.parametrize("override,allowed", [("variant.unpool=bilinear", ["fixed", "switch"]),
                                              ("trainer.precision=fp8", ["fp32", "bf16", "fp16"]),
                                              ("trainer.nonfinite=ignore", ["stop", "skip"])])
def test_unknown_enum_value_names_key_and_allowed_values(compose_cfg, override, allowed):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(override)
    cause = str(err.value.__cause__)
    assert override.split("=")[0] in cause and all(a in cause for a in allowed), cause


@pytest.mark.parametrize("override,key", [
    ("loss.weights.image=-1", "loss.weights.image"),
    ("loss.classification=-0.5", "loss.classification"),
    ("backbone.image_size=40", "backbone.image_size"),
    ("backbone.name=resnet101", "backbone.name"),
    ("trainer.device=cudax", "trainer.device"),
    ("schedule.batch_size=0", "schedule.batch_size"),
    ("schedule.joint.lr=0", "schedule.joint.lr"),
    ("schedule.decoder.epochs=-2", "schedule.decoder.epochs"),
    ("backbone.pretrained=/no/such/weights.pth", "backbone.pretrained"),
])
def test_bad_values_fail_before_any_work_naming_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + "="):
        validate(compose_cfg(override))


def test_missing_data_path_names_the_key_and_how_to_fix_it(compose_cfg):
    with pytest.raises(ConfigError, match="data.root"):
        validate(compose_cfg("data=imagenet"))


def test_folder_num_classes_is_counted_from_the_train_folders(compose_cfg, tmp_path):
    for c in ("cat", "dog", "fox"):
        (tmp_path / "train" / c).mkdir(parents=True)
    assert validate(compose_cfg("data=folder", f"data.root={tmp_path}")).data.num_classes == 3
    assert validate(compose_cfg("data=folder", f"data.root={tmp_path}", "data.num_classes=3")).data.num_classes == 3
    with pytest.raises(ConfigError, match=r"data\.num_classes=5 is invalid: allowed null or 3, the number of class "):
        validate(compose_cfg("data=folder", f"data.root={tmp_path}", "data.num_classes=5"))


def test_folder_num_classes_without_train_folders_asks_for_it(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.num_classes=null cannot be inferred: .*train is not a folder"):
        validate(compose_cfg("data=folder", f"data.root={tmp_path}"))


def test_logger_system_metrics_is_off_by_default_and_a_bool(compose_cfg):
    assert compose_cfg().logger.system_metrics is False
    assert validate(compose_cfg("logger.system_metrics=true")).logger.system_metrics is True
    with pytest.raises(ConfigCompositionException, match="system_metrics"):
        compose_cfg("logger.system_metrics=sometimes")


def test_normalisation_defaults_from_the_weights_metadata_unless_set(compose_cfg, tmp_path):
    import os
    from pathlib import Path

    from torchvision.models import VGG16_BN_Weights

    cached = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / Path(VGG16_BN_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"")  # only its presence is checked when validating
    base = ["data=imagenet", f"data.root={tmp_path}", "backbone=vgg16_bn"]
    meta = VGG16_BN_Weights.IMAGENET1K_V1.transforms()
    conf = validate(compose_cfg(*base, "backbone.pretrained=IMAGENET1K_V1"))
    assert (conf.data.mean, conf.data.std) == (list(meta.mean), list(meta.std))
    conf = validate(compose_cfg(*base, "backbone.pretrained=IMAGENET1K_V1", "data.mean=[0.5,0.5,0.5]"))
    assert (conf.data.mean, conf.data.std) == ([0.5, 0.5, 0.5], list(meta.std))  # what the user sets wins
    assert validate(compose_cfg(*base)).data.mean == [0.485, 0.456, 0.406]  # no weights: ImageNet's


@pytest.mark.parametrize("backbone", ["vgg16", "vgg16_bn", "alexnet", "resnet18", "resnet50"])
def test_every_torchvision_weights_resizes_to_256_and_crops_224_as_the_loaders_do(backbone):
    from torchvision.models import get_model_weights

    from recondec.models.backbones import TORCHVISION_NAMES

    for weights in get_model_weights(TORCHVISION_NAMES[backbone]):
        t = weights.transforms()
        # the one exception, said in checks.fill_normalisation and docs/paper.md: resnet50's V2 was rated at 232
        resize = [232] if weights.name == "IMAGENET1K_V2" and backbone == "resnet50" else [256]
        assert (list(t.resize_size), list(t.crop_size)) == (resize, [224]), weights


def test_the_schema_checks_need_no_layer_above_config():
    """config.py is the ground floor: composing and checking a config imports neither torch nor the models or
    data layers (the registry and file checks are checks.py's)."""
    code = ("import sys; from hydra import compose, initialize_config_dir; "
            "from recondec.config import CONF_DIR, check_schema, register_schema; register_schema(); "
            "ctx = initialize_config_dir(str(CONF_DIR), version_base='1.3'); ctx.__enter__(); "
            "cfg = check_schema(compose('config', overrides=['output_dir=/tmp/x'])); "
            "print(sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('recondec.models', 'recondec.data'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("overrides,key", [(["data.loader=torchvision"], "data.loader"),
                                           (["data=folder", "data.loader=memory", "data.root=/"], "data.loader"),
                                           (["data.name=mine", "data.loader=ffcv"], "data.root")])
def test_what_a_data_set_allows_comes_from_its_kind(compose_cfg, overrides, key):
    """digits is built in (memory or ffcv); folder and a name of your own are image folders (a root, no memory)."""
    with pytest.raises(ConfigError, match=rf"{key}=.* is invalid"):
        validate(compose_cfg(*overrides))


def test_a_preregistration_names_rows_or_row_pairs_and_is_tagged_on_every_run(compose_cfg):
    from mlflow.tracking import MlflowClient

    from recondec.job import JobInfo, build_tracker

    cfg = validate(compose_cfg("+report.preregistered.decoders=[swwae_all@10,sae_all@3 vs baseline]",
                               "report.baseline_target=84", "report.equivalence_margin=0.5"))
    assert cfg.report.preregistered == {"decoders": ["swwae_all@10", "sae_all@3 vs baseline"]}
    tracker = build_tracker(cfg, JobInfo(overrides=[]), None)
    tracker.finish()
    tags = MlflowClient(cfg.logger.tracking_uri).get_run(tracker.run_id).data.tags
    assert json.loads(tags["preregistered"]) == cfg.report.preregistered and tags["baseline_target"] == "84"
    assert tags["equivalence_margin"] == "0.5"
    for bad in ("[]", "['swwae_all against baseline']"):
        with pytest.raises(ConfigError, match=r"report.preregistered.decoders=.* is invalid"):
            validate(compose_cfg(f"+report.preregistered.decoders={bad}"))
    with pytest.raises(ConfigError, match=r"report.equivalence_margin=0"):
        validate(compose_cfg("report.equivalence_margin=0"))


def test_a_grid_gives_each_variant_its_own_scale_and_an_explicit_scale_wins(compose_cfg):
    table = "+loss.scale_per_variant={swwae_all:100,sae_all:30}"
    assert validate(compose_cfg(table, "variant=swwae_all")).loss.scale == 100
    assert validate(compose_cfg(table, "variant=sae_all")).loss.scale == 30
    assert validate(compose_cfg(table, "variant=swwae_first")).loss.scale == 1.0  # not in the table
    assert validate(compose_cfg(table, "variant=swwae_all", "loss.scale=10")).loss.scale == 10  # a dose-response
    with pytest.raises(ConfigError, match=r"loss.scale_per_variant.sae_all=-1.* is invalid"):
        validate(compose_cfg("+loss.scale_per_variant={sae_all:-1}", "variant=sae_all"))


def test_the_scale_multiplies_every_reconstruction_weight(compose_cfg):
    from recondec.models import build_loss, build_model

    def weights(*overrides):
        cfg = validate(compose_cfg("variant=swwae_all", *overrides))
        return build_loss(build_model(cfg.backbone, cfg.variant, 10), cfg.loss, cfg.data.std).weights

    plain, scaled = weights(), weights("loss.scale=30")
    assert set(plain) == set(scaled) == {"image", "pool1", "pool2", "pool3", "pool4"}
    assert all(scaled[k] == pytest.approx(30 * plain[k]) for k in plain)


def test_derive_works_out_again_what_the_checks_filled_in_and_leaves_the_callers_config_alone(compose_cfg):
    from recondec.checks import derive

    cfg = validate(compose_cfg("+loss.scale_per_variant={swwae_all:100}", "variant=baseline",
                               "+logger.tags.grid=k100", "+report.preregistered.q=[swwae_all]"))
    assert cfg.loss.scale == 1.0 and "loss.scale" in cfg.filled
    job = derive(cfg, {"variant": variant_option("swwae_all"), "logger.tags": {"role": "classifier"},
                       "report.preregistered": {}})
    assert job.loss.scale == 100  # the table's entry for the new variant, not the baseline's filled-in 1
    assert job.logger.tags == {"role": "classifier"} and job.report.preregistered == {}  # plain dicts: replaced
    assert job.variant.name == "swwae_all" and job.variant.unpool.value == "switch"  # a group: merged and typed
    assert (cfg.variant.name, cfg.loss.scale, cfg.logger.tags) == ("baseline", 1.0, {"grid": "k100"})
    assert derive(cfg, {"loss.scale": 3.0}).loss.scale == 3.0  # what the change sets is kept
    memory = derive(cfg, {})
    assert memory.schedule.train_crop.value == "none"
    assert derive(cfg, {"data.loader": "ffcv"}).schedule.train_crop.value == "random_resized"  # the new loader's


def test_study_eval_needs_a_checkpoint(compose_cfg):
    with pytest.raises(ConfigError, match=r"resume=None is invalid: allowed a checkpoint \(or auto\) for study=eval"):
        validate(compose_cfg("study=eval"))
    with pytest.raises(ConfigError, match=r"loss.scale_per_variant=\['swwae_al'\] is invalid"):
        validate(compose_cfg("+loss.scale_per_variant={swwae_al:10}"))
