"""The markdown of reports/<experiment>/report.md: the rows' numbers over seeds, the diagnostics that say whether the
unsupervised objective acted, and one table of comparisons per Holm family, each with its verdicts.

The numbers reported are the test set's (``test/...``, read once at the end of each run); runs without a test set
(an image folder without ``test/``) are reported on validation, and the report says so.
"""
from __future__ import annotations

import math
from typing import Optional

from recondec.tracking.comparisons import (
    AGAINST_START,
    EXPLORATORY,
    WITH_UNLABELLED,
    Comparison,
    Family,
    against_text,
    design_text,
    margin_of,
    parse_entry,
    verdict,
)
from recondec.tracking.runs import BASELINE, Stat, ordered, reported_split, seed_order
from recondec.tracking.stats import CONFIDENCE, EQUIVALENCE_MARGIN, POWER

# single centre crop, then 10 crops (trainer.ten_crop) where the runs have them; prefixed with the split reported
ACCURACY = {"top1": "top-1 (%)", "top5": "top-5 (%)", "top1_10crop": "top-1 10-crop (%)",
            "top5_10crop": "top-5 10-crop (%)"}
OTHER = {"mse/image": ("image MSE", 4), "psnr/image": ("image PSNR (dB)", 2)}
SPEED = {"train/img_per_s": ("img/s", 0)}
DIAGNOSTICS = {"grad_share/recon/first_conv": "recon grad share, first conv (%)",
               "grad_share/recon/last_conv": "recon grad share, last conv (%)",
               "run_median/grad_share/recon/first_conv": "median over the run, first conv (%)",
               "encoder/rel_change": "encoder change (%)"}


def fmt_ci(ci) -> str:
    return "-" if ci[0] is None or math.isnan(ci[0]) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def fmt_num(x: Optional[float], spec: str = ".3g") -> str:
    return "-" if x is None or math.isnan(x) else format(x, spec)


def target_note(target: Optional[dict]) -> str:
    """What the baseline's mean says about the recipe: "target >= 84 %: reached" (empty when no target is set)."""
    if target is None:
        return ""
    return f"target >= {target['target']:g} %: {'reached' if target['reached'] else 'not reached'}"


