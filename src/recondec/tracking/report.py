"""Paper-style comparison of one MLflow experiment: every variant against the baseline, as statistics.

Per variant: mean ± std over seeds of top-1, top-5, the image reconstruction error and img/s. Against the
baseline, for top-1: the difference of the means with its 95 % confidence interval and Welch's t-test p-value
(unequal variances), Holm's adjustment of those p-values for the number of variants compared, and the paired
difference over the seeds that variant and baseline share (same seed: same data order, same decoder-free
start). The verdict sentence is generated from those numbers: "beats" / "worse than" when the 95 % interval of
the difference excludes 0, otherwise "no difference detected", with the interval saying how large a
difference the seeds could have missed.

One run per (variant, seed) counts: when a grid was run twice into one experiment, the newest finished run of
each pair is used (``--sweep`` restricts the report to one multirun folder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

import mlflow

from recondec.config import variant_names
from recondec.tracking.mlflow_logger import set_experiment

VARIANT_ORDER = variant_names()
SUMMARY_TAG = "summary"
CONFIDENCE = 0.95
# single centre crop, then 10 crops (trainer.ten_crop) where the runs have them
ACCURACY = {"val/top1": "top-1 (%)", "val/top5": "top-5 (%)", "val/top1_10crop": "top-1 10-crop (%)",
            "val/top5_10crop": "top-5 10-crop (%)"}
OTHER = {"val/mse/image": ("image MSE", 4), "val/psnr/image": ("image PSNR (dB)", 2),
         "train/img_per_s": ("img/s", 0)}


@dataclass
class Stat:
    """One metric of one variant: its value per seed."""
    by_seed: dict[str, float] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return list(self.by_seed.values())

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return stdev(self.values) if self.n > 1 else 0.0

    def ci(self) -> tuple[float, float]:
        """Confidence interval of the mean (t distribution)."""
        from scipy import stats

        if self.n < 2:
            return (math.nan, math.nan)
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    def fmt(self, digits: int = 2) -> str:
        if not self.by_seed:
            return "-"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


@dataclass
class Comparison:
    """A variant's metric minus the baseline's."""
    n: int
    n_base: int
    diff: float
    ci: tuple[float, float]      # Welch
    p: float                     # Welch's t-test, two-sided
    n_pairs: int                 # seeds both have
    paired_diff: float
    paired_ci: tuple[float, float]
    paired_p: float
    p_holm: float = math.nan     # set by holm() across the variants compared


def compare(v: Stat, base: Stat) -> Comparison:
    from scipy import stats

    q = 0.5 + CONFIDENCE / 2
    diff = v.mean - base.mean
    if v.n >= 2 and base.n >= 2:
        a, b = v.std ** 2 / v.n, base.std ** 2 / base.n
        se = math.sqrt(a + b)
        if se > 0:
            df = (a + b) ** 2 / (a ** 2 / (v.n - 1) + b ** 2 / (base.n - 1))  # Welch-Satterthwaite
            half = stats.t.ppf(q, df) * se
            ci, p = (diff - half, diff + half), float(stats.ttest_ind(v.values, base.values, equal_var=False).pvalue)
        else:  # identical values within each group: no noise to test against
            ci, p = (diff, diff), (1.0 if diff == 0 else 0.0)
    else:
        ci, p = (math.nan, math.nan), math.nan
    shared = sorted(set(v.by_seed) & set(base.by_seed))
    d = [v.by_seed[s] - base.by_seed[s] for s in shared]
    if len(d) >= 2 and stdev(d) > 0:
        half = stats.t.ppf(q, len(d) - 1) * stdev(d) / math.sqrt(len(d))
        paired = (mean(d), (mean(d) - half, mean(d) + half), float(stats.ttest_1samp(d, 0.0).pvalue))
    elif len(d) >= 2:
        paired = (mean(d), (mean(d), mean(d)), 1.0 if mean(d) == 0 else 0.0)
    else:
        paired = (mean(d) if d else math.nan, (math.nan, math.nan), math.nan)
    return Comparison(v.n, base.n, diff, ci, p, len(d), *paired)


def holm(comparisons: dict[str, Comparison]) -> None:
    """Holm's step-down adjustment of the Welch p-values, in place (family: the variants compared)."""
    ranked = sorted((c.p, name) for name, c in comparisons.items() if not math.isnan(c.p))
    m, running = len(ranked), 0.0
    for i, (p, name) in enumerate(ranked):
        running = max(running, min(1.0, (m - i) * p))
        comparisons[name].p_holm = running


