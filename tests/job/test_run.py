"""Tiny end-to-end jobs: MLflow runs with the expected metrics and artifacts, resume, multirun."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from recondec.checks import validate
from recondec.config import REPO_ROOT
from recondec.job import JobInfo
from recondec.models import build_model
from recondec.run import run_job

from ..conftest import TINY, variant_params
from ..helpers import artifact_paths, runs_of


@pytest.mark.parametrize("variant", variant_params("baseline", "sae_layerwise", "swwae_all"))
def test_one_epoch_run_of_each_variant_writes_an_mlflow_run(compose_cfg, tmp_path, variant):
    overrides = [f"variant={variant}", *TINY, "logger.experiment=tiny"]
    result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    (run,) = runs_of(tmp_path / "mlflow.db", "tiny")
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == ",".join(o for o in overrides if not o.startswith("logger."))
    assert run.data.params["variant.name"] == variant and run.data.params["loss.weights.image"] == "0.1"
    assert run.data.params["variant.unpool"] in ("fixed", "switch")  # enum values, not "Unpool.fixed"
    metrics = set(run.data.metrics)
    assert {"val/top1", "val/top5", "train/loss/ce", "train/loss/total", "train/img_per_s", "train/lr"} <= metrics
    levels = [] if variant == "baseline" else ["image"] if variant.endswith("first") else \
        ["image", "pool1", "pool2", "pool3", "pool4"]
    for lv in levels:
        assert {f"train/loss/recon/{lv}", f"val/psnr/{lv}", f"val/mse/{lv}"} <= metrics, lv
    assert ("val/ssim/image" in metrics) == bool(levels)  # the last epoch is a figure epoch
    arts = artifact_paths(tmp_path / "mlflow.db", run.info.run_id)
    assert {"config/config_resolved.yaml", "config/overrides.txt"} <= arts
    assert not any(a.startswith("checkpoints/") for a in arts)  # the model is logged as an MLflow model instead
    if levels:
        assert "reconstruction_error_per_level.png" in arts and "reconstructions/image.png" in arts
        # the grids of the last epoch also as step-tracked images, one per reconstructed level (the UI's slider)
        stepped = {a.split("+")[0] for a in arts if a.startswith("images/") and "+step+2+" in a and a.endswith(".png")}
        assert stepped == {f"images/reconstructions~{lv}" for lv in ("image", "pool1", "pool2", "pool3", "pool4")}
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id, "val/top1")
    assert [m.step for m in history] == ([1, 2] if variant != "baseline" else [1])  # one point per epoch
    if levels:  # SSIM on figure epochs only (every trainer.figures_every_n_epochs = 5, and the last)
        ssim = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id, "val/ssim/image")
        assert [m.step for m in ssim] == [2]


def test_mlflow_tracking_uri_from_the_environment_is_where_runs_go(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recondec.config import CONF_DIR

    db = tmp_path / "from_env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    overrides = [*TINY, "schedule.decoder.epochs=0", "logger.experiment=env"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):  # without the fixtures' logger.tracking_uri
        cfg = compose("config", overrides=[f"output_dir={tmp_path}", *overrides])
        explicit = compose("config", overrides=[f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    assert cfg.logger.tracking_uri == f"sqlite:///{db}" and explicit.logger.tracking_uri.endswith("/mlflow.db")
    result = run_job(validate(cfg), JobInfo(overrides=overrides))
    assert [r.info.run_id for r in runs_of(db, "env")] == [result.run_id]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert OmegaConf.to_container(cfg.logger, resolve=True)["tracking_uri"] == f"sqlite:///{REPO_ROOT}/mlflow.db"


@pytest.mark.slow
def test_resume_continues_at_the_right_epoch_in_the_same_run(compose_cfg, tmp_path):
    first = [*TINY, "variant=sae_all", "schedule.joint.epochs=1", "trainer.log_every_n_steps=1",
             "logger.experiment=resume"]
    r1 = run_job(validate(compose_cfg(*first)), JobInfo(overrides=first))
    state = torch.load(r1.checkpoint, weights_only=False)
    assert state["epoch"] == 2 and state["stage"] == "joint"
    more = [*TINY, "variant=sae_all", "schedule.joint.epochs=3", "trainer.log_every_n_steps=1", "resume=auto",
            "logger.experiment=resume"]
    r2 = run_job(validate(compose_cfg(*more)), JobInfo(overrides=more))
    assert r2.run_id == r1.run_id  # the same MLflow run continues
    final = torch.load(r2.checkpoint, weights_only=False)
    assert final["epoch"] == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert [m.step for m in client.get_metric_history(r1.run_id, "val/top1")] == [1, 2, 3, 4]
    # running training losses at every optimiser step (trainer.log_every_n_steps=1), across the resume
    steps = [m.step for m in client.get_metric_history(r1.run_id, "train_step/loss/total")]
    assert final["step"] == 4 * 3 and sorted(steps) == list(range(1, final["step"] + 1))


def test_eval_study_reloads_the_final_model(compose_cfg, tmp_path):
    train = [*TINY, "variant=swwae_all", "logger.experiment=eval"]
    r1 = run_job(validate(compose_cfg(*train)), JobInfo(overrides=train))
    ev = [*TINY, "variant=swwae_all", "study=eval", f"resume={r1.checkpoint}", "logger.experiment=eval"]
    r2 = run_job(validate(compose_cfg(*ev)), JobInfo(overrides=ev))
    assert r2.metrics["val/top1"] == pytest.approx(r1.metrics["val/top1"])
    assert r2.metrics["val/psnr/image"] == pytest.approx(r1.metrics["val/psnr/image"], rel=1e-5)
    # the training run's MLflow model: the checkpoint's weights, images in, logits out
    cfg = validate(compose_cfg(*train))
    net = build_model(cfg.backbone, cfg.variant, cfg.data.num_classes)
    net.load_state_dict(torch.load(r1.checkpoint, weights_only=False)["model"])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    logged = mlflow.pytorch.load_model(f"runs:/{r1.run_id}/model")
    x = torch.randn(3, 3, cfg.backbone.image_size, cfg.backbone.image_size)
    with torch.no_grad():
        torch.testing.assert_close(logged(x), net.eval()(x, decode=False).logits)
    info = mlflow.models.get_model_info(f"runs:/{r1.run_id}/model")
    assert info.signature is not None and info.saved_input_example_info is not None
    # the data set as the run's input (the runs table's Dataset column)
    (dataset_input,) = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(r1.run_id).inputs.dataset_inputs
    assert dataset_input.dataset.name == cfg.data.name
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_multirun_of_two_jobs_gives_two_child_runs_of_one_parent(tmp_path):
    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "src/main.py", "-m", "variant=sae_all,swwae", *TINY, "trainer.max_steps_per_epoch=1",
           f"logger.tracking_uri=sqlite:///{db}", "logger.experiment=grid", f"hydra.sweep.dir={tmp_path}/sweep"]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, timeout=580, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    (parent,) = [r for r in runs_of(db, "grid") if r.data.tags.get("role") == "sweep"]
    runs = [r for r in runs_of(db, "grid") if r.data.tags.get("role") != "sweep"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.overrides"].startswith("variant=sae_all,swwae")
    commit = parent.data.tags.get("mlflow.source.git.commit")  # the sweep's run names its code, as its jobs' do
    assert commit and {r.data.tags.get("mlflow.source.git.commit") for r in runs} == {commit}
    assert [r.data.tags["mlflow.parentRunId"] for r in runs] == [parent.info.run_id] * 2  # the UI nests them
    summary = MlflowClient(f"sqlite:///{db}").download_artifacts(parent.info.run_id, "summary.md", str(tmp_path))
    assert all(f"| {r.info.run_name} | FINISHED |" in Path(summary).read_text() for r in runs)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sweep"] for r in runs}) == 1
    assert sorted(r.data.tags["mlflow.runName"].split(",")[0] for r in runs) == ["variant=sae_all", "variant=swwae"]
    assert len({r.data.tags["mlflow.runName"] for r in runs}) == 2
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.slow
def test_the_submitit_launcher_runs_the_jobs_in_worker_processes_that_import_the_installed_package(tmp_path):
    """Hydra's submitit launchers (submitit_local here, SLURM on a cluster) unpickle the job in a fresh worker that
    must import recondec by name: with the package installed, both jobs finish and nest under the sweep's run."""
    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "src/main.py", "-m", "hydra/launcher=submitit_local", "variant=baseline,swwae_all", *TINY,
           "trainer.max_steps_per_epoch=1", f"logger.tracking_uri=sqlite:///{db}", "logger.experiment=submitit",
           f"hydra.sweep.dir={tmp_path}/sweep"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(cmd, cwd=REPO_ROOT, timeout=580, capture_output=True, text=True, env=env)
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*_log.err"))
    assert out.returncode == 0, out.stderr[-2000:] + logs[-2000:]
    assert "ModuleNotFoundError" not in logs
    runs = runs_of(db, "submitit")
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("role") != "sweep"]
    assert sorted(r.data.tags["variant"] for r in jobs) == ["baseline", "swwae_all"]
    assert {r.info.status for r in jobs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}


