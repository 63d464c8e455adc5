"""Paper-style comparison tables from the runs MLflow stores.

Per variant: mean and standard deviation over seeds of top-1, top-5, the validation reconstruction error
of each level and img/s. A difference to the baseline is called real only when it exceeds twice its
standard error (about a 95% interval); otherwise the table says it is within the noise of the seeds.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402

from recondec.tracking.mlflow_logger import set_experiment  # noqa: E402

VARIANT_ORDER = ["baseline", "sae_first", "sae_all", "sae_layerwise", "swwae_first", "swwae_all", "swwae_layerwise"]
SUMMARY_TAG = "summary"
# single centre crop, then 10 crops (trainer.ten_crop) where the runs have them
ACCURACY = {"val/top1": "top-1 (%)", "val/top5": "top-5 (%)", "val/top1_10crop": "top-1 10-crop (%)",
            "val/top5_10crop": "top-5 10-crop (%)"}


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return stdev(self.values) if self.n > 1 else 0.0

    def fmt(self, digits: int = 2) -> str:
        if not self.values:
            return "-"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def finished_runs(tracking_uri: str, experiment: str) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} in {tracking_uri}")
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'",
                              output_format="list")
    return [r for r in runs if SUMMARY_TAG not in r.data.tags and "variant" in r.data.tags]


def collect(runs) -> dict[str, dict[str, Stat]]:
    """variant -> metric -> Stat over its runs (one run per seed)."""
    table: dict[str, dict[str, Stat]] = defaultdict(lambda: defaultdict(Stat))
    for run in runs:
        for key, value in run.data.metrics.items():
            if key in ACCURACY or key == "train/img_per_s" or key.startswith(("val/mse/", "val/psnr/")):
                table[run.data.tags["variant"]][key].values.append(value)
    return table


def verdict(v: Stat, base: Stat) -> str:
    """Compare a variant's mean top-1 with the baseline's, against the noise of the seeds."""
    if v.n < 2 or base.n < 2:
        return "one seed: noise unknown"
    diff = v.mean - base.mean
    se = math.sqrt(v.std ** 2 / v.n + base.std ** 2 / base.n)
    if abs(diff) <= 2 * se:
        return f"{diff:+.2f}: within the noise of the seeds (2 SE = {2 * se:.2f})"
    return f"{diff:+.2f}: {'above' if diff > 0 else 'below'} the baseline (2 SE = {2 * se:.2f})"


def ordered(variants) -> list[str]:
    return sorted(variants, key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))


def levels_of(table) -> list[str]:
    found = {k[len("val/mse/"):] for stats in table.values() for k in stats if k.startswith("val/mse/")}
    return sorted(found, key=lambda lv: (lv != "image", lv))


def markdown(table, experiment: str) -> str:
    levels = levels_of(table)
    seeds = max((s["val/top1"].n for s in table.values()), default=0)
    accuracy = [k for k in ACCURACY if any(k in s for s in table.values())]
    head = ["variant", "runs", *[ACCURACY[k] for k in accuracy], *[f"MSE {lv}" for lv in levels], "img/s",
            "top-1 vs baseline"]
    lines = [f"# {experiment}: mean ± std over up to {seeds} seeds", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = table.get("baseline", {}).get("val/top1")
    for v in ordered(table):
        s = table[v]
        cells = [v, str(s["val/top1"].n), *[s[k].fmt() for k in accuracy],
                 *[s[f"val/mse/{lv}"].fmt(4) if f"val/mse/{lv}" in s else "-" for lv in levels],
                 s["train/img_per_s"].fmt(0),
                 "-" if base is None or v == "baseline" else verdict(s["val/top1"], base)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(table):
    variants = ordered(table)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    means = [table[v]["val/top1"].mean for v in variants]
    stds = [table[v]["val/top1"].std for v in variants]
    ax.bar(variants, means, yerr=stds, capsize=4, color=["grey" if v == "baseline" else "tab:blue" for v in variants])
    lo = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, lo - 2), min(100, max(m + s for m, s in zip(means, stds)) + 1))
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("accuracy per variant (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_recon_error(table):
    levels = levels_of(table)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for v in ordered(table):
        pts = [(i, table[v][f"val/mse/{lv}"].mean) for i, lv in enumerate(levels) if f"val/mse/{lv}" in table[v]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=v)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_yscale("log")
    ax.set_ylabel("val MSE")
    ax.set_title("reconstruction error per level per variant")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(tracking_uri: str, experiment: str, out_dir: Path) -> tuple[Path, str]:
    """Write report.md and the plots into out_dir and log them to MLflow as one summary run."""
    table = collect(finished_runs(tracking_uri, experiment))
    if not table:
        raise ValueError(f"experiment {experiment!r} has no finished runs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(table, experiment)
    (out_dir / "report.md").write_text(text)
    figures = {"accuracy_per_variant.png": plot_accuracy(table), "recon_error_per_level.png": plot_recon_error(table)}
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
    set_experiment(tracking_uri, experiment)
    with mlflow.start_run(run_name=f"report {experiment}", tags={SUMMARY_TAG: "true"}) as run:
        for v, stats in table.items():
            mlflow.log_metrics({f"{v}/{k}_mean": s.mean for k, s in stats.items()})
        mlflow.log_artifacts(str(out_dir), "report")
    return out_dir / "report.md", run.info.run_id
