"""MLflow tracking: one run per job, params = the flattened resolved config, the data set as the run's input,
per-epoch metrics (and running training losses every trainer.log_every_n_steps), figures, the config files as
artifacts and the final model as an MLflow model (mlflow.pytorch). The job says how a run ended: one that raised
is marked FAILED with its traceback attached, so a grid shows what went wrong where; a preempted one KILLED with a
``preempted`` tag, until ``resume=auto`` continues it.

Every call to the store is retried with backoff (a locked sqlite file, a restarting server); when the
retries are used up the job stops with an error naming the store: metrics are never dropped silently.
The store is reached (and the run created) before any training, so a bad store fails within a minute or
two (sqlite itself waits 20 s on a lock at each attempt), not after hours of training.
"""
from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.tracking import MlflowClient

from recondec.tracking.base import Tracker
from recondec.tracking.figures import error_per_level, reconstruction_grid

log = logging.getLogger(__name__)
MAX_PARAM_CHARS = 6000
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # waits between attempts: five attempts over about 15 s


class TrackingError(RuntimeError):
    """The MLflow tracking store could not be reached or written, even after retries."""


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:500]  # sqlalchemy appends the whole SQL statement


def with_retries(what: str, uri: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), retried after each of RETRY_DELAYS_S; then a TrackingError naming the store."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if delay is None:
                raise TrackingError(f"MLflow tracking store {uri} is unreachable or locked: {what} failed "
                                    f"{len(RETRY_DELAYS_S) + 1} times ({type(e).__name__}: {_first_line(e)}). Check "
                                    f"logger.tracking_uri, the disk, and that no other process holds the "
                                    f"database") from e
            log.warning("MLflow: %s failed (%s: %s), retrying in %gs", what, type(e).__name__, _first_line(e), delay)
            time.sleep(delay)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists stay one value."""
    if not isinstance(d, dict):
        return {prefix[:-1]: str(d)[:MAX_PARAM_CHARS]}
    out: dict[str, str] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def sanitize(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow metric names may not contain some characters; ours use only '/', '_' and '.'."""
    return {k.replace("@", "_"): float(v) for k, v in metrics.items()}


