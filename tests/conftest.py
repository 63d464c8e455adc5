"""Shared fixtures: compose configs from conf/ into a temporary output folder."""
from __future__ import annotations

import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from recondec.config import CONF_DIR, REPO_ROOT, register_schema, variant_names

register_schema()

VARIANTS = variant_names()


@pytest.fixture(autouse=True, scope="session")
def nothing_written_into_the_repository():
    """The suite writes under tmp_path only: a job or script started without its output folder pointed there
    leaves a multirun/<date>/ folder (or mlflow.db) in the user's checkout."""
    def entries():  # the default output folders and MLflow stores (conf/hydra/default.yaml, conf/logger/mlflow.yaml)
        return {p.relative_to(REPO_ROOT) for p in [*REPO_ROOT.glob("multirun/*"), *REPO_ROOT.glob("mlflow.db"),
                                                    *REPO_ROOT.glob("mlruns")]}

    before = entries()
    yield
    leaked = sorted(map(str, entries() - before))
    assert not leaked, f"the tests wrote into the repository: {leaked} (point hydra.run.dir / output_dir at tmp_path)"


@pytest.fixture(autouse=True, scope="session")
def _image_check_cache(tmp_path_factory):
    """The image-folder checks' cache (data/folder_check.py) in a folder of the test session, not the user's
    ~/.cache; session-wide, so that module-scoped loaders use it too (each test's tree has a path of its own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECONDEC_CACHE_DIR", str(tmp_path_factory.mktemp("recondec_cache")))
        yield


def variant_params(*in_default_suite: str) -> list:
    """Every variant as a test parameter; the ones not named run with the slow tests only (-m slow), so the default
    suite stays a few minutes long and every variant is still covered by the full one."""
    return [v if v in in_default_suite else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]

# The one tiny job the tests start from and extend (compose_cfg(*TINY, ...)): a VGG-16 at 1/8 width on 96 digits,
# one decoder and one joint epoch of 3 steps, validated on 48 held-out images, tested on 48; seconds on a CPU.
# He-initialised decoders: from the reference init three steps leave a stacked decoder dead, which the live-decoder
# guard refuses (tests of the reference init say so).
TINY = ["data.train_limit=96", "data.val_limit=48", "data.test_limit=48", "schedule.batch_size=32",
        "backbone.width=0.125", "backbone.classifier_width=32", "backbone.decoder_init=he",
        "schedule.decoder.epochs=1", "schedule.joint.epochs=1", "trainer.progress=false", "trainer.recon_images=4"]


def make_composer(tmp_path):
    """compose(*overrides) -> DictConfig, with outputs and the MLflow database under tmp_path."""

    def _compose(*overrides: str, return_hydra_config: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"output_dir={tmp_path}",
                                                f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                                *overrides], return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> DictConfig, with outputs and the MLflow database under tmp_path."""
    return make_composer(tmp_path)


@pytest.fixture(autouse=True)
def _offline_torch_hub(monkeypatch, tmp_path_factory):
    """Tests stay offline: torch.hub's cache ($TORCH_HOME) starts empty, and a download (weights, data) is refused."""
    from urllib.error import URLError

    import torch.hub
    import torchvision.datasets.mnist

    def refuse(url, *args, **kwargs):
        raise URLError(f"tests are offline: no download of {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse)  # FashionMNIST


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory):
    """An empty MLflow database with its schema created once: building the schema takes ~2 s per new file."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _fresh_mlflow_db(request, _mlflow_template):
    """Every test that has a tmp_path finds an empty, ready MLflow database at tmp_path/mlflow.db (where the
    composed configs and the subprocess tests point), a copy of the template."""
    if "tmp_path" in request.fixturenames:
        shutil.copy(_mlflow_template, request.getfixturevalue("tmp_path") / "mlflow.db")
