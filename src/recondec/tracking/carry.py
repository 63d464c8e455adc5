"""The finished runs of an MLflow experiment as one JSON-lines file, and back into any store: how a grid split across
machines, or across sessions whose MLflow store does not survive, is reported as one.

Every report writes ``reports/<experiment>/runs.jsonl`` (the runs it read: each variant run and the classifier runs
its baselines started from); ``python src/report.py <experiment> --import reports/<experiment>/runs.jsonl`` loads
them into the tracking URI before reporting, so that new seeds run into that store join the old ones. A line holds
what a report reads: the run's times and status, its parameters, its tags and the last value of every metric
(metric histories are not carried: the MLflow UI shows an imported run's metrics as single points). Importing twice
adds nothing: an imported run keeps the id it was first made with in the tag ``imported_from``
(through any number of stores; set last, so that an import cut off half-way is re-made, not taken as done). A file
is refused by another experiment than the one its report was on. Tags that name another run
(``classifier_run``) are rewritten to that run's id in the new store; nesting under a sweep's parent run is not carried.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag, ViewType

from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.runs import ORIGIN_TAG, ReportError

RUNS_FILE = "runs.jsonl"
RUN_REFERENCES = ("classifier_run",)  # tags whose value is another run's id
DROPPED_TAGS = ("mlflow.parentRunId", "mlflow.log-model.history")  # a parent that is not carried; model metadata
BATCH = 100  # MLflow's limit on the params (and tags) of one log_batch


def run_record(run, experiment: str) -> dict:
    """One finished run of the report on `experiment` as a JSON-able dict (its original id under "run_id")."""
    return {"experiment": experiment, "run_id": run.info.run_id, "run_name": run.info.run_name,
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "params": dict(sorted(run.data.params.items())),
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if k not in DROPPED_TAGS},
            "metrics": dict(sorted(run.data.metrics.items()))}


def write_runs(runs, experiment: str, path: Path) -> Path:
    """Write `runs` (MLflow Run objects) of the report on `experiment`, oldest first, one JSON object per line."""
    ordered = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    path.write_text("".join(json.dumps(run_record(r, experiment), sort_keys=True) + "\n" for r in ordered))
    return path


def read_runs(path: Path) -> list[dict]:
    """The records of a runs file; a missing file, or a line that is not a run record, is a ReportError that names
    the file (and line)."""
    if not Path(path).is_file():
        raise ReportError(f"no runs file {path} (a report's runs.jsonl)")
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            missing = {"run_id", "status", "start_time", "params", "tags", "metrics"} - set(record)
        except (json.JSONDecodeError, TypeError):
            missing = {"a JSON object"}
        if missing:
            raise ReportError(f"{path}:{number} is not a run record (missing {', '.join(sorted(missing))})")
        records.append(record)
    return records


def _known_ids(client, experiment_id: str) -> dict[str, str]:
    """Original run id -> its id in this store, for every run of the experiment (imported or made here)."""
    known: dict[str, str] = {}
    token = None
    while True:  # every page; deleted runs too, so that an import does not bring back what a user deleted
        page = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        for run in page:
            known[run.info.run_id] = run.info.run_id
            if ORIGIN_TAG in run.data.tags:
                known[run.data.tags[ORIGIN_TAG]] = run.info.run_id
        token = page.token
        if not token:
            return known


def _batches(items: list, size: int = BATCH):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def import_runs(tracking_uri: str, experiment: str, path: Path, classifiers_only: bool = False) -> tuple[int, int]:
    """Create each run of `path` that `experiment` in `tracking_uri` does not hold yet; (created, already there).
    `classifiers_only`: only the classifier runs (tag role=classifier), from a report on any experiment: a later grid,
    run into a new store from the cached classifiers of an earlier one, gets its "classifier (start)" row without
    the earlier grid's arms."""
    records = read_runs(path)
    if classifiers_only:
        records = [r for r in records if r["tags"].get("role") == "classifier"]
        if not records:
            raise ReportError(f"{path} holds no classifier runs (tag role=classifier)")
    else:  # a classifier serves any experiment; a grid's arms belong to theirs
        others = sorted({r["experiment"] for r in records if r.get("experiment", experiment) != experiment})
        if others:
            raise ReportError(f"{path} holds the runs of experiment {', '.join(others)}, not {experiment!r}")
    set_experiment(tracking_uri, experiment)
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    known = _known_ids(client, experiment_id)
    created = []
    for record in records:  # oldest first: a classifier's run is made before the runs that name it
        origin = record["tags"].get(ORIGIN_TAG, record["run_id"])  # the store the run was first made in
        existing = known.get(record["run_id"]) or known.get(origin)
        if existing:
            known[record["run_id"]] = existing
            continue
        tags = {k: known.get(v, v) if k in RUN_REFERENCES else v for k, v in record["tags"].items()
                if k != ORIGIN_TAG}
        run = client.create_run(experiment_id, start_time=record["start_time"], run_name=record.get("run_name"))
        end = record.get("end_time") or record["start_time"]
        for chunk in _batches([Param(k, v) for k, v in record["params"].items()]):
            client.log_batch(run.info.run_id, params=chunk)
        for chunk in _batches([RunTag(k, v) for k, v in tags.items()]):
            client.log_batch(run.info.run_id, tags=chunk)
        for chunk in _batches([Metric(k, v, end, 0) for k, v in record["metrics"].items()], 1000):
            client.log_batch(run.info.run_id, metrics=chunk)
        client.set_terminated(run.info.run_id, record["status"], end)
        client.set_tag(run.info.run_id, ORIGIN_TAG, origin)  # last: a run cut off half-made is not taken as imported
        known[record["run_id"]] = run.info.run_id
        created.append((run.info.run_id, tags))
    for run_id, tags in created:  # a reference to a run later in the file
        for key in RUN_REFERENCES:
            if key in tags and known.get(tags[key], tags[key]) != tags[key]:
                client.set_tag(run_id, key, known[tags[key]])
    return len(created), len(records) - len(created)
