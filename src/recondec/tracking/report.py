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
               "run_median/grad_share/recon/first_conv": "median over the run, first conv (%)",
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


def row_name(run) -> str:
    """A run's row in the report: its tag "row" (the variant, or "<variant>+unlabelled" for semi-supervised runs)."""
    return run.data.tags.get("row", run.data.tags["variant"])


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
        newest.setdefault((row_name(r), tags.get("seed", r.info.run_id)), r)
    return list(newest.values())


def _kept(key: str) -> bool:
    return key.startswith(("val/", "test/")) or key in SPEED or key in DIAGNOSTICS


def collect(runs) -> dict[str, dict[str, Stat]]:
    """row -> metric -> Stat (the last logged value of each run, keyed by its seed)."""
    table: dict[str, dict[str, Stat]] = {}
    for run in runs:
        stats = table.setdefault(row_name(run), {})
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
    """One row per report row (variant, or variant+unlabelled); columns: (metric, header, digits, scale)."""
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
                  "from the start of the run (at the last validation); where the runs have it, the first-conv share's "
                  "median over every validation of the run.", "", *_table_lines(table, diagnostics)]
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


def provenance(runs) -> str:
    """When, with what code and on what machine the runs were made, and the grid's wall time."""
    from datetime import datetime, timezone

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time or r.info.start_time for r in runs]
    busy = sum(e - b for b, e in zip(starts, ends)) / 60_000
    tags = [r.data.tags for r in runs]

    def values(key: str, width: Optional[int] = None) -> str:
        return ", ".join(sorted({t.get(key, "?")[:width] for t in tags}))

    return (f"{len(runs)} runs from {day(min(starts))} to {day(max(ends))}: {(max(ends) - min(starts)) / 60_000:.0f} "
            f"min from the first start to the last end, {busy:.0f} min of runs. Commit {values('mlflow.source.git.commit', 7)}"
            f"; torch {values('torch')}; {values('device')}.")


def commands(experiment: str) -> str:
    from recondec.config import CONF_DIR

    if (CONF_DIR / "experiment" / f"{experiment}.yaml").is_file():
        return (f"Reproduce: `python src/main.py -m experiment={experiment}`, then "
                f"`python src/report.py {experiment}`.")
    return f"Report: `python src/report.py {experiment}` (the runs of the MLflow experiment {experiment!r})."


def comparison_records(comps: dict[str, Comparison], against: str) -> list[dict]:
    """What docs/results.md and the label-budget plot read back (reports/<experiment>/comparisons.json)."""
    return [{"row": row, "against": against, "design": c.design, "n": c.test.n, "diff": c.diff, "ci": list(c.ci),
             "p": c.p, "p_holm": c.p_holm, "mde": c.mde, "family": c.family,
             "verdict": verdict(c, against=against)} for row, c in comps.items()]


