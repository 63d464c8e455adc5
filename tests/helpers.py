"""What several test modules read back from a test's MLflow database."""
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def runs_of(db: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def artifact_paths(db: Path, run_id: str, folder: str = "") -> set[str]:
    client = MlflowClient(f"sqlite:///{db}")
    out = set()
    for a in client.list_artifacts(run_id, folder or None):
        out |= artifact_paths(db, run_id, a.path) if a.is_dir else {a.path}
    return out


def load_script(name: str):
    """One of the entry scripts in src/ (bench, report, ...) as a module: they are scripts, not part of the
    installed package, so tests load them by path."""
    import importlib.util

    from recondec.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / "src" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
