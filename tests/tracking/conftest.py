"""One pre-registered MLflow grid, written once for every test of the report that reads it."""
import pytest

from .grids import log_grid, preregistered_tags


@pytest.fixture(scope="module")
def preregistered_grid(tmp_path_factory):
    """(tracking URI, experiment) of a grid whose runs carry report.preregistered and report.baseline_target."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('prereg')}/mlflow.db"
    log_grid(uri, "prereg", extra_tags=preregistered_tags())
    return uri, "prereg"