# ---------------------------------------------------------------------------------------------- rows
def table_lines(table, columns: list[tuple[str, str, int, float]], notes: Optional[dict] = None) -> list[str]:
    """One line per row; columns: (metric, header, digits, scale); notes: (row, metric) -> text after the cell."""
    notes = notes or {}
    head = ["row", "seeds", *[h for _, h, _, _ in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ordered(table):
        s = table[row]
        n = max((st.n for st in s.values()), default=0)
        cells = [s[k].fmt(d, scale) if k in s else "-" for k, _, d, scale in columns]
        cells = [f"{cell}; {notes[row, k]}" if (row, k) in notes else cell
                 for cell, (k, _, _, _) in zip(cells, columns, strict=True)]
        lines.append("| " + " | ".join([row, str(n), *cells]) + " |")
    return lines


def result_columns(table) -> list[tuple[str, str, int, float]]:
    split = reported_split(table)
    present = {k for s in table.values() for k in s}
    columns = [(f"{split}/{k}", h, 2, 1.0) for k, h in ACCURACY.items() if f"{split}/{k}" in present]
    columns += [(f"{split}/{k}", h, d, 1.0) for k, (h, d) in OTHER.items() if f"{split}/{k}" in present]
    return columns + [(k, h, d, 1.0) for k, (h, d) in SPEED.items() if k in present]


def diagnostic_columns(table) -> list[tuple[str, str, int, float]]:
    present = {k for s in table.values() for k in s}
    return [(k, h, 2, 100.0) for k, h in DIAGNOSTICS.items() if k in present]


# ---------------------------------------------------------------------------------------------- comparisons
def comparison_lines(comps: dict[str, Comparison]) -> list[str]:
    lines = ["| comparison | test used | Δ top-1 | 95 % CI | p | Holm p | MDE (80 % power) | "
             f"TOST p (±{margin_of(comps.values()):g}) | Welch Δ, 95 % CI | Welch p |", "|" + "---|" * 10]
    for name, c in comps.items():
        lines.append(f"| {name} | {design_text(c)} | {c.diff:+.2f} | {fmt_ci(c.ci)} | {fmt_num(c.p)} | "
                     f"{fmt_num(c.p_holm)} | {fmt_num(c.mde, '.2f')} | {fmt_num(c.equivalence.p)} | "
                     f"{c.welch.diff:+.2f} {fmt_ci(c.welch.ci)} | {fmt_num(c.welch.p)} |")
    verdicts = [f"- **{parse_entry(name)[0]}** {verdict(c, against=against_text(*parse_entry(name)))}."
                for name, c in comps.items()]
    return [*lines, "", "Verdicts:", "", *verdicts]


def family_intro(family: Family) -> str:
    m = len(family.comparisons)
    if family.preregistered:
        return (f"Pre-registered family **{family.name}** (named in the preset before its grid ran): Holm over its "
                f"{m} comparison(s) only.")
    if family.name == EXPLORATORY:
        return (f"**Exploratory** (not pre-registered): the comparisons no pre-registered family names, corrected "
                f"among themselves (Holm over these {m}); leads for a next pre-registered grid, not findings.")
    if family.name == AGAINST_START:
        return ("The fine-tuned baseline against the classifier every arm starts from (not about the decoders: does "
                "the fine-tuning keep its start?).")
    if family.name == WITH_UNLABELLED:
        return (f"Top-1 with the unlabelled images against the same variant without them (not pre-registered; Holm "
                f"over these {m}).")
    return f"Top-1 against the baseline (not pre-registered; Holm over the {m} rows compared)."


def family_lines(family: Family) -> list[str]:
    lines = ["", family_intro(family)]
    if family.missing:
        lines.append(f"Not compared (a row has no runs with top-1): {', '.join(family.missing)}.")
    return [*lines, "", *comparison_lines(family.comparisons)] if family.comparisons else lines


def methods_text(margin: float = EQUIVALENCE_MARGIN) -> str:
    return (f"Top-1 comparisons ({CONFIDENCE:.0%} confidence). The test used: paired over the seeds when they pair "
            "the runs, else Welch's; Holm: adjusted within the comparison's family; MDE: the true difference that "
            f"test detects with {POWER:.0%} power at alpha 0.05 / the family's size; TOST: two one-sided tests that "
            f"the difference lies within ±{margin:g} point{'s' * (margin != 1)} (shown equivalent when its p < 0.05).")


# ---------------------------------------------------------------------------------------------- the report
def markdown(table, experiment: str, found: list[Family], target: Optional[dict] = None) -> str:
    split = reported_split(table)
    seeds = sorted({s for stats in table.values() for s in stats.get(f"{split}/top1", Stat()).by_seed},
                   key=seed_order)
    which = ("the test set, evaluated once at the end of each run" if split == "test" else
             "the validation set: these runs have no test set")
    notes = {(BASELINE, f"{split}/top1"): target_note(target)} if target else {}
    lines = [f"# {experiment}", "", f"Numbers from {which}. Mean ± std over seeds ({', '.join(seeds)}); one finished "
             "run per row and seed.", "", *table_lines(table, result_columns(table), notes)]
    diagnostics = diagnostic_columns(table)
    if diagnostics:
        lines += ["", "Did the unsupervised objective act? The reconstruction terms' gradient at the encoder's first "
                  "and last conv, as a share of the cross-entropy's, and the encoder's mean relative weight change "
                  "from the start of the run (at the last validation); where the runs have it, the first-conv share's "
                  "median over every validation of the run.", "", *table_lines(table, diagnostics)]
    if any(f.comparisons for f in found):
        lines += ["", methods_text(margin_of(c for f in found for c in f.comparisons.values()))]
        for family in found:
            lines += family_lines(family)
    return "\n".join(lines) + "\n"


def provenance(runs) -> str:
    """When, with what code and on what machine the runs were made, and the grid's wall time."""
    from datetime import datetime, timezone

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time or r.info.start_time for r in runs]
    busy = sum(e - b for b, e in zip(starts, ends, strict=True)) / 60_000
    tags = [r.data.tags for r in runs]

    def values(key: str, width: Optional[int] = None) -> str:
        return ", ".join(sorted({t.get(key, "?")[:width] for t in tags}))

    return (f"{len(runs)} runs from {day(min(starts))} to {day(max(ends))}: {(max(ends) - min(starts)) / 60_000:.0f} "
            f"min from the first start to the last end, {busy:.0f} min of runs. Commit "
            f"{values('mlflow.source.git.commit', 7)}; torch {values('torch')}; {values('device')}.")


def commands(experiment: str, multirun: bool = True) -> str:
    from recondec.config import CONF_DIR

    if (CONF_DIR / "experiment" / f"{experiment}.yaml").is_file():
        return (f"Reproduce: `python src/main.py {'-m ' if multirun else ''}experiment={experiment}`, then "
                f"`python src/report.py {experiment}`.")
    return f"Report: `python src/report.py {experiment}` (the runs of the MLflow experiment {experiment!r})."