def test_validation_selects_and_the_test_set_is_read_once_at_the_end(compose_cfg, tmp_path, monkeypatch):
    from recondec.training.evaluate import Evaluator
    from recondec.training.loop import Trainer

    reads, end = [], Trainer._end_epoch
    evaluate = Evaluator.evaluate

    def recording(self, loader, ssim=True, desc="validate"):
        reads.append(desc)
        return evaluate(self, loader, ssim, desc)

    def ending(self, *args):
        reads.append(f"end of epoch {self.state.epoch}")
        return end(self, *args)

    monkeypatch.setattr(Evaluator, "evaluate", recording)
    monkeypatch.setattr(Trainer, "_end_epoch", ending)
    overrides = [*TINY, "variant=sae_first", "schedule.joint.epochs=3", "logger.experiment=split"]
    result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    # validation after every epoch, the test set once, after the last
    assert reads == [*[r for e in (1, 2, 3) for r in ("validate", f"end of epoch {e}")], "validate", "test",
                     "end of epoch 4"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for key in ("test/top1", "test/top5", "test/psnr/image", "test/mse/image", "test/ssim/image"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [4], key
    # best.pt is the epoch with the best validation top-1 (the first of equals), whatever the test set says
    val = [m.value for m in sorted(client.get_metric_history(result.run_id, "val/top1"), key=lambda m: m.step)]
    best = torch.load(result.checkpoint.parent / "best.pt", weights_only=False)
    assert best["epoch"] == 1 + val.index(max(val)) and best["best_top1"] == max(val)
    assert result.metrics["test/top1"] == client.get_metric_history(result.run_id, "test/top1")[0].value


def test_a_run_records_the_normalisation_it_used_not_the_null_it_was_given(compose_cfg, tmp_path):
    """data.mean / data.std left null on an image folder are filled in by the checks (ImageNet's here); MLflow's params
    and config_resolved.yaml are written from the typed config the job ran with, so they hold those values."""
    from recondec.config import IMAGENET_MEAN, IMAGENET_STD

    from ..data.conftest import good_tree

    root = good_tree(tmp_path / "tree", per_class=(8, 4))
    overrides = ["data=folder", f"data.root={root}", "data.loader=torchvision", "data.num_workers=0",
                 "backbone.image_size=32", *TINY, "schedule.batch_size=8", "schedule.decoder.epochs=0",
                 "logger.experiment=folder"]
    composed = compose_cfg(*overrides)
    assert composed.data.mean is None and composed.data.std is None
    run_job(validate(composed), JobInfo(overrides=overrides))
    (run,) = runs_of(tmp_path / "mlflow.db", "folder")
    assert yaml.safe_load(run.data.params["data.mean"]) == IMAGENET_MEAN
    assert yaml.safe_load(run.data.params["data.std"]) == IMAGENET_STD
    assert run.data.params["data.num_classes"] == "3"  # counted from the class folders, not null
    recorded = yaml.safe_load((tmp_path / "config_resolved.yaml").read_text())
    assert recorded["data"]["mean"] == IMAGENET_MEAN and recorded["data"]["std"] == IMAGENET_STD


def test_the_package_imports_from_any_folder(tmp_path):
    """The set-up installs the project (pip install -e .): `import recondec` needs no sys.path edit, so Hydra's
    submitit workers, notebooks and other projects find it."""
    code = "import recondec, pathlib; print(pathlib.Path(recondec.__file__).resolve().parent)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(REPO_ROOT / "src" / "recondec")


@pytest.mark.parametrize("study", ["train", "eval"])
def test_an_unreadable_resume_is_refused_before_any_mlflow_run(compose_cfg, tmp_path, study):
    from recondec.config import ConfigError

    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    overrides = [*TINY, f"study={study}", f"resume={bad}", "logger.experiment=refused"]
    with pytest.raises(ConfigError, match=r"resume='.*last.pt' is invalid: allowed auto, or a readable checkpoint"):
        run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # the test's store, never the repository's
    assert client.get_experiment_by_name("refused") is None
