"""Paper-style comparison of one MLflow experiment: every variant against the baseline, as statistics.

The numbers reported are the test set's (``test/...``, read once at the end of each run); runs without a test set
(an image folder without ``test/``) are reported on validation, and the report says so.

Per row (a variant, or ``<variant>+unlabelled`` for semi-supervised runs): mean ± std over seeds of top-1, top-5,
the image reconstruction error and img/s, and the diagnostics that say whether the unsupervised objective acted
(its gradient share at the encoder's first and last conv, how far the encoder moved). Against the baseline, for
top-1: when the seeds pair the runs (equal ``pairing`` tags: the same start, labelled images and data order) the
paired t-test on the per-seed differences, else Welch's test; Holm's correction over the rows compared, applied to
the p-values the verdict uses; and the minimum detectable effect (MDE) at 80 % power, so that "no difference
detected" says what the seeds could have missed. Welch's interval stays as a column.

One run per (row, seed) counts: when a grid was run twice into one experiment, the newest finished run of each
pair is used (``--sweep`` restricts the report to one multirun folder).
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
from recondec.tracking.stats import CONFIDENCE, POWER, TestResult, holm, minimum_detectable_effect, paired_test, \
    welch_test

VARIANT_ORDER = variant_names()
SUMMARY_TAG = "summary"
ALPHA = 1 - CONFIDENCE
# single centre crop, then 10 crops (trainer.ten_crop) where the runs have them; prefixed with the split reported
ACCURACY = {"top1": "top-1 (%)", "top5": "top-5 (%)", "top1_10crop": "top-1 10-crop (%)",
            "top5_10crop": "top-5 10-crop (%)"}
OTHER = {"mse/image": ("image MSE", 4), "psnr/image": ("image PSNR (dB)", 2)}
SPEED = {"train/img_per_s": ("img/s", 0)}
DIAGNOSTICS = {"grad_share/recon/first_conv": "recon grad share, first conv (%)",
               "grad_share/recon/last_conv": "recon grad share, last conv (%)",
               "encoder/rel_change": "encoder change (%)"}


@dataclass
class Stat:
    """One metric of one row: its value per seed, and each seed's run's pairing tag."""
    by_seed: dict[str, float] = field(default_factory=dict)
    pairing: dict[str, str] = field(default_factory=dict)

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

    def fmt(self, digits: int = 2, scale: float = 1.0) -> str:
        if not self.by_seed:
            return "-"
        m, s = self.mean * scale, self.std * scale
        return f"{m:.{digits}f} ± {s:.{digits}f}" if self.n > 1 else f"{m:.{digits}f}"


@dataclass
class Comparison:
    """A row's metric minus its reference row's: the test the verdict uses, Welch's beside it, and the MDE."""
    design: str                  # "paired" or "unpaired"
    test: TestResult             # what the verdict uses
    welch: TestResult
    paired: Optional[TestResult]  # over the seeds whose runs pair, when any do
    n_row: int
    n_ref: int
    unpaired_seeds: list[str]    # seeds both rows have whose runs do not pair (another start or labelled subset)
    p_holm: float = math.nan     # set by finish_family() across the rows compared
    mde: float = math.nan        # minimum detectable effect at POWER, at the family's alpha
    family: int = 1              # rows compared together (Holm's m)

    @property
    def diff(self) -> float:
        return self.test.diff

    @property
    def ci(self) -> tuple[float, float]:
        return self.test.ci

    @property
    def p(self) -> float:
        return self.test.p


def compare(row: Stat, ref: Stat) -> Comparison:
    welch = welch_test(row.values, ref.values)
    shared = sorted(set(row.by_seed) & set(ref.by_seed), key=str)
    pairs = [s for s in shared if row.pairing.get(s) and row.pairing.get(s) == ref.pairing.get(s)]
    unpaired = [s for s in shared if s not in pairs]
    paired = paired_test([row.by_seed[s] - ref.by_seed[s] for s in pairs]) if pairs else None
    design = "paired" if paired is not None and len(pairs) >= 2 and not unpaired else "unpaired"
    return Comparison(design, paired if design == "paired" else welch, welch, paired, row.n, ref.n, unpaired)


def finish_family(comparisons: dict[str, Comparison]) -> None:
    """Holm's adjustment of the p-values the verdicts use, and each row's MDE at 80 % power at alpha / m (Holm's
    strictest step: what every row's test can detect whatever the others do), in place."""
    adjusted = holm({name: c.p for name, c in comparisons.items()})
    m = max(1, len(comparisons))
    for name, c in comparisons.items():
        c.p_holm, c.family = adjusted[name], m
        c.mde = minimum_detectable_effect(c.test.se, c.test.df, ALPHA / m)


