"""The report's numbers are exactly what MLflow stores, aggregated over seeds, and its statistics are the tests
that fit the grid's design: paired where the seeds pair the runs, Holm over the verdicts' p-values, and the
minimum detectable effect from the noncentral t distribution."""
import json
import math
from statistics import mean, stdev

import mlflow
import pytest
from scipy import stats

from recondec.tracking.comparisons import compare, finish_family, verdict
from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.report import recon_reading, with_backbone_column, write_report
from recondec.tracking.runs import CLASSIFIER, Stat, collect, finished_runs
from recondec.tracking.stats import minimum_detectable_effect, paired_test, power, seeds_for_power, welch_test

TOP1 = {"baseline": [90.0, 90.5, 91.0], "swwae_all": [93.0, 93.2, 92.9], "sae_first": [90.2, 91.1, 89.9]}


def pairing(seed) -> str:
    return f"start{seed}"


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "grid")  # artifacts beside the temp database, never in the working folder
    with mlflow.start_run(tags={"variant": "swwae_all", "seed": "0"}):  # an earlier grid's run: superseded
        mlflow.log_metric("test/top1", 50.0)
    with mlflow.start_run(tags={"variant": "baseline", "seed": "0", "role": "classifier"}):  # a cached classifier
        mlflow.log_metric("test/top1", 60.0)
    for variant, values in TOP1.items():
        for seed, top1 in enumerate(values):
            with mlflow.start_run(tags={"variant": variant, "seed": str(seed), "pairing": pairing(seed)}):
                mlflow.log_metrics({"val/top1": top1 - 1, "val/top5": 99.0}, step=1)  # an earlier epoch
                mlflow.log_metrics({"val/top1": 99.0, "test/top1": top1, "test/top5": 99.5 + seed / 10,
                                    "test/mse/image": 0.01 * (seed + 1), "train/img_per_s": 100.0 + seed,
                                    "test/top1_10crop": top1 + 0.5, "encoder/rel_change": 0.1 * (seed + 1),
                                    "grad_share/recon/first_conv": 0.2}, step=2)
    for seed, top1 in enumerate([94.0, 94.3, 94.1]):  # semi-supervised runs: a row of their own
        with mlflow.start_run(tags={"variant": "swwae_all", "row": "swwae_all+unlabelled", "seed": str(seed),
                                    "pairing": pairing(seed)}):
            mlflow.log_metrics({"test/top1": top1}, step=2)
    with mlflow.start_run(tags={"variant": "baseline"}) as failed:
        mlflow.log_metric("test/top1", 10.0)
    mlflow.MlflowClient(uri).set_terminated(failed.info.run_id, "FAILED")
    return uri


def test_report_aggregates_the_last_test_values_mlflow_stores(store, tmp_path):
    runs = finished_runs(store, "grid")
    assert len(runs) == 12  # the FAILED run, the superseded one and the classifier's are left out
    table = collect(runs)
    for variant, values in TOP1.items():
        assert table[variant]["test/top1"].mean == pytest.approx(mean(values))
        assert table[variant]["test/top1"].std == pytest.approx(stdev(values))
    assert table["baseline"]["test/mse/image"].mean == pytest.approx(0.02)
    path, run_id = write_report(store, "grid", tmp_path / "out")
    text = path.read_text()
    assert "Numbers from the test set" in text and "99.00" not in text  # the validation top-1 selects, never reports
    assert f"{mean(TOP1['swwae_all']):.2f} ± {stdev(TOP1['swwae_all']):.2f}" in text
    header = next(line for line in text.splitlines() if line.startswith("| row | seeds |"))
    assert "| top-1 10-crop (%) |" in header
    assert "Report: `python src/report.py grid`" in text and "runs from" in text and "min of runs" in text
    assert f"{mean(TOP1['swwae_all']) + 0.5:.2f} ± {stdev(TOP1['swwae_all']):.2f}" in text
    assert "| baseline | 3 | 20.00 ± 0.00 | 20.00 ± 10.00 |" in text  # the diagnostics table, in %
    # the seeds pair the runs: the verdict is the paired test's
    c = compare(table["swwae_all"]["test/top1"], table["baseline"]["test/top1"])
    d = [b - a for a, b in zip(TOP1["baseline"], TOP1["swwae_all"], strict=True)]
    assert c.design == "paired" and c.p == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    row = next(line for line in text.splitlines() if line.startswith("| swwae_all | paired over 3 seeds"))
    assert f"| {c.diff:+.2f} | [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] |" in row
    assert "no difference from the baseline detected" in text.split("**sae_first**")[1].splitlines()[0]
    assert "beats the baseline" in text.split("**swwae_all**")[1].splitlines()[0]
    assert (tmp_path / "out" / "accuracy_per_variant.png").stat().st_size > 1000
    records = json.loads((tmp_path / "out" / "comparisons.json").read_text())["comparisons"]
    swwae = next(r for r in records if r["row"] == "swwae_all")
    assert swwae["design"] == "paired" and swwae["diff"] == pytest.approx(c.diff) and len(swwae["family"]) == 3
    assert swwae["mde"] == pytest.approx(minimum_detectable_effect(c.test.se, c.test.df, 0.05 / 3))
    # nothing pre-registered: today's two families, each labelled so
    assert {(r["family_name"], r["preregistered"]) for r in records} == {
        ("against the baseline", False), ("with against without the unlabelled images", False)}
    assert swwae["family"] == ["sae_first", "swwae_all", "swwae_all+unlabelled"]
    summary = mlflow.get_run(run_id)
    assert summary.data.tags["summary"] == "true"
    assert summary.info.experiment_id == mlflow.get_experiment_by_name("grid").experiment_id
    assert summary.data.metrics["swwae_all/test/top1_mean"] == pytest.approx(mean(TOP1["swwae_all"]))
    assert len(finished_runs(store, "grid")) == 12  # the summary run never counts as a variant run
    # the semi-supervised row, against the baseline and against the same variant without unlabelled images
    assert table["swwae_all+unlabelled"]["test/top1"].mean == pytest.approx(94.133333)
    own = text.split("against the same variant without them")[1]
    assert "**swwae_all+unlabelled** beats the variant without unlabelled images" in own


