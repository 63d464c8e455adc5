"""The report's figures (matplotlib): top-1 per row, reconstruction error per level, Δ top-1 across label budgets, and
a loss-weight sweep's dose-response. Each function returns a figure for the caller to save and close.

The non-interactive backend is chosen inside each function, not at import: importing the report must not change
the backend of a program (a notebook, a test) that imports it.
"""
from __future__ import annotations

import math
from pathlib import Path

from recondec.tracking.dose_response import MIN_SHARE, DosePoint, chosen_scales
from recondec.tracking.runs import BASELINE, CLASSIFIER, ordered, reported_split, split_scale
from recondec.tracking.stats import CONFIDENCE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write `fig` to `path` and free it (pyplot keeps every open figure alive)."""
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _error_bar(ax, x: float, mid: float, ci, **style) -> None:
    """A point with its interval; a bare point where the interval is unknown (one seed)."""
    lo, hi = ci
    if lo is None or math.isnan(lo):
        ax.plot(x, mid, "o", color=style.get("color"), label=style.get("label"))
    else:
        ax.errorbar(x, mid, yerr=[[mid - lo], [hi - mid]], fmt="o", capsize=style.pop("capsize", 5), **style)


def plot_accuracy(table):
    """Top-1 per row: each seed, and the mean with its confidence interval; the baseline's interval as a band."""
    plt = _pyplot()
    metric = f"{reported_split(table)}/top1"
    rows = [v for v in ordered(table) if metric in table[v]]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, row in enumerate(rows):
        s = table[row][metric]
        color = "grey" if row == BASELINE else "tab:blue"
        ax.scatter([i] * s.n, s.values, s=12, color=color, alpha=0.5, zorder=2)
        _error_bar(ax, i, s.mean, s.ci(), color=color, zorder=3)
    if BASELINE in rows:
        lo, hi = table[BASELINE][metric].ci()
        if not math.isnan(lo):
            ax.axhspan(lo, hi, color="grey", alpha=0.15, zorder=1, label=f"baseline {CONFIDENCE:.0%} CI")
            ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(rows)), rows, rotation=30)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"top-1 per row: seeds (dots), mean and {CONFIDENCE:.0%} CI of the mean")
    fig.tight_layout()
    return fig


def plot_recon_error(table):
    """Mean reconstruction error per level (image first) per row, log scale."""
    plt = _pyplot()
    prefix = f"{reported_split(table)}/mse/"
    levels = sorted({k[len(prefix):] for s in table.values() for k in s if k.startswith(prefix)},
                    key=lambda lv: (lv != "image", lv))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for row in ordered(table):
        pts = [(i, table[row][f"{prefix}{lv}"].mean) for i, lv in enumerate(levels) if f"{prefix}{lv}" in table[row]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=row)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_yscale("log")
    ax.set_ylabel(prefix.rstrip("/").replace("/", " "))
    ax.set_title("reconstruction error per level per row")
    if levels:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_label_budgets(budgets: list[tuple[str, dict[str, dict]]]):
    """Δ top-1 against the baseline per row with its 95 % CI, one group per label budget; budgets: (the budget's
    label, row -> its comparison record against the baseline). A variant keeps its colour across budgets; each
    point is marked with its loss scale, which differs between budgets."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    per_budget = [[r for r in ordered(records) if r not in (BASELINE, CLASSIFIER)] for _, records in budgets]
    variants = dict.fromkeys(split_scale(r)[0] for rows in per_budget for r in rows)  # first seen, first coloured
    colours = {v: f"C{k % 10}" for k, v in enumerate(variants)}
    width = 0.8 / max(1, max(map(len, per_budget)))
    labelled = set()
    for j, ((_, records), rows) in enumerate(zip(budgets, per_budget)):
        for i, row in enumerate(rows):
            variant, scale = split_scale(row)
            x = j + (i - (len(rows) - 1) / 2) * width
            c = records[row]
            label = None if variant in labelled else variant  # one legend entry per variant
            labelled.add(variant)
            _error_bar(ax, x, c["diff"], c["ci"], capsize=2, color=colours[variant], label=label)
            weight = f"@{1 if scale is None else scale:g}"  # a row without "@" ran at loss scale 1
            ax.annotate(weight, (x, c["diff"]), xytext=(3, 0), textcoords="offset points", fontsize=6)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(budgets)), [label for label, _ in budgets], fontsize=8)
    ax.set_ylabel("Δ test top-1 vs baseline (points)")
    ax.set_title(f"each variant against the baseline, per label budget ({CONFIDENCE:.0%} CI)")
    if colours:
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_dose_response(points: list[DosePoint], choose: bool = True):
    """Per variant against its loss scale (log axis): Δ top-1 vs the baseline with its CI, and the median
    reconstruction gradient share (log axis) with the MIN_SHARE line; the chosen scale ringed when `choose`."""
    plt = _pyplot()
    fig, (delta_ax, share_ax) = plt.subplots(1, 2, figsize=(10, 4))
    chosen = chosen_scales(points) if choose else dict.fromkeys(p.variant for p in points)
    for i, variant in enumerate(chosen):
        mine = [p for p in points if p.variant == variant]
        color = f"C{i}"
        dodge = 1.04 ** (i - (len(chosen) - 1) / 2)  # variants side by side at each scale, on the log axis
        xs = [p.scale * dodge for p in mine]
        delta_ax.plot(xs, [p.diff for p in mine], color=color, lw=0.8)
        for x, p in zip(xs, mine, strict=True):
            _error_bar(delta_ax, x, p.diff, p.vs_baseline.ci, color=color, capsize=3)
            if chosen[variant] == p.scale:
                delta_ax.plot(x, p.diff, "o", ms=12, mfc="none", color=color)
        shown = [p for p in mine if p.share > 0]  # NaN and 0 have no place on a log axis
        share_ax.plot([p.scale for p in shown], [p.share * 100 for p in shown], "o-", color=color, label=variant)
    delta_ax.axhline(0, color="grey", lw=0.8)
    share_ax.axhline(MIN_SHARE * 100, color="grey", ls="--", lw=0.8, label=f"{MIN_SHARE:.0%}")
    for ax in (delta_ax, share_ax):
        ax.set_xscale("log")
        ax.set_xlabel("loss scale")
    share_ax.set_yscale("log")
    delta_ax.set_ylabel("Δ top-1 vs baseline (points)")
    delta_ax.set_title(f"Δ top-1, {CONFIDENCE:.0%} CI" + " (ringed: the chosen scale)" * choose)
    share_ax.set_ylabel("median recon gradient share, first conv (%)")
    share_ax.set_title("reconstruction share of the gradient")
    share_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
