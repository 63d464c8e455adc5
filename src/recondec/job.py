"""One job, from a validated config to a tracked result: launch its ranks, build, train or evaluate, log.

``recondec.run`` picks the study's function, which calls ``launch`` with what the job does (``TRAIN``, ``EVALUATE``).

Only config errors come before the MLflow run exists; anything that fails later (a bad pretrained file,
a NaN, out of memory) leaves a FAILED run with its traceback, and in a multirun the other jobs go on.

A job started by a submitit launcher continues the checkpoint in its own output folder (a requeued attempt).
``resume=auto`` continues the newest valid checkpoint of the same run: first this job's output folder
(a requeued SLURM job, or ``hydra.run.dir=<old folder>``); if it has none, the output folder of the
newest MLflow run of the same experiment started with the same overrides (tag ``resume_key``), so that
rerunning a crashed command with ``resume=auto`` added just works.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from recondec.checks import as_dict, as_yaml
from recondec.config import Config, ConfigError, Downsample, Topology
from recondec.data import build_loaders
from recondec.data.folder_check import log_skipped_images
from recondec.models import build_loss, build_model
from recondec.tracking.base import Tracker
from recondec.tracking.log_queue import read_unlogged
from recondec.training import checkpoint as ckpt
from recondec.training import distributed
from recondec.training.device import resolve_device
from recondec.training.distributed import DistEnv
from recondec.training.loop import Trainer
from recondec.training.reliability import Preempted

log = logging.getLogger(__name__)


@dataclass
class JobInfo:
    """What Hydra knows about the job: its overrides and, in a multirun, the sweep folder."""
    overrides: list[str]
    sweep_dir: Optional[str] = None
    parent_run_id: Optional[str] = None  # the MLflow run this job's run nests under (its sweep, its study)
    hydra_dir: Optional[Path] = None  # <output>/.hydra: config.yaml, overrides.yaml


@dataclass
class JobResult:
    run_id: str
    metrics: dict[str, float]
    output_dir: Path
    checkpoint: Optional[Path]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic  # autotuned conv algorithms, unless bit-exactness matters
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


def run_name(info: JobInfo) -> str:
    hidden = ("output_dir", "logger.", "hydra.", "resume")
    shown = [o for o in info.overrides if not o.startswith(hidden)]
    return ",".join(shown) or "defaults"


def resume_key(info: JobInfo) -> str:
    """Names "the same run" across invocations: a hash of the overrides, without those that only say
    where outputs go or whether to resume."""
    kept = sorted(o for o in info.overrides if not o.startswith(("resume=", "hydra.", "output_dir=")))
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:16]


def pairing_key(cfg: Config) -> str:
    """What a seed fixes for every arm of a grid: the start (the cached classifier, the given weights, or the seeded
    initialisation), the held-out and labelled images, the data order. Two runs with equal keys pair: the report
    compares them seed by seed (a paired test) instead of as independent samples."""
    d = cfg.data
    split_seed = cfg.trainer.seed if d.split_seed is None else d.split_seed
    parts = {"seed": cfg.trainer.seed, "start": cfg.logger.tags.get("classifier_key") or cfg.backbone.pretrained,
             "data": [d.name, d.root, d.val_size, d.train_limit, d.labels_per_class, split_seed],
             "batch": cfg.schedule.batch_size, "backbone": [cfg.backbone.name, cfg.backbone.width]}
    if cfg.backbone.downsample is Downsample.pool:  # another network from the same seed (keys from before it stay)
        parts["backbone"].append("pool")
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def machine_tags(cfg: Config) -> dict[str, str]:
    """Where a run's numbers come from: the torch version and the device it trained on (with MLflow's own
    mlflow.source.git.commit, what a report's table says it was measured with)."""
    import os
    import platform

    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")] if cpuinfo.is_file() else []
        name = f"{models[0] if models else platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {"torch": torch.__version__, "device": name}


