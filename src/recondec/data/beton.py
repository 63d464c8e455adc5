"""Writing .beton files from an ImageFolder tree or a built-in data set, with a bad-input report.

Every candidate image is first opened, decoded and converted to RGB by a pool of worker processes. Images
that cannot be converted are skipped and listed in `<beton>.report.tsv` (path, reason): ffcv's DatasetWriter
hangs when one of its workers raises, so it only ever sees images that passed. Invariant: written + skipped
= files found (files with an image extension; other files are not images to this writer, as in torchvision).

A file is written under a temporary name in the same folder and renamed when complete, so a failure or
Ctrl-C never leaves a half-written file under the final name. A JSON sidecar (`<beton>.json`) records the
fingerprint of the source listing and the options; a run whose fingerprint matches skips the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from recondec.config import REPO_ROOT, ConfigError, DataConf, FFCVConf, dataset_kind
from recondec.data.images import (
    BadImageError,
    Listing,
    check_images,
    file_stat,
    list_classes,
    list_split,
    read_rgb,
    worker_count,
)

SMART_THRESHOLD = 3 * 96 * 96  # write_mode=smart: raw pixels up to ~96x96 (decoding is a copy), JPEG above
MIN_PAGE = 1 << 21             # ffcv's minimum page size (2 MiB)
LARGE_SET_PAGE = 1 << 23       # ffcv's default (8 MiB), for sets where the file size does not matter
FORMAT_VERSION = 1             # bump when the written content changes for the same inputs


@dataclass
class WriteResult:
    path: str
    found: int
    written: int
    skipped: int
    empty_dirs: int
    report: Optional[str]
    up_to_date: bool = False

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.path}: up to date ({self.written} images), skipped writing"
        extra = f", {self.empty_dirs} empty class folders" if self.empty_dirs else ""
        report = f" (report: {self.report})" if self.report else ""
        return f"{self.path}: {self.written} written + {self.skipped} skipped = {self.found} found{extra}{report}"


# ---------------------------------------------------------------- writing

def _fingerprint(source: object, opts: FFCVConf) -> str:
    options = {k: getattr(opts, k) for k in ("max_resolution", "jpeg_quality", "compress_probability", "strict")}
    options["write_mode"] = opts.write_mode.value if hasattr(opts.write_mode, "value") else str(opts.write_mode)
    blob = json.dumps({"format": FORMAT_VERSION, "options": options, "source": source}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def report_path(path: Path) -> Path:
    return path.with_name(path.name + ".report.tsv")


def up_to_date(path: Path, fingerprint: str) -> Optional[dict]:
    """The sidecar's record when `path` was written from the same source with the same options."""
    try:
        record = json.loads(_sidecar(path).read_text())
        current = record["fingerprint"] == fingerprint and record["size"] == path.stat().st_size
    except (OSError, ValueError, KeyError):
        return None
    return record if current else None


def _tmp(path: Path, suffix: str = "") -> Path:
    """A hidden sibling of `path` (same folder: os.replace is atomic only within one file system)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def _atomic_text(path: Path, text: str) -> None:
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def page_size(num_samples: int, max_sample_bytes: int) -> int:
    """2 MiB for small sets (ffcv's 8 MiB default makes a tiny file 16 MB), 8 MiB for large ones, and always
    several samples per page: a sample larger than a page kills an ffcv writer worker (and hangs the writer)."""
    size = MIN_PAGE if num_samples * max_sample_bytes < 64 * LARGE_SET_PAGE else LARGE_SET_PAGE
    while size < 4 * max_sample_bytes:
        size *= 2
    return size


class _FileSource:
    """ffcv's indexed data set over files that passed validation. A file that fails now (changed since the
    check) must not kill the writer's worker, which would hang it: the error is written to `errors` and the
    sample is a placeholder, and the writer raises once ffcv is done."""

    def __init__(self, samples: list[tuple[str, int]], max_resolution: int, errors: Path):
        self.samples, self.max_resolution, self.errors = samples, max_resolution, errors

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with open(path, "rb") as f:
                return np.asarray(read_rgb(f, self.max_resolution)), label
        except Exception as e:
            with open(self.errors, "a") as log:
                log.write(f"{path}\t{type(e).__name__}: {e}\n")
            return np.zeros((1, 1, 3), np.uint8), label


class _ArraySource:
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def _fields(opts: FFCVConf) -> dict:
    from ffcv.fields import IntField, RGBImageField  # late: importing ffcv costs seconds

    mode = opts.write_mode.value if hasattr(opts.write_mode, "value") else str(opts.write_mode)
    image = RGBImageField(write_mode=mode, max_resolution=opts.max_resolution, smart_threshold=SMART_THRESHOLD,
                          jpeg_quality=opts.jpeg_quality, compress_probability=opts.compress_probability)
    return {"image": image, "label": IntField()}


def _write_beton(path: Path, source, opts: FFCVConf, max_sample_bytes: int) -> None:
    """ffcv's DatasetWriter into a temporary file, renamed over `path` only once complete."""
    from ffcv.writer import DatasetWriter

    tmp, errors = _tmp(path), _tmp(path, ".errors")
    pages = page_size(len(source), max_sample_bytes)
    # every writer process fills pages of its own: a set that fits in one page gets one process
    workers = 1 if len(source) * max_sample_bytes < pages else worker_count(opts)
    writer = DatasetWriter(str(tmp), _fields(opts), page_size=pages, num_workers=workers)
    try:
        writer.from_indexed_dataset(source, chunksize=64)
        if errors.exists():
            raise RuntimeError(f"images failed while writing {path} (changed since they were checked?):\n"
                               + errors.read_text())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: nothing half-written may remain
        tmp.unlink(missing_ok=True)
        _release_shared_memory(writer)
        raise
    finally:
        errors.unlink(missing_ok=True)


