"""How many seeds a grid needs, from a pilot's runs: per row against the baseline, the spread of the paired per-seed
differences of top-1, its upper one-sided confidence bound, and the seeds with which a paired t-test at alpha / m
(Holm's strictest step, m: the size of the comparison's family) detects a given difference with 80 % power.

The plan uses the bound, not the pilot's spread itself: with a few seeds the measured spread is below the true one
about half the time, and a grid planned on it then misses what it was sized to detect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import stdev
from typing import Callable, Optional

from recondec.tracking.comparisons import ALPHA, compare, family_of, plan_families
from recondec.tracking.runs import BASELINE, CLASSIFIER, ordered
from recondec.tracking.stats import (
    EQUIVALENCE_MARGIN,
    PLANNING_CONFIDENCE,
    POWER,
    sd_upper_bound,
    seeds_for_mde,
    seeds_for_power,
)

MOST_SEEDS = 1000  # a plan beyond this is a sign the comparison cannot be made with seeds


@dataclass
class PlanRow:
    row: str
    n: int                       # paired seeds of the pilot
    sd: float                    # standard deviation of their per-seed differences (NaN from fewer than 2)
    upper: float                 # its upper one-sided PLANNING_CONFIDENCE bound
    m: int                       # the comparison's family size
    on_sd: Optional[int]         # seeds needed, planned on sd (None: more than MOST_SEEDS, or no spread)
    on_upper: Optional[int]      # seeds needed, planned on the bound


def _or_none(planner: Callable[..., int], *args) -> Optional[int]:
    """The planner's seeds, or None when there is no spread to plan on or more than MOST_SEEDS are needed."""
    try:
        return planner(*args)
    except ValueError:
        return None


def plan(table, metric: str, registered: Optional[dict], mde: float = EQUIVALENCE_MARGIN,
         family_size: Optional[int] = None) -> list[PlanRow]:
    """One PlanRow per row with `metric` (n = 0 when none of its seeds pairs with the baseline's). m is each row's
    family size under the pilot's pre-registration, or `family_size` when given (a dose curve's runs carry none:
    the grid's family is what its Holm correction will be)."""
    if metric not in table.get(BASELINE, {}):
        return []
    planned = plan_families(table, registered)
    rows = []
    for row in ordered(table):
        if row in (BASELINE, CLASSIFIER) or metric not in table[row]:
            continue
        c = compare(table[row][metric], table[BASELINE][metric])
        diffs = [table[row][metric].by_seed[s] - table[BASELINE][metric].by_seed[s] for s in c.paired_seeds]
        sd = stdev(diffs) if len(diffs) > 1 else math.nan
        family = family_of(planned, row)
        m = family_size or (len(family.pairs) if family else 1)
        alpha = ALPHA / m
        rows.append(PlanRow(row, len(diffs), sd, sd_upper_bound(sd, len(diffs)), m,
                            _or_none(seeds_for_power, sd, mde, alpha, POWER, MOST_SEEDS),
                            _or_none(seeds_for_mde, sd, len(diffs), alpha, mde, POWER, MOST_SEEDS)))
    return rows


def _seeds(n: Optional[int], sd: float) -> str:
    return "-" if math.isnan(sd) else f"> {MOST_SEEDS}" if n is None else str(n)


def markdown(rows: list[PlanRow], experiment: str, metric: str, mde: float) -> str:
    lines = [f"# {experiment}: power plan", "",
             f"Seeds a paired grid needs to detect a true difference of {mde:g} point(s) of {metric} against the "
             f"baseline with {POWER:.0%} power, two-sided at alpha {ALPHA:g} / m (Holm's strictest step; m: the "
             f"comparison's family size), from this pilot's paired per-seed differences. Planned on the upper one-"
             f"sided {PLANNING_CONFIDENCE:.0%} confidence bound of their standard deviation (chi-square: a few seeds' "
             "spread is often below the true one); the plan on the spread itself is shown beside it.", "",
             "| row | paired seeds | sd of differences | upper bound | m | seeds (on the sd) | seeds (on the bound) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sd = "-" if math.isnan(r.sd) else f"{r.sd:.2f}"
        upper = "-" if math.isnan(r.upper) else f"{r.upper:.2f}"
        lines.append(f"| {r.row} | {r.n} | {sd} | {upper} | {r.m} | {_seeds(r.on_sd, r.sd)} | "
                     f"{_seeds(r.on_upper, r.upper)} |")
    if any(math.isnan(r.sd) for r in rows):
        lines += ["", "-: fewer than 2 of the row's seeds pair with the baseline's runs (another start or labelled "
                  "subset): no paired spread to plan on."]
    return "\n".join(lines) + "\n"
