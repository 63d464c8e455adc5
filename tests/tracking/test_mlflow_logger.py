"""The tracker writes to the store it is given, and nowhere else."""
import mlflow

from recondec.tracking.mlflow_logger import set_experiment


def test_set_experiment_uses_the_given_store_not_one_in_the_working_directory(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)  # as in a fresh process: MLflow's default store
    uri = f"sqlite:///{tmp_path / 'given.db'}"
    set_experiment(uri, "study")
    assert (tmp_path / "given.db").is_file()
    assert list(elsewhere.iterdir()) == []  # no stray mlflow.db or mlruns/ in the working directory
    assert mlflow.get_experiment_by_name("study") is not None  # the fluent API now points at the given store