def artifact_root(tracking_uri: str) -> Optional[str]:
    """Artifacts of a sqlite store live beside the database (<db folder>/mlruns), not in whatever folder a
    job happened to start in, which is MLflow's default."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return None


def set_experiment(tracking_uri: str, name: str) -> None:
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=artifact_root(tracking_uri))
        except mlflow.exceptions.MlflowException:
            pass  # a job of the same sweep created it in the meantime
    mlflow.set_tracking_uri(tracking_uri)  # the fluent API's store: else MLflow's default, a database in the cwd
    mlflow.set_experiment(name)


def find_run_dirs(tracking_uri: str, experiment: str, tag: str, value: str) -> list[Path]:
    """The output folders (tag ``output_dir``) of the runs tagged ``tag=value`` in `experiment`, newest first."""
    def search():
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        return client.search_runs([exp.experiment_id], filter_string=f"tags.{tag} = '{value}'",
                                  order_by=["attributes.start_time DESC"]) if exp else []

    runs = with_retries("searching earlier runs", tracking_uri, search)
    return [Path(r.data.tags["output_dir"]) for r in runs if "output_dir" in r.data.tags]


class MlflowTracker(Tracker):
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str],
                 mean: list[float], resume_run_id: Optional[str] = None, system_metrics: bool = False):
        self.uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self._call("reaching the store", lambda: MlflowClient(tracking_uri).search_experiments(max_results=1))
        self._call("creating the experiment", set_experiment, tracking_uri, experiment)
        if resume_run_id:
            self.run = self._call("reopening the run", mlflow.start_run, run_id=resume_run_id,
                                  log_system_metrics=system_metrics)
            # where the run lives now, so that the next resume=auto finds its newest checkpoints
            self._call("tagging", mlflow.set_tag, "output_dir", tags["output_dir"])
        else:
            self.run = self._call("creating the run", mlflow.start_run, run_name=run_name, tags=tags,
                                  log_system_metrics=system_metrics)
        self.run_id = self.run.info.run_id
        self.mean = mean

    def _call(self, what: str, fn, *args, **kwargs):
        return with_retries(what, self.uri, fn, *args, **kwargs)

    def log_params(self, params: dict[str, Any]) -> None:
        flat = flatten(params)
        existing = self.run.data.params if self.run.data else {}
        self._call("logging params", mlflow.log_params, {k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call(f"logging metrics of step {step}", mlflow.log_metrics, sanitize(metrics), step=step)

    def log_reconstructions(self, batch, epoch: int, final: bool) -> None:
        """A grid per level, logged with the epoch as its step (the UI steps through them); the final ones also
        as reconstructions/<level>.png. Written synchronously: a few small PNGs, where MLflow's asynchronous queue
        would add a thread whose exit waits out its 1 s poll."""
        for level in batch.recons:
            grid = reconstruction_grid(batch.inputs, batch.recons[level], batch.targets[level], level, self.mean)
            self._call("logging an image", mlflow.log_image, grid, key=f"reconstructions/{level}", step=epoch,
                       synchronous=True)
            if final:
                self._call("logging an image", mlflow.log_image, grid, artifact_file=f"reconstructions/{level}.png")

    def log_error_plot(self, history: list[dict[str, float]]) -> None:
        import matplotlib.pyplot as plt

        fig = error_per_level(history)
        self._call("logging a figure", mlflow.log_figure, fig, "reconstruction_error_per_level.png")
        plt.close(fig)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self._call(f"logging {path}", mlflow.log_artifact, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: Optional[str] = None) -> None:
        self._call(f"logging {folder}", mlflow.log_artifacts, str(folder), artifact_path)

    def log_model(self, model, input_example) -> None:
        """`model` (an nn.Module) as the run's MLflow model "model": the pickled module with its weights (loading it
        needs recondec importable, as for the checkpoint), an input example and the signature inferred from it.
        Pickled rather than torch.export-ed (MLflow's default): nothing to trace that could fail a finished job.
        Requirements are given, not inferred: no network, no pip."""
        import mlflow.pytorch
        import torch

        self._call("logging the model", mlflow.pytorch.log_model, model, name="model", input_example=input_example,
                   serialization_format="pickle",
                   pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def log_dataset(self, name: str, root: Optional[str], context: str = "training") -> None:
        """The data set as the run's input (the runs table's Dataset column): its name and where it lives, a
        light description (no hashing of the data itself)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        source = LocalArtifactDatasetSource(str(Path(root).resolve())) if root else \
            CodeDatasetSource({"builtin": name})  # a built-in set, loaded by recondec.data.builtin
        self._call("logging the data set", mlflow.log_input, MetaDataset(source, name=name), context=context)

    def finish(self, status: str = "FINISHED", error: Optional[BaseException] = None,
               output_dir: Optional[Path] = None, preempted: Optional[str] = None) -> None:
        if status == "FINISHED":
            self._call("ending the run", mlflow.end_run, "FINISHED")
            return
        try:
            self._record_outcome(status, error, output_dir, preempted)
        except Exception as e:  # the original error matters more; its traceback is in output_dir
            log.error("could not record the outcome in MLflow: %s: %s", type(e).__name__, e)

    def _record_outcome(self, status: str, error: Optional[BaseException], output_dir: Optional[Path],
                        preempted: Optional[str]) -> None:
        if preempted is not None:  # not a failure: resume=auto continues this run
            self._call("tagging", mlflow.set_tag, "preempted", preempted)
        elif error is not None:
            self._call("tagging", mlflow.set_tag, "error", f"{type(error).__name__}: {error}"[:5000])
            text = "".join(traceback.format_exception(error))
            if output_dir is not None:
                path = Path(output_dir) / "traceback.txt"
                path.write_text(text)
                self._call("logging the traceback", mlflow.log_artifact, str(path))
            else:
                self._call("logging the traceback", mlflow.log_text, text, "traceback.txt")
        self._call("ending the run", mlflow.end_run, status)
