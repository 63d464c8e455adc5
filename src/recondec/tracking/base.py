"""The tracker interface: what a job logs, whatever it logs to.

`Tracker` itself logs nothing; it is what ranks other than 0 hold (one MLflow run per job, whatever the number
of processes) and what a bare Trainer gets (benchmarks, tests). `MlflowTracker` implements every method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


class Tracker:
    run_id: Optional[str] = None
    unlogged: tuple = ()                  # the calls the store never took (MlflowTracker, after finish)
    unlogged_path: Optional[Path] = None  # where they are kept for resume=auto to re-log

    def log_params(self, params: dict[str, Any]) -> None:
        """The flattened config."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at a step (an epoch, or the global step for train_step/...)."""

    def log_reconstructions(self, batch, epoch: int, final: bool) -> None:
        """A grid per reconstructed level of `batch` (a training.evaluate.VisualBatch)."""

    def log_error_plot(self, history: list[dict[str, float]]) -> None:
        """The reconstruction error per level over the epochs."""

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        """One file."""

    def log_artifacts(self, folder: str | Path, artifact_path: Optional[str] = None) -> None:
        """A folder's files."""

    def log_model(self, model, input_example) -> None:
        """The trained model (images -> logits)."""

    def log_dataset(self, name: str, root: Optional[str], context: str = "training") -> None:
        """The data set the run reads."""

    def finish(self, status: str = "FINISHED", error: Optional[BaseException] = None,
               output_dir: Optional[Path] = None, preempted: Optional[str] = None) -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED), as the caller judged the outcome: with the error
        and its traceback (written into `output_dir` when given), or with `preempted` saying by what signal and
        when (a run resume=auto will continue)."""
