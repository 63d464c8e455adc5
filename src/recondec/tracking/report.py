"""Paper-style report of one MLflow experiment: every variant against the baseline, as statistics (what
``python src/report.py`` writes).

Per row (a variant, "<variant>+unlabelled" for semi-supervised runs, "<row>@<scale>" for a loss-weight sweep): mean ±
std over seeds of top-1, top-5, the image reconstruction error and img/s, and the diagnostics that say whether the
unsupervised objective acted; then top-1 against the reference rows, one Holm family at a time (the preset's
pre-registered questions, then the exploratory rest), each comparison with its test, interval, MDE and equivalence
test. The pieces: runs (MLflow), comparisons (statistics and families), records (comparisons.json), tables (markdown),
plots, dose_response, power_plan and results_page (docs/results.md).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import mlflow

from recondec.tracking import dose_response, power_plan
from recondec.tracking.carry import RUNS_FILE, write_runs
from recondec.tracking.comparisons import families
from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.plots import plot_accuracy, plot_dose_response, plot_recon_error, save
from recondec.tracking.records import baseline_target_record, records
from recondec.tracking.results_page import write_results_page
from recondec.tracking.runs import (
    CLASSIFIER,
    SUMMARY_TAG,
    ReportError,
    add_classifier_row,
    baseline_target,
    classifier_runs,
    collect,
    common_param,
    equivalence_margin,
    finished_runs,
    latest_study_run,
    preregistered,
    seeds_across_machines,
    top1,
)
from recondec.tracking.tables import commands, markdown, provenance

__all__ = ["write_report", "write_recon_report", "write_power_plan", "write_results_page", "latest_study_run",
           "ReportError"]


def _reported_table(tracking_uri: str, experiment: str, sweep: Optional[str]):
    runs = finished_runs(tracking_uri, experiment, sweep)
    table = collect(runs)
    if not table:
        raise ReportError(f"experiment {experiment!r} has no finished runs to report on"
                          + (f" in sweep {sweep!r}" if sweep else ""))
    return runs, table


def write_report(tracking_uri: str, experiment: str, out_dir: Path, sweep: Optional[str] = None) -> tuple[Path, str]:
    """Write report.md, comparisons.json, the plots (and, for a loss-weight sweep, dose_response.md and .png) and
    runs.jsonl (the runs read, classifiers included: tracking/carry.py) into out_dir, and log them to MLflow as one
    summary run."""
    runs, table = _reported_table(tracking_uri, experiment, sweep)
    classifiers = classifier_runs(tracking_uri, runs)  # the runs a fine-tuning grid started from, each fetched once
    left_out = add_classifier_row(tracking_uri, runs, table, classifiers)  # its row "classifier (start)"
    metric, target_value = top1(table), baseline_target(runs)
    # a pre-registration is about the test grid: runs on validation (a pilot under the same preset) are exploratory
    registered = preregistered(runs) if metric.startswith("test/") else None
    found = families(table, registered, metric, equivalence_margin(runs))
    target = baseline_target_record(table, metric, target_value)
    out_dir.mkdir(parents=True, exist_ok=True)
    head, rest = markdown(table, experiment, found, target).split("\n", 1)
    started = [c for c in classifiers.values() if c is not None]
    made = f" The row {CLASSIFIER} is read from the classifiers' own runs: {provenance(started)}" if started else ""
    text = f"{head}\n\n{commands(experiment)} {provenance(runs)}{made}\n{rest}"
    mixed = seeds_across_machines(runs)
    if mixed:
        text += ("\nSeeds whose arms ran on different machines (their paired differences also hold the machines' "
                 "arithmetic):\n\n" + "\n".join(f"- {line}" for line in mixed) + "\n")
    if left_out:
        text += f"\nLeft out of the row {CLASSIFIER}:\n\n" + "\n".join(f"- {line}" for line in left_out) + "\n"
    points = dose_response.dose_points(table, metric) if dose_response.has_scales(table) else []
    choose = metric.startswith("val/")  # a pilot chooses scales; a test grid shows the ones its preset fixed
    if points:
        text += "\n" + "\n".join(dose_response.section(points, choose)) + "\n"
        (out_dir / "dose_response.md").write_text(dose_response.markdown(points, experiment, choose))
        save(plot_dose_response(points, choose), out_dir / "dose_response.png")
    (out_dir / "report.md").write_text(text)
    found_records = records(experiment, table, metric, found, registered, target_value,
                            common_param(runs, "data.labels_per_class"))
    (out_dir / "comparisons.json").write_text(json.dumps(found_records, indent=1, allow_nan=False))
    save(plot_accuracy(table), out_dir / "accuracy_per_variant.png")
    save(plot_recon_error(table), out_dir / "recon_error_per_level.png")
    write_runs([*runs, *started], experiment, out_dir / RUNS_FILE)  # what the report read, for `src/report.py --import`
    return out_dir / "report.md", _log_summary(tracking_uri, experiment, table, found, out_dir)


def _mlflow_name(name: str) -> str:
    """MLflow's metric names take letters, digits, "_", "-", ".", " ", ":" and "/" only."""
    name = name.replace("+", "_with_").replace("@", "_at_").replace(" vs ", "_vs_")
    return re.sub(r"[^\w\-. :/]", "_", name)


