"""What keeps a long run from dying silently: preemption signals, non-finite losses, out-of-memory errors.

- ``PreemptionGuard``: SIGTERM, SIGUSR1 (SLURM's ``--signal``) and SIGUSR2 (submitit's default time-out
  signal) only set a flag; the training loop writes a checkpoint at the next step boundary and raises
  ``Preempted``. ``run_job`` then marks the MLflow run (KILLED, tag ``preempted``) and calls the handler that
  was installed before ours: under submitit that one requeues the job and exits. Otherwise ``Preempted``
  ends the process with status 128 + signal, as a death by that signal would, so a wrapper script or
  SLURM sees a preemption; ``resume=auto`` in the requeued job continues the same MLflow run.
- ``NonFiniteGuard``: a NaN / inf loss either stops the run with an error naming the terms and the step,
  before any checkpoint or metric is written from the bad state (``trainer.nonfinite=stop``), or skips
  the batch's update and counts it (``trainer.nonfinite=skip``).
- ``oom_hint``: an out-of-memory error is re-raised with the batch size and what to change.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from typing import Iterator, Optional

import torch

log = logging.getLogger(__name__)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(SystemExit):
    """Raised once the preemption checkpoint is written; exits the process with 128 + signal number."""

    def __init__(self, signum: int, step: int, previous_handler=None):
        super().__init__(128 + signum)
        self.signum, self.step, self.previous_handler = signum, step, previous_handler

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"{self.signal_name} received: checkpoint of step {self.step} written"

    def hand_over(self) -> None:
        """Call the handler that was installed before ours (submitit's requeue, which exits itself)."""
        if callable(self.previous_handler):
            self.previous_handler(self.signum, None)


class PreemptionGuard:
    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum, frame) -> None:
        # Only a flag: writing a checkpoint inside a signal handler could interrupt a half-done step.
        log.warning("%s received: checkpoint at the next step boundary, then exit", signal.Signals(signum).name)
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator["PreemptionGuard"]:
        if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
            yield self
            return
        self._previous = {s: signal.signal(s, self._on_signal) for s in PREEMPTION_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)

    def exception(self, step: int) -> Preempted:
        return Preempted(self.signum, step, self._previous.get(self.signum))


class NonFiniteLoss(FloatingPointError):
    """A loss term became NaN or infinite; the last good checkpoint is left as it was."""


class NonFiniteGuard:
    """Checks every training loss term for NaN / inf.

    mode "stop": the terms stay on the device and are read in one go by ``verify()`` (at each log
    interval, before each checkpoint and at the end of the epoch), so training pays no extra host sync
    per step; the error still names the first bad step. mode "skip": the decision is needed before the
    optimiser step, so the check reads one value per step (a host sync, free on CPU, small on GPU).
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.skipped = 0  # batches whose update was skipped (mode "skip"), over the whole run
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._names: list[str] = []

    def admit(self, terms: dict[str, torch.Tensor], step: int) -> bool:
        """True if the batch's update should be applied."""
        self._names = list(terms)
        values = torch.stack([v.detach().float() for v in terms.values()])
        if self.mode == "stop":
            self._pending.append((step, values))
            return True
        if bool(torch.isfinite(values).all()):
            return True
        self.skipped += 1
        log.warning("non-finite loss at step %d (%s): batch skipped (%d so far)", step,
                    self._describe(values), self.skipped)
        return False

    def verify(self) -> None:
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).cpu()  # one sync for the whole interval
        steps = [s for s, _ in self._pending]
        self._pending.clear()
        bad_rows = (~torch.isfinite(values)).any(dim=1).nonzero()
        if len(bad_rows):
            row = int(bad_rows[0])
            raise NonFiniteLoss(f"non-finite loss at step {steps[row]}: {self._describe(values[row])}. The run "
                                f"stops and the last good checkpoint is kept; lower the learning rate, or set "
                                f"trainer.nonfinite=skip to skip such batches")

    def _describe(self, values: torch.Tensor) -> str:
        return ", ".join(f"{name}={v:g}" for name, v in zip(self._names, values.tolist()) if not math.isfinite(v))


def _is_oom(e: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a plain RuntimeError
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


@contextlib.contextmanager
def oom_hint(where: str, batch_size: int, precision: str, device: torch.device) -> Iterator[None]:
    try:
        yield
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        message = (f"out of memory in the {where} on {device} with schedule.batch_size={batch_size}, "
                   f"trainer.precision={precision} ({first_line}). Lower schedule.batch_size (and the LR with "
                   f"it), use trainer.precision=bf16 and trainer.channels_last=true, or a smaller "
                   f"backbone.image_size / backbone.width")
        raise type(e)(message) from e