def test_runs_that_do_not_pair_get_welchs_test_and_the_report_says_so():
    row = Stat({"0": 93.0, "1": 93.2, "2": 92.9}, {"0": "a0", "1": "a1", "2": "a2"})
    base = Stat({"0": 90.0, "1": 90.5, "2": 91.0}, {"0": "a0", "1": "other classifier", "2": "a2"})
    c = compare(row, base)
    assert c.design == "unpaired" and c.unpaired_seeds == ["1"]
    assert c.p == pytest.approx(stats.ttest_ind(row.values, base.values, equal_var=False).pvalue)
    finish_family({"row": c})
    assert "seed(s) 1 do not pair" in verdict(c)


def test_paired_and_welch_tests_are_scipys():
    a, b = [93.0, 93.2, 92.9, 93.4], [90.0, 90.5, 91.0, 90.2]
    welch = welch_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert welch.p == pytest.approx(ref.pvalue) and welch.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))
    d = [x - y for x, y in zip(a, b, strict=True)]
    paired = paired_test(d)
    ref = stats.ttest_1samp(d, 0.0)
    assert paired.p == pytest.approx(ref.pvalue) and paired.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_the_mde_is_where_the_noncentral_t_gives_80_percent_power():
    sd, n, alpha = 0.4, 6, 0.05 / 6
    se, df = sd / math.sqrt(n), n - 1
    mde = minimum_detectable_effect(se, df, alpha)
    crit = stats.t.ppf(1 - alpha / 2, df)
    by_scipy = stats.nct.sf(crit, df, mde / se) + stats.nct.cdf(-crit, df, mde / se)
    assert by_scipy == pytest.approx(0.8, abs=1e-6)
    assert power(mde * 1.1, se, df, alpha) > 0.8 > power(mde * 0.9, se, df, alpha)
    # a simulated paired design with that true difference is detected in about 80 % of grids
    import numpy as np

    rng = np.random.default_rng(0)
    hits = [stats.ttest_1samp(rng.normal(mde, sd, n), 0).pvalue < alpha for _ in range(4000)]
    assert abs(np.mean(hits) - 0.8) < 0.03
    # the seeds a pilot's spread asks for: the fewest that reach 80 %
    n_needed = seeds_for_power(sd, mde, alpha)
    assert n_needed == n or power(mde, sd / math.sqrt(n_needed - 1), n_needed - 2, alpha) < 0.8
    assert minimum_detectable_effect(float("nan"), 2, 0.05) != minimum_detectable_effect(float("nan"), 2, 0.05)


