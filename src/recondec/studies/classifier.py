"""The classifier a job starts from (``classifier.epochs > 0``), as in the paper's protocol: every job of a
grid fine-tunes the same pretrained classifier, with or without decoding pathways.

It is trained once, by an ordinary tracked job (the baseline variant, its own MLflow run tagged
``role=classifier``), and cached at ``<classifier.cache_dir>/<key>/encoder.pt``. The key is a hash of what
decides its weights (backbone, data, the schedule it is trained with, its epochs and seed, precision), so a
second grid with the same settings reuses it, and changing any of them trains a new one. A file lock makes
concurrent jobs (a SLURM array, DDP ranks on one node) wait for one training instead of each starting one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from recondec.checks import as_dict, derive
from recondec.config import Config, ConfigError, PretrainConf, StageConf, variant_option
from recondec.job import TRAIN, JobInfo, JobResult, launch
from recondec.training import checkpoint as ckpt
from recondec.training.distributed import DistEnv

log = logging.getLogger(__name__)
# settings that change how fast the classifier learns, or what it is evaluated on, not its weights (the classifier
# has no decoder); data.bad_images neither: refuse trains only when every image decodes, and then skip trains the same
_NOT_IN_KEY = {"data": ("num_workers", "val_limit", "test_limit", "bad_images"),
               "backbone": ("pretrained", "decoder_init")}


def classifier_schedule(cfg: Config) -> dict:
    """The schedule the classifier is trained with: classifier.schedule (or the job's own), stages other than the
    joint one off, and the joint stage classifier.epochs long."""
    schedule = as_dict(cfg.classifier.schedule if cfg.classifier.schedule is not None else cfg.schedule)
    schedule["pretrain"] = as_dict(PretrainConf())
    schedule["decoder"] = as_dict(StageConf(freeze_encoder=True))
    schedule["joint"] = {"epochs": cfg.classifier.epochs, "lr": schedule["joint"]["lr"], "freeze_encoder": False,
                         "probe_lr": False}
    schedule["unlabelled_batch_size"] = 0  # it learns from the labelled images alone
    return schedule


def classifier_seed(cfg: Config) -> int:
    return cfg.trainer.seed if cfg.classifier.seed is None else cfg.classifier.seed


def classifier_data(cfg: Config) -> dict:
    """The data the classifier learns from: the job's labelled images (the same held-out validation set, the same
    labels_per_class subset of the same split seed); it never sees the unlabelled ones."""
    data = as_dict(cfg.data)
    if data.get("labels_per_class") is not None and data.get("split_seed") is None:
        data["split_seed"] = cfg.trainer.seed  # the job's subset, whatever seed the classifier trains with
    return data


def classifier_key(cfg: Config) -> str:
    from recondec.data.builtin import source_folder

    data = {k: v for k, v in classifier_data(cfg).items() if k not in _NOT_IN_KEY["data"]}
    data["root"] = source_folder(data["name"], data["root"])  # the files read, however they were named
    schedule = classifier_schedule(cfg)
    schedule.pop("unlabelled_batch_size")  # always 0 for the classifier
    if schedule["train_crop"] != "pad_crop":
        schedule.pop("crop_padding")  # read by pad_crop only
    backbone = {k: v for k, v in as_dict(cfg.backbone).items() if k not in _NOT_IN_KEY["backbone"]}
    if not backbone["batch_norm"]:
        backbone.pop("batch_norm")  # null and false build the same network: one key
    if backbone["downsample"] in (None, "stride"):
        backbone.pop("downsample")  # null and stride build the same network, and keys from before the option stay
    parts = {"data": data, "backbone": backbone}
    parts.update(schedule=schedule, seed=classifier_seed(cfg), precision=str(cfg.trainer.precision),
                 epoch_steps=cfg.trainer.max_steps_per_epoch, classification_weight=cfg.loss.classification)
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def classifier_job(cfg: Config, folder: Path) -> Config:
    """The job that trains the classifier: the baseline under the classifier's schedule and seed."""
    return derive(cfg, {
        "variant": variant_option("baseline"), "schedule": classifier_schedule(cfg), "data": classifier_data(cfg),
        # the test set read once at the classifier's end, as every run reads it: the report's row "classifier
        # (start)"; it selects nothing (the preset fixed the classifier's recipe)
        "trainer.seed": classifier_seed(cfg), "trainer.test": cfg.trainer.test,
        "classifier.epochs": 0, "backbone.pretrained": None, "study": "train", "resume": None,
        "output_dir": str(folder / "run"), "logger.run_name": f"classifier {folder.name}",
        "logger.tags": {"role": "classifier", "classifier_key": folder.name}, "report.preregistered": {}})


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def train_classifier(job_cfg: Config, overrides: list[str]) -> JobResult:
    """The classifier's own job: one process, whatever launched the job that needs it."""
    return launch(job_cfg, JobInfo(overrides=overrides), TRAIN, DistEnv())


def with_classifier(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` starting from the cached classifier: backbone.pretrained is its encoder.pt, and the run tags name the
    classifier's key and MLflow run. When it is not cached yet, it is trained now, by a job of its own."""
    folder = Path(cfg.classifier.cache_dir) / classifier_key(cfg)
    weights = folder / "encoder.pt"
    if cfg.backbone.pretrained not in (None, str(weights)):
        raise ConfigError(f"classifier.epochs={cfg.classifier.epochs} trains the classifier this job starts "
                          f"from, and backbone.pretrained={cfg.backbone.pretrained} gives one: set only one of them")
    with _locked(folder.parent / f"{folder.name}.lock"):
        if weights.exists():
            log.info("starting from the cached classifier %s", weights)
        else:
            log.info("training the classifier every job of this configuration starts from: %s", folder)
            result = train_classifier(classifier_job(cfg, folder), [*overrides, "role=classifier"])
            model = torch.load(result.checkpoint, map_location="cpu", weights_only=False)["model"]
            encoder = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")}
            ckpt.save_atomic(encoder, weights, stamped=False)
            (folder / "classifier.json").write_text(json.dumps(
                {"run_id": result.run_id, "val/top1": result.metrics.get("val/top1"),
                 "test/top1": result.metrics.get("test/top1")}, indent=1))
    meta = json.loads((folder / "classifier.json").read_text())
    tags = {**cfg.logger.tags, "classifier_key": folder.name, "classifier_run": meta["run_id"]}
    return derive(cfg, {"backbone.pretrained": str(weights), "logger.tags": tags})
