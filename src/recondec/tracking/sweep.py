"""A ``-m`` sweep as one MLflow parent run, each job a child run: the UI nests the grid under its sweep.

Hydra calls the callback in the launching process. Before any job starts it creates the parent run (named after
the sweep folder, the sweep's overrides as its params) and writes the run's id into the sweep folder, where
every job reads it (in this process, in joblib workers or on SLURM nodes sharing the folder) and tags its own
run as a child. After the last job it logs a summary table of the children to the parent and ends it: FINISHED,
or FAILED when a child did not finish.
"""
from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
PARENT_FILE = ".mlflow_parent_run_id"
SUMMARY_METRICS = ("val/top1", "val/top5", "val/mse/image", "val/psnr/image", "train/img_per_s")


def parent_run_id(sweep_dir: Optional[str]) -> Optional[str]:
    """The parent run of the sweep a job belongs to (None outside a sweep, or when the callback is off)."""
    path = Path(sweep_dir, PARENT_FILE) if sweep_dir else None
    return path.read_text().strip() if path is not None and path.is_file() else None


def summary_table(children) -> str:
    """One row per child run: its name, status and final metrics."""
    keys = [k for k in SUMMARY_METRICS if any(k in r.data.metrics for r in children)]
    lines = ["| run | status | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in sorted(children, key=lambda r: r.info.start_time):
        cells = [f"{r.data.metrics[k]:.4g}" if k in r.data.metrics else "-" for k in keys]
        lines.append(f"| {r.info.run_name} | {r.info.status} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class ParentRun:
    """An MLflow run that other runs nest under (a sweep, a study). Made with the client, never the active run,
    so the jobs under it start their own runs as usual; every call is retried as the jobs' calls are."""

    def __init__(self, uri: str, experiment: str, name: str, tags: dict[str, str], parent: Optional[str] = None):
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags  # as the jobs' runs: git commit, source, user

        from recondec.tracking.mlflow_logger import set_experiment

        self.uri, self.client = uri, MlflowClient(uri)
        self._call("creating the experiment", set_experiment, uri, experiment)
        self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        tags = {**tags, "mlflow.parentRunId": parent} if parent else tags
        self.run_id = self._call("creating the parent run", self.client.create_run, self.experiment_id,
                                 run_name=name, tags=resolve_tags(tags)).info.run_id

    def _call(self, what: str, fn, *args, **kwargs):
        from recondec.tracking.mlflow_logger import with_retries

        return with_retries(what, self.uri, fn, *args, **kwargs)

    def children(self) -> list:
        return self._call("finding the child runs", self.client.search_runs, [self.experiment_id],
                          filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'", max_results=10_000)

    def log_param(self, key: str, value: str) -> None:
        self._call("logging a parameter", self.client.log_param, self.run_id, key, value[:6000])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("logging a summary", self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, path: Path, folder: Optional[str] = None) -> None:
        self._call("logging an artifact", self.client.log_artifact, self.run_id, str(path), folder)

    def end(self, status: str = "FINISHED") -> None:
        self._call("ending the parent run", self.client.set_terminated, self.run_id, status)


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: Optional[ParentRun] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self.parent = ParentRun(config.logger.tracking_uri, config.logger.experiment, f"sweep {sweep_dir}",
                                {"sweep": str(sweep_dir), "role": "sweep"})
        self.parent.log_param("sweep.overrides", " ".join(config.hydra.overrides.task))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.parent.run_id)
        # Hydra re-raises a failed job's error before on_multirun_end: the parent is then closed at exit
        atexit.register(self.on_multirun_end, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:  # already closed
            return
        parent, self.parent = self.parent, None
        children = parent.children()
        parent.log_text(summary_table(children), "summary.md")
        finished = sum(r.info.status == "FINISHED" for r in children)
        parent.end("FINISHED" if children and finished == len(children) else "FAILED")
        log.info("sweep: %d of %d jobs finished; MLflow parent run %s", finished, len(children), parent.run_id)