def test_holm_adjusts_the_p_values_the_verdicts_use_and_the_mde_uses_the_familys_alpha():
    base = Stat(dict(enumerate([0.0, 0.1, -0.1, 0.05])), {i: str(i) for i in range(4)})
    rows = {"a": [0.3, 0.2, 0.1, 0.25], "b": [1.0, 1.1, 0.9, 1.05], "c": [0.0, 0.1, -0.1, 0.06]}
    comps = {name: compare(Stat(dict(enumerate(v)), {i: str(i) for i in range(4)}), base) for name, v in rows.items()}
    assert {c.design for c in comps.values()} == {"paired"}
    finish_family(comps)
    ranked = sorted(comps.values(), key=lambda c: c.p)
    assert ranked[0].p_holm == pytest.approx(min(1, 3 * ranked[0].p))
    assert ranked[1].p_holm == pytest.approx(max(ranked[0].p_holm, min(1, 2 * ranked[1].p)))
    assert ranked[2].p_holm == pytest.approx(max(ranked[1].p_holm, ranked[2].p))
    for c in comps.values():
        assert len(c.family) == 3 and c.mde == pytest.approx(minimum_detectable_effect(c.test.se, c.test.df, 0.05 / 3))


def test_verdicts_follow_holms_p_and_say_what_the_seeds_could_miss():
    base = Stat({"0": 90.0, "1": 90.1, "2": 89.9})
    one = compare(Stat({"0": 91.0}), Stat({"0": 90.0}))
    assert "one seed" in verdict(one)

    def judged(values):
        c = compare(Stat(dict(zip("012", values, strict=True))), base)
        finish_family({"x": c})
        return c

    assert verdict(judged([80.0, 80.1, 79.9])).startswith("is worse than the baseline")
    assert verdict(judged([92.0, 92.1, 91.9])).startswith("beats the baseline")
    same = judged([90.3, 89.8, 90.0])
    text = verdict(same)
    assert same.ci[0] < 0 < same.ci[1] and text.startswith("no difference from the baseline detected")
    assert f"a true difference of {same.mde:.2f} points with 80% power" in text
    # significant alone, not once adjusted for six comparisons
    borderline = judged([90.3, 90.2, 90.5])
    assert borderline.p < 0.05
    borderline.p_holm = min(1.0, 6 * borderline.p)
    assert verdict(borderline).startswith("no difference from the baseline detected after Holm's correction")


def test_unknown_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        finished_runs(f"sqlite:///{tmp_path}/m.db", "nope")


def test_the_results_page_is_generated_from_the_reports_and_links_what_exists(store, tmp_path):
    from recondec.tracking.report import write_results_page
    from recondec.tracking.results_page import SCOPE_FILE

    reports = tmp_path / "reports"
    write_report(store, "grid", reports / "lowlabel_fmnist")  # one label budget of the across-budget plot
    page = write_results_page(reports, tmp_path / "docs" / "results.md")
    text = page.read_text()
    assert "## What the suite says about the claim" in text and "## lowlabel_fmnist" in text
    assert "Better than its reference after Holm's correction: swwae_all in lowlabel_fmnist" in text
    assert "| lowlabel_fmnist | sae_first | " in text
    # what each grid could have missed, and what no Fashion-MNIST grid says about ImageNet
    comparisons = json.loads((reports / "lowlabel_fmnist" / "comparisons.json").read_text())["comparisons"]
    mdes = [c["mde"] for c in comparisons if c["against"] == "baseline"]
    assert (f"- lowlabel_fmnist (10 per class, from scratch): its rows' MDE against the baseline (80 % power) runs "
            f"from {min(mdes):.2f} to {max(mdes):.2f} points of top-1") in text
    assert SCOPE_FILE.read_text().strip() in text  # the prose of docs/results_scope.md, verbatim
    assert "They do not say what the paper's claim" in text
    assert (reports / "label_budgets.png").stat().st_size > 1000
    import re

    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (page.parent / link).resolve().is_file(), link


def test_the_label_budgets_plot_draws_every_row_at_its_own_loss_scale():
    """Rows carry their weight ("swwae_all@300"); the plot once drew only rows named exactly as a variant, and the
    committed figure came out empty."""
    import matplotlib.pyplot as plt

    from recondec.tracking.plots import plot_label_budgets

    def record(diff):
        return {"diff": diff, "ci": (diff - 1.0, diff + 1.0)}

    budgets = [("10 per class", {"swwae_all@300": record(-4.7), "sae_all@100": record(-5.0),
                                 "swwae_all+unlabelled@300": record(-6.0)}),
               ("all", {"swwae_all": record(-0.03), "sae_all@0.1": record(-0.01)})]
    fig = plot_label_budgets(budgets)
    ax = fig.axes[0]
    colour = {c.lines[0].get_ydata()[0]: c.lines[0].get_color() for c in ax.containers}  # Δ -> its colour
    assert sorted(colour) == sorted([-4.7, -5.0, -6.0, -0.03, -0.01])
    assert colour[-4.7] == colour[-0.03] and colour[-5.0] == colour[-0.01]  # a variant keeps its colour
    assert len({colour[-4.7], colour[-5.0], colour[-6.0]}) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sae_all", "swwae_all", "swwae_all+unlabelled"]
    assert sorted(a.get_text() for a in ax.texts) == sorted(["@300", "@100", "@300", "@1", "@0.1"])
    plt.close(fig)