def build_tracker(cfg: Config, info: JobInfo, resume_run_id: Optional[str]):
    from recondec.tracking.mlflow_logger import MlflowTracker

    tags = {"variant": cfg.variant.name, "backbone": cfg.backbone.name, "data": cfg.data.name,
            "seed": str(cfg.trainer.seed), "pairing": pairing_key(cfg),
            "sweep": cfg.logger.sweep_tag or info.sweep_dir or "single",
            "resume_key": resume_key(info), "output_dir": str(Path(cfg.output_dir).resolve()), **machine_tags(cfg),
            **cfg.logger.tags}
    if cfg.schedule.unlabelled_batch_size and cfg.variant.topology != "none":
        tags["row"] = f"{cfg.variant.name}+unlabelled"  # the report's row: the variant trained on unlabelled images too
    if cfg.report.preregistered:  # the comparisons the report makes, fixed before the run: the preset's
        tags["preregistered"] = json.dumps(cfg.report.preregistered, sort_keys=True)
    if cfg.report.baseline_target is not None:
        tags["baseline_target"] = f"{cfg.report.baseline_target:g}"
    tags["equivalence_margin"] = f"{cfg.report.equivalence_margin:g}"
    if cfg.loss.scale != 1.0 and cfg.variant.topology != "none":  # the baseline has no reconstruction weight
        tags["loss_scale"] = f"{cfg.loss.scale:g}"  # a dose-response curve's x
    if info.parent_run_id:
        tags["mlflow.parentRunId"] = info.parent_run_id  # how MLflow's UI nests runs
    return MlflowTracker(cfg.logger.tracking_uri, cfg.logger.experiment, cfg.logger.run_name or run_name(info),
                         tags, cfg.data.mean, resume_run_id, cfg.logger.system_metrics,
                         output_dir=Path(cfg.output_dir), flush_timeout_s=cfg.logger.flush_timeout_s)


def find_resume_state(cfg: Config, info: JobInfo) -> Optional[tuple[Path, dict]]:
    """The checkpoint to continue from (its path, its state), or None."""
    if cfg.resume is None:
        return _requeued_state(cfg)
    if cfg.resume == "auto":
        found = ckpt.find_latest(cfg.output_dir) or _find_in_earlier_runs(cfg, info)
        if found is None and cfg.study == "eval":
            raise ConfigError("resume=auto is invalid for study=eval here: no checkpoint of this run was found; "
                              "allowed a checkpoint file")
        if found is None:
            log.info("resume=auto: no valid checkpoint of this run, starting fresh")
            return None
        log.info("resume=auto: continuing from %s (epoch %d, step %d)", found[0], found[1]["epoch"] + 1,
                 found[1]["step"])
        return found
    state = ckpt.load_valid(Path(cfg.resume))
    if state is None:  # before the MLflow run exists: one line, exit status 2, like every bad value
        raise ConfigError(f"resume={cfg.resume!r} is invalid: allowed auto, or a readable checkpoint file (a last.pt "
                          "or best.pt of an earlier run)")
    return Path(cfg.resume), state


