"""docs/results.md from every reports/<experiment>/: what the suite says about the paper's claim in one table and
one plot, then each experiment's report.

Reads each folder's comparisons.json, whichever version of the report wrote it (older ones lack the families,
the equivalence tests and the per-seed rows, and wrote NaN where newer ones write null). What no grid here can say,
whatever its numbers, is prose in docs/results_scope.md, included verbatim.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from recondec.config import REPO_ROOT
from recondec.tracking.comparisons import ALPHA
from recondec.tracking.runs import BASELINE, CLASSIFIER
from recondec.tracking.tables import fmt_ci, fmt_num

SCOPE_FILE = REPO_ROOT / "docs" / "results_scope.md"
# the page's order: the label budgets from fewest labels, then the rest; any other report follows by name
DOCS_ORDER = ["lowlabel_fmnist", "lowlabel_fmnist_k100", "semi_fmnist", "finetune_fmnist", "recon_fmnist",
              "recon_fmnist_resnet"]
# the label budget and start of each experiment the across-budget plot shows
BUDGETS = {"lowlabel_fmnist": ("10 per class", "from scratch"),
           "lowlabel_fmnist_k100": ("100 per class", "from scratch"),
           "finetune_fmnist": ("all 5,500 per class", "fine-tuned")}


def _absent(x) -> bool:
    return x is None or x != x  # null in new files, NaN in old ones


def _is_pilot(folder: Path) -> bool:
    """A report on validation numbers (a pilot that chose settings: trainer.test=false) belongs with docs/recipe.md,
    not among the results."""
    path = folder / "comparisons.json"
    return path.is_file() and json.loads(path.read_text()).get("split") == "val"


def _reports(reports_dir: Path) -> list[Path]:
    found = {p.parent.name: p.parent for p in reports_dir.glob("*/report.md") if not _is_pilot(p.parent)}
    return [found[n] for n in DOCS_ORDER if n in found] + [found[n] for n in sorted(found) if n not in DOCS_ORDER]


def _comparisons(folder: Path) -> Optional[list[dict]]:
    path = folder / "comparisons.json"
    return json.loads(path.read_text())["comparisons"] if path.is_file() else None


def _significant(c: dict) -> bool:
    return not _absent(c["p_holm"]) and c["p_holm"] < ALPHA


def _outcome(c: dict) -> str:
    """The verdict in a few words, with the equivalence test where the comparison has one."""
    if _significant(c):
        return "better" if c["diff"] > 0 else "worse"
    tost = c.get("tost")
    if tost is None or _absent(tost["p"]):
        return "no difference detected"
    shown = "equivalent" if tost["equivalent"] else "not shown equivalent"
    return f"no difference detected; {shown} within ±{tost['margin']:g}"


def _family(c: dict) -> str:
    if "family_name" not in c:
        return "-"
    return f"{c['family_name']} ({'pre-registered' if c['preregistered'] else 'not pre-registered'})"


def _claim_row(folder: Path, c: dict) -> str:
    against = "" if c["against"] == BASELINE else f" (vs {c['against']})"
    tost = f"{fmt_num(c['tost']['p'])} (±{c['tost']['margin']:g})" if "tost" in c else fmt_num(None)
    return (f"| {folder.name} | {c['row']}{against} | {c['diff']:+.2f} | {fmt_ci(c['ci'])} | {c['design']}, "
            f"{c['n']} | {_family(c)} | {fmt_num(c['p_holm'])} | {fmt_num(c['mde'], '.2f')} | {tost} | "
            f"{_outcome(c)} |")


def _power_line(folder: Path, comparisons: list[dict]) -> Optional[str]:
    mdes = sorted(c["mde"] for c in comparisons if c["against"] == BASELINE and not _absent(c["mde"]))
    if not mdes:
        return None
    regime = ", ".join(BUDGETS.get(folder.name, ()))
    return (f"- {folder.name}{f' ({regime})' if regime else ''}: its rows' MDE against the baseline (80 % power) runs "
            f"from {mdes[0]:.2f} to {mdes[-1]:.2f} points of top-1; smaller true differences they can miss.")


def _named(folder: Path, c: dict) -> str:
    exploratory = ", not pre-registered" if c.get("preregistered") is False else ""
    return f"{c['row']} in {folder.name} ({c['diff']:+.2f} points{exploratory})"


def claim_lines(folders: list[Path], scope: str) -> list[str]:
    """Per experiment and comparison: the difference, its interval, its family, Holm's p, what could be missed and
    whether it is shown to be too small to matter; then what no grid here can say (`scope`)."""
    lines = ["| experiment | row | Δ top-1 (points) | 95 % CI | test | family | Holm p | MDE (80 %) | "
             "TOST p (± margin) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    helped, hurt, power = [], [], []
    for folder in folders:
        comparisons = _comparisons(folder)
        if comparisons is None:
            continue
        comparisons = [c for c in comparisons if c["against"] != CLASSIFIER]  # the fine-tuning's, not the claim's
        power += [line for line in [_power_line(folder, comparisons)] if line]
        helped += [_named(folder, c) for c in comparisons if _significant(c) and c["diff"] > 0]
        hurt += [_named(folder, c) for c in comparisons if _significant(c) and c["diff"] <= 0]
        lines += [_claim_row(folder, c) for c in comparisons]
    if len(lines) == 2:
        return ["No report yet: run a study (README, \"Studies\") and `python src/report.py <experiment>`."]
    summary = [f"Better than its reference after Holm's correction: {', '.join(helped) or 'none'}.",
               f"Worse: {', '.join(hurt) or 'none'}. Every other row: no difference detected, with the MDE saying "
               "how large a difference its seeds could have missed.", "", "What each grid could have seen:", "",
               *power, "", scope]
    return [*summary, "", *lines]


def label_budgets(folders: list[Path]) -> list[tuple[str, dict[str, dict]]]:
    """(budget label, row -> comparison against the baseline) per label-budget experiment with a report."""
    found = []
    for folder in folders:
        comparisons = _comparisons(folder) if folder.name in BUDGETS else None
        if comparisons is not None:
            label = "\n".join(BUDGETS[folder.name])
            found.append((label, {c["row"]: c for c in comparisons if c["against"] == BASELINE}))
    return found


def report_lines(folder: Path, rel: str) -> list[str]:
    """One experiment's report.md a heading level down, and its figures report.md does not show."""
    body = (folder / "report.md").read_text().splitlines()
    here = f"{rel}/{folder.name}"  # a report's own figures, as docs/ reaches them
    body = [re.sub(r"\]\((?:\./)?([^/)\s]+\.png)\)", lambda m: f"]({here}/{m[1]})", line) for line in body]
    lines = ["", f"## {folder.name}", "", f"Folder: [`reports/{folder.name}/`]({here}/report.md).",
             *[("#" + line if line.startswith("#") else line) for line in body[1:]]]
    return lines + [f"![{png.stem}]({here}/{png.name})" for png in sorted(folder.glob("*.png"))
                    if f"/{png.name})" not in "\n".join(body)]


def write_results_page(reports_dir: Path, page: Path, scope_file: Path = SCOPE_FILE) -> Path:
    """docs/results.md from every reports/<experiment>/ (and reports/label_budgets.png beside them)."""
    from recondec.tracking.plots import plot_label_budgets, save

    folders = _reports(reports_dir)
    rel = os.path.relpath(reports_dir, page.parent)
    lines = ["# Results", "", "Generated by `python src/report.py --docs` from `reports/<experiment>/`, each written "
             "by `python src/report.py <experiment>` from the runs of one MLflow experiment; not edited by hand. "
             "Every number is a test-set number (validation selected everything), and every table says when, with "
             "what commit and torch, and on what machine its runs were made.", "",
             "## What the suite says about the claim", "", *claim_lines(folders, scope_file.read_text().strip())]
    budgets = label_budgets(folders)
    if budgets:
        save(plot_label_budgets(budgets), reports_dir / "label_budgets.png")
        lines += ["", f"![Δ top-1 per label budget]({rel}/label_budgets.png)"]
    for folder in folders:
        lines += report_lines(folder, rel)
    text = "\n".join(lines) + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return page
