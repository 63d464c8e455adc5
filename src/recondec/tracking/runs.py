"""The runs a report reads from MLflow, and their numbers per row and seed.

A run's row is its variant, "<variant>+unlabelled" for semi-supervised runs (tag ``row``), and "<row>@<scale>" when
its reconstruction weights were multiplied (tag ``loss_scale``): runs at different loss weights are different arms.
One run per (row, seed) counts: when a grid was run twice into one experiment, the newest finished run of each pair
is used (``--sweep`` restricts the report to one multirun folder).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import mean, stdev
from typing import Optional

import mlflow

from recondec.config import variant_names
from recondec.tracking.stats import CONFIDENCE, EQUIVALENCE_MARGIN

BASELINE = "baseline"
CLASSIFIER = "classifier (start)"  # the cached classifier a fine-tuning grid starts from (its own run)
UNLABELLED = "+unlabelled"
SUMMARY_TAG = "summary"
ORIGIN_TAG = "imported_from"  # an imported run's id in the store it was first made in (tracking/carry.py)
VARIANT_ORDER = variant_names()
# the metrics beyond val/ and test/ that a report shows (throughput, and whether the decoders' objective acted)
SPEED_METRICS = ("train/img_per_s",)
DIAGNOSTIC_METRICS = ("grad_share/recon/first_conv", "grad_share/recon/last_conv",
                      "run_median/grad_share/recon/first_conv", "encoder/rel_change")
MEDIAN_SHARE = "run_median/grad_share/recon/first_conv"


class ReportError(ValueError):
    """A report that cannot be made from what is stored (no such experiment, no runs, runs that disagree): a
    one-line message for the command line, not a bug."""


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


# ---------------------------------------------------------------------------------------------- row names
def row_name(run) -> str:
    """A run's row: its tag "row" (else its variant), with "@<loss scale>" when the run multiplied its
    reconstruction weights."""
    tags = run.data.tags
    row = tags.get("row", tags["variant"])
    return f"{row}@{float(tags['loss_scale']):g}" if "loss_scale" in tags else row


def split_scale(row: str) -> tuple[str, Optional[float]]:
    """"swwae_all+unlabelled@10" -> ("swwae_all+unlabelled", 10.0); a row without "@" has no scale (None)."""
    name, at, scale = row.partition("@")
    return name, (float(scale) if at else None)


def without_unlabelled(row: str) -> str:
    """The row the same variant at the same loss scale makes without the unlabelled images."""
    return row.replace(UNLABELLED, "")


def seed_order(seed) -> tuple:
    """Seeds in numeric order ("2" before "10"), names (a run id where a run has no seed tag) after."""
    text = str(seed)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def ordered(rows) -> list[str]:
    """Rows in the paper's variant order, without the unlabelled images before with them, by loss scale."""
    def key(row: str):
        if row == CLASSIFIER:
            return (-1, "", False, 0.0, row)  # where every arm starts: first
        name, scale = split_scale(row)
        variant = name.split("+")[0]
        rank = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
        return (rank, variant, UNLABELLED in name, 1.0 if scale is None else scale, row)

    return sorted(rows, key=key)


# ---------------------------------------------------------------------------------------------- MLflow
def experiment_names(tracking_uri: str) -> list[str]:
    mlflow.set_tracking_uri(tracking_uri)
    return sorted(e.name for e in mlflow.search_experiments())


def require_experiment(tracking_uri: str, experiment: str) -> None:
    """Raise a ReportError naming the experiments that exist when `experiment` is not one of them."""
    names = experiment_names(tracking_uri)
    if experiment not in names:
        raise ReportError(f"no MLflow experiment named {experiment!r} in {tracking_uri}; the experiments there: "
                          f"{', '.join(names) or 'none'}")


def finished_runs(tracking_uri: str, experiment: str, sweep: Optional[str] = None) -> list:
    """The newest finished run per (row, seed) of `experiment` (of one sweep folder, if given); summary runs
    and the cached classifiers' runs are not variants."""
    require_experiment(tracking_uri, experiment)
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


def latest_study_run(tracking_uri: str, experiment: str):
    """The newest finished reconstruction-study parent run of `experiment`, or None."""
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.role = 'study' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _kept(key: str) -> bool:
    return key.startswith(("val/", "test/")) or key in SPEED_METRICS or key in DIAGNOSTIC_METRICS


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


def classifier_runs(tracking_uri: str, runs) -> dict[str, Optional[mlflow.entities.Run]]:
    """The classifier runs `runs` started from (tag ``classifier_run``): run id -> its run, or the run imported
    from it (tag ORIGIN_TAG: a later grid in a new store starts from cached classifiers whose runs an earlier store
    logged), None when the store holds neither. Seeds often share one classifier: each is fetched once."""
    client = mlflow.MlflowClient(tracking_uri)
    fetched: dict[str, Optional[mlflow.entities.Run]] = {}
    for run_id in sorted({r.data.tags["classifier_run"] for r in runs if "classifier_run" in r.data.tags}):
        try:
            fetched[run_id] = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            fetched[run_id] = _imported_from(client, run_id)
    return fetched


