"""DDP on CPU (gloo): two processes follow the one-process trajectory; one MLflow run per job."""
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