def _log_summary(tracking_uri: str, experiment: str, table, found, out_dir: Path) -> str:
    """One summary run holding the rows' means, each comparison's numbers and the report's files; its id."""
    set_experiment(tracking_uri, experiment)
    with mlflow.start_run(run_name=f"report {experiment}", tags={SUMMARY_TAG: "true"}) as run:
        for row, stats in table.items():
            mlflow.log_metrics({f"{_mlflow_name(row)}/{k}_mean": s.mean for k, s in stats.items()})
        for family in found:
            for name, c in family.comparisons.items():
                v = _mlflow_name(name)
                mlflow.log_metrics({f"{v}/top1_diff": c.diff, f"{v}/top1_diff_ci_low": c.ci[0],
                                    f"{v}/top1_diff_ci_high": c.ci[1], f"{v}/top1_p": c.p,
                                    f"{v}/top1_p_holm": c.p_holm, f"{v}/top1_mde": c.mde,
                                    f"{v}/top1_tost_p": c.equivalence.p})
        mlflow.log_artifacts(str(out_dir), "report")
    return run.info.run_id


def write_power_plan(tracking_uri: str, experiment: str, out_dir: Path, sweep: Optional[str] = None,
                     mde: Optional[float] = None, family_size: Optional[int] = None) -> Path:
    """power_plan.md in out_dir: the seeds a grid needs to detect `mde` points (default: the preset's equivalence
    margin) in a Holm family of `family_size` (default: the pilot's pre-registration), planned from this (pilot)
    experiment's runs."""
    runs, table = _reported_table(tracking_uri, experiment, sweep)
    metric, mde = top1(table), equivalence_margin(runs) if mde is None else mde
    rows = power_plan.plan(table, metric, preregistered(runs), mde, family_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "power_plan.md"
    path.write_text(power_plan.markdown(rows, experiment, metric, mde))
    return path


def write_recon_report(tracking_uri: str, experiment: str, out_dir: Path) -> Path:
    """The reconstruction study's table and figure (its parent run's artifacts) as reports/<experiment>/report.md,
    each row naming the backbone, with a one-line reading of SAE against SWWAE."""
    study = latest_study_run(tracking_uri, experiment)
    if study is None:
        raise ReportError(f"experiment {experiment!r} has no finished reconstruction study")
    client = mlflow.MlflowClient(tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("recon_table.md", "recon_levels.png"):
        local = Path(client.download_artifacts(study.info.run_id, f"report/{name}", str(out_dir / ".download")))
        local.replace(out_dir / name)
    # the decoders' runs carry the code, machine and settings; the parent only wraps them (its time is theirs)
    children = client.search_runs([study.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{study.info.run_id}'")
    params = children[0].data.params if children else {}
    backbone = recon_backbone(params)
    table = with_backbone_column((out_dir / "recon_table.md").read_text(), params.get("backbone.name", "?"))
    text = (f"# {experiment}\n\n{commands(experiment, multirun=False)} {provenance(children or [study])}\n\n"
            f"Validation error of the image reconstructed from each level of the frozen classifier ({backbone}; "
            f"SAE: fixed unpooling, SWWAE: switches):\n\n{table}\n{recon_reading(recon_psnr(children))}\n\n"
            "![reconstructions from each level](recon_levels.png)\n")
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"


def recon_backbone(params: dict) -> str:
    """The frozen classifier in words, from a decoder run's parameters."""
    found = [params.get("backbone.name", "?"), f"width {params.get('backbone.width', '?')}"]
    found += [f"{key}={params[f'backbone.{key}']}" for key in ("downsample", "batch_norm")
              if params.get(f"backbone.{key}", "None") != "None"]
    limit = params.get("data.train_limit", "None")
    found.append(f"trained {params.get('classifier.epochs', '?')} epochs on "
                 f"{'all the training' if limit == 'None' else f'{int(limit):,}'} images")
    return ", ".join(found)


def with_backbone_column(table: str, backbone: str) -> str:
    """The study's markdown table with a first column naming the backbone, so that tables of two studies side by
    side (docs/results.md) say which network each row is."""
    lines = table.strip().splitlines()
    return "\n".join([f"| backbone {lines[0]}", f"|---{lines[1]}",
                      *(f"| {backbone} {line}" for line in lines[2:])]) + "\n"


def recon_psnr(children) -> dict[str, tuple[float, float]]:
    """level -> (SAE, SWWAE) validation image PSNR, in the study's order, from its decoder runs
    ("<kind>_from_<level>")."""
    found: dict[str, dict[str, float]] = {}
    for run in sorted(children, key=lambda r: r.info.start_time):
        kind, _, level = run.data.tags.get("mlflow.runName", "").partition("_from_")
        if level and "val/psnr/image" in run.data.metrics:
            found.setdefault(level, {})[kind] = run.data.metrics["val/psnr/image"]
    return {level: (kinds["sae"], kinds["swwae"]) for level, kinds in found.items() if {"sae", "swwae"} <= set(kinds)}


def recon_reading(psnr: dict[str, tuple[float, float]], margin_db: float = 0.5) -> str:
    """Where SWWAE's image PSNR beats SAE's by more than `margin_db`, where it trails, from the shallowest to the
    deepest level (the paper's first finding: SWWAE keeps the image from every level, SAE blurs with depth)."""
    if not psnr:
        return "No level has both an SAE and a SWWAE decoder run."
    ahead = [lv for lv, (sae, sww) in psnr.items() if sww - sae > margin_db]
    behind = [lv for lv, (sae, sww) in psnr.items() if sae - sww > margin_db]
    first, last = next(iter(psnr)), list(psnr)[-1]
    return (f"Image PSNR, SAE / SWWAE: {psnr[first][0]:.1f} / {psnr[first][1]:.1f} dB from {first}, "
            f"{psnr[last][0]:.1f} / {psnr[last][1]:.1f} dB from {last}. SWWAE more than {margin_db} dB ahead at "
            f"{len(ahead)} of {len(psnr)} levels ({', '.join(ahead) or 'none'}), behind at "
            f"{len(behind)} ({', '.join(behind) or 'none'}).")
