"""A pre-registered grid's report: its questions are Holm families of their own, everything else is exploratory and
corrected apart, every p-value can be recomputed from the per-seed values comparisons.json holds, runs at another
loss weight are another row, and the baseline is held against the target the preset states."""
import json
import math
from statistics import mean, stdev

import mlflow
import pytest
from scipy import stats

from recondec.tracking.comparisons import entry, families
from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.records import baseline_target_record
from recondec.tracking.report import ReportError, write_power_plan, write_report
from recondec.tracking.runs import Stat
from recondec.tracking.stats import minimum_detectable_effect
from recondec.tracking.tables import family_lines

from .grids import PREREGISTERED, ROWS, TARGET, log_grid


@pytest.fixture(scope="module")
def report(preregistered_grid, tmp_path_factory):
    """(output folder, comparisons.json, report.md) of the pre-registered grid."""
    out = tmp_path_factory.mktemp("report")
    path, _ = write_report(*preregistered_grid, out)
    return out, json.loads((out / "comparisons.json").read_text()), path.read_text()


def holm_by_definition(pvalues: list[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given: the running maximum of (m - rank) * p over the sorted p."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_values(records: dict, c: dict) -> tuple[list[float], list[float]]:
    """The row's and the reference's top-1 over the seeds a paired comparison used."""
    rows = {r["row"]: r["per_seed"] for r in records["rows"]}
    return [rows[c["row"]][s] for s in c["seeds"]], [rows[c["against"]][s] for s in c["seeds"]]


def test_every_comparison_is_recomputed_from_the_per_seed_values_with_scipy(report):
    _, records, _ = report
    per_seed = {r["row"]: r["per_seed"] for r in records["rows"]}
    assert set(per_seed) == set(ROWS)  # every row, the baseline included
    for c in records["comparisons"]:
        row, ref = per_seed[c["row"]], per_seed[c["against"]]
        if c["design"] == "paired":
            a, b = paired_values(records, c)
            p = stats.ttest_rel(a, b).pvalue
            d = [x - y for x, y in zip(a, b, strict=True)]
            lower = stats.ttest_1samp(d, -1.0, alternative="greater").pvalue
            upper = stats.ttest_1samp(d, 1.0, alternative="less").pvalue
        else:
            a, b = list(row.values()), list(ref.values())
            p = stats.ttest_ind(a, b, equal_var=False).pvalue
            lower = stats.ttest_ind(a, [y - 1.0 for y in b], equal_var=False, alternative="greater").pvalue
            upper = stats.ttest_ind(a, [y + 1.0 for y in b], equal_var=False, alternative="less").pvalue
        assert c["p"] == pytest.approx(p, rel=1e-9), c
        assert c["diff"] == pytest.approx(mean(a) - mean(b))
        assert c["tost"]["margin"] == 1.0 and c["tost"]["p"] == pytest.approx(max(lower, upper), rel=1e-9)
        assert c["tost"]["equivalent"] == (max(lower, upper) < 0.05)
    assert {c["design"] for c in records["comparisons"]} == {"paired", "unpaired"}


def test_a_preregistered_family_is_corrected_over_its_own_comparisons_only(report):
    _, records, text = report
    by_entry = {entry(c["row"], c["against"]): c for c in records["comparisons"] if c["preregistered"]}
    assert set(by_entry) == {e for entries in PREREGISTERED.values() for e in entries}
    for name, entries in PREREGISTERED.items():
        members = [by_entry[e] for e in entries]
        for c, p_holm in zip(members, holm_by_definition([c["p"] for c in members]), strict=True):
            assert c["family_name"] == name and c["family"] == entries
            assert c["p_holm"] == pytest.approx(p_holm)
            d = [x - y for x, y in zip(*paired_values(records, c), strict=True)]
            mde = minimum_detectable_effect(stdev(d) / math.sqrt(len(d)), len(d) - 1, 0.05 / len(entries))
            assert c["mde"] == pytest.approx(mde)
    # the rest: each other row against the baseline (the unlabelled row's own question is pre-registered)
    exploratory = [c for c in records["comparisons"] if not c["preregistered"]]
    names = [entry(c["row"], c["against"]) for c in exploratory]
    assert sorted(names) == ["swwae_all+unlabelled", "swwae_all@10", "swwae_first"]
    for c, p_holm in zip(exploratory, holm_by_definition([c["p"] for c in exploratory]), strict=True):
        assert c["family_name"] == "exploratory" and sorted(c["family"]) == sorted(names)
        assert c["p_holm"] == pytest.approx(p_holm)
    # a table of its own, labelled
    section = text.split("**Exploratory** (not pre-registered)")[1].split("Dose-response")[0]
    assert "| swwae_first | Welch, 4 vs 4 seeds |" in section and "| sae_first |" not in section


def test_runs_at_another_loss_weight_are_another_row(report):
    _, records, text = report
    rows = {r["row"]: r for r in records["rows"]}
    for row in ("swwae_all", "swwae_all@10"):
        assert list(rows[row]["per_seed"].values()) == pytest.approx(ROWS[row][1])
    assert "| swwae_all@10 | 4 |" in text


def test_the_baseline_is_held_against_the_target_the_preset_states(report):
    _, records, text = report
    baseline = next(line for line in text.splitlines() if line.startswith("| baseline |"))
    top1 = ROWS["baseline"][1]
    assert f"{mean(top1):.2f} ± {stdev(top1):.2f}; target >= {TARGET:g} %: not reached" in baseline
    assert records["baseline_target"] == {"target": TARGET, "mean": pytest.approx(mean(top1)), "reached": False}
    table = {"baseline": {"test/top1": Stat({"0": 84.0, "1": 84.2})}}
    assert baseline_target_record(table, "test/top1", 84.1)["reached"]
    assert baseline_target_record(table, "test/top1", None) is None


def test_a_loss_weight_sweep_on_validation_chooses_its_scale(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "pilot")
    for row in ("baseline", "swwae_all", "swwae_all@10"):
        tags, top1, share = ROWS[row]
        for seed, value in enumerate(top1):
            with mlflow.start_run(tags={**tags, "seed": str(seed), "pairing": f"start{seed}"}):
                metrics = {"val/top1": value}
                if share is not None:
                    metrics["run_median/grad_share/recon/first_conv"] = share * (1 + seed / 10)
                mlflow.log_metrics(metrics, step=1)
    write_report(uri, "pilot", tmp_path / "out")
    assert (tmp_path / "out" / "dose_response.png").stat().st_size > 1000
    lines = (tmp_path / "out" / "dose_response.md").read_text().splitlines()
    swwae = [line for line in lines if line.startswith("| swwae_all | ")]
    assert [line.split(" | ")[1] for line in swwae] == ["1", "10"]
    assert swwae[1].endswith("| yes |") and not swwae[0].endswith("| yes |")  # 0.8 % share at scale 1: under 2 %


def test_a_test_grid_at_several_scales_chooses_nothing(report):
    """The scales of a test grid are what its preset fixed on validation: its report shows them, choosing none."""
    out, _, text = report
    lines = (out / "dose_response.md").read_text().splitlines()
    swwae = [line for line in lines if line.startswith("| swwae_all | ")]
    assert [line.split(" | ")[1] for line in swwae] == ["1", "10"]
    assert "| chosen |" not in lines[4] and "chosen scale" not in "\n".join(lines)
    assert all(line.count("|") == lines[4].count("|") and not line.endswith("| yes |") for line in swwae)
    assert "the test set chooses nothing" in text


def test_runs_that_preregistered_different_questions_are_refused(preregistered_grid, tmp_path):
    uri, _ = preregistered_grid
    log_grid(uri, "two_plans", {"baseline": ROWS["baseline"]}, {"preregistered": json.dumps({"a": ["sae_first"]})})
    log_grid(uri, "two_plans", {"sae_first": ROWS["sae_first"]}, {"preregistered": json.dumps({"b": ["sae_first"]})})
    with pytest.raises(ReportError, match=r'different .preregistered. tags: \{"a".*\| \{"b"'):
        write_report(uri, "two_plans", tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_a_preregistered_comparison_without_runs_is_listed_not_dropped():
    seeds = "0123"
    table = {row: {"test/top1": Stat(dict(zip(seeds, ROWS[row][1], strict=True)), {s: f"start{s}" for s in seeds})}
             for row in ("baseline", "sae_first")}
    found = families(table, {"question": ["sae_first", "swwae_all"]}, "test/top1")
    assert [f.name for f in found] == ["question"]  # nothing left over to explore
    assert found[0].missing == ["swwae_all"] and found[0].comparisons["sae_first"].family == ["sae_first"]
    assert "Not compared (a row has no runs with top-1): swwae_all." in "\n".join(family_lines(found[0]))


def test_a_pilot_on_validation_under_a_preregistering_preset_is_all_exploratory(tmp_path):
    """The dose-response pilot inherits the grid preset's tag: its validation comparisons are not the pre-registered
    ones, which are about the test set."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, "pilot")
    for row in ("baseline", "swwae_all", "sae_first"):
        for seed, value in enumerate(ROWS[row][1]):
            with mlflow.start_run(tags={**ROWS[row][0], "seed": str(seed), "pairing": f"start{seed}",
                                        "preregistered": json.dumps(PREREGISTERED, sort_keys=True)}):
                mlflow.log_metrics({"val/top1": value}, step=1)
    write_report(uri, "pilot", tmp_path / "out")
    records = json.loads((tmp_path / "out" / "comparisons.json").read_text())
    assert records["preregistered"] is None
    assert records["comparisons"] and not any(c["preregistered"] for c in records["comparisons"])


def test_the_presets_equivalence_margin_is_every_tost_margin_and_the_plans_mde(tmp_path):
    """report.equivalence_margin (tag "equivalence_margin"): the fine-tuning grid asks for +-0.5 points, not 1."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_grid(uri, "half", extra_tags={"equivalence_margin": "0.5"})
    path, _ = write_report(uri, "half", tmp_path / "out")
    records = json.loads((tmp_path / "out" / "comparisons.json").read_text())
    paired = [c for c in records["comparisons"] if c["design"] == "paired"]
    assert paired
    for c in paired:
        a, b = paired_values(records, c)
        d = [x - y for x, y in zip(a, b, strict=True)]
        p = max(stats.ttest_1samp(d, -0.5, alternative="greater").pvalue,
                stats.ttest_1samp(d, 0.5, alternative="less").pvalue)
        assert c["tost"]["margin"] == 0.5 and c["tost"]["p"] == pytest.approx(p, rel=1e-9)
    text = path.read_text()
    assert "TOST p (±0.5)" in text and "within ±0.5 points" in text and "(±1)" not in text
    plan = write_power_plan(uri, "half", tmp_path / "plan").read_text()
    assert "true difference of 0.5 point(s)" in plan