def verdict(c: Comparison, what: str = "top-1") -> str:
    """The sentence the numbers produce (difference in points of `what`)."""
    if c.n < 2 or c.n_base < 2:
        return f"{c.diff:+.2f} points of {what} from one seed: the noise is unknown, no verdict"
    lo, hi = c.ci
    interval = f"{c.diff:+.2f} points of {what}, {CONFIDENCE:.0%} CI [{lo:+.2f}, {hi:+.2f}], Welch p = {c.p:.3g}"
    if lo > 0 or hi < 0:
        word = "beats" if lo > 0 else "is worse than"
        holm_note = "" if math.isnan(c.p_holm) or c.p_holm < 1 - CONFIDENCE else \
            f"; not after Holm's correction for the variants compared (p = {c.p_holm:.3g})"
        return f"{word} the baseline: {interval}{holm_note}"
    return f"no difference from the baseline detected: {interval}; the interval bounds what {c.n} seeds can rule out"


def arm(run) -> str:
    """A report row: the variant, or "<variant>+unlabelled" for semi-supervised runs (their tag "arm")."""
    return run.data.tags.get("arm", run.data.tags["variant"])


def ordered(arms) -> list[str]:
    def key(a: str):
        variant = a.split("+")[0]
        return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else 99, a)

    return sorted(arms, key=key)


# ---------------------------------------------------------------------------------------------- MLflow
def finished_runs(tracking_uri: str, experiment: str, sweep: Optional[str] = None) -> list:
    """The newest finished run per (variant, seed) of `experiment` (of one sweep folder, if given); summary runs
    and the cached classifiers' runs are not variants."""
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} in {tracking_uri}")
    query = "attributes.status = 'FINISHED'" + (f" and tags.sweep = '{sweep}'" if sweep else "")
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query, output_format="list",
                              order_by=["attributes.start_time DESC"])
    newest: dict[tuple[str, str], object] = {}
    for r in runs:
        tags = r.data.tags
        if SUMMARY_TAG in tags or tags.get("role") == "classifier" or "variant" not in tags:
            continue
        newest.setdefault((arm(r), tags.get("seed", r.info.run_id)), r)
    return list(newest.values())


def collect(runs) -> dict[str, dict[str, Stat]]:
    """variant -> metric -> Stat (the last logged value of each run, keyed by its seed)."""
    table: dict[str, dict[str, Stat]] = {}
    for run in runs:
        stats = table.setdefault(arm(run), {})
        seed = run.data.tags.get("seed", run.info.run_id)
        for key, value in run.data.metrics.items():
            if key in ACCURACY or key in OTHER or key.startswith(("val/mse/", "val/psnr/")):
                stats.setdefault(key, Stat()).by_seed[seed] = value
    return table


def compare_rows(table, pairs: dict[str, str], metric: str = "val/top1") -> dict[str, Comparison]:
    """Each row against its reference row (`pairs`: row -> reference), where both have `metric`; the p-values are
    Holm-adjusted together."""
    found = {row: compare(table[row][metric], table[ref][metric]) for row, ref in pairs.items()
             if metric in table.get(row, {}) and metric in table.get(ref, {})}
    holm(found)
    return found


def comparisons(table, metric: str = "val/top1") -> dict[str, Comparison]:
    """Every row against the baseline."""
    return compare_rows(table, {row: "baseline" for row in ordered(table) if row != "baseline"}, metric)


def unlabelled_comparisons(table, metric: str = "val/top1") -> dict[str, Comparison]:
    """Each "<variant>+unlabelled" row against the same variant without the unlabelled images."""
    return compare_rows(table, {row: row.split("+")[0] for row in ordered(table) if "+" in row}, metric)


# ---------------------------------------------------------------------------------------------- output
def _ci(ci: tuple[float, float]) -> str:
    return "-" if math.isnan(ci[0]) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.3g}"


def _comparison_lines(comps: dict[str, Comparison], against: str) -> list[str]:
    lines = ["| row | Δ top-1 | 95 % CI | Welch p | Holm p | paired Δ (seeds) | paired 95 % CI | paired p |",
             "|---|---|---|---|---|---|---|---|"]
    for v, c in comps.items():
        lines.append(f"| {v} | {c.diff:+.2f} | {_ci(c.ci)} | {_p(c.p)} | {_p(c.p_holm)} | "
                     f"{c.paired_diff:+.2f} ({c.n_pairs}) | {_ci(c.paired_ci)} | {_p(c.paired_p)} |")
    verdicts = [f"- **{v}** {verdict(c).replace('the baseline', against)}." for v, c in comps.items()]
    return [*lines, "", "Verdicts:", "", *verdicts]