def _imported_from(client, run_id: str) -> Optional[mlflow.entities.Run]:
    """The run of this store that was imported from `run_id`, in any experiment; None if there is none."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, filter_string=f"tags.{ORIGIN_TAG} = '{run_id}'", max_results=1)
    return found[0] if found else None


def add_classifier_row(tracking_uri: str, runs, table: dict[str, dict[str, Stat]],
                       fetched: dict[str, Optional[mlflow.entities.Run]]) -> list[str]:
    """The row CLASSIFIER, in place: for each seed, the top-1 / top-5 of the classifier run that seed's baseline
    started from (tag ``classifier_run``), paired with that baseline (the same start); only on the splits the
    baseline reports, each measured on the same images (data.val_limit / data.test_limit), so that the row never
    decides the report's split nor compares two test sets. Returns what it left out, one line each (a classifier
    run the store does not hold, one without the split's numbers). `fetched`: classifier_runs' answer for `runs`
    (write_report writes the same classifier runs into runs.jsonl: one fetch serves both)."""
    started = {r.data.tags.get("seed", r.info.run_id): r for r in runs
               if row_name(r) == BASELINE and "classifier_run" in r.data.tags}
    splits = {key.split("/")[0] for key in table.get(BASELINE, {}) if key.endswith("/top1")}
    stats: dict[str, Stat] = {}
    left_out: list[str] = []
    for seed, run in started.items():
        run_id = run.data.tags["classifier_run"]
        classifier = fetched[run_id]
        if classifier is None:
            left_out.append(f"seed {seed}: its classifier's run {run_id} is not in {tracking_uri} "
                            "(`--import-classifiers <runs.jsonl>` brings it from a report on the store that logged it)")
            continue
        for split in sorted(splits):
            limit = f"data.{split}_limit"
            if f"{split}/top1" not in classifier.data.metrics:
                left_out.append(f"seed {seed}: its classifier's run {run_id} has no {split}/top1 (cached before "
                                "classifiers read the test set: delete its classifier.cache_dir folder to retrain)")
            elif classifier.data.params.get(limit) != run.data.params.get(limit):
                left_out.append(f"seed {seed}: its classifier was evaluated with {limit}="
                                f"{classifier.data.params.get(limit)}, the baseline with {run.data.params.get(limit)}")
            else:
                for key in (f"{split}/top1", f"{split}/top5"):
                    if key in classifier.data.metrics:
                        stat = stats.setdefault(key, Stat())
                        stat.by_seed[seed] = classifier.data.metrics[key]
                        stat.pairing[seed] = run.data.tags.get("pairing", "")
    if stats:
        table[CLASSIFIER] = stats
    return left_out


def seeds_across_machines(runs) -> list[str]:
    """One line per seed whose runs carry different machine tags (device, torch): its paired differences then hold
    two machines' arithmetic besides the arms' (the same seed gives other numbers on another CPU). A grid is split
    across machines by seeds, never one seed's arms."""
    by_seed: dict[str, set[str]] = {}
    for run in runs:
        tags = run.data.tags
        by_seed.setdefault(tags.get("seed", run.info.run_id), set()).add(
            f"{tags.get('device', '?')}, torch {tags.get('torch', '?')}")
    return [f"seed {seed}: {' | '.join(sorted(machines))}" for seed, machines in sorted(by_seed.items())
            if len(machines) > 1]


def reported_split(table) -> str:
    """"test" when the runs have test metrics (the numbers a paper would report), else "val"."""
    return "test" if any("test/top1" in stats for stats in table.values()) else "val"


def top1(table) -> str:
    """The metric every comparison is about: top-1 of the reported split."""
    return f"{reported_split(table)}/top1"


# ---------------------------------------------------------------------------------------------- tags of the grid
def common_tag(runs, key: str) -> Optional[str]:
    """The value of tag `key` that every run carrying it carries (None when none does); runs that disagree are two
    grids in one experiment, which one report cannot read as one."""
    found = sorted({r.data.tags[key] for r in runs if key in r.data.tags})
    if len(found) > 1:
        raise ReportError(f"the runs carry {len(found)} different {key!r} tags: {' | '.join(found)}; report one grid "
                          "at a time (--sweep) or re-run the runs with the other value")
    return found[0] if found else None


def preregistered(runs) -> Optional[dict[str, list[str]]]:
    """The comparisons the preset fixed before its grid (tag "preregistered": family -> entries), or None."""
    tag = common_tag(runs, "preregistered")
    return None if tag is None else json.loads(tag)


def baseline_target(runs) -> Optional[float]:
    """The baseline's top-1 (%) the preset says a competent recipe reaches here (tag "baseline_target"), or None."""
    tag = common_tag(runs, "baseline_target")
    return None if tag is None else float(tag)


def equivalence_margin(runs) -> float:
    """The points of top-1 too small to matter (tag "equivalence_margin"; runs from before the tag: 1 point)."""
    tag = common_tag(runs, "equivalence_margin")
    return EQUIVALENCE_MARGIN if tag is None else float(tag)


def common_param(runs, key: str) -> Optional[str]:
    found = {r.data.params.get(key) for r in runs}
    return found.pop() if len(found) == 1 else None
