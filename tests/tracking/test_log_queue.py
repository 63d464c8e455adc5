"""The queue a job's tracking calls go through: in order, retried until they land, never holding the caller, and
what it could not log handed back, kept on disk and read back once."""
import threading
import time

from recondec.tracking import log_queue
from recondec.tracking.log_queue import LogQueue, Task, describe, read_unlogged, write_unlogged


def test_calls_land_in_order_and_a_failing_one_is_retried_until_it_lands(monkeypatch):
    monkeypatch.setattr(log_queue, "RETRY_START_S", 0.01)
    done, failures = [], []

    def flaky(i):
        if i == 2 and len(failures) < 3:
            failures.append(i)
            raise ConnectionError("server away")
        done.append(i)

    q = LogQueue("t")
    for i in range(5):
        q.put(Task(f"call {i}", lambda i=i: flaky(i)))
    assert q.close(timeout=10) == []
    assert done == [0, 1, 2, 3, 4] and len(failures) == 3


def test_put_never_waits_on_a_store_that_does_not_answer():
    gate = threading.Event()
    q = LogQueue("t")
    started = time.monotonic()
    for i in range(100):
        q.put(Task(f"call {i}", gate.wait))  # each call blocks until the store "answers"
    assert time.monotonic() - started < 0.5
    gate.set()
    assert q.close(timeout=10) == []


def test_close_hands_back_what_it_could_not_log_in_order(monkeypatch):
    monkeypatch.setattr(log_queue, "RETRY_START_S", 0.01)

    def away():
        raise ConnectionError("server away")

    q = LogQueue("t")
    tasks = [Task(f"logging metrics of step {s}", away, {"kind": "metrics", "metrics": {"a": 1.0}, "step": s})
             for s in (1, 2, 3)] + [Task("ending the run (FINISHED)", away)]
    for t in tasks:
        q.put(t)
    started = time.monotonic()
    assert q.close(timeout=0.3) == tasks
    assert time.monotonic() - started < 2
    assert describe(tasks) == "4 calls: metrics of steps 1-3, ending the run (FINISHED)"


def test_unlogged_records_are_read_back_once_and_only_for_their_run(tmp_path):
    tasks = [Task("logging metrics of step 4", print, {"kind": "metrics", "metrics": {"val/top1": 50.0}, "step": 4}),
             Task("logging the model", print)]
    write_unlogged(tasks, "run-a", tmp_path)
    assert read_unlogged(tmp_path, "run-b") == []  # another run's file: nothing, and it is not read again
    write_unlogged(tasks, "run-a", tmp_path)
    (record,) = read_unlogged(tmp_path, "run-a")  # the model cannot be re-logged from a record
    assert record["metrics"] == {"val/top1": 50.0} and record["step"] == 4
    assert read_unlogged(tmp_path, "run-a") == []
