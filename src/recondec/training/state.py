"""Where training stands, beside the weights and the optimiser: saved into and loaded from checkpoints here only.

The checkpoint is one flat dict (``Trainer.checkpoint``): "model", "optimizer", "scheduler", "scaler", "stage",
"skipped_batches", "mlflow_run_id", "format", and the keys of ``TrainState.to_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from recondec.training import checkpoint as ckpt
from recondec.training.metrics import RunningMeans


def _start_of_stream() -> dict[str, int]:
    return {"epoch": 0, "batch": 0}


@dataclass
class TrainState:
    epoch: int = 0                  # epochs finished
    step: int = 0                   # optimiser steps taken (a skipped non-finite batch counts: the LR schedule does)
    batch_in_epoch: int = 0         # batches of the current epoch done: > 0 only in a checkpoint written mid-epoch
    best_top1: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per finished epoch
    running: RunningMeans = field(default_factory=RunningMeans)    # the current epoch's loss sums so far
    unlabelled: dict[str, int] = field(default_factory=_start_of_stream)  # the unlabelled stream's (epoch, batch)

    def start_epoch(self) -> None:
        """After an epoch ends: the next one starts at its first batch with empty sums."""
        self.batch_in_epoch, self.running = 0, RunningMeans()

    def to_dict(self) -> dict[str, Any]:
        """With the RNG states of this moment (what the next batch, dropout mask and crop will draw)."""
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "best_top1": self.best_top1, "history": self.history,
                "running": {"sums": {k: v.cpu() for k, v in self.running.sums.items()}, "count": self.running.count},
                "unlabelled": dict(self.unlabelled), "rng": ckpt.rng_state()}

    @classmethod
    def from_dict(cls, state: dict[str, Any], device: torch.device) -> "TrainState":
        """The RNG states stay in `state`: the Trainer restores them at the moment that keeps a resume exact."""
        saved = state.get("running", {"sums": {}, "count": 0})
        running = RunningMeans()
        running.sums = {k: v.to(device) for k, v in saved["sums"].items()}
        running.count = saved["count"]
        return cls(state["epoch"], state["step"], state.get("batch_in_epoch", 0), state.get("best_top1", -1.0),
                   state.get("history", []), running, dict(state.get("unlabelled", _start_of_stream())))
