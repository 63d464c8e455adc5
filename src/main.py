"""The front door: compose the config with Hydra, then train, evaluate and track one job.

    python src/main.py                                   # the default: SWWAE-all on digits, CPU, about two minutes
    python src/main.py -m variant=sae_all,swwae          # a grid; compare with `mlflow ui`
"""
import gc
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from recondec.config import refusing_bad_values, register_schema

register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(composed: DictConfig) -> float:
    # imported here, not above: `--help`, `--cfg job` and `--info` need no torch, mlflow or matplotlib
    from recondec.checks import validate
    from recondec.job import JobInfo, JobResult
    from recondec.run import run_job
    from recondec.tracking.sweep import parent_run_id

    hc = HydraConfig.get()
    sweep_dir = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    info = JobInfo(overrides=list(hc.overrides.task), sweep_dir=sweep_dir, parent_run_id=parent_run_id(sweep_dir),
                   hydra_dir=Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None)
    with refusing_bad_values(multirun=sweep_dir is not None):  # a bad value: its message, not a traceback
        result = run_job(validate(composed), info)  # the Hydra config stops here: below, the typed one only
    # what a Hydra sweeper would optimise (validation); a study of several jobs has no single number
    return result.metrics.get("val/top1", float("nan")) if isinstance(result, JobResult) else float("nan")


if __name__ == "__main__":
    main()
    # Left is the interpreter's teardown, whose last garbage collection walks torch's, dynamo's and MLflow's object
    # graphs (about 1 s of a 40 s job) only to free memory the process hands back anyway: frozen objects are skipped.
    gc.freeze()
