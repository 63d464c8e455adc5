"""MLflow tracking: one run per job, params = the flattened resolved config, the data set as the run's input,
per-epoch metrics (and running training losses every trainer.log_every_n_steps), figures, the config files as
artifacts and the final model as an MLflow model (mlflow.pytorch). The job says how a run ended: one that raised
is marked FAILED with its traceback attached, so a grid shows what went wrong where; a preempted one KILLED with a
``preempted`` tag, until ``resume=auto`` continues it.

The store is reached (and the run created) before any training, so a bad store fails within about 15 s (five
attempts; sqlite itself waits 20 s on a lock at each), not after hours of training. After that, every call goes
through a LogQueue (tracking/log_queue.py): one thread logs in order and retries while training goes on, so a
restarting server delays the logging, not the job. At the end the job waits up to logger.flush_timeout_s for the
queue; what is still unlogged is written to <output_dir>/unlogged.jsonl, which resume=auto re-logs into the run.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.tracking import MlflowClient

from recondec.tracking.base import Tracker
from recondec.tracking.figures import error_per_level, reconstruction_grid
from recondec.tracking.log_queue import LogQueue, Task, describe, write_unlogged

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


def quick_http_failures(uri: str) -> None:
    """MLflow's HTTP client retries a failed request for minutes inside one call (7 retries, doubling waits); the
    LogQueue retries instead, every few seconds, so that logging resumes soon after the server does. A user's own
    settings of these variables win."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def reach_store(uri: str) -> MlflowClient:
    client = MlflowClient(uri)  # a sqlite store is opened here already
    client.search_experiments(max_results=1)
    return client


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker(Tracker):
    """The run is created (or reopened) here, synchronously; every later call is queued. The run is the fluent
    API's active run in the queue's thread only (MLflow keeps one active run per thread)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str],
                 mean: list[float], resume_run_id: Optional[str] = None, system_metrics: bool = False,
                 output_dir: Optional[Path] = None, flush_timeout_s: float = 30.0):
        from mlflow.tracking.context.registry import resolve_tags  # what fluent start_run adds: git commit, user

        self.uri, self.mean, self.output_dir, self.flush_timeout_s = tracking_uri, mean, output_dir, flush_timeout_s
        quick_http_failures(tracking_uri)
        client = self._call("reaching the store", reach_store, tracking_uri)
        self._call("creating the experiment", set_experiment, tracking_uri, experiment)
        if resume_run_id:
            run = self._call("reopening the run", client.get_run, resume_run_id)
        else:
            experiment_id = self._call("finding the experiment", client.get_experiment_by_name,
                                       experiment).experiment_id
            run = self._call("creating the run", client.create_run, experiment_id, run_name=run_name,
                             tags=resolve_tags(tags))
        self.run_id = run.info.run_id
        self._logged_params = set(run.data.params)
        self.unlogged: list[Task] = []
        self.unlogged_path: Optional[Path] = None
        self._queue = LogQueue(self.run_id[:8])
        self._put("opening the run", lambda: mlflow.start_run(run_id=self.run_id, log_system_metrics=system_metrics))
        if resume_run_id:  # where the run lives now, so that the next resume=auto finds its newest checkpoints
            self.log_tags({"output_dir": tags["output_dir"]})

    def _call(self, what: str, fn, *args, **kwargs):
        return with_retries(what, self.uri, fn, *args, **kwargs)

    def _put(self, what: str, call, record: Optional[dict] = None) -> None:
        self._queue.put(Task(what, call, record))

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: v for k, v in flatten(params).items() if k not in self._logged_params}
        self._logged_params.update(flat)
        self._put("logging params", lambda: mlflow.log_params(flat), {"kind": "params", "params": flat})

    def log_tags(self, tags: dict[str, str]) -> None:
        self._put("tagging", lambda: mlflow.set_tags(tags), {"kind": "tags", "tags": tags})

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: Optional[int] = None) -> None:
        clean, stamp = sanitize(metrics), timestamp or _now_ms()  # stamped when measured, not when logged
        self._put(f"logging metrics of step {step}", lambda: mlflow.log_metrics(clean, step=step, timestamp=stamp),
                  {"kind": "metrics", "metrics": clean, "step": step, "timestamp": stamp})

    def log_reconstructions(self, batch, epoch: int, final: bool) -> None:
        """A grid per level, logged with the epoch as its step (the UI steps through them); the final ones also
        as reconstructions/<level>.png. The grids are drawn here; only the upload waits in the queue."""
        for level in batch.recons:
            grid = reconstruction_grid(batch.inputs, batch.recons[level], batch.targets[level], level, self.mean)
            self._put("logging an image", lambda g=grid, key=f"reconstructions/{level}": mlflow.log_image(
                g, key=key, step=epoch, synchronous=True))
            if final:
                self._put("logging an image", lambda g=grid, name=f"reconstructions/{level}.png": mlflow.log_image(
                    g, artifact_file=name))

    def log_error_plot(self, history: list[dict[str, float]]) -> None:
        import io

        import matplotlib.pyplot as plt
        from PIL import Image

        fig = error_per_level(history)  # drawn in this thread: matplotlib's figures are not thread-safe
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        image = Image.open(buffer)
        name = "reconstruction_error_per_level.png"
        self._put("logging a figure", lambda: mlflow.log_image(image, artifact_file=name))

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self._put(f"logging {path}", lambda: mlflow.log_artifact(str(path), artifact_path),
                  {"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def log_artifacts(self, folder: str | Path, artifact_path: Optional[str] = None) -> None:
        self._put(f"logging {folder}", lambda: mlflow.log_artifacts(str(folder), artifact_path),
                  {"kind": "artifacts", "path": str(folder), "artifact_path": artifact_path})

    def log_model(self, model, input_example) -> None:
        """`model` (an nn.Module) as the run's MLflow model "model": the pickled module with its weights (loading it
        needs recondec importable, as for the checkpoint), an input example and the signature inferred from it.
        Pickled rather than torch.export-ed (MLflow's default): nothing to trace that could fail a finished job.
        Requirements are given, not inferred: no network, no pip."""
        import mlflow.pytorch
        import torch

        self._put("logging the model", lambda: mlflow.pytorch.log_model(
            model, name="model", input_example=input_example, serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"]))

    def log_dataset(self, name: str, root: Optional[str], context: str = "training") -> None:
        """The data set as the run's input (the runs table's Dataset column): its name and where it lives, a
        light description (no hashing of the data itself)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        source = LocalArtifactDatasetSource(str(Path(root).resolve())) if root else \
            CodeDatasetSource({"builtin": name})  # a built-in set, loaded by recondec.data.builtin
        dataset = MetaDataset(source, name=name)
        self._put("logging the data set", lambda: mlflow.log_input(dataset, context=context))

    def relog(self, records: list[dict]) -> None:
        """Records an earlier job of this run could not log (log_queue.read_unlogged), queued again."""
        for r in records:
            if r["kind"] == "metrics":
                self.log_metrics(r["metrics"], r["step"], r.get("timestamp"))
            elif r["kind"] == "params":
                self._put("logging params", lambda p=r["params"]: mlflow.log_params(p), r)
            elif r["kind"] == "tags":
                self.log_tags(r["tags"])
            elif Path(r["path"]).exists():
                (self.log_artifact if r["kind"] == "artifact" else self.log_artifacts)(r["path"], r["artifact_path"])
        if records:
            log.info("tracking: %d calls of an earlier job re-queued for run %s", len(records), self.run_id)

    def finish(self, status: str = "FINISHED", error: Optional[BaseException] = None,
               output_dir: Optional[Path] = None, preempted: Optional[str] = None) -> None:
        if preempted is not None:  # not a failure: resume=auto continues this run
            self.log_tags({"preempted": preempted})
        elif error is not None:
            self.log_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
            text = "".join(traceback.format_exception(error))
            if output_dir is not None:
                path = Path(output_dir) / "traceback.txt"
                path.write_text(text)
                self.log_artifact(path)
            else:
                self._put("logging the traceback", lambda: mlflow.log_text(text, "traceback.txt"))
        self._put(f"ending the run ({status})", lambda: mlflow.end_run(status))
        self._drain()

    def _drain(self) -> None:
        """Wait for the queue (logger.flush_timeout_s at most); keep on disk what it could not log."""
        self.unlogged = self._queue.close(self.flush_timeout_s)
        if not self.unlogged:
            return
        where = "not kept (no output folder)"
        if self.output_dir is not None:
            self.unlogged_path = write_unlogged(self.unlogged, self.run_id, self.output_dir)
            where = f"kept in {self.unlogged_path}; resume=auto re-logs them into run {self.run_id}"
        log.warning("tracking: %s did not take %s within logger.flush_timeout_s=%g s; %s (the run stays RUNNING "
                    "in the store until then)", self.uri, describe(self.unlogged), self.flush_timeout_s, where)