def _design_text(c: Comparison) -> str:
    return f"paired over {c.test.n} seeds" if c.design == "paired" else f"Welch, {c.n_row} vs {c.n_ref} seeds"


def verdict(c: Comparison, what: str = "top-1", against: str = "the baseline") -> str:
    """The sentence the numbers produce (difference in points of `what`)."""
    if c.test.n < 2 or c.n_ref < 2 or math.isnan(c.test.p):
        return f"{c.diff:+.2f} points of {what} from one seed: the noise is unknown, no verdict"
    lo, hi = c.ci
    numbers = (f"{c.diff:+.2f} points of {what}, {CONFIDENCE:.0%} CI [{lo:+.2f}, {hi:+.2f}] ({_design_text(c)}), "
               f"p = {c.p:.3g}, Holm p = {c.p_holm:.3g}")
    if c.unpaired_seeds:
        numbers += (f"; the runs of seed(s) {', '.join(c.unpaired_seeds)} do not pair (another start or labelled "
                    "subset), so the test is unpaired")
    if c.p_holm < ALPHA:
        return f"{'beats' if c.diff > 0 else 'is worse than'} {against}: {numbers}"
    corrected = " after Holm's correction" if c.p < ALPHA else ""
    return (f"no difference from {against} detected{corrected}: {numbers}; this test finds a true difference of "
            f"{c.mde:.2f} points with {POWER:.0%} power (alpha {ALPHA:g}/{c.family}), smaller ones it can miss")


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
    """The newest finished run per (row, seed) of `experiment` (of one sweep folder, if given); summary runs
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


def _kept(key: str) -> bool:
    return key.startswith(("val/", "test/")) or key in SPEED or key in DIAGNOSTICS


def collect(runs) -> dict[str, dict[str, Stat]]:
    """row -> metric -> Stat (the last logged value of each run, keyed by its seed)."""
    table: dict[str, dict[str, Stat]] = {}
    for run in runs:
        stats = table.setdefault(arm(run), {})
        seed = run.data.tags.get("seed", run.info.run_id)
        for key, value in run.data.metrics.items():
            if _kept(key):
                stat = stats.setdefault(key, Stat())
                stat.by_seed[seed] = value
                stat.pairing[seed] = run.data.tags.get("pairing", "")
    return table


def reported_split(table) -> str:
    """"test" when the runs have test metrics (the numbers a paper would report), else "val"."""
    return "test" if any("test/top1" in stats for stats in table.values()) else "val"


def compare_rows(table, pairs: dict[str, str], metric: str) -> dict[str, Comparison]:
    """Each row against its reference row (`pairs`: row -> reference), where both have `metric`; one family."""
    found = {row: compare(table[row][metric], table[ref][metric]) for row, ref in pairs.items()
             if metric in table.get(row, {}) and metric in table.get(ref, {})}
    finish_family(found)
    return found


def comparisons(table, metric: Optional[str] = None) -> dict[str, Comparison]:
    """Every row against the baseline."""
    metric = metric or f"{reported_split(table)}/top1"
    return compare_rows(table, {row: "baseline" for row in ordered(table) if row != "baseline"}, metric)


def unlabelled_comparisons(table, metric: Optional[str] = None) -> dict[str, Comparison]:
    """Each "<variant>+unlabelled" row against the same variant without the unlabelled images."""
    metric = metric or f"{reported_split(table)}/top1"
    return compare_rows(table, {row: row.split("+")[0] for row in ordered(table) if "+" in row}, metric)


# ---------------------------------------------------------------------------------------------- output
def _ci(ci: tuple[float, float]) -> str:
    return "-" if math.isnan(ci[0]) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _num(x: float, fmt: str = ".3g") -> str:
    return "-" if math.isnan(x) else format(x, fmt)


def _comparison_lines(comps: dict[str, Comparison], against: str) -> list[str]:
    lines = ["| row | test used | Δ top-1 | 95 % CI | p | Holm p | MDE (80 % power) | Welch Δ, 95 % CI | Welch p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, c in comps.items():
        lines.append(f"| {v} | {_design_text(c)} | {c.diff:+.2f} | {_ci(c.ci)} | {_num(c.p)} | {_num(c.p_holm)} | "
                     f"{_num(c.mde, '.2f')} | {c.welch.diff:+.2f} {_ci(c.welch.ci)} | {_num(c.welch.p)} |")
    verdicts = [f"- **{v}** {verdict(c, against=against)}." for v, c in comps.items()]
    return [*lines, "", "Verdicts:", "", *verdicts]


def _table_lines(table, columns: list[tuple[str, str, int, float]]) -> list[str]:
    """One row per arm; columns: (metric, header, digits, scale)."""
    head = ["row", "seeds", *[h for _, h, _, _ in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in ordered(table):
        s = table[v]
        n = max((st.n for st in s.values()), default=0)
        cells = [v, str(n), *[s[k].fmt(d, scale) if k in s else "-" for k, _, d, scale in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(table, experiment: str, comps: dict[str, Comparison],
             unlabelled: Optional[dict[str, Comparison]] = None) -> str:
    split = reported_split(table)
    seeds = sorted({s for stats in table.values() for s in stats.get(f"{split}/top1", Stat()).by_seed}, key=str)
    which = ("the test set, evaluated once at the end of each run" if split == "test" else
             "the validation set: these runs have no test set")
    present = {k for s in table.values() for k in s}
    results = [(f"{split}/{k}", h, 2, 1.0) for k, h in ACCURACY.items() if f"{split}/{k}" in present]
    results += [(f"{split}/{k}", h, d, 1.0) for k, (h, d) in OTHER.items() if f"{split}/{k}" in present]
    results += [(k, h, d, 1.0) for k, (h, d) in SPEED.items() if k in present]
    diagnostics = [(k, h, 2, 100.0) for k, h in DIAGNOSTICS.items() if k in present]
    lines = [f"# {experiment}", "", f"Numbers from {which}. Mean ± std over seeds ({', '.join(seeds)}); one finished "
             "run per row and seed.", "", *_table_lines(table, results)]
    if diagnostics:
        lines += ["", "Did the unsupervised objective act? The reconstruction terms' gradient at the encoder's first "
                  "and last conv, as a share of the cross-entropy's, and the encoder's mean relative weight change "
                  "from the start of the run (at the last validation).", "", *_table_lines(table, diagnostics)]
    if comps:
        lines += ["", f"Top-1 against the baseline ({CONFIDENCE:.0%} confidence). The test used: paired over the "
                  "seeds when they pair the runs, else Welch's; Holm: adjusted for the rows compared; MDE: the true "
                  f"difference that test detects with {POWER:.0%} power at alpha 0.05 / rows compared.", "",
                  *_comparison_lines(comps, "the baseline")]
    if unlabelled:
        lines += ["", "Top-1 with the unlabelled images against the same variant without them.", "",
                  *_comparison_lines(unlabelled, "the variant without unlabelled images")]
    return "\n".join(lines) + "\n"


def plot_accuracy(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = f"{reported_split(table)}/top1"
    variants = [v for v in ordered(table) if metric in table[v]]
    stats = [table[v][metric] for v in variants]
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
        lo, hi = table["baseline"][metric].ci()
        if not math.isnan(lo):
            ax.axhspan(lo, hi, color="grey", alpha=0.15, zorder=1, label=f"baseline {CONFIDENCE:.0%} CI")
            ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(variants)), variants, rotation=30)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"top-1 per row: seeds (dots), mean and {CONFIDENCE:.0%} CI of the mean")
    fig.tight_layout()
    return fig


def plot_recon_error(table):
    import matplotlib.pyplot as plt

    prefix = f"{reported_split(table)}/mse/"
    levels = sorted({k[len(prefix):] for s in table.values() for k in s if k.startswith(prefix)},
                    key=lambda lv: (lv != "image", lv))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for v in ordered(table):
        pts = [(i, table[v][f"{prefix}{lv}"].mean) for i, lv in enumerate(levels) if f"{prefix}{lv}" in table[v]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=v)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_yscale("log")
    ax.set_ylabel(prefix.rstrip("/").replace("/", " "))
    ax.set_title("reconstruction error per level per row")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _mlflow_name(row: str) -> str:
    return row.replace("+", "_with_")  # MLflow names take no "+"


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
        for v, stats in table.items():
            mlflow.log_metrics({f"{_mlflow_name(v)}/{k}_mean": s.mean for k, s in stats.items()})
        for v, c in comps.items():
            v = _mlflow_name(v)
            mlflow.log_metrics({f"{v}/top1_diff": c.diff, f"{v}/top1_diff_ci_low": c.ci[0],
                                f"{v}/top1_diff_ci_high": c.ci[1], f"{v}/top1_p": c.p, f"{v}/top1_p_holm": c.p_holm,
                                f"{v}/top1_mde": c.mde})
        mlflow.log_artifacts(str(out_dir), "report")
    return out_dir / "report.md", run.info.run_id