def _requeued_state(cfg: Config) -> Optional[tuple[Path, dict]]:
    """Under a submitit launcher (SLURM, or submitit_local) a job's output folder is its own: a checkpoint there was
    written by an earlier attempt of this job, preempted and requeued with the same overrides. It continues."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    found = ckpt.find_latest(cfg.output_dir)
    if found is not None:
        log.info("requeued job: continuing from %s (epoch %d, step %d)", found[0], found[1]["epoch"] + 1,
                 found[1]["step"])
    return found


def _find_in_earlier_runs(cfg: Config, info: JobInfo):
    from recondec.tracking.mlflow_logger import find_run_dirs

    for folder in find_run_dirs(cfg.logger.tracking_uri, cfg.logger.experiment, "resume_key", resume_key(info)):
        found = ckpt.find_latest(folder)
        if found is not None:
            return found
    return None


def rank_device(cfg: Config, env: DistEnv) -> torch.device:
    device = resolve_device(cfg.trainer.device)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def build_trainer(cfg: Config, tracker: Optional[Tracker], env: DistEnv = DistEnv()) -> Trainer:
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    device = rank_device(cfg, env)
    distributed.init_process_group(env, device)
    # schedule.batch_size is the global batch: each rank takes its share of every global batch
    loaders = build_loaders(cfg.data, cfg.backbone.image_size, cfg.schedule.batch_size // env.world_size,
                            cfg.trainer.seed, device=str(device), rank=env.rank, world_size=env.world_size,
                            ten_crop=cfg.trainer.ten_crop, train_crop=cfg.schedule.train_crop,
                            crop_padding=cfg.schedule.crop_padding,
                            unlabelled_batch_size=cfg.schedule.unlabelled_batch_size // env.world_size)
    model = build_model(cfg.backbone, cfg.variant, cfg.data.num_classes).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(model, cfg.loss, cfg.data.std).to(device)
    return Trainer(cfg, model, loss_fn, loaders, device, tracker, env)


@dataclass(frozen=True)
class Work:
    """What a job does with its trainer (the study decides; recondec.run): train it, or evaluate a reloaded model."""
    run: Callable[[Trainer], dict[str, float]]
    dataset_context: str     # MLflow's dataset context: "training" or "evaluation"
    continues_run: bool      # a resumed job logs into its checkpoint's MLflow run (an evaluation is a run of its own)
    logs_model: bool         # the final model becomes the run's MLflow model


def launch(cfg: Config, info: JobInfo, work: Work, env: Optional[DistEnv] = None) -> JobResult:
    """Run a validated job on this process or, with trainer.devices > 1 and no launcher's ranks, on that many spawned
    ranks. Rank 0's result is returned."""
    env = env or distributed.env_from_launcher()  # torchrun / SLURM tasks are ranks already
    if cfg.trainer.devices > 1 and not env.enabled:
        find_resume_state(cfg, info)  # a bad resume= fails here, as one line, not inside the spawned ranks
        return JobResult(**distributed.spawn(_spawned_rank, cfg.trainer.devices, cfg, info, work))
    return run_rank(cfg, info, work, env)


def _spawned_rank(rank: int, world_size: int, cfg: Config, info: JobInfo, work: Work) -> dict:
    """One of trainer.devices processes (distributed.spawn hands rank 0's return value back to the job)."""
    return vars(run_rank(cfg, info, work, DistEnv(rank, rank, world_size)))


def run_rank(cfg: Config, info: JobInfo, work: Work, env: DistEnv) -> JobResult:
    """This process's part of the job (all of it without DDP); the process group is closed however it ends."""
    try:
        return track(cfg, info, work, env)
    finally:
        distributed.shutdown()


