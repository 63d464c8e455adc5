"""The report's numbers are exactly what MLflow stores, aggregated over seeds."""
from statistics import mean, stdev

import mlflow
import pytest

from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.report import collect, finished_runs, verdict, write_report, Stat

TOP1 = {"baseline": [90.0, 90.5, 91.0], "swwae_all": [93.0, 93.2, 92.9], "sae_first": [90.2, 91.1, 89.9]}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "grid")  # artifacts beside the temp database, never in the working folder
    for variant, values in TOP1.items():
        for seed, top1 in enumerate(values):
            with mlflow.start_run(tags={"variant": variant, "seed": str(seed)}):
                mlflow.log_metrics({"val/top1": top1 - 1, "val/top5": 99.0}, step=1)  # an earlier epoch
                mlflow.log_metrics({"val/top1": top1, "val/top5": 99.5 + seed / 10, "val/mse/image": 0.01 * (seed + 1),
                                    "train/img_per_s": 100.0 + seed, "val/top1_10crop": top1 + 0.5}, step=2)
    with mlflow.start_run(tags={"variant": "baseline"}) as failed:
        mlflow.log_metric("val/top1", 10.0)
    mlflow.MlflowClient(uri).set_terminated(failed.info.run_id, "FAILED")
    return uri


def test_report_aggregates_the_last_values_mlflow_stores(store, tmp_path):
    runs = finished_runs(store, "grid")
    assert len(runs) == 9  # the FAILED run is left out
    table = collect(runs)
    for variant, values in TOP1.items():
        assert table[variant]["val/top1"].mean == pytest.approx(mean(values))
        assert table[variant]["val/top1"].std == pytest.approx(stdev(values))
    assert table["baseline"]["val/mse/image"].mean == pytest.approx(0.02)
    path, run_id = write_report(store, "grid", tmp_path / "out")
    text = path.read_text()
    assert f"{mean(TOP1['swwae_all']):.2f} ± {stdev(TOP1['swwae_all']):.2f}" in text
    assert "| top-1 10-crop (%) |" in text.splitlines()[2]
    assert f"{mean(TOP1['swwae_all']) + 0.5:.2f} ± {stdev(TOP1['swwae_all']):.2f}" in text
    assert "within the noise" in text.split("sae_first")[1].splitlines()[0]
    assert "above the baseline" in text.split("swwae_all")[1].splitlines()[0]
    assert (tmp_path / "out" / "accuracy_per_variant.png").stat().st_size > 1000
    summary = mlflow.get_run(run_id)
    assert summary.data.tags["summary"] == "true"
    assert summary.info.experiment_id == mlflow.get_experiment_by_name("grid").experiment_id
    assert summary.data.metrics["swwae_all/val/top1_mean"] == pytest.approx(mean(TOP1["swwae_all"]))
    assert len(finished_runs(store, "grid")) == 9  # the summary run never counts as a variant run


def test_verdict_says_when_one_seed_cannot_tell():
    assert "one seed" in verdict(Stat([91.0]), Stat([90.0]))
    assert "below" in verdict(Stat([80.0, 80.1, 79.9]), Stat([90.0, 90.1, 89.9]))


def test_unknown_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        finished_runs(f"sqlite:///{tmp_path}/m.db", "nope")
