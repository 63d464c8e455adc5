"""What reports/<experiment>/comparisons.json holds, for docs/results.md, the label-budget plot and anyone checking
the numbers: every row's top-1 per seed, and every comparison with the family it was corrected in.

    {"experiment": str, "split": "test" | "val", "labels_per_class": str | null,
     "preregistered": {family: [entry, ...]} | null,      # the runs' tag, as the preset wrote it
     "baseline_target": {"target": %, "mean": %, "reached": bool} | null,
     "rows": [{"row", "split", "n", "per_seed": {seed: top-1 %}, "mean"}],
     "families": [{"name", "preregistered": bool, "comparisons": [entry, ...], "missing": [entry, ...]}],
     "comparisons": [{"row", "against", "design": "paired" | "unpaired", "n", "seeds": [seed, ...] | null,
                      "diff", "ci": [low, high], "p", "p_holm", "mde", "family": [entry, ...], "family_name",
                      "preregistered": bool, "tost": {"margin", "p", "equivalent": bool},
                      "welch": {"diff", "ci", "p"}, "verdict": str}]}

An entry names a comparison as the pre-registration does: "<row>" (against the baseline) or "<row> vs <reference>".
"p" is recomputed from "rows": paired, scipy.stats.ttest_rel over the comparison's "seeds" of both rows; unpaired
("seeds": null), scipy.stats.ttest_ind(every seed of the row, every seed of the reference, equal_var=False). Numbers
that do not exist (no noise from one seed) are null.
"""
from __future__ import annotations

import math
from typing import Optional

from recondec.tracking.comparisons import Comparison, Family, against_text, parse_entry, verdict
from recondec.tracking.runs import BASELINE, ordered, seed_order


def _number(x: float) -> Optional[float]:
    """JSON has no NaN: a number that does not exist is null."""
    return None if x is None or math.isnan(x) else float(x)


def _interval(ci: tuple[float, float]) -> list[Optional[float]]:
    return [_number(ci[0]), _number(ci[1])]


def row_records(table, metric: str) -> list[dict]:
    split = metric.split("/")[0]
    return [{"row": row, "split": split, "n": table[row][metric].n,
             "per_seed": {seed: _number(table[row][metric].by_seed[seed])
                          for seed in sorted(table[row][metric].by_seed, key=seed_order)},
             "mean": _number(table[row][metric].mean)} for row in ordered(table) if metric in table[row]]


def comparison_record(name: str, c: Comparison, family: Family) -> dict:
    row, ref = parse_entry(name)
    e = c.equivalence
    return {"row": row, "against": ref, "design": c.design, "n": c.test.n,
            "seeds": list(c.paired_seeds) if c.design == "paired" else None,
            "diff": _number(c.diff), "ci": _interval(c.ci), "p": _number(c.p), "p_holm": _number(c.p_holm),
            "mde": _number(c.mde), "family": list(c.family), "family_name": family.name,
            "preregistered": family.preregistered,
            "tost": {"margin": e.margin, "p": _number(e.p), "equivalent": e.equivalent},
            "welch": {"diff": _number(c.welch.diff), "ci": _interval(c.welch.ci), "p": _number(c.welch.p)},
            "verdict": verdict(c, against=against_text(row, ref))}


def family_record(family: Family) -> dict:
    return {"name": family.name, "preregistered": family.preregistered, "comparisons": list(family.comparisons),
            "missing": list(family.missing)}


def baseline_target_record(table, metric: str, target: Optional[float]) -> Optional[dict]:
    """The baseline's mean against the top-1 the preset says a competent recipe reaches, when it says one."""
    if target is None or metric not in table.get(BASELINE, {}):
        return None
    m = table[BASELINE][metric].mean
    return {"target": target, "mean": _number(m), "reached": m >= target}


def records(experiment: str, table, metric: str, found: list[Family], registered: Optional[dict],
            target: Optional[float], labels_per_class: Optional[str]) -> dict:
    return {"experiment": experiment, "split": metric.split("/")[0], "labels_per_class": labels_per_class,
            "preregistered": registered, "baseline_target": baseline_target_record(table, metric, target),
            "rows": row_records(table, metric), "families": [family_record(f) for f in found],
            "comparisons": [comparison_record(name, c, f) for f in found for name, c in f.comparisons.items()]}