def write_report(tracking_uri: str, experiment: str, out_dir: Path, sweep: Optional[str] = None) -> tuple[Path, str]:
    """Write report.md, comparisons.json and the plots into out_dir and log them to MLflow as one summary run."""
    import json

    import matplotlib.pyplot as plt

    runs = finished_runs(tracking_uri, experiment, sweep)
    table = collect(runs)
    if not table:
        raise ValueError(f"experiment {experiment!r} has no finished runs to report on")
    comps, unlabelled = comparisons(table), unlabelled_comparisons(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(table, experiment, comps, unlabelled)
    head, rest = text.split("\n", 1)
    (out_dir / "report.md").write_text(f"{head}\n\n{commands(experiment)} {provenance(runs)}\n{rest}")
    records = {"experiment": experiment, "split": reported_split(table),
               "labels_per_class": _common_param(runs, "data.labels_per_class"),
               "comparisons": comparison_records(comps, "baseline") + comparison_records(unlabelled, "no unlabelled")}
    (out_dir / "comparisons.json").write_text(json.dumps(records, indent=1))
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


def _common_param(runs, key: str) -> Optional[str]:
    found = {r.data.params.get(key) for r in runs}
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------- studies, docs
def latest_study_run(tracking_uri: str, experiment: str):
    """The newest finished reconstruction-study parent run of `experiment`, or None."""
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.role = 'study' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def write_recon_report(tracking_uri: str, experiment: str, out_dir: Path) -> Path:
    """The reconstruction study's table and figure (its parent run's artifacts) as reports/<experiment>/report.md."""
    study = latest_study_run(tracking_uri, experiment)
    if study is None:
        raise ValueError(f"experiment {experiment!r} has no finished reconstruction study")
    client = mlflow.MlflowClient(tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("recon_table.md", "recon_levels.png"):
        local = Path(client.download_artifacts(study.info.run_id, f"report/{name}", str(out_dir / ".download")))
        local.replace(out_dir / name)
    children = client.search_runs([study.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{study.info.run_id}'")
    text = (f"# {experiment}\n\n{commands(experiment)} {provenance([study, *children])}\n\n"
            "Validation error of the image reconstructed from each level of the frozen classifier (SAE: fixed "
            "unpooling, SWWAE: switches):\n\n" + (out_dir / "recon_table.md").read_text() +
            "\n![reconstructions from each level](recon_levels.png)\n")
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"


DOCS_ORDER = ["lowlabel_fmnist", "lowlabel_fmnist_k100", "semi_fmnist", "finetune_fmnist_low", "finetune_fmnist",
              "recon_fmnist"]
BUDGETS = {"lowlabel_fmnist": ("10 per class", "from scratch"), "lowlabel_fmnist_k100": ("100 per class", "from scratch"),
           "finetune_fmnist_low": ("100 per class", "fine-tuned"), "finetune_fmnist": ("all 5,500 per class", "fine-tuned")}


# what no Fashion-MNIST grid can say, whatever its numbers
SCOPE = ("These are a width-scaled VGG-16 on 32 px Fashion-MNIST images, trained for minutes on two CPU cores. "
         "They say whether the decoders change top-1 in these regimes, and how large a change the grids could have "
         "missed. They do not say what the paper's claim (top-5 error 8.13 % against about 10 % for VGG-16 on "
         "ImageNet after fine-tuning) would give there: that takes the ImageNet presets "
         "(`experiment=joint_imagenet_vgg16`) on GPUs.")


def _reports(reports_dir: Path) -> list[Path]:
    found = {p.parent.name: p.parent for p in reports_dir.glob("*/report.md")}
    return [found[n] for n in DOCS_ORDER if n in found] + [found[n] for n in sorted(found) if n not in DOCS_ORDER]


def _claim_lines(folders: list[Path]) -> list[str]:
    """Per experiment and row: the difference against the baseline, its interval, Holm's p and what could be missed."""
    import json

    lines = ["| experiment | row | Δ top-1 (points) | 95 % CI | test | Holm p | MDE (80 %) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    helped, hurt, power = [], [], []
    for folder in folders:
        path = folder / "comparisons.json"
        if not path.is_file():
            continue
        comparisons = json.loads(path.read_text())["comparisons"]
        mdes = sorted(c["mde"] for c in comparisons if c["against"] == "baseline" and c["mde"] == c["mde"])
        if mdes:
            regime = ", ".join(BUDGETS.get(folder.name, ()))
            power.append(f"- {folder.name}{f' ({regime})' if regime else ''}: its rows' MDE against the baseline "
                         f"(80 % power) runs from {mdes[0]:.2f} to {mdes[-1]:.2f} points of top-1; smaller true "
                         "differences they can miss.")
        for c in comparisons:
            significant = c["p_holm"] == c["p_holm"] and c["p_holm"] < ALPHA
            word = ("better" if c["diff"] > 0 else "worse") if significant else "no difference detected"
            (helped if significant and c["diff"] > 0 else hurt if significant else []).append(
                f"{c['row']} in {folder.name} ({c['diff']:+.2f} points)")
            against = "" if c["against"] == "baseline" else f" (vs {c['against']})"
            lines.append(f"| {folder.name} | {c['row']}{against} | {c['diff']:+.2f} | {_ci(tuple(c['ci']))} | "
                         f"{c['design']}, {c['n']} | {_num(c['p_holm'])} | {_num(c['mde'], '.2f')} | {word} |")
    if len(lines) == 2:
        return ["No report yet: run a study (README, \"Studies\") and `python src/report.py <experiment>`."]
    summary = [f"Better than its reference after Holm's correction: {', '.join(helped) or 'none'}.",
               f"Worse: {', '.join(hurt) or 'none'}. Every other row: no difference detected, with the MDE saying "
               "how large a difference its seeds could have missed.", "", "What each grid could have seen:", "",
               *power, "", SCOPE]
    return [*summary, "", *lines]


def plot_label_budgets(folders: list[Path]):
    """Δ top-1 against the baseline per variant, with 95 % CIs, across the label budgets that have a report."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [f for f in folders if f.name in BUDGETS and (f / "comparisons.json").is_file()]
    if not budgets:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = [v for v in VARIANT_ORDER if v != "baseline"]
    width = 0.8 / len(rows)
    for j, folder in enumerate(budgets):
        records = {c["row"]: c for c in json.loads((folder / "comparisons.json").read_text())["comparisons"]
                   if c["against"] == "baseline"}
        for i, row in enumerate(rows):
            c = records.get(row)
            if c is None:
                continue
            x = j + (i - (len(rows) - 1) / 2) * width
            lo, hi = c["ci"]
            ax.errorbar(x, c["diff"], yerr=[[c["diff"] - lo], [hi - c["diff"]]], fmt="o", capsize=2,
                        color=f"C{i}", label=row if j == 0 else None)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(budgets)), [f"{BUDGETS[f.name][0]}\n{BUDGETS[f.name][1]}" for f in budgets], fontsize=8)
    ax.set_ylabel("Δ test top-1 vs baseline (points)")
    ax.set_title("each variant against the baseline, per label budget (95 % CI)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def write_results_page(reports_dir: Path, page: Path) -> Path:
    """docs/results.md from every reports/<experiment>/: the claim in one table and one plot, then each report."""
    import os

    import matplotlib.pyplot as plt

    folders = _reports(reports_dir)
    rel = os.path.relpath(reports_dir, page.parent)
    lines = ["# Results", "", "Generated by `python src/report.py --docs` from `reports/<experiment>/`, each written by "
             "`python src/report.py <experiment>` from the runs of one MLflow experiment; not edited by hand. Every "
             "number is a test-set number (validation selected everything), and every table says when, with what "
             "commit and torch, and on what machine its runs were made.", "", "## What the suite says about the claim",
             "", *_claim_lines(folders)]
    fig = plot_label_budgets(folders)
    if fig is not None:
        fig.savefig(reports_dir / "label_budgets.png", dpi=120)
        plt.close(fig)
        lines += ["", f"![Δ top-1 per label budget]({rel}/label_budgets.png)"]
    for folder in folders:
        body = (folder / "report.md").read_text().splitlines()
        lines += ["", f"## {folder.name}", "", f"Folder: [`reports/{folder.name}/`]({rel}/{folder.name}/report.md).",
                  *[("#" + line if line.startswith("#") else line) for line in body[1:]]]
        lines += [f"![{png.stem}]({rel}/{folder.name}/{png.name})" for png in sorted(folder.glob("*.png"))
                  if png.name not in "\n".join(body)]
    text = "\n".join(lines) + "\n"
    text = text.replace("](recon_levels.png)", f"]({rel}/recon_fmnist/recon_levels.png)")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return page
