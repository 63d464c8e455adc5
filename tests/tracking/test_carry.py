"""A grid split across stores (machines, or sessions whose MLflow store does not survive) reports as one: the runs.jsonl
a report writes carries every run it read, classifiers included, into a fresh store, where new seeds join them."""
import json

import mlflow
import pytest

from recondec.tracking.carry import ORIGIN_TAG, RUNS_FILE, import_runs, read_runs
from recondec.tracking.mlflow_logger import set_experiment
from recondec.tracking.report import write_report
from recondec.tracking.runs import ReportError

from ..helpers import load_script

EXPERIMENT = "finetune"
START = [92.0, 92.6, 91.8, 92.3]  # each seed's classifier, test top-1
ARMS = {"baseline": [92.3, 92.5, 92.4, 92.9], "swwae_all": [92.1, 92.8, 92.0, 92.6]}


def log_seeds(uri: str, seeds) -> None:
    """Per seed: its classifier's run, then each arm fine-tuned from it (tags as the jobs set them)."""
    mlflow.set_tracking_uri(uri)
    set_experiment(uri, EXPERIMENT)
    for seed in seeds:
        with mlflow.start_run(run_name=f"classifier {seed}",
                              tags={"variant": "baseline", "seed": str(seed), "role": "classifier"}) as classifier:
            mlflow.log_params({"data.test_limit": "None", "trainer.seed": seed})
            mlflow.log_metrics({"val/top1": START[seed] + 1, "test/top1": START[seed]})
        for arm, top1 in ARMS.items():
            with mlflow.start_run(tags={"variant": arm, "seed": str(seed), "pairing": f"start{seed}",
                                        "classifier_run": classifier.info.run_id, "equivalence_margin": "0.5"}):
                mlflow.log_params({"data.test_limit": "None", "trainer.seed": seed})
                mlflow.log_metrics({"val/top1": 95.0, "test/top1": top1[seed], "encoder/rel_change": 0.05,
                                    "run_median/grad_share/recon/first_conv": 0.0 if arm == "baseline" else 0.03})


def report(uri: str, out):
    write_report(uri, EXPERIMENT, out)
    record = json.loads((out / "comparisons.json").read_text())
    return {k: record[k] for k in ("rows", "comparisons", "families")}


def test_a_grid_split_across_two_stores_reports_as_the_whole_grid_in_one(tmp_path):
    whole, first, second = (f"sqlite:///{tmp_path}/{name}.db" for name in ("whole", "first", "second"))
    log_seeds(whole, range(4))
    log_seeds(first, range(2))  # session one: seeds 0-1, reported (which writes runs.jsonl)
    report(first, tmp_path / "first")
    created, present = import_runs(second, EXPERIMENT, tmp_path / "first" / RUNS_FILE)  # session two, a new store
    assert (created, present) == (6, 0)  # 2 seeds x (classifier + 2 arms)
    log_seeds(second, range(2, 4))  # ... runs seeds 2-3 into it
    expected, got = report(whole, tmp_path / "whole"), report(second, tmp_path / "second")
    assert got == expected
    assert {r["row"]: r["per_seed"] for r in got["rows"]}["classifier (start)"] == {
        str(s): START[s] for s in range(4)}  # the imported baselines still find their classifiers


def test_a_later_grid_in_a_new_store_takes_only_the_classifier_runs_of_the_earlier_report(tmp_path, capsys):
    """Cached classifiers outlive their store: a later grid (another fine-tuning, a new store) starts from them and
    names their runs in the earlier store. Importing the classifier runs alone gives it the row "classifier (start)";
    the earlier grid's arms, the same rows under another protocol, stay out."""
    earlier, later = f"sqlite:///{tmp_path}/earlier.db", f"sqlite:///{tmp_path}/later.db"
    log_seeds(earlier, range(2))
    report(earlier, tmp_path / "earlier")
    classifiers = {r["tags"]["seed"]: r["run_id"] for r in read_runs(tmp_path / "earlier" / RUNS_FILE)
                   if r["tags"].get("role") == "classifier"}
    mlflow.set_tracking_uri(later)
    set_experiment(later, EXPERIMENT)
    for seed in range(2):
        for arm, top1 in ARMS.items():
            with mlflow.start_run(tags={"variant": arm, "seed": str(seed), "pairing": f"start{seed}",
                                        "classifier_run": classifiers[str(seed)]}):
                mlflow.log_params({"data.test_limit": "None", "trainer.seed": seed})
                mlflow.log_metrics({"val/top1": 95.0, "test/top1": top1[seed] - 0.5, "encoder/rel_change": 0.05})
    rows = {r["row"]: r for r in report(later, tmp_path / "before")["rows"]}
    assert "classifier (start)" not in rows
    assert "--import-classifiers" in (tmp_path / "before" / "report.md").read_text()
    load_script("report").main([EXPERIMENT, "--tracking-uri", later, "--out", str(tmp_path / "after"),
                                "--import-classifiers", str(tmp_path / "earlier" / RUNS_FILE)])
    assert "imported 2 classifier runs" in capsys.readouterr().out
    rows = {r["row"]: r for r in json.loads((tmp_path / "after" / "comparisons.json").read_text())["rows"]}
    assert rows["classifier (start)"]["per_seed"] == {str(s): START[s] for s in range(2)}
    own = {str(s): ARMS["baseline"][s] - 0.5 for s in range(2)}
    assert rows["baseline"]["per_seed"] == pytest.approx(own)  # not the earlier grid's arms