def test_the_results_page_still_reads_the_reports_an_earlier_version_wrote(tmp_path):
    """The committed reports/ predate the families, the equivalence tests and the per-seed rows."""
    import shutil

    from recondec.config import REPO_ROOT
    from recondec.tracking.report import write_results_page

    reports = shutil.copytree(REPO_ROOT / "reports", tmp_path / "reports")  # the page writes its plot beside them
    text = write_results_page(reports, tmp_path / "docs" / "results.md").read_text()
    for folder in sorted(reports.glob("*/comparisons.json")):
        if json.loads(folder.read_text()).get("split") == "val":
            assert f"## {folder.parent.name}" not in text  # a pilot on validation: off the results page
            continue
        for c in json.loads(folder.read_text())["comparisons"]:
            against = "" if c["against"] == "baseline" else f" (vs {c['against']})"
            claim_row = f"| {folder.parent.name} | {c['row']}{against} | {c['diff']:+.2f} |"
            if c["against"] == CLASSIFIER:  # the fine-tuning's own cost: in its section, not the claim table
                assert claim_row not in text and f"| {c['row']} vs {c['against']} | paired" in text
            else:
                assert claim_row in text


def test_a_fine_tuning_grid_reports_the_classifier_it_starts_from(tmp_path):
    """The row "classifier (start)" is read from the classifiers' own runs (one per seed), paired with the baseline
    that started from each; the baseline against it is a question of its own, off the claim's table."""
    from recondec.tracking.report import write_results_page

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "finetune")
    start = [92.0, 92.6, 91.8]
    baseline = [92.3, 92.5, 92.4]
    for seed in range(3):
        with mlflow.start_run(tags={"variant": "baseline", "seed": str(seed), "role": "classifier"}) as classifier:
            mlflow.log_metrics({"val/top1": start[seed] + 1, "test/top1": start[seed]})
        tags = {"seed": str(seed), "pairing": pairing(seed), "classifier_run": classifier.info.run_id}
        for variant, top1 in (("baseline", baseline[seed]), ("swwae_all", baseline[seed] + 0.1 * seed)):
            with mlflow.start_run(tags={"variant": variant, **tags}):
                mlflow.log_metrics({"val/top1": 95.0, "test/top1": top1})
    out = tmp_path / "reports" / "finetune_fmnist"
    write_report(uri, "finetune", out)
    record = json.loads((out / "comparisons.json").read_text())
    rows = {r["row"]: r for r in record["rows"]}
    assert rows["classifier (start)"]["per_seed"] == {"0": 92.0, "1": 92.6, "2": 91.8}
    assert list(rows)[0] == "classifier (start)"  # where every arm starts, first
    by_pair = {(c["row"], c["against"]): c for c in record["comparisons"]}
    kept = by_pair["baseline", "classifier (start)"]
    diffs = [b - s for b, s in zip(baseline, start, strict=True)]
    assert kept["design"] == "paired" and kept["diff"] == pytest.approx(mean(diffs))
    assert kept["p"] == pytest.approx(stats.ttest_rel(baseline, start).pvalue)
    assert kept["family"] == ["baseline vs classifier (start)"]  # not corrected with the decoders' rows
    assert ("classifier (start)", "baseline") not in by_pair  # the start is no arm
    assert by_pair["swwae_all", "baseline"]["family"] == ["swwae_all"]
    report = (out / "report.md").read_text()
    assert "| classifier (start) | 3 | 92.13 ± 0.42 |" in report
    # the header's count and commit are the arms'; the classifiers' own runs (often an earlier grid's) are said apart
    assert "'finetune'). 6 runs from " in report
    assert "The row classifier (start) is read from the classifiers' own runs: 3 runs from " in report
    assert "**baseline** no difference from the classifier it starts from detected" in report
    text = write_results_page(tmp_path / "reports", tmp_path / "results.md").read_text()
    assert "| finetune_fmnist | swwae_all |" in text and "| finetune_fmnist | baseline (vs" not in text


