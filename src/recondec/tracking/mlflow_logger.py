"""MLflow tracking: one run per job, params = the flattened resolved config, per-epoch metrics, figures,
the config files and the final checkpoint as artifacts. A job that raises is marked FAILED with its
traceback attached, so a grid shows what went wrong where."""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Optional

import matplotlib.pyplot as plt
import mlflow
from mlflow.tracking import MlflowClient

from recondec.tracking.figures import error_per_level, reconstruction_grid

log = logging.getLogger(__name__)
MAX_PARAM_CHARS = 6000


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


class MlflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str],
                 mean: list[float], resume_run_id: Optional[str] = None):
        mlflow.set_tracking_uri(tracking_uri)
        self._check_store(tracking_uri)
        mlflow.set_experiment(experiment)
        if resume_run_id:
            self.run = mlflow.start_run(run_id=resume_run_id)
        else:
            self.run = mlflow.start_run(run_name=run_name, tags=tags)
        self.run_id = self.run.info.run_id
        self.mean = mean

    @staticmethod
    def _check_store(uri: str) -> None:
        """Fail before training, not after hours of it, if the store cannot be written."""
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as e:
            raise RuntimeError(f"MLflow tracking store {uri} is unreachable or locked: {e}") from e

    def log_params(self, params: dict[str, Any]) -> None:
        flat = flatten(params)
        existing = self.run.data.params if self.run.data else {}
        mlflow.log_params({k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics(sanitize(metrics), step=step)

    def log_epoch_figures(self, batch, history: list[dict[str, float]]) -> None:
        for level in batch.recons:
            fig = reconstruction_grid(batch.inputs, batch.recons[level], batch.targets[level], level, self.mean)
            mlflow.log_figure(fig, f"reconstructions/{level}.png")
            plt.close(fig)
        fig = error_per_level(history)
        mlflow.log_figure(fig, "reconstruction_error_per_level.png")
        plt.close(fig)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: Optional[str] = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path)

    def finish(self, error: Optional[BaseException] = None, output_dir: Optional[Path] = None) -> None:
        if error is None:
            mlflow.end_run("FINISHED")
            return
        mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
        text = "".join(traceback.format_exception(error))
        if output_dir is not None:
            path = Path(output_dir) / "traceback.txt"
            path.write_text(text)
            mlflow.log_artifact(str(path))
        else:
            mlflow.log_text(text, "traceback.txt")
        mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