def test_a_classifier_import_of_a_file_without_classifiers_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path}/s.db"
    log_seeds(uri, range(1))
    report(uri, tmp_path / "r")
    arms_only = tmp_path / "arms.jsonl"
    arms_only.write_text("".join(line + "\n" for line in (tmp_path / "r" / RUNS_FILE).read_text().splitlines()
                                 if '"role": "classifier"' not in line))
    with pytest.raises(ReportError, match="no classifier runs"):
        import_runs(uri, EXPERIMENT, arms_only, classifiers_only=True)


def test_importing_again_or_through_another_store_adds_nothing(tmp_path):
    a, b, c = (f"sqlite:///{tmp_path}/{name}.db" for name in "abc")
    log_seeds(a, range(2))
    report(a, tmp_path / "a")
    assert import_runs(b, EXPERIMENT, tmp_path / "a" / RUNS_FILE) == (6, 0)
    assert import_runs(b, EXPERIMENT, tmp_path / "a" / RUNS_FILE) == (0, 6)
    report(b, tmp_path / "b")  # b's runs.jsonl: new ids, the originals in ORIGIN_TAG
    assert import_runs(c, EXPERIMENT, tmp_path / "b" / RUNS_FILE) == (6, 0)
    assert import_runs(c, EXPERIMENT, tmp_path / "a" / RUNS_FILE) == (0, 6)
    originals = {r["run_id"] for r in read_runs(tmp_path / "a" / RUNS_FILE)}
    runs = mlflow.MlflowClient(c).search_runs([mlflow.MlflowClient(c).get_experiment_by_name(EXPERIMENT).experiment_id],
                                              filter_string="attributes.status = 'FINISHED'")
    assert {r.data.tags[ORIGIN_TAG] for r in runs if "summary" not in r.data.tags} == originals


def test_an_imported_run_keeps_its_times_params_and_last_metrics(tmp_path):
    a, b = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    log_seeds(a, [0])
    report(a, tmp_path / "a")
    record = next(r for r in read_runs(tmp_path / "a" / RUNS_FILE) if r["tags"].get("variant") == "swwae_all")
    import_runs(b, EXPERIMENT, tmp_path / "a" / RUNS_FILE)
    run = mlflow.MlflowClient(b).search_runs(
        [mlflow.MlflowClient(b).get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string=f"tags.{ORIGIN_TAG} = '{record['run_id']}'")[0]
    assert (run.info.start_time, run.info.end_time, run.info.status) == (
        record["start_time"], record["end_time"], "FINISHED")
    assert run.data.params == record["params"] and run.data.metrics == record["metrics"]
    assert run.data.metrics["test/top1"] == ARMS["swwae_all"][0]


def test_a_file_that_is_not_a_runs_file_is_refused_with_its_line(tmp_path):
    path = tmp_path / RUNS_FILE
    path.write_text('{"run_id": "x"}\n')
    with pytest.raises(ReportError, match=f"{RUNS_FILE}:1 is not a run record"):
        import_runs(f"sqlite:///{tmp_path}/m.db", EXPERIMENT, path)
    with pytest.raises(ReportError, match="no runs file"):
        read_runs(tmp_path / "missing.jsonl")


def test_another_experiments_runs_are_refused(tmp_path):
    a = f"sqlite:///{tmp_path}/a.db"
    log_seeds(a, [0])
    report(a, tmp_path / "a")
    with pytest.raises(ReportError, match=f"holds the runs of experiment {EXPERIMENT}, not 'other'"):
        import_runs(f"sqlite:///{tmp_path}/b.db", "other", tmp_path / "a" / RUNS_FILE)


def test_the_cli_imports_before_it_reports(tmp_path, capsys):
    main = load_script("report").main
    a, b = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    log_seeds(a, range(2))
    report(a, tmp_path / "a")
    main([EXPERIMENT, "--tracking-uri", b, "--import", str(tmp_path / "a" / RUNS_FILE), "--out", str(tmp_path / "b")])
    assert "imported 6 runs" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "comparisons.json").read_text())["rows"] == json.loads(
        (tmp_path / "a" / "comparisons.json").read_text())["rows"]
    with pytest.raises(SystemExit) as stop:
        main([EXPERIMENT, "--tracking-uri", b, "--import", str(tmp_path / "nope.jsonl")])
    assert stop.value.code == 2 and "no runs file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--docs", "--import", str(tmp_path / "a" / RUNS_FILE)])
    assert "load runs into an experiment: name it" in capsys.readouterr().err


def test_a_seed_whose_arms_ran_on_two_machines_is_named_in_the_report(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    log_seeds(uri, range(2))
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    for run in runs:  # seed 0's swwae_all ran elsewhere; seed 1 wholly on one machine
        elsewhere = run.data.tags["seed"] == "0" and run.data.tags["variant"] == "swwae_all"
        client.set_tag(run.info.run_id, "device", "AMD EPYC, 2 cores" if elsewhere else "Intel Xeon, 2 cores")
        client.set_tag(run.info.run_id, "torch", "2.14.1")
    write_report(uri, EXPERIMENT, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "- seed 0: AMD EPYC, 2 cores, torch 2.14.1 | Intel Xeon, 2 cores, torch 2.14.1" in text
    assert "- seed 1:" not in text