def _classifier_grid(uri: str, classifier_params: dict, baseline_params: dict, test: bool = True) -> None:
    """Two seeds of a baseline that started from its own classifier run (which read the test set)."""
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "finetune")
    for seed in range(2):
        with mlflow.start_run(tags={"variant": "baseline", "seed": str(seed), "role": "classifier"}) as classifier:
            mlflow.log_params(classifier_params)
            mlflow.log_metrics({"val/top1": 93.0 + seed, "test/top1": 92.0 + seed})
        with mlflow.start_run(tags={"variant": "baseline", "seed": str(seed), "pairing": pairing(seed),
                                    "classifier_run": classifier.info.run_id}):
            mlflow.log_params(baseline_params)
            mlflow.log_metrics({"val/top1": 93.5 + seed, **({"test/top1": 92.5 + seed} if test else {})})


def test_the_classifier_row_follows_the_baselines_split_and_images(tmp_path):
    # a validation pilot that reuses a classifier a test grid trained stays a validation report
    _classifier_grid(f"sqlite:///{tmp_path}/a.db", {}, {}, test=False)
    write_report(f"sqlite:///{tmp_path}/a.db", "finetune", tmp_path / "a")
    record = json.loads((tmp_path / "a" / "comparisons.json").read_text())
    assert record["split"] == "val"
    assert {r["row"]: r["per_seed"] for r in record["rows"]}["classifier (start)"] == {"0": 93.0, "1": 94.0}
    # a classifier tested on 500 images is not paired with a baseline tested on all of them
    _classifier_grid(f"sqlite:///{tmp_path}/b.db", {"data.test_limit": 500}, {"data.test_limit": "None"})
    write_report(f"sqlite:///{tmp_path}/b.db", "finetune", tmp_path / "b")
    record = json.loads((tmp_path / "b" / "comparisons.json").read_text())
    assert "classifier (start)" not in {r["row"] for r in record["rows"]}
    assert ("its classifier was evaluated with data.test_limit=500, the baseline with None"
            in (tmp_path / "b" / "report.md").read_text())


def test_a_classifier_run_the_store_does_not_hold_is_left_out_and_said(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "finetune")
    with mlflow.start_run(tags={"variant": "baseline", "seed": "0", "classifier_run": "0" * 32}):
        mlflow.log_metric("test/top1", 90.0)
    path, _ = write_report(uri, "finetune", tmp_path / "out")
    text = path.read_text()
    assert "| classifier (start) |" not in text
    assert f"- seed 0: its classifier's run {'0' * 32} is not in {uri}" in text


def test_each_reconstruction_report_links_its_own_figure(tmp_path):
    from recondec.tracking.report import write_results_page

    for name in ("recon_fmnist", "recon_fmnist_resnet"):
        folder = tmp_path / "reports" / name
        folder.mkdir(parents=True)
        (folder / "report.md").write_text(f"# {name}\n\n![reconstructions from each level](recon_levels.png)\n")
        (folder / "recon_levels.png").write_bytes(b"png")
    text = write_results_page(tmp_path / "reports", tmp_path / "docs" / "results.md").read_text()
    for name in ("recon_fmnist", "recon_fmnist_resnet"):
        assert f"](../reports/{name}/recon_levels.png)" in text
    assert text.count("recon_levels.png") == 2  # shown once each, not again as an unlinked figure


def test_recon_reading_counts_the_levels_where_swwae_leads_or_trails_by_more_than_the_margin():
    psnr = {"pool1": (25.8, 25.5), "pool3": (21.5, 24.4), "pool5": (14.8, 25.1), "fc8": (22.0, 21.0)}
    reading = recon_reading(psnr)
    assert "25.8 / 25.5 dB from pool1" in reading and "22.0 / 21.0 dB from fc8" in reading
    assert "ahead at 2 of 4 levels (pool3, pool5)" in reading and "behind at 1 (fc8)" in reading
    assert "ahead at 0 of 1 levels (none)" in recon_reading({"stem": (27.6, 27.6)})


def test_recon_table_rows_name_their_backbone():
    table = "| level | SAE PSNR (dB) |\n|---|---|\n| stem | 27.58 |\n| fc | 15.34 |\n"
    lines = with_backbone_column(table, "resnet18_small").splitlines()
    assert lines == ["| backbone | level | SAE PSNR (dB) |", "|---|---|---|",
                     "| resnet18_small | stem | 27.58 |", "| resnet18_small | fc | 15.34 |"]
