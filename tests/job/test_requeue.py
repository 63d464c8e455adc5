"""The checkpoint-and-requeue path the SLURM launcher relies on, run for real through submitit's local executor: a job
sent submitit's time-out signal mid-run writes a checkpoint, is requeued by submitit, and its next attempt continues
that checkpoint into the same MLflow run, ending with the weights of a job that was never interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recondec.config import REPO_ROOT

from ..conftest import TINY
from ..helpers import runs_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
EPOCHS = 6
JOB = [o for o in TINY if not o.startswith("schedule.joint.epochs")] + [
    f"schedule.joint.epochs={EPOCHS}", "data.train_limit=320", "trainer.deterministic=true", "variant=swwae_all"]


def submitit_tasks(sweep: Path) -> list[int]:
    """The pids of the processes running this sweep's jobs (submitit's local workers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and "submitit.core._submit" in cmd and str(sweep) in cmd:
            pids.append(int(proc.name))
    return pids


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker process through /proc")
def test_a_job_signalled_by_submitit_is_requeued_and_continues_exactly(tmp_path):
    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    common = [*JOB, f"logger.tracking_uri=sqlite:///{db}"]
    reference = subprocess.run([sys.executable, "src/main.py", *common, "logger.experiment=calm",
                                f"hydra.run.dir={tmp_path}/calm"], cwd=REPO_ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]

    sweep = tmp_path / "sweep"
    job = subprocess.Popen([sys.executable, "src/main.py", "-m", "hydra/launcher=submitit_local", *common,
                            "logger.experiment=requeue", f"hydra.sweep.dir={sweep}"], cwd=REPO_ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = sweep / "0" / "checkpoints" / "last.pt"
    wait_for(last.exists, 240, "the first epoch's checkpoint")  # mid-run: more epochs to come
    (pid,) = submitit_tasks(sweep)
    os.kill(pid, signal.SIGUSR2)  # what submitit's local executor sends before a job's time limit
    output, _ = job.communicate(timeout=400)
    logs = "".join(p.read_text() for p in sorted(sweep.rglob("*_log.*")))  # submitit: .err and .out
    assert job.returncode == 0, output[-2000:] + logs[-3000:]
    assert "SIGUSR2 received" in logs and "Requeued job" in logs and "requeued job: continuing from" in logs

    calm_weights = torch.load(tmp_path / "calm" / "checkpoints" / "last.pt", weights_only=False)["model"]
    requeued_weights = torch.load(last, weights_only=False)["model"]
    assert calm_weights.keys() == requeued_weights.keys()
    assert all(torch.equal(calm_weights[k], requeued_weights[k]) for k in calm_weights)

    (run,) = [r for r in runs_of(db, "requeue") if r.data.tags.get("role") != "sweep"]
    assert run.info.status == "FINISHED" and run.data.tags.get("preempted", "").startswith("SIGUSR2")
    steps = [m.step for m in MlflowClient(f"sqlite:///{db}").get_metric_history(run.info.run_id, "val/top1")]
    assert sorted(steps) == list(range(1, EPOCHS + 2))  # every epoch once: the decoder epoch and the joint ones
