"""Reliability: exact resume after kill -9, fallback from a damaged checkpoint, preemption signals, the
non-finite loss guard, failures isolated in a multirun, an unusable MLflow store, out of memory."""
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recondec.checks import validate
from recondec.config import REPO_ROOT
from recondec.job import JobInfo
from recondec.models import AugmentedNet
from recondec.run import run_job
from recondec.tracking import mlflow_logger
from recondec.training import checkpoint as ckpt
from recondec.training.reliability import NonFiniteLoss, Preempted

from ..conftest import TINY
from ..helpers import artifact_paths, runs_of

# TINY has 3 steps per epoch and two epochs (decoder stage, then joint): steps 1-3 and 4-6
EXACT = [*TINY, "trainer.deterministic=true"]


def run(compose_cfg, *overrides: str):
    return run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=list(overrides)))


def inject_at_training_step(monkeypatch, step: int, action) -> None:
    """Call action(terms) on the loss terms of training step `step` (validation and diagnostics compute their losses
    elsewhere)."""
    from recondec.training.loop import Trainer

    original, calls = Trainer.loss_terms, []

    def loss_terms(self, x, y, xu=None):
        terms = original(self, x, y, xu)
        calls.append(1)
        if len(calls) == step:
            action(terms)
        return terms

    monkeypatch.setattr(Trainer, "loss_terms", loss_terms)


def make_nan(terms) -> None:
    terms["recon/image"] = terms["recon/image"] * float("nan")
    terms["total"] = terms["total"] + terms["recon/image"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def history(db: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(f"sqlite:///{db}").get_metric_history(run_id, key)]


# ---------------------------------------------------------------------------------------------- kill -9
def _kill_mid_epoch(proc: subprocess.Popen, last: Path, min_step: int) -> dict:
    """Freeze the process, look at its newest checkpoint, and kill it once that one is mid-epoch and past
    `min_step` (so the resume has batches of an epoch to skip); otherwise let it run a little longer."""
    while proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        state = ckpt.load_valid(last) if last.exists() else None
        if state is not None and state["step"] >= min_step and state["batch_in_epoch"] > 0:
            proc.kill()
            proc.wait()
            return state
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed mid-epoch")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("semi, steps", [
    ([], 18),  # 6 steps per epoch, 3 epochs, a checkpoint after every step
    # semi-supervised: 10 labels per class, 3 labelled steps per epoch; the unlabelled stream (the other 92
    # images: 4 batches of 20) wraps mid-epoch, so the kill lands at another position in each stream
    (["data.labels_per_class=10", "schedule.unlabelled_batch_size=20"], 9),
], ids=["supervised", "semi_supervised"])
def test_kill_9_mid_epoch_then_resume_auto_ends_exactly_as_an_uninterrupted_run(compose_cfg, tmp_path, semi, steps):
    common = [*EXACT, "data.train_limit=192", "schedule.joint.epochs=2", "trainer.checkpoint_every_n_steps=1", *semi]
    db = tmp_path / "mlflow.db"
    ref = run(compose_cfg, *common, "logger.experiment=reference")

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "src/main.py", *common, f"hydra.run.dir={run_dir}", f"logger.tracking_uri=sqlite:///{db}",
           "logger.experiment=killed"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = _kill_mid_epoch(proc, run_dir / "checkpoints" / "last.pt", min_step=8)
    assert proc.returncode == -signal.SIGKILL
    (crashed,) = runs_of(db, "killed")
    assert crashed.info.status == "RUNNING"  # kill -9 leaves no chance to close it

    # rerunning the same job with resume=auto (in this process: the command itself is what was killed above)
    run(compose_cfg, *common, f"output_dir={run_dir}", "logger.experiment=killed", "resume=auto")
    (resumed,) = runs_of(db, "killed")  # the same MLflow run, continued and closed
    assert resumed.info.run_id == crashed.info.run_id and resumed.info.status == "FINISHED"
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert final["step"] == steps and final["step"] > killed_at["step"]
    if semi:
        assert killed_at["unlabelled"]["batch"] not in (0, killed_at["batch_in_epoch"])  # another position
    assert_same_weights(final["model"], weights(ref.checkpoint))
    for key in ("val/top1", "val/loss/total", "val/psnr/image", "train/loss/total", "train/loss/recon/pool2",
                "test/top1", "grad_share/recon/first_conv", "encoder/rel_change"):
        assert history(db, resumed.info.run_id, key) == history(db, ref.run_id, key), key


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(compose_cfg, tmp_path, caplog):
    overrides = [*EXACT, "trainer.checkpoint_every_n_steps=1", "logger.experiment=trunc"]
    first = run(compose_cfg, *overrides)
    last = first.checkpoint
    (last.parent / "best.pt").unlink()  # it may hold the newest step too; without it only the predecessor remains
    assert ckpt.load_valid(ckpt.previous_path(last))["step"] == 5  # the step before the end-of-run checkpoint
    expected = weights(last)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a damaged newest file

    path, state = ckpt.find_latest(first.output_dir)
    assert path == ckpt.previous_path(last) and state["step"] == 5
    assert "last.pt is unreadable" in caplog.text

    again = run(compose_cfg, *overrides, "resume=auto")  # redoes step 6 only
    assert again.run_id == first.run_id
    assert_same_weights(weights(again.checkpoint), expected)
    (r,) = runs_of(tmp_path / "mlflow.db", "trunc")
    assert r.info.status == "FINISHED"


