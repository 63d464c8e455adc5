"""Dose-response of a loss-weight sweep (``loss.scale``): per variant and scale, top-1 against the baseline and how
much of the encoder's gradient the reconstruction terms made.

A decoder that barely reaches the encoder cannot change top-1, whatever its weight's name says; a weight so large
that it dominates the gradient may trade top-1 away. The scale worth keeping for a variant is the one with the best
difference among the scales at which the reconstruction gradient is at least MIN_SHARE of the cross-entropy's at
the first conv (the median over the run: one validation's share is noisy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Optional

from recondec.tracking.comparisons import Comparison, compare, design_text
from recondec.tracking.runs import BASELINE, CLASSIFIER, MEDIAN_SHARE, ordered, split_scale
from recondec.tracking.tables import fmt_ci, fmt_num

MIN_SHARE = 0.02  # a fraction of the cross-entropy's gradient at the first conv


@dataclass
class DosePoint:
    variant: str                 # the row without its scale ("swwae_all", "swwae_all+unlabelled")
    scale: float                 # 1 where the runs carry no loss_scale tag
    n: int                       # seeds of the row
    vs_baseline: Comparison      # top-1 against the baseline
    share: float                 # median over the seeds of each run's median share; NaN when not logged

    @property
    def diff(self) -> float:
        return self.vs_baseline.diff

    def reaches(self, least: float = MIN_SHARE) -> bool:
        return not math.isnan(self.share) and self.share >= least


def has_scales(table) -> bool:
    """Whether any run carried a loss_scale tag (the experiment is a dose-response sweep)."""
    return any(split_scale(row)[1] is not None for row in table)


def dose_points(table, metric: str) -> list[DosePoint]:
    """Every decoder row with `metric`, against the baseline, in variant then scale order."""
    if metric not in table.get(BASELINE, {}):
        return []
    points = []
    for row in ordered(table):
        if row in (BASELINE, CLASSIFIER) or metric not in table[row]:
            continue
        variant, scale = split_scale(row)
        shares = table[row][MEDIAN_SHARE].values if MEDIAN_SHARE in table[row] else []
        points.append(DosePoint(variant, 1.0 if scale is None else scale, table[row][metric].n,
                                compare(table[row][metric], table[BASELINE][metric]),
                                median(shares) if shares else math.nan))
    return points


def chosen_scales(points: list[DosePoint], least: float = MIN_SHARE) -> dict[str, Optional[float]]:
    """Per variant: the scale with the best difference among those whose share reaches `least`; None when none
    does."""
    chosen: dict[str, Optional[float]] = {}
    for p in points:
        chosen.setdefault(p.variant, None)
    for variant in chosen:
        eligible = [p for p in points if p.variant == variant and p.reaches(least) and not math.isnan(p.diff)]
        chosen[variant] = max(eligible, key=lambda p: p.diff).scale if eligible else None
    return chosen


def section(points: list[DosePoint], choose: bool = True) -> list[str]:
    """The dose-response table and, when `choose` (a pilot on validation), each variant's chosen scale, as markdown
    lines. On the test set nothing is chosen: the scales are those the preset fixed from its validation curve."""
    chosen = chosen_scales(points) if choose else {}
    rule = (f"Chosen: the best Δ among the scales whose share is at least {MIN_SHARE:.0%}." if choose else
            "The scales were fixed before this grid ran; the test set chooses nothing.")
    lines = [f"Dose-response over the loss scale: top-1 against the baseline per scale, and the reconstruction terms' "
             f"gradient at the encoder's first conv as a share of the cross-entropy's (median over the run, then over "
             f"the seeds). {rule}", "",
             "| variant | loss scale | seeds | test used | Δ top-1 | 95 % CI | median share (%) |"
             + " chosen |" * choose,
             "|---|---|---|---|---|---|---|" + "---|" * choose]
    for p in points:
        mark = (" yes |" if chosen[p.variant] == p.scale else "  |") if choose else ""
        lines.append(f"| {p.variant} | {p.scale:g} | {p.n} | {design_text(p.vs_baseline)} | {p.diff:+.2f} | "
                     f"{fmt_ci(p.vs_baseline.ci)} | {fmt_num(p.share * 100, '.2f')} |{mark}")
    if not choose:
        return lines
    return lines + ["", *[f"- **{v}**: chosen scale " + (f"{s:g}" if s is not None else
                                                         f"none (no scale reaches {MIN_SHARE:.0%})")
                          for v, s in chosen.items()]]


def markdown(points: list[DosePoint], experiment: str, choose: bool = True) -> str:
    """reports/<experiment>/dose_response.md."""
    return "\n".join([f"# {experiment}: dose-response", "", *section(points, choose), "",
                      "![dose-response](dose_response.png)"]) + "\n"
