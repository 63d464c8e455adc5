"""The torchvision loader's guard against image files that do not decode.

The .beton writer skips such files and lists them (ffcv never sees them); the torchvision loader decodes in its
DataLoader workers, where a broken file would kill the run from a worker, hours in. So, before the job starts (the
configuration checks, before any MLflow run exists), every file the loader will read (train/, val/, and test/ where
there is one) goes through the writer's check (images.check_image), in parallel. data.bad_images says what then:
`refuse` stops the job with one line naming them (a ConfigError); `skip` leaves them out of the loader's data sets,
and the job lists them in the run's artifact bad_images.tsv.

The result is cached per folder, keyed on its listing (every path, size and modification time, hashed), so a
second job on unchanged files pays for the listing only; any change re-checks the folder. The cache is a small
JSON file per folder in $RECONDEC_CACHE_DIR, else $XDG_CACHE_HOME/recondec, else ~/.cache/recondec (image_checks/):
never beside the data, which may be read-only or shared.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import PIL

from recondec.config import BadImages, ConfigError, DataConf, Loader, dataset_kind
from recondec.data.images import check_files, file_stat, label_problem, list_classes, list_split

log = logging.getLogger(__name__)

CHECK_VERSION = 1  # bump when check_image's verdicts change: every cached result then is stale
SHOWN = 5          # the bad files a refusal names; the rest are counted
REPORT_NAME = "bad_images.tsv"


@dataclass
class FolderCheck:
    checked: int                 # the files the loader reads, every split
    bad: list[tuple[str, str]]   # (path, reason) of those that do not decode


def applies(data: DataConf) -> bool:
    """Image folders read by the torchvision loader (built-in sets are arrays; ffcv's writer checks its own)."""
    return data.loader is Loader.torchvision and not dataset_kind(data.name).builtin


def check_image_folders(data: DataConf) -> FolderCheck:
    """Every file the torchvision loader will read, checked (or its folder's cached result); with
    data.bad_images=refuse, any bad one is a ConfigError naming them."""
    workers = max(1, min(data.num_workers, os.cpu_count() or 1))  # as many processes as the loader decodes with
    found = FolderCheck(0, [])
    for folder, files in loader_files(data).items():
        found.checked += len(files)
        found.bad += check_folder(folder, files, workers)
    if found.bad and data.bad_images is BadImages.refuse:
        raise ConfigError(refusal(data, found))
    return found


def refusal(data: DataConf, found: FolderCheck) -> str:
    shown = ", ".join(f"{path} ({reason})" for path, reason in found.bad[:SHOWN])
    more = f" and {len(found.bad) - SHOWN} more" if len(found.bad) > SHOWN else ""
    return (f"data.root={data.root!r} is invalid: {len(found.bad)} of its {found.checked} image files do not decode: "
            f"{shown}{more}; allowed a folder whose images all decode, or data.bad_images=skip (the job trains "
            f"without them and lists them in the run's {REPORT_NAME})")


def loader_files(data: DataConf) -> dict[Path, list[str]]:
    """Per split folder, the files the torchvision loader reads: those with a label (ImageFolder ignores the rest).
    Listed as the .beton writer lists them; a tree it cannot list is a bad data.root, as for the writer."""
    from recondec.data.beton import beton_splits

    try:
        classes = list_classes(Path(data.root) / "train")
        listings = {split: list_split(data.root, split, classes) for split in beton_splits(data)}
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.root={data.root!r} is invalid: {e}") from None
    return {Path(data.root) / split: [path for path, label in listing.samples
                                      if label_problem(label, len(classes)) is None]
            for split, listing in listings.items()}


# ---------------------------------------------------------------- one folder, cached

def check_folder(folder: Path, files: list[str], workers: int) -> list[tuple[str, str]]:
    """(path, reason) of every file of `folder` that does not decode: from the cache when its listing is unchanged."""
    key = listing_key(folder, files)
    cached = _read_cache(folder, key)
    if cached is not None:
        return cached
    reasons = check_files(files, workers, desc=str(folder))
    bad = [(path, " ".join(reason.split())) for path, reason in zip(files, reasons) if reason is not None]  # 1 line
    _write_cache(folder, key, len(files), bad)
    return bad


def _relative(folder: Path, path: str) -> str:
    prefix = str(folder) + os.sep  # the listing joins paths onto the folder: slicing is what os.path.relpath
    return path[len(prefix):] if path.startswith(prefix) else path  # would do, at a fraction of its cost


def listing_key(folder: Path, files: list[str]) -> str:
    """What a cached result holds for: the check's version, PIL's (what decodes may change with it), every file's
    path in the folder, size and modification time."""
    digest = hashlib.sha256(f"{CHECK_VERSION} {PIL.__version__}\n".encode())
    for path in files:
        size, mtime = file_stat(path)
        digest.update(f"{_relative(folder, path)}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("RECONDEC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recondec")
    return Path(base) / "image_checks"


def cache_file(folder: Path) -> Path:
    return cache_dir() / f"{hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:24]}.json"


def _read_cache(folder: Path, key: str) -> Optional[list[tuple[str, str]]]:
    try:
        record = json.loads(cache_file(folder).read_text())
        if record["key"] != key:
            return None
        return [(os.path.join(str(folder), rel), reason) for rel, reason in record["bad"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, unreadable or from another version: checked again


def _write_cache(folder: Path, key: str, checked: int, bad: list[tuple[str, str]]) -> None:
    path = cache_file(folder)
    record = {"folder": os.path.abspath(folder), "key": key, "checked": checked,
              "bad": [[_relative(folder, p), reason] for p, reason in bad]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # renamed: a concurrent job never reads half a file
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except OSError as e:  # the cache only saves time: a job goes on without it
        log.warning("could not cache the image check of %s in %s: %s", folder, path.parent, e)


# ---------------------------------------------------------------- what a job does with it

def excluded_images(data: DataConf, announce: bool = True) -> frozenset[str]:
    """The files the torchvision loader leaves out: none when every file decodes; with data.bad_images=skip, those
    that do not (`announce`: a warning says how many). data.bad_images=refuse with a bad file: a ConfigError."""
    found = check_image_folders(data)
    if found.bad and announce:
        log.warning("data.bad_images=skip: %d of the %d image files under %s do not decode and are left out (the "
                    "run lists them in %s)", len(found.bad), found.checked, data.root, REPORT_NAME)
    return frozenset(path for path, _ in found.bad)


def write_report(path: Path, bad: list[tuple[str, str]]) -> Path:
    """The .beton writer's report format: a header, then path and reason per line, tab-separated."""
    path.write_text("path\treason\n" + "".join(f"{p}\t{reason}\n" for p, reason in bad))
    return path


def log_skipped_images(tracker, data: DataConf, output_dir: Path) -> None:
    """data.bad_images=skip: the files the loader leaves out, as the run's artifact bad_images.tsv (path, reason),
    also kept in output_dir."""
    if not applies(data) or data.bad_images is not BadImages.skip:
        return
    found = check_image_folders(data)  # the configuration checks' result, from the cache
    if found.bad:
        tracker.log_artifact(write_report(Path(output_dir) / REPORT_NAME, found.bad))
