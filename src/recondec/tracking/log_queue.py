"""A job's tracking calls, made by one background thread so that a slow or absent store never holds training.

Each call is a `Task`: what it is (for messages), a function, and a JSON record from which it can be made again
later (metrics, params, tags, files) or None (images, figures, the model, the run's status: made once). The thread
runs the tasks in order and retries the one at the head until it succeeds, every RETRY_CAP_S at most, so logging
catches up within seconds of the store's return. `close(timeout)` waits that long for the queue to empty and hands
back what it could not log, for the job to keep on disk (`write_unlogged`) and re-log later (`read_unlogged`).

MLflow's own asynchronous logging is not used: it drops a batch once its HTTP retries are spent, and it covers
metrics, params and tags only.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)
RETRY_START_S, RETRY_CAP_S = 0.5, 4.0  # waits between attempts: doubling from 0.5 s, at most 4 s
REPLAYABLE = ("metrics", "params", "tags", "artifact", "artifacts")


@dataclass
class Task:
    what: str                              # "logging metrics of step 3": for messages
    call: Callable[[], Any]
    record: Optional[dict] = None          # {"kind": one of REPLAYABLE, ...}: what re-logging needs; None: made once


class LogQueue:
    def __init__(self, name: str):
        self._tasks: queue.Queue[Optional[Task]] = queue.Queue()
        self._current: Optional[Task] = None
        self._stop = threading.Event()
        self._failing_since: Optional[float] = None
        self._thread = threading.Thread(target=self._work, name=f"tracking {name}", daemon=True)
        self._thread.start()

    def put(self, task: Task) -> None:
        self._tasks.put(task)

    def close(self, timeout: float) -> list[Task]:
        """Wait up to `timeout` s for every task to be done; the tasks that were not, in order."""
        self._tasks.put(None)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return []
        self._stop.set()  # the thread stops at its next attempt; a call in flight may still land (logged twice)
        self._thread.join(1.0)  # out of a retry wait at once: then its current task is settled
        left = [self._current] if self._current is not None else []
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return left
            if task is not None:
                left.append(task)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            self._current = task
            if not self._attempt_until_done(task):
                return
            self._current = None

    def _attempt_until_done(self, task: Task) -> bool:
        delay = RETRY_START_S
        while not self._stop.is_set():
            try:
                task.call()
            except Exception as e:
                self._note_failure(task, e, delay)
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_CAP_S)
                continue
            if self._failing_since is not None:
                log.warning("tracking: the store answers again after %.0f s; %d calls queued behind this one",
                            time.monotonic() - self._failing_since, self._tasks.qsize())
                self._failing_since = None
            return True
        return False

    def _note_failure(self, task: Task, e: Exception, delay: float) -> None:
        if self._failing_since is None:  # one warning per outage, not one per attempt
            self._failing_since = time.monotonic()
            first = (str(e).strip().splitlines() or [""])[0][:300]
            log.warning("tracking: %s failed (%s: %s); training goes on, logging retries every %g s at most",
                        task.what, type(e).__name__, first, RETRY_CAP_S)
        log.debug("tracking: %s failed, next attempt in %g s", task.what, delay)


# ------------------------------------------------------------------------------ what was not logged, on disk
UNLOGGED_FILE = "unlogged.jsonl"


def write_unlogged(tasks: list[Task], run_id: str, folder: Path) -> Path:
    """One JSON line per task: the record to re-log, or just what it was."""
    path = Path(folder) / UNLOGGED_FILE
    with open(path, "w") as f:
        for t in tasks:
            f.write(json.dumps({"run_id": run_id, "what": t.what, **(t.record or {"kind": "once"})}) + "\n")
    return path


def read_unlogged(folder: Path, run_id: str) -> list[dict]:
    """The re-loggable records a job of `run_id` left in `folder`; the file is renamed so that they are re-logged
    once."""
    path = Path(folder) / UNLOGGED_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.rename(path.with_suffix(".relogged.jsonl"))
    return [r for r in records if r.get("run_id") == run_id and r.get("kind") in REPLAYABLE]


def describe(tasks: list[Task]) -> str:
    """'12 calls: metrics of steps 3-8, 2 files, the model, the run's status'."""
    steps = sorted(t.record["step"] for t in tasks if t.record and t.record["kind"] == "metrics")
    files = sum(1 for t in tasks if t.record and t.record["kind"] in ("artifact", "artifacts"))
    others = list(dict.fromkeys(t.what for t in tasks if not t.record or t.record["kind"] in ("params", "tags")))
    parts = ([f"metrics of steps {steps[0]}-{steps[-1]}" if len(set(steps)) > 1 else f"metrics of step {steps[0]}"]
             if steps else []) + ([f"{files} file{'s' * (files > 1)}"] if files else []) + others
    return f"{len(tasks)} call{'s' * (len(tasks) > 1)}: " + ", ".join(parts)
