"""DDP on CPU (gloo): two processes follow the one-process trajectory; one MLflow run per job; ranks from
torchrun or SLURM; the SLURM launcher config."""
import os

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from recondec.run import JobInfo, run_job

from .test_run import TINY

DETERMINISTIC = [*TINY, "variant=swwae_all", "trainer.deterministic=true", "schedule.batch_size=32",
                 "schedule.decoder.epochs=1", "schedule.joint.epochs=1", "backbone.dropout=0"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_process_ddp_follows_the_single_process_trajectory(compose_cfg, tmp_path):
    results = {}
    for devices in (1, 2):
        overrides = [*DETERMINISTIC, f"trainer.devices={devices}", f"logger.experiment=ddp{devices}"]
        cfg = compose_cfg(*overrides)
        cfg.output_dir = str(tmp_path / f"ddp{devices}")
        results[devices] = run_job(cfg, JobInfo(overrides=overrides))
    one, two = results[1], results[2]
    for key in ("train/loss/total", "train/loss/ce", "val/loss/total"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], rel=1e-4), key
    w1 = torch.load(one.checkpoint, weights_only=False)["model"]
    w2 = torch.load(two.checkpoint, weights_only=False)["model"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for devices, result in results.items():
        runs = mlflow.search_runs(experiment_names=[f"ddp{devices}"], output_format="list")
        assert [r.info.run_id for r in runs] == [result.run_id]  # exactly one run, whatever the process count
        steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss/total")]
        assert steps == [1, 2]


def test_batch_size_must_split_over_devices(compose_cfg):
    from recondec.config import ConfigError, validate

    with pytest.raises(ConfigError, match="schedule.batch_size"):
        validate(compose_cfg("trainer.devices=3", "schedule.batch_size=32"))


def test_slurm_launcher_config_composes_with_one_task_per_gpu(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu",
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4  # one task, one DDP rank, per GPU
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0  # requeued after preemption
    plugin = instantiate(launcher)
    assert type(plugin).__name__ == "SlurmLauncher" and plugin.params["tasks_per_node"] == 4


def test_ranks_come_from_torchrun_or_slurm(monkeypatch):
    from recondec.training.distributed import DistEnv, env_from_launcher

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert env_from_launcher() == DistEnv()  # a plain process: one rank
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("MASTER_ADDR", "node001")  # submitit's JobEnvironment gives the first host otherwise
    env = env_from_launcher()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (9, 1, 16, False)
    assert int(os.environ["MASTER_PORT"]) == 20000 + 123456 % 20000  # the same on every task
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert env_from_launcher() == DistEnv(3, 3, 4)  # torchrun's variables win
