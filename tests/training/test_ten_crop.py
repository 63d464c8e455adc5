"""10-crop evaluation: the crops and their averaging, and the metrics a run logs with trainer.ten_crop=true."""
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.transforms import TenCrop

from recondec.checks import validate
from recondec.job import JobInfo
from recondec.run import run_job
from recondec.training.metrics import ten_crop_probs

from ..conftest import TINY
from ..helpers import runs_of


def test_ten_crop_probs_average_softmax_over_corners_centre_and_mirrors():
    torch.manual_seed(0)
    images = torch.randn(3, 3, 9, 9)
    linear = torch.nn.Linear(3 * 5 * 5, 4)
    classify = lambda x: linear(x.flatten(1))  # noqa: E731  position-sensitive, so a wrong crop shows
    expected = torch.stack([
        torch.stack([classify(c[None]).softmax(-1)[0] for c in TenCrop(5)(img)]).mean(0) for img in images])
    assert torch.allclose(ten_crop_probs(classify, images, 5), expected, atol=1e-6)
    # a different crop set (centre crop alone) gives different probabilities: the test can fail
    centre = classify(images[..., 2:7, 2:7]).softmax(-1)
    assert not torch.allclose(centre, expected, atol=1e-3)


def test_ten_crop_metrics_are_logged_at_the_end_and_by_the_eval_study(compose_cfg, tmp_path):
    train = [*TINY, "variant=sae_first", "trainer.ten_crop=true", "logger.experiment=tencrop"]
    r1 = run_job(validate(compose_cfg(*train)), JobInfo(overrides=train))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(r1.run_id, "test/top1_10crop")  # on the test set, as the single crop
    assert [m.step for m in history] == [2]  # once, after the last epoch
    assert 0 <= r1.metrics["test/top1_10crop"] <= r1.metrics["test/top5_10crop"] <= 100
    assert "val/top1_10crop" not in r1.metrics
    ev = [*TINY, "variant=sae_first", "trainer.ten_crop=true", "study=eval", f"resume={r1.checkpoint}",
          "logger.experiment=tencrop"]
    r2 = run_job(validate(compose_cfg(*ev)), JobInfo(overrides=ev))
    assert r2.run_id != r1.run_id  # an evaluation is a run of its own, the training run is left as it was
    assert r2.metrics["test/top1_10crop"] == pytest.approx(r1.metrics["test/top1_10crop"])
    assert r2.metrics["test/top1"] == pytest.approx(r1.metrics["test/top1"])
    assert r2.metrics["val/top1"] == pytest.approx(r1.metrics["val/top1"])
    runs = {r.info.run_id: r for r in runs_of(tmp_path / "mlflow.db", "tencrop")}
    assert runs[r2.run_id].data.metrics["test/top1_10crop"] == pytest.approx(r2.metrics["test/top1_10crop"])
    assert runs[r2.run_id].data.params["study"] == "eval"
    assert [m.step for m in client.get_metric_history(r1.run_id, "val/top1")] == [1, 2]
