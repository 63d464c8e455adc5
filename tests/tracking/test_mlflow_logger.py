"""The tracker writes to the store it is given, and nowhere else."""
import mlflow
import pytest

from recondec.tracking.mlflow_logger import set_experiment


@pytest.fixture
def default_store_after():
    """The fluent API points at MLflow's default store again after the test, which points it at a temporary one."""
    yield
    mlflow.set_tracking_uri(None)


def test_set_experiment_uses_the_given_store_not_one_in_the_working_directory(tmp_path, monkeypatch,
                                                                               default_store_after):
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
