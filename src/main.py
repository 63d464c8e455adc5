"""The front door: compose the config with Hydra, then train, evaluate and track one job.

    python src/main.py                                   # the default: SWWAE-all on digits, CPU, about two minutes
    python src/main.py -m variant=sae_all,swwae          # a grid; compare with `mlflow ui`
"""
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the recondec package lives next to this file

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from recondec.config import refusing_bad_values, register_schema  # noqa: E402

register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # imported here, not above: `--help`, `--cfg job` and `--info` need no torch, mlflow or matplotlib
    from recondec.job import JobInfo
    from recondec.run import run_job
    from recondec.tracking.sweep import parent_run_id

    hc = HydraConfig.get()
    sweep_dir = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    info = JobInfo(overrides=list(hc.overrides.task), sweep_dir=sweep_dir, parent_run_id=parent_run_id(sweep_dir),
                   hydra_dir=Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None)
    with refusing_bad_values(multirun=sweep_dir is not None):  # a bad value: its message, not a traceback
        if cfg.study == "recon":
            from recondec.studies.recon import run_recon_study

            run_recon_study(cfg, info)
            return float("nan")
        result = run_job(cfg, info)
    return result.metrics.get("val/top1", float("nan"))  # what a Hydra sweeper would optimise (validation)


if __name__ == "__main__":
    main()
    # Left is the interpreter's teardown, whose last garbage collection walks torch's, dynamo's and MLflow's object
    # graphs (about 1 s of a 40 s job) only to free memory the process hands back anyway: frozen objects are skipped.
    gc.freeze()