def test_checkpoints_hold_everything_needed_to_continue(compose_cfg):
    r = run(compose_cfg, *TINY, "logger.experiment=contents")
    state = torch.load(r.checkpoint, weights_only=False)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "batch_in_epoch", "running", "rng",
            "mlflow_run_id", "history"} <= state.keys()
    assert state["mlflow_run_id"] == r.run_id and (state["epoch"], state["step"], state["batch_in_epoch"]) == (2, 6, 0)
    assert not list(r.checkpoint.parent.glob("*.tmp"))  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- preemption
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_preemption_signal_checkpoints_at_the_step_boundary_and_resume_continues(compose_cfg, tmp_path,
                                                                                 monkeypatch, signum):
    overrides = [*TINY, "logger.experiment=preempt"]
    handed_over = []  # stands for submitit's handler: called after our checkpoint, so it can requeue
    previous = signal.signal(signum, lambda s, f: handed_over.append(s))
    try:
        inject_at_training_step(monkeypatch, 4, lambda terms: os.kill(os.getpid(), signum))
        with pytest.raises(Preempted) as info:
            run(compose_cfg, *overrides)
    finally:
        signal.signal(signum, previous)
    assert info.value.code == 128 + signum and handed_over == [signum]
    state = ckpt.load_valid(ckpt.checkpoint_dir(tmp_path) / "last.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 1)  # mid-epoch, no periodic checkpoints
    (r,) = runs_of(tmp_path / "mlflow.db", "preempt")
    assert r.info.status == "KILLED" and r.data.tags["preempted"] == f"{signum.name} at step 4"

    monkeypatch.undo()
    resumed = run(compose_cfg, *overrides, "resume=auto")
    assert resumed.run_id == r.info.run_id
    (r,) = runs_of(tmp_path / "mlflow.db", "preempt")
    assert r.info.status == "FINISHED" and torch.load(resumed.checkpoint, weights_only=False)["step"] == 6
    assert [s for s, _ in history(tmp_path / "mlflow.db", r.info.run_id, "val/top1")] == [1, 2]


@pytest.mark.slow
def test_resume_auto_finds_the_same_run_in_an_earlier_output_folder(compose_cfg, tmp_path, monkeypatch):
    overrides = [*TINY, "logger.experiment=elsewhere"]
    inject_at_training_step(monkeypatch, 2, lambda terms: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Preempted):
        run(compose_cfg, *overrides, f"output_dir={tmp_path}/first")
    monkeypatch.undo()
    # a new invocation gets a new output folder: the run is found through its MLflow tag resume_key
    second = run(compose_cfg, *overrides, f"output_dir={tmp_path}/second", "resume=auto")
    (r,) = runs_of(tmp_path / "mlflow.db", "elsewhere")
    assert r.info.run_id == second.run_id and r.info.status == "FINISHED"
    assert r.data.tags["output_dir"] == str(tmp_path / "second")
    assert torch.load(second.checkpoint, weights_only=False)["step"] == 6


# ---------------------------------------------------------------------------------------------- NaN guard
def test_nan_loss_stops_naming_the_term_and_step_and_keeps_the_last_good_checkpoint(compose_cfg, tmp_path,
                                                                                  monkeypatch):
    inject_at_training_step(monkeypatch, 4, make_nan)  # the first step of epoch 2
    with pytest.raises(NonFiniteLoss, match=r"step 4: recon/image=nan, total=nan"):
        run(compose_cfg, *TINY, "logger.experiment=nan")
    assert ckpt.load_valid(ckpt.checkpoint_dir(tmp_path) / "last.pt")["step"] == 3  # end of epoch 1, untouched
    (r,) = runs_of(tmp_path / "mlflow.db", "nan")
    assert r.info.status == "FAILED" and "step 4" in r.data.tags["error"]
    assert "traceback.txt" in artifact_paths(tmp_path / "mlflow.db", r.info.run_id)
    assert [s for s, _ in history(tmp_path / "mlflow.db", r.info.run_id, "val/top1")] == [1]  # no NaN logged


def test_nan_loss_with_skip_skips_the_batch_and_counts_it(compose_cfg, tmp_path, monkeypatch):
    inject_at_training_step(monkeypatch, 4, make_nan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(compose_cfg, *TINY, "trainer.nonfinite=skip", "logger.experiment=skip")
    # the skipped batch is a stage's first: it advances the schedule without torch's out-of-order warning
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    (r,) = runs_of(tmp_path / "mlflow.db", "skip")
    assert r.info.status == "FINISHED"
    assert history(tmp_path / "mlflow.db", r.info.run_id, "train/skipped_batches") == [(1, 0.0), (2, 1.0)]
    assert torch.isfinite(torch.tensor(result.metrics["train/loss/total"]))
    assert all(torch.isfinite(v).all() for v in weights(result.checkpoint).values())


# ---------------------------------------------------------------------------------------------- multirun
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_multirun_with_a_failing_middle_job_records_three_runs_one_failed(tmp_path):
    db = tmp_path / "mlflow.db"
    bad = tmp_path / "other_network.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)  # fails after the MLflow run exists: at model building
    cmd = [sys.executable, "src/main.py", "-m", f"backbone.pretrained=null,{bad},null", *TINY,
           "trainer.max_steps_per_epoch=1", f"logger.tracking_uri=sqlite:///{db}", "logger.experiment=grid",
           f"hydra.sweep.dir={tmp_path}/sweep"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, timeout=280, capture_output=True, text=True)
    assert done.returncode != 0 and "is not a state dict of this backbone" in done.stderr  # Hydra re-raises at the end
    parent, *runs = sorted(runs_of(db, "grid"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED"]
    assert parent.data.tags["role"] == "sweep" and parent.info.status == "FAILED"  # closed, though Hydra raised
    assert "not a state dict" in runs[1].data.tags["error"]
    assert "traceback.txt" in artifact_paths(db, runs[1].info.run_id)


# ---------------------------------------------------------------------------------------------- MLflow store
def test_unusable_tracking_store_fails_clearly_before_training(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_logger, "RETRY_DELAYS_S", (0.0,))
    (tmp_path / "not_a_folder").write_text("")
    cfg = compose_cfg(*TINY, f"logger.tracking_uri=sqlite:///{tmp_path}/not_a_folder/mlflow.db")
    with pytest.raises(mlflow_logger.TrackingError, match="unreachable or locked: reaching the store failed 2 times"):
        run_job(validate(cfg), JobInfo(overrides=[]))
    assert not ckpt.checkpoint_dir(tmp_path).exists()  # no training happened


def test_a_briefly_locked_store_is_retried_and_no_metric_is_lost(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_logger, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    original, failures = mlflow_logger.mlflow.log_metrics, []

    def flaky(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("database is locked")
        return original(*args, **kwargs)

    monkeypatch.setattr(mlflow_logger.mlflow, "log_metrics", flaky)
    result = run(compose_cfg, *TINY, "logger.experiment=flaky")
    assert len(failures) == 2
    assert [s for s, _ in history(tmp_path / "mlflow.db", result.run_id, "val/top1")] == [1, 2]


# ---------------------------------------------------------------------------------------------- out of memory
def test_out_of_memory_names_the_batch_size_and_a_remedy(compose_cfg, tmp_path, monkeypatch):
    def forward(self, x, decode=True, layerwise=False):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(AugmentedNet, "forward", forward)
    with pytest.raises(torch.OutOfMemoryError, match=r"schedule.batch_size=32.*Lower schedule.batch_size.*bf16"):
        run(compose_cfg, *TINY, "logger.experiment=oom")
    (r,) = runs_of(tmp_path / "mlflow.db", "oom")
    assert r.info.status == "FAILED" and "schedule.batch_size=32" in r.data.tags["error"]