def track(cfg: Config, info: JobInfo, work: Work, env: DistEnv) -> JobResult:
    """The MLflow run (reached first), the trainer, its work, the final model, the outcome."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    found = find_resume_state(cfg, info)
    state = found[1] if found else None
    continued_run = state.get("mlflow_run_id") if state and work.continues_run else None
    # the store is reached before any training: a bad one fails early, and every later failure is recorded
    tracker = build_tracker(cfg, info, continued_run) if env.is_main else Tracker()  # other ranks log nothing
    try:
        if continued_run is None:
            tracker.log_params(as_dict(cfg))  # the typed config: what the run used, normalisation filled in
            tracker.log_dataset(cfg.data.name, cfg.data.root, work.dataset_context)
        elif env.is_main:  # what the earlier job could not log (the store was away), before anything new
            tracker.relog(read_unlogged(found[0].parent.parent, continued_run))  # <output_dir>/checkpoints/x.pt
        _log_config_files(tracker, cfg, info, output_dir)
        if env.is_main:  # data.bad_images=skip: the image files the loader leaves out, as the run's bad_images.tsv
            log_skipped_images(tracker, cfg.data, output_dir)
        trainer = build_trainer(cfg, tracker, env)
        if state is not None:
            trainer.load_checkpoint(state)  # last before training: it restores the RNG streams
        metrics = work.run(trainer)
        last = ckpt.checkpoint_dir(output_dir) / "last.pt"
        if cfg.logger.log_checkpoint and work.logs_model and env.is_main:
            log_final_model(tracker, trainer)  # the checkpoint itself (with its optimiser state) stays in output_dir
        tracker.finish()
    except Preempted as e:
        log.warning("%s to %s; exit status %d. Continue with resume=auto (submitit requeues by itself)", e,
                    ckpt.checkpoint_dir(output_dir) / "last.pt", e.code)
        tracker.finish("KILLED", preempted=f"{e.signal_name} at step {e.step}")
        e.hand_over()  # under submitit: requeue the job and exit
        raise
    except BaseException as e:
        tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", error=e, output_dir=output_dir)
        raise
    result = JobResult(tracker.run_id, metrics, output_dir, last if last.exists() else None)
    if env.is_main:
        _print_summary(cfg, result, _unlogged_line(tracker))
    return result


def log_final_model(tracker, trainer: Trainer, examples: int = 2) -> None:
    """The trained model as the run's MLflow model "model": a CPU copy of its inference view (images -> logits),
    in eval mode, with a few validation images as the input example."""
    import copy

    from recondec.models import Classifier

    x, _ = next(iter(trainer.loaders.val))
    model = Classifier(copy.deepcopy(trainer.model)).cpu().eval()
    model = model.to(memory_format=torch.contiguous_format)
    tracker.log_model(model, x[:examples].float().cpu().contiguous().numpy())


def fit(trainer: Trainer) -> dict[str, float]:
    return trainer.fit()


def evaluate_only(trainer: Trainer) -> dict[str, float]:
    """study=eval: the reloaded model on the validation set, the test set (trainer.test) and 10 crops
    (trainer.ten_crop)."""
    val, _ = trainer.evaluator.evaluate(trainer.loaders.val)
    metrics = {f"val/{k}": v for k, v in val.items()} | trainer.evaluator.final(trainer.loaders)
    trainer.tracker.log_metrics(metrics, step=trainer.state.epoch)
    return metrics


TRAIN = Work(fit, "training", continues_run=True, logs_model=True)
EVALUATE = Work(evaluate_only, "evaluation", continues_run=False, logs_model=False)


def _log_config_files(tracker, cfg: Config, info: JobInfo, output_dir: Path) -> None:
    resolved = output_dir / "config_resolved.yaml"
    resolved.write_text(as_yaml(cfg))
    tracker.log_artifact(resolved, "config")
    (output_dir / "overrides.txt").write_text("\n".join(info.overrides) + "\n")
    tracker.log_artifact(output_dir / "overrides.txt", "config")
    if info.hydra_dir is not None and info.hydra_dir.is_dir():
        tracker.log_artifacts(info.hydra_dir, "config/hydra")


def _unlogged_line(tracker: Tracker) -> Optional[str]:
    from recondec.tracking.log_queue import describe

    if not tracker.unlogged:
        return None
    return (f"{describe(tracker.unlogged)}; the store did not answer. Kept in {tracker.unlogged_path}; once it "
            "answers, the same command with resume=auto re-logs them into this run")


def _print_summary(cfg: Config, result: JobResult, unlogged: Optional[str] = None) -> None:
    from recondec.training.diagnostics import describe_objective

    m = result.metrics
    top1 = ", ".join(f"{name} {m[key]:.2f}%" for name, key in (("validation", "val/top1"), ("test", "test/top1"))
                     if key in m) or "not evaluated"
    lines = [f"MLflow run id : {result.run_id}  (experiment '{cfg.logger.experiment}', {cfg.logger.tracking_uri})",
             f"top-1         : {top1}",
             f"objective     : {describe_objective(m, cfg.variant.topology is not Topology.none)}",
             f"outputs       : {result.output_dir.resolve()}",
             *([f"not logged    : {unlogged}"] if unlogged else []),
             "compare runs  : mlflow ui  (from the repository root)"]
    print("\n".join(lines), flush=True)