def markdown(table, experiment: str, comps: dict[str, Comparison],
             unlabelled: Optional[dict[str, Comparison]] = None) -> str:
    seeds = sorted({s for stats in table.values() for s in stats.get("val/top1", Stat()).by_seed}, key=str)
    accuracy = [k for k in ACCURACY if any(k in s for s in table.values())]
    other = [k for k in OTHER if any(k in s for s in table.values())]
    head = ["variant", "seeds", *[ACCURACY[k] for k in accuracy], *[OTHER[k][0] for k in other]]
    lines = [f"# {experiment}", "", f"Mean ± std over seeds ({', '.join(seeds)}); one finished run per variant "
             "and seed.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in ordered(table):
        s = table[v]
        cells = [v, str(s.get("val/top1", Stat()).n), *[s[k].fmt() if k in s else "-" for k in accuracy],
                 *[s[k].fmt(OTHER[k][1]) if k in s else "-" for k in other]]
        lines.append("| " + " | ".join(cells) + " |")
    if comps:
        lines += ["", f"Top-1 against the baseline ({CONFIDENCE:.0%} confidence; Welch: unequal variances; "
                  "Holm: adjusted for the rows compared; paired: over the seeds both have).", "",
                  *_comparison_lines(comps, "the baseline")]
    if unlabelled:
        lines += ["", "Top-1 with the unlabelled images against the same variant without them.", "",
                  *_comparison_lines(unlabelled, "the variant without unlabelled images")]
    return "\n".join(lines) + "\n"


def plot_accuracy(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in ordered(table) if "val/top1" in table[v]]
    stats = [table[v]["val/top1"] for v in variants]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (v, s) in enumerate(zip(variants, stats)):
        color = "grey" if v == "baseline" else "tab:blue"
        ax.scatter([i] * s.n, s.values, s=12, color=color, alpha=0.5, zorder=2)
        lo, hi = s.ci()
        if not math.isnan(lo):
            ax.errorbar(i, s.mean, yerr=[[s.mean - lo], [hi - s.mean]], fmt="o", color=color, capsize=5, zorder=3)
        else:
            ax.plot(i, s.mean, "o", color=color)
    if "baseline" in variants:
        lo, hi = table["baseline"]["val/top1"].ci()
        if not math.isnan(lo):
            ax.axhspan(lo, hi, color="grey", alpha=0.15, zorder=1, label=f"baseline {CONFIDENCE:.0%} CI")
            ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(variants)), variants, rotation=30)
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"top-1 per variant: seeds (dots), mean and {CONFIDENCE:.0%} CI of the mean")
    fig.tight_layout()
    return fig


def plot_recon_error(table):
    import matplotlib.pyplot as plt

    levels = sorted({k[len("val/mse/"):] for s in table.values() for k in s if k.startswith("val/mse/")},
                    key=lambda lv: (lv != "image", lv))
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


def write_report(tracking_uri: str, experiment: str, out_dir: Path, sweep: Optional[str] = None) -> tuple[Path, str]:
    """Write report.md and the plots into out_dir and log them to MLflow as one summary run."""
    import matplotlib.pyplot as plt

    table = collect(finished_runs(tracking_uri, experiment, sweep))
    if not table:
        raise ValueError(f"experiment {experiment!r} has no finished runs to report on")
    comps = comparisons(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown(table, experiment, comps, unlabelled_comparisons(table)))
    figures = {"accuracy_per_variant.png": plot_accuracy(table), "recon_error_per_level.png": plot_recon_error(table)}
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
    set_experiment(tracking_uri, experiment)
    with mlflow.start_run(run_name=f"report {experiment}", tags={SUMMARY_TAG: "true"}) as run:
        for v, stats in table.items():  # MLflow names take no "+": swwae_all+unlabelled -> swwae_all_with_unlabelled
            mlflow.log_metrics({f"{v.replace('+', '_with_')}/{k}_mean": s.mean for k, s in stats.items()})
        for v, c in comps.items():
            v = v.replace("+", "_with_")
            mlflow.log_metrics({f"{v}/top1_diff": c.diff, f"{v}/top1_diff_ci_low": c.ci[0],
                                f"{v}/top1_diff_ci_high": c.ci[1], f"{v}/top1_welch_p": c.p})
        mlflow.log_artifacts(str(out_dir), "report")
    return out_dir / "report.md", run.info.run_id
