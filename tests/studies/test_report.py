"""The report's numbers are exactly what MLflow stores, aggregated over seeds."""
from statistics import mean, stdev

import mlflow
import pytest

from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.report import Stat, collect, compare, finished_runs, holm, verdict, write_report

TOP1 = {"baseline": [90.0, 90.5, 91.0], "swwae_all": [93.0, 93.2, 92.9], "sae_first": [90.2, 91.1, 89.9]}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "grid")  # artifacts beside the temp database, never in the working folder
    with mlflow.start_run(tags={"variant": "swwae_all", "seed": "0"}):  # an earlier grid's run: superseded
        mlflow.log_metric("val/top1", 50.0)
    with mlflow.start_run(tags={"variant": "baseline", "seed": "0", "role": "classifier"}):  # a cached classifier
        mlflow.log_metric("val/top1", 60.0)
    for variant, values in TOP1.items():
        for seed, top1 in enumerate(values):
            with mlflow.start_run(tags={"variant": variant, "seed": str(seed)}):
                mlflow.log_metrics({"val/top1": top1 - 1, "val/top5": 99.0}, step=1)  # an earlier epoch
                mlflow.log_metrics({"val/top1": top1, "val/top5": 99.5 + seed / 10, "val/mse/image": 0.01 * (seed + 1),
                                    "train/img_per_s": 100.0 + seed, "val/top1_10crop": top1 + 0.5}, step=2)
    for seed, top1 in enumerate([94.0, 94.3, 94.1]):  # semi-supervised runs: a row of their own
        with mlflow.start_run(tags={"variant": "swwae_all", "arm": "swwae_all+unlabelled", "seed": str(seed)}):
            mlflow.log_metrics({"val/top1": top1}, step=2)
    with mlflow.start_run(tags={"variant": "baseline"}) as failed:
        mlflow.log_metric("val/top1", 10.0)
    mlflow.MlflowClient(uri).set_terminated(failed.info.run_id, "FAILED")
    return uri


def test_report_aggregates_the_last_values_mlflow_stores(store, tmp_path):
    runs = finished_runs(store, "grid")
    assert len(runs) == 12  # the FAILED run, the superseded one and the classifier's are left out
    table = collect(runs)
    for variant, values in TOP1.items():
        assert table[variant]["val/top1"].mean == pytest.approx(mean(values))
        assert table[variant]["val/top1"].std == pytest.approx(stdev(values))
    assert table["baseline"]["val/mse/image"].mean == pytest.approx(0.02)
    path, run_id = write_report(store, "grid", tmp_path / "out")
    text = path.read_text()
    assert f"{mean(TOP1['swwae_all']):.2f} ± {stdev(TOP1['swwae_all']):.2f}" in text
    assert "| top-1 10-crop (%) |" in text.splitlines()[4]
    assert f"{mean(TOP1['swwae_all']) + 0.5:.2f} ± {stdev(TOP1['swwae_all']):.2f}" in text
    assert "no difference from the baseline detected" in text.split("**sae_first**")[1].splitlines()[0]
    assert "beats the baseline" in text.split("**swwae_all**")[1].splitlines()[0]
    c = compare(table["swwae_all"]["val/top1"], table["baseline"]["val/top1"])  # the report's row, from MLflow
    assert f"| swwae_all | {c.diff:+.2f} | [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] | {c.p:.3g} |" in text
    assert (tmp_path / "out" / "accuracy_per_variant.png").stat().st_size > 1000
    summary = mlflow.get_run(run_id)
    assert summary.data.tags["summary"] == "true"
    assert summary.info.experiment_id == mlflow.get_experiment_by_name("grid").experiment_id
    assert summary.data.metrics["swwae_all/val/top1_mean"] == pytest.approx(mean(TOP1["swwae_all"]))
    assert len(finished_runs(store, "grid")) == 12  # the summary run never counts as a variant run
    # the semi-supervised row, against the baseline and against the same variant without unlabelled images
    assert table["swwae_all+unlabelled"]["val/top1"].mean == pytest.approx(94.133333)
    own = text.split("against the same variant without them")[1]
    assert "**swwae_all+unlabelled** beats the variant without unlabelled images" in own


def test_comparison_statistics_are_scipys_welch_and_paired_tests():
    from scipy import stats

    v = Stat({"0": 93.0, "1": 93.2, "2": 92.9, "3": 93.4})
    base = Stat({"0": 90.0, "1": 90.5, "2": 91.0, "4": 90.2})
    c = compare(v, base)
    welch = stats.ttest_ind(v.values, base.values, equal_var=False)
    assert c.diff == pytest.approx(mean(v.values) - mean(base.values))
    assert c.p == pytest.approx(welch.pvalue)
    low, high = welch.confidence_interval(0.95)
    assert c.ci == pytest.approx((low, high))
    d = [3.0, 2.7, 1.9]  # seeds 0, 1, 2 are shared
    assert (c.n_pairs, c.paired_diff) == (3, pytest.approx(mean(d)))
    assert c.paired_p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert c.paired_ci == pytest.approx(tuple(stats.ttest_1samp(d, 0.0).confidence_interval(0.95)))


def test_holm_adjusts_for_the_variants_compared():
    base = Stat(dict(enumerate([0.0, 0.1, -0.1, 0.05])))
    rows = {"a": [0.3, 0.2, 0.1, 0.25], "b": [1.0, 1.1, 0.9, 1.05], "c": [0.0, 0.1, -0.1, 0.06]}
    comps = {name: compare(Stat(dict(enumerate(v))), base) for name, v in rows.items()}
    holm(comps)
    ranked = sorted(comps.values(), key=lambda c: c.p)
    assert ranked[0].p_holm == pytest.approx(min(1, 3 * ranked[0].p))
    assert ranked[1].p_holm == pytest.approx(max(ranked[0].p_holm, min(1, 2 * ranked[1].p)))
    assert ranked[2].p_holm == pytest.approx(max(ranked[1].p_holm, ranked[2].p))


def test_verdicts_follow_the_interval():
    base = Stat({"0": 90.0, "1": 90.1, "2": 89.9})
    assert "one seed" in verdict(compare(Stat({"0": 91.0}), Stat({"0": 90.0})))
    assert verdict(compare(Stat({"0": 80.0, "1": 80.1, "2": 79.9}), base)).startswith("is worse than the baseline")
    assert verdict(compare(Stat({"0": 92.0, "1": 92.1, "2": 91.9}), base)).startswith("beats the baseline")
    same = compare(Stat({"0": 90.3, "1": 89.8, "2": 90.0}), base)
    assert same.ci[0] < 0 < same.ci[1] and verdict(same).startswith("no difference from the baseline detected")
    # significant alone, not once adjusted for six comparisons
    borderline = compare(Stat({"0": 90.3, "1": 90.2, "2": 90.5}), base)
    assert borderline.p < 0.05
    borderline.p_holm = min(1.0, 6 * borderline.p)
    assert "not after Holm's correction" in verdict(borderline) or borderline.p_holm < 0.05


def test_unknown_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        finished_runs(f"sqlite:///{tmp_path}/m.db", "nope")
