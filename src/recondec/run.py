"""A validated job, dispatched by its study: one function per study, chosen here and nowhere else.

``src/main.py`` validates the config Hydra composed (``checks.validate``) and calls ``run_job``; tests do the same.
The layers below: ``studies/`` (the classifier cache, the reconstruction study) -> ``job.py`` (one job) ->
``training/`` and ``tracking/`` -> ``models/`` and ``data/`` -> ``config.py``.
"""
from __future__ import annotations

from typing import Callable, Union

from recondec.config import Config, Study
from recondec.job import EVALUATE, TRAIN, JobInfo, JobResult, launch
from recondec.studies.classifier import with_classifier
from recondec.studies.recon import run_recon_study

ReconResults = dict[str, dict[str, float]]


def run_training(cfg: Config, info: JobInfo) -> JobResult:
    """Train one job; one that fine-tunes a classifier (classifier.epochs > 0) starts from the cached one, trained
    first when it is missing."""
    if cfg.classifier.epochs:
        cfg = with_classifier(cfg, info.overrides)
    return launch(cfg, info, TRAIN)


def run_evaluation(cfg: Config, info: JobInfo) -> JobResult:
    """Reload resume=<checkpoint> and evaluate it, as a run of its own."""
    return launch(cfg, info, EVALUATE)


STUDIES: dict[Study, Callable[[Config, JobInfo], Union[JobResult, ReconResults]]] = {
    Study.train: run_training, Study.eval: run_evaluation, Study.recon: run_recon_study}


def run_job(cfg: Config, info: JobInfo) -> Union[JobResult, ReconResults]:
    return STUDIES[cfg.study](cfg, info)
