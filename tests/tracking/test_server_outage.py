"""A real `mlflow server` that goes away while a job trains: training does not wait for it, logging catches up when it
is back, and what it never took is kept and re-logged by resume=auto. Each job is `python src/main.py` in a process
of its own, as a user runs it; the times are measured against the same job run once with the server up."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recondec.config import REPO_ROOT

from ..conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
EPOCHS = 8
JOB = [o for o in TINY if not o.startswith("schedule.joint.epochs")] + [
    f"schedule.joint.epochs={EPOCHS}", "data.train_limit=320", "logger.experiment=outage"]


class Server:
    """`mlflow server` on 127.0.0.1 with a sqlite store and served artifacts under `root`; stop() and start()
    again keep the same port and store, as a restarted cluster service does."""

    def __init__(self, root: Path):
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, wait_s: float = 90) -> float:
        """The time it answers."""
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root}/server.db",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "a"),
                                     start_new_session=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return time.monotonic()
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not answer in {wait_s} s: {(self.root / 'server.log').read_text()}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the whole process group: the server and its workers
        self.proc.wait()

    def runs(self):
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name("outage")
        return client.search_runs([exp.experiment_id]) if exp else []


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.stop()


def start_job(srv: Server, out: Path, *extra: str) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": srv.uri}
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(key, None)  # the job's own defaults
    cmd = [sys.executable, "src/main.py", *JOB, f"hydra.run.dir={out}", *extra]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True), time.monotonic()


def finish(job: subprocess.Popen, timeout: float = 400) -> tuple[int, str, float]:
    output, _ = job.communicate(timeout=timeout)
    return job.returncode, output, time.monotonic()


def calm_seconds(srv: Server, tmp_path: Path) -> float:
    job, started = start_job(srv, tmp_path / "calm")
    rc, output, ended = finish(job)
    assert rc == 0, output
    return ended - started


def wait_for_first_metric(srv: Server, job: subprocess.Popen, timeout: float = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        running = [r for r in srv.runs() if r.info.status == "RUNNING"]
        if running and "val/top1" in MlflowClient(srv.uri).get_run(running[0].info.run_id).data.metrics:
            return
        time.sleep(0.5)
    raise AssertionError("the job logged no val/top1 while running")


def val_top1_steps(srv: Server, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(srv.uri).get_metric_history(run_id, "val/top1"))


def test_a_server_restart_neither_stalls_the_job_nor_loses_a_metric(server, tmp_path):
    calm = calm_seconds(server, tmp_path)
    job, started = start_job(server, tmp_path / "restart")
    wait_for_first_metric(server, job)
    server.stop()
    stopped = time.monotonic()
    time.sleep(15)
    back = server.start()
    rc, output, ended = finish(job)
    print(f"calm {calm:.1f} s; stopped at {stopped - started:.1f} s, back at {back - started:.1f} s, "
          f"job ended at {ended - started:.1f} s")
    assert rc == 0, output
    assert ended - started <= max(calm, back - started) + 20, output
    (run,) = [r for r in server.runs() if r.info.run_name and "calm" not in r.data.tags.get("output_dir", "")]
    assert run.info.status == "FINISHED"
    assert val_top1_steps(server, run.info.run_id) == list(range(1, EPOCHS + 2))  # decoder epoch + joint epochs
    assert "not logged" not in output


def test_a_server_that_never_returns_ends_the_job_and_resume_relogs_what_it_missed(server, tmp_path):
    calm = calm_seconds(server, tmp_path)
    out = tmp_path / "gone"
    job, started = start_job(server, out)
    wait_for_first_metric(server, job)
    server.stop()
    rc, output, ended = finish(job)
    print(f"calm {calm:.1f} s; job ended at {ended - started:.1f} s with the server gone")
    assert rc == 0, output
    assert ended - started <= calm + 60, output
    assert (out / "checkpoints" / "last.pt").is_file()
    assert "not logged    :" in output and "resume=auto" in output
    assert (out / "unlogged.jsonl").is_file()

    server.start()  # back, later: the same command with resume=auto re-logs into the same run
    (run,) = [r for r in server.runs() if "gone" in r.data.tags.get("output_dir", "")]
    assert run.info.status == "RUNNING" and len(val_top1_steps(server, run.info.run_id)) < EPOCHS + 1
    rc, output, _ = finish(start_job(server, out, "resume=auto")[0])
    assert rc == 0, output
    run = MlflowClient(server.uri).get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert val_top1_steps(server, run.info.run_id) == list(range(1, EPOCHS + 2))
    assert not (out / "unlogged.jsonl").exists() and (out / "unlogged.relogged.jsonl").is_file()
