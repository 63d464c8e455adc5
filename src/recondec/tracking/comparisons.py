"""Top-1 of one row against a reference row, as statistics, and the Holm families the comparisons are corrected in.

When the seeds pair the runs (equal ``pairing`` tags: the same start, labelled images and data order) the verdict
uses the paired t-test on the per-seed differences, else Welch's test. Each family is corrected with Holm's method
over its own comparisons, and each comparison reports its minimum detectable effect (MDE) at 80 % power at
alpha / (family size), so that "no difference detected" says what the seeds could have missed, and whether two one-
sided tests show the difference to lie within +- the margin too small to matter (the preset's
report.equivalence_margin, 1 point unless it says otherwise).

Families: a preset that pre-registered its questions (tag ``preregistered``: family -> "<row>" or "<row> vs <ref>")
gets one family per question; every comparison it did not name (each other row against the baseline, each
"<variant>+unlabelled" row against "<variant>") is exploratory, corrected in one family of its own. Without the tag
the rows against the baseline are one family and the unlabelled rows against their variants another, none of them
pre-registered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

from recondec.tracking.runs import (
    BASELINE,
    CLASSIFIER,
    UNLABELLED,
    Stat,
    ordered,
    seed_order,
    split_scale,
    without_unlabelled,
)
from recondec.tracking.stats import (
    CONFIDENCE,
    EQUIVALENCE_MARGIN,
    POWER,
    Equivalence,
    TestResult,
    holm,
    minimum_detectable_effect,
    paired_test,
    tost,
    welch_test,
)

ALPHA = 1 - CONFIDENCE
EXPLORATORY = "exploratory"
AGAINST_BASELINE = "against the baseline"
WITH_UNLABELLED = "with against without the unlabelled images"
AGAINST_START = "the fine-tuned baseline against the classifier it starts from"


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
    paired_seeds: list[str]      # the seeds whose runs pair: the paired test's
    equivalence: Equivalence     # TOST of the same test against +- the margin
    p_holm: float = math.nan     # set by finish_family() across the family's comparisons
    mde: float = math.nan        # minimum detectable effect at POWER, at the family's alpha
    family: list[str] = field(default_factory=list)  # the comparisons corrected together (Holm's m = its length)

    @property
    def diff(self) -> float:
        return self.test.diff

    @property
    def ci(self) -> tuple[float, float]:
        return self.test.ci

    @property
    def p(self) -> float:
        return self.test.p


def compare(row: Stat, ref: Stat, margin: float = EQUIVALENCE_MARGIN) -> Comparison:
    welch = welch_test(row.values, ref.values)
    shared = sorted(set(row.by_seed) & set(ref.by_seed), key=seed_order)
    pairs = [s for s in shared if row.pairing.get(s) and row.pairing.get(s) == ref.pairing.get(s)]
    unpaired = [s for s in shared if s not in pairs]
    paired = paired_test([row.by_seed[s] - ref.by_seed[s] for s in pairs]) if pairs else None
    design = "paired" if paired is not None and len(pairs) >= 2 and not unpaired else "unpaired"
    used = paired if design == "paired" else welch
    return Comparison(design, used, welch, paired, row.n, ref.n, unpaired, pairs, tost(used, margin))


def finish_family(comparisons: dict[str, Comparison]) -> None:
    """Holm's adjustment of the p-values the verdicts use, and each comparison's MDE at 80 % power at alpha / m
    (Holm's strictest step: what every test can detect whatever the others do), in place."""
    adjusted = holm({name: c.p for name, c in comparisons.items()})
    m = max(1, len(comparisons))
    for name, c in comparisons.items():
        c.p_holm, c.family = adjusted[name], list(comparisons)
        c.mde = minimum_detectable_effect(c.test.se, c.test.df, ALPHA / m)


# ---------------------------------------------------------------------------------------------- families
def entry(row: str, ref: str) -> str:
    """A comparison in the pre-registration's notation: "<row>" against the baseline, else "<row> vs <ref>"."""
    return row if ref == BASELINE else f"{row} vs {ref}"


def parse_entry(text: str) -> tuple[str, str]:
    """"<row> vs <ref>" (or "<row>": against the baseline), a scale written as the rows write it (10.0 -> 10)."""
    row, _, ref = text.partition(" vs ")
    return _canonical(row.strip()), _canonical(ref.strip() or BASELINE)


def _canonical(row: str) -> str:
    name, scale = split_scale(row)
    # a run at scale 1 carries no loss_scale tag, so its row has no "@": "swwae_all@1" names the row "swwae_all"
    return name if scale in (None, 1.0) else f"{name}@{scale:g}"


@dataclass
class Family:
    """Comparisons corrected together: a pre-registered question, or the exploratory rest."""
    name: str
    preregistered: bool
    pairs: list[tuple[str, str]]                          # (row, reference row), as named
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # entry -> comparison, for the pairs with data
    missing: list[str] = field(default_factory=list)      # named comparisons a row of which has no runs


def against_baseline(table) -> list[tuple[str, str]]:
    return [(row, BASELINE) for row in ordered(table) if row not in (BASELINE, CLASSIFIER)]


def against_start(table) -> list[tuple[str, str]]:
    """The baseline against the classifier it fine-tunes, where the grid starts from one: does fine-tuning keep
    (or gain on) its start? A question of its own, never in the decoders' family."""
    return [(BASELINE, CLASSIFIER)] if CLASSIFIER in table and BASELINE in table else []


def against_no_unlabelled(table) -> list[tuple[str, str]]:
    """Each "<variant>+unlabelled" row against the same variant without the unlabelled images, where both ran."""
    return [(row, without_unlabelled(row)) for row in ordered(table)
            if UNLABELLED in row and without_unlabelled(row) in table]


def plan_families(table, registered: Optional[dict[str, list[str]]]) -> list[Family]:
    """The families the report corrects in (before any test is run): see the module's docstring."""
    start = Family(AGAINST_START, False, against_start(table))
    if registered is None:
        return [Family(AGAINST_BASELINE, False, against_baseline(table)),
                Family(WITH_UNLABELLED, False, against_no_unlabelled(table)), start]
    named = [Family(name, True, [parse_entry(e) for e in entries]) for name, entries in registered.items()]
    taken = {pair for family in named for pair in family.pairs}
    rest = [pair for pair in against_baseline(table) + against_no_unlabelled(table) if pair not in taken]
    return [*named, Family(EXPLORATORY, False, rest), start]


def run_family(table, family: Family, metric: str, margin: float = EQUIVALENCE_MARGIN) -> Family:
    """Each named pair's comparison on `metric` where both rows have it (TOST at +- `margin`), corrected together,
    in place."""
    for row, ref in family.pairs:
        if metric in table.get(row, {}) and metric in table.get(ref, {}):
            family.comparisons[entry(row, ref)] = compare(table[row][metric], table[ref][metric], margin)
        else:
            family.missing.append(entry(row, ref))
    finish_family(family.comparisons)
    return family


def families(table, registered: Optional[dict[str, list[str]]], metric: str,
             margin: float = EQUIVALENCE_MARGIN) -> list[Family]:
    """Every family with at least one pair named, its comparisons made and corrected."""
    return [run_family(table, f, metric, margin) for f in plan_families(table, registered) if f.pairs]


def margin_of(comparisons: Iterable[Comparison]) -> float:
    """The TOST margin the comparisons used (one per report: the preset's)."""
    return next((c.equivalence.margin for c in comparisons), EQUIVALENCE_MARGIN)


def family_of(found: list[Family], row: str, ref: str = BASELINE) -> Optional[Family]:
    """The first family that compares `row` with `ref`."""
    return next((f for f in found if (row, ref) in f.pairs), None)


# ---------------------------------------------------------------------------------------------- verdicts
def against_text(row: str, ref: str) -> str:
    """The reference row as a verdict's sentence names it."""
    if ref == BASELINE:
        return "the baseline"
    if UNLABELLED in row and ref == without_unlabelled(row):
        return "the variant without unlabelled images"
    if ref == CLASSIFIER:
        return "the classifier it starts from"
    return ref


def design_text(c: Comparison) -> str:
    return f"paired over {c.test.n} seeds" if c.design == "paired" else f"Welch, {c.n_row} vs {c.n_ref} seeds"


def equivalence_text(c: Comparison) -> str:
    e = c.equivalence
    shown = "equivalent" if e.equivalent else "not shown equivalent"
    return f"{shown} within ±{e.margin:g} point{'s' * (e.margin != 1)} (TOST p = {e.p:.3g})"


def verdict(c: Comparison, what: str = "top-1", against: str = "the baseline") -> str:
    """The sentence the numbers produce (difference in points of `what`)."""
    if c.test.n < 2 or c.n_ref < 2 or math.isnan(c.test.p):
        return f"{c.diff:+.2f} points of {what} from one seed: the noise is unknown, no verdict"
    lo, hi = c.ci
    numbers = (f"{c.diff:+.2f} points of {what}, {CONFIDENCE:.0%} CI [{lo:+.2f}, {hi:+.2f}] "
               f"({design_text(c)}), p = {c.p:.3g}, Holm p = {c.p_holm:.3g}")
    if c.unpaired_seeds:
        numbers += (f"; the runs of seed(s) {', '.join(c.unpaired_seeds)} do not pair (another start or labelled "
                    "subset), so the test is unpaired")
    if c.p_holm < ALPHA:
        return f"{'beats' if c.diff > 0 else 'is worse than'} {against}: {numbers}"
    corrected = " after Holm's correction" if c.p < ALPHA else ""
    m = max(1, len(c.family))
    return (f"no difference from {against} detected{corrected}: {numbers}; this test finds a true difference of "
            f"{c.mde:.2f} points with {POWER:.0%} power (alpha {ALPHA:g}/{m}), smaller ones it can miss; "
            f"{equivalence_text(c)}")
