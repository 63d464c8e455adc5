"""Small MLflow grids the report tests read: rows of top-1 per seed with the tags a job sets."""
from __future__ import annotations

import json

import mlflow

from recondec.tracking.mlflow_logger import set_experiment

# a pre-registered grid: two questions; everything else it holds is exploratory
PREREGISTERED = {"decoders": ["swwae_all", "sae_first"], "semi": ["swwae_all+unlabelled vs swwae_all"]}
TARGET = 84.0
# row -> (tags beyond variant/seed, top-1 per seed, median reconstruction gradient share or None)
ROWS = {
    "baseline": ({"variant": "baseline"}, [80.1, 81.0, 79.4, 80.6], None),
    "sae_first": ({"variant": "sae_first"}, [80.3, 80.9, 79.9, 80.5], 0.3),
    "swwae_all": ({"variant": "swwae_all"}, [81.0, 81.6, 80.2, 81.9], 0.008),
    "swwae_all@10": ({"variant": "swwae_all", "loss_scale": "10"}, [80.6, 81.5, 79.9, 81.0], 0.05),
    "swwae_all+unlabelled": ({"variant": "swwae_all", "row": "swwae_all+unlabelled"}, [81.9, 82.5, 81.0, 82.2], 0.01),
    "swwae_first": ({"variant": "swwae_first"}, [79.0, 82.4, 80.3, 81.1], 0.02),
}
UNPAIRED = {"swwae_first"}  # its runs started from other classifiers: Welch's test


def pairing(row: str, seed: int) -> str:
    return f"other{seed}" if row in UNPAIRED else f"start{seed}"


def log_grid(uri: str, experiment: str, rows: dict = ROWS, extra_tags: dict[str, str] | None = None) -> None:
    """One finished run per (row, seed) of `rows` into `experiment`."""
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, experiment)  # artifacts beside the temp database, never in the working folder
    for row, (tags, top1, share) in rows.items():
        for seed, value in enumerate(top1):
            run_tags = {**tags, "seed": str(seed), "pairing": pairing(row, seed), **(extra_tags or {})}
            with mlflow.start_run(tags=run_tags):
                metrics = {"test/top1": value, "val/top1": value + 1}
                if share is not None:
                    metrics["run_median/grad_share/recon/first_conv"] = share * (1 + seed / 10)
                mlflow.log_metrics(metrics, step=1)


def preregistered_tags() -> dict[str, str]:
    """The tags build_tracker sets from report.preregistered and report.baseline_target."""
    return {"preregistered": json.dumps(PREREGISTERED, sort_keys=True), "baseline_target": f"{TARGET:g}"}