def _release_shared_memory(writer) -> None:
    """ffcv frees its shared metadata block only on success; an interrupted write would leak it in /dev/shm."""
    shm = getattr(writer, "metadata_sm", None)
    if hasattr(shm, "unlink"):
        try:
            shm.close()
            shm.unlink()
        except (FileNotFoundError, BufferError):
            pass


def _record(path: Path, fingerprint: str, result: WriteResult) -> None:
    _atomic_text(_sidecar(path), json.dumps({"fingerprint": fingerprint, "size": path.stat().st_size,
                                             **asdict(result)}, indent=1))


def write_listing(listing: Listing, path: str | Path, opts: FFCVConf, desc: str = "") -> WriteResult:
    """Check every listed file, report the bad ones, write the good ones."""
    path = Path(path)
    stats = [(p, y, *file_stat(p)) for p, y in listing.samples]
    fingerprint = _fingerprint({"classes": listing.classes, "files": stats, "empty": listing.empty_dirs}, opts)
    record = up_to_date(path, fingerprint)
    if record is not None:
        return WriteResult(**{**{k: record[k] for k in ("found", "written", "skipped", "empty_dirs", "report")},
                              "path": str(path), "up_to_date": True})
    if listing.empty_dirs and opts.strict:
        raise BadImageError(f"{listing.empty_dirs[0]}: empty class folder (data.ffcv.strict=true)")
    path.parent.mkdir(parents=True, exist_ok=True)
    reasons = check_images(listing, opts, desc or path.name)
    good = [s for s, r in zip(listing.samples, reasons) if r is None]
    bad = [(p, r) for (p, _), r in zip(listing.samples, reasons) if r is not None]
    assert len(good) + len(bad) == len(listing.samples), "every file found is written or skipped"
    report = report_path(path)
    _atomic_text(report, "path\treason\n" + "".join(f"{p}\t{r}\n" for p, r in bad)
                 + "".join(f"{d}\tempty class folder (no image files)\n" for d in listing.empty_dirs))
    if not good:
        raise ValueError(f"no valid image among the {len(listing.samples)} files found for {path} (see {report})")
    source = _FileSource(good, opts.max_resolution, _tmp(path, ".errors"))
    _write_beton(path, source, opts, 3 * opts.max_resolution ** 2)
    result = WriteResult(str(path), len(listing.samples), len(good), len(bad), len(listing.empty_dirs), str(report))
    _record(path, fingerprint, result)
    return result


def write_arrays(images: np.ndarray, labels: np.ndarray, path: str | Path, opts: FFCVConf) -> WriteResult:
    """A built-in split (uint8 (N, H, W, 3) arrays): every image is valid by construction."""
    path = Path(path)
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + np.ascontiguousarray(labels).tobytes())
    fingerprint = _fingerprint({"arrays": digest.hexdigest()}, opts)
    result = WriteResult(str(path), len(labels), len(labels), 0, 0, None)
    if up_to_date(path, fingerprint) is not None:
        result.up_to_date = True
        return result
    path.parent.mkdir(parents=True, exist_ok=True)
    side = min(max(images.shape[1:3]), opts.max_resolution)
    _write_beton(path, _ArraySource(images, labels), opts, 3 * side * side)
    _record(path, fingerprint, result)
    return result


# ---------------------------------------------------------------- data sets

def beton_dir(data: DataConf) -> Path:
    return Path(data.ffcv.beton_dir) if data.ffcv.beton_dir else REPO_ROOT / "data" / "beton" / data.name


def beton_path(data: DataConf, split: str) -> Path:
    return beton_dir(data) / f"{split}.beton"


def prepare_command(data: DataConf) -> str:
    root = f" data.root={data.root}" if data.root else " data.root=/path/to/data"
    return f"python src/prepare.py data={data.name}{root}"


def beton_splits(data: DataConf) -> tuple[str, ...]:
    """The .beton files of a data set: a built-in set's training source and test set (its validation images are
    indices into train.beton); an image folder's train/ and val/, and test/ where the tree has one."""
    if dataset_kind(data.name).builtin:
        return ("train", "test")
    has_test = data.root is not None and (Path(data.root) / "test").is_dir()
    return ("train", "val", "test") if has_test else ("train", "val")


def beton_labels(path: str | Path) -> np.ndarray:
    """The label of every sample of a .beton (its second field), read from the file's metadata."""
    from ffcv.reader import Reader

    return np.asarray(Reader(str(path)).metadata["f1"]).astype(np.int64).reshape(-1)


def write_dataset(data: DataConf) -> dict[str, WriteResult]:
    """Write (or confirm up to date) every .beton of data set `data` (beton_splits) into beton_dir(data). Every split
    of an image folder is listed, and its classes checked against train/'s, before anything is written."""
    splits = beton_splits(data)
    if dataset_kind(data.name).builtin:
        from recondec.data.builtin import load_builtin

        arrays = dict(zip(splits, load_builtin(data.name, data.root, data.test_fraction)))
        return {s: write_arrays(arrays[s].images, arrays[s].labels, beton_path(data, s), data.ffcv) for s in splits}
    if not data.root:
        raise ValueError(f"data.root is not set: {prepare_command(data)}")
    try:  # every split listed (folders there, classes those of train/) before any file is written
        classes = list_classes(Path(data.root) / "train")
        listings = {s: list_split(data.root, s, classes) for s in splits}
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.root={data.root!r} is invalid: {e}") from None
    return {s: write_listing(listings[s], beton_path(data, s), data.ffcv, desc=s) for s in splits}
