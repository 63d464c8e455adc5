"""A Hydra job as the entry points see it: validate once, fetch (or train) the classifier it starts from, run it.

``src/main.py`` calls ``run_job`` (or ``run_study`` for study=recon) with the config Hydra composed; tests call them
directly. The layers below: ``studies/`` (the classifier cache, the reconstruction study) -> ``job.py`` (one job) ->
``training/`` and ``tracking/`` -> ``models/`` and ``data/`` -> ``config.py``.
"""
from __future__ import annotations

from omegaconf import DictConfig

from recondec.checks import validate
from recondec.job import JobInfo, JobResult, launch
from recondec.studies.classifier import with_classifier


def run_job(dict_cfg: DictConfig, info: JobInfo) -> JobResult:
    """Every bad value fails in `validate`, before any work; a job whose schedule fine-tunes a classifier
    (classifier.epochs > 0) starts from the cached one, trained first when it is missing."""
    cfg = validate(dict_cfg)
    if cfg.classifier.epochs and cfg.study == "train":
        dict_cfg = with_classifier(dict_cfg, cfg, info.overrides)
    return launch(dict_cfg, cfg, info)
