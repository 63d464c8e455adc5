"""Checkpoints: written atomically, validated on load, found again by `resume=auto`.

A checkpoint holds everything needed to continue bit for bit (its keys: training/state.py). Overwriting
``last.pt`` first moves the previous one to ``last.prev.pt``, so a newest file damaged after its write (a full
disk, a crashed file system) still leaves one to fall back on.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)
REQUIRED_KEYS = ("model", "epoch", "step", "format")
FORMAT = 1


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_atomic(state: dict[str, Any], path: Path, keep_previous: bool = False, stamped: bool = True) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves a
    half-written file under the final name. `keep_previous`: the file being replaced becomes
    `<name>.prev.pt` (its step is older, so `find_latest` only picks it when the newest is unreadable).
    `stamped`: a checkpoint (with the format version); false for a plain state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "format": FORMAT} if stamped else state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the renames themselves durable: without it a power cut can bring back the old directory entry."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_valid(path: Path) -> Optional[dict[str, Any]]:
    """The checkpoint at `path`, or None (with a warning) if it is truncated, corrupt or incomplete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        log.warning("checkpoint %s is unreadable (%s): ignoring it", path, e.__class__.__name__)
        return None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        log.warning("checkpoint %s is incomplete: ignoring it", path)
        return None
    return state


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def find_latest(output_dir: str | os.PathLike) -> Optional[tuple[Path, dict[str, Any]]]:
    """The newest valid checkpoint (by step, then modification time) of an output folder."""
    candidates = sorted(checkpoint_dir(output_dir).glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    best = None
    for path in candidates:
        state = load_valid(path)
        if state is not None and (best is None or state["step"] > best[1]["step"]):
            best = (path, state)
    return best


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
