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
import multiprocessing
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from recondec.config import REPO_ROOT, ConfigError, DataConf, FFCVConf, dataset_kind

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
VAL_LABEL_FILES = ("val_labels.txt", "val.txt")  # for a flat val/ folder: "<file name> <class index>" per line
SMART_THRESHOLD = 3 * 96 * 96  # write_mode=smart: raw pixels up to ~96x96 (decoding is a copy), JPEG above
MIN_PAGE = 1 << 21             # ffcv's minimum page size (2 MiB)
LARGE_SET_PAGE = 1 << 23       # ffcv's default (8 MiB), for sets where the file size does not matter
FORMAT_VERSION = 1             # bump when the written content changes for the same inputs


class BadImageError(ValueError):
    """A bad input with data.ffcv.strict=true; the message names the file and the reason."""


@dataclass
class Listing:
    samples: list[tuple[str, int]]  # (path, label) of every file found, in a fixed order
    classes: list[str]
    empty_dirs: list[str]           # class folders without an image file


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


# ---------------------------------------------------------------- reading and converting one image

def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited on white rather than exposing hidden colours."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # 16/32-bit gray: convert("RGB") would clip everything above 255
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1


def read_rgb(fp: BinaryIO, max_resolution: Optional[int] = None) -> Image.Image:
    """Decode and convert to RGB; with max_resolution, the longer side is at most that many pixels.

    PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS (a decompression-bomb guard); images between the
    warning and that limit are decoded (JPEG at a reduced scale) and downscaled, so the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(fp)
        if max_resolution:
            img.draft(None, (max_resolution, max_resolution))  # JPEG: decode at 1/2..1/8 scale when large
        img.load()
    img = to_rgb(img)
    if max_resolution and max(img.size) > max_resolution:
        img.thumbnail((max_resolution, max_resolution), Image.Resampling.LANCZOS)
    return img


def open_rgb(path: str) -> Image.Image:
    """The torchvision fallback's loader: the same conversions as the writer, at full size."""
    with open(path, "rb") as f:
        return read_rgb(f)


def check_image(path: str, max_resolution: Optional[int]) -> Optional[str]:
    """None when the image converts; otherwise why it is skipped."""
    try:
        f = open(path, "rb")
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    with f:
        try:
            if os.fstat(f.fileno()).st_size == 0:
                return "empty file (0 bytes)"
            read_rgb(f, max_resolution)
        except Image.DecompressionBombError as e:
            return f"too large (decompression-bomb guard): {e}"
        except UnidentifiedImageError:
            return "not an image (unrecognised format)"
        except MemoryError:
            return "too large to decode (out of memory)"
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
            return f"corrupt or truncated: {type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------- listing the source

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[str]:
    """Image files (any non-folder entry: broken links count, and are reported) below `folder`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, n) for n in sorted(filenames) if _is_image(n))
    return found


def list_classes(train_dir: Path) -> list[str]:
    """Class folder names, sorted as torchvision's ImageFolder sorts them (so the indices agree)."""
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} is not a folder: expected <root>/train/<class>/<image files>")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"{train_dir} has no class folders: expected <root>/train/<class>/<image files>")
    return classes


def find_label_file(split_dir: Path) -> Optional[Path]:
    for name in VAL_LABEL_FILES:
        for candidate in (split_dir.parent / name, split_dir / name):
            if candidate.is_file():
                return candidate
    return None


def list_split(root: str | Path, split: str, classes: Sequence[str]) -> Listing:
    """The files of <root>/<split>: class folders, or (flat) one folder plus a label file."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is not a folder")
    if any(e.is_dir() for e in os.scandir(split_dir)):
        return _list_class_folders(split_dir, classes)
    return _list_flat(split_dir, classes)


def _list_class_folders(split_dir: Path, classes: Sequence[str]) -> Listing:
    unknown = sorted({e.name for e in os.scandir(split_dir) if e.is_dir()} - set(classes))
    if unknown:
        raise ValueError(f"{split_dir} has class folders that train/ does not have: {unknown[:5]}")
    # an image beside the class folders has no label: it is reported, not dropped
    samples = [(os.path.join(split_dir, e.name), -1) for e in sorted(os.scandir(split_dir), key=lambda e: e.name)
               if not e.is_dir() and _is_image(e.name)]
    empty = []
    for label, name in enumerate(classes):
        files = _images_under(split_dir / name) if (split_dir / name).is_dir() else []
        if not files and (split_dir / name).is_dir():
            empty.append(str(split_dir / name))
        samples.extend((p, label) for p in files)
    return Listing(samples, list(classes), empty)


def devkit_val_labels(split_dir: Path, classes: Sequence[str]) -> Optional[dict[str, int]]:
    """ILSVRC-2012's validation labels from the official devkit, read as torchvision's ImageNet reads them: its
    meta.bin in <root>, or the devkit archive ILSVRC2012_devkit_t12.tar.gz in <root> (checksum-verified and
    parsed into meta.bin once, by torchvision). The ground truth gives the class of ILSVRC2012_val_<n>.JPEG."""
    from torchvision.datasets.imagenet import ARCHIVE_META, META_FILE, load_meta_file, parse_devkit_archive

    root = split_dir.parent
    if not (root / META_FILE).is_file():
        if not (root / ARCHIVE_META["devkit"][0]).is_file():
            return None
        parse_devkit_archive(str(root))
    _, val_wnids = load_meta_file(str(root))
    index = {wnid: i for i, wnid in enumerate(classes)}  # class folders are named by WordNet id
    labels = {}
    for path in _images_under(split_dir):
        number = re.fullmatch(r"ILSVRC2012_val_(\d{8})\.JPEG", os.path.basename(path))
        if number and 0 < int(number[1]) <= len(val_wnids):
            labels[os.path.relpath(path, split_dir)] = index.get(val_wnids[int(number[1]) - 1], -1)
    return labels


def _label_file_labels(label_file: Path) -> dict[str, int]:
    labels = {}
    for line in label_file.read_text().splitlines():
        if line.strip():
            name, index = line.rsplit(maxsplit=1)
            labels[name] = int(index)
    return labels


def _list_flat(split_dir: Path, classes: Sequence[str]) -> Listing:
    label_file = find_label_file(split_dir)
    labels = _label_file_labels(label_file) if label_file else devkit_val_labels(split_dir, classes)
    if labels is None:
        raise FileNotFoundError(f"{split_dir} has no class folders, no label file ({' or '.join(VAL_LABEL_FILES)} "
                                "next to it: '<file name> <class index>' per line) and no ImageNet devkit "
                                f"(ILSVRC2012_devkit_t12.tar.gz or torchvision's meta.bin in {split_dir.parent})")
    files = _images_under(split_dir)
    samples = [(p, labels.get(os.path.relpath(p, split_dir), -1)) for p in files]
    missing = len(set(labels) - {os.path.relpath(p, split_dir) for p in files})
    if missing:
        print(f"warning: {missing} files named in {label_file or 'the devkit'} do not exist in {split_dir}")
    return Listing(samples, list(classes), [])


def label_problem(label: int, num_classes: int) -> Optional[str]:
    if label == -1:
        return "no label (not in a class folder, or not named in the label file)"
    if not 0 <= label < num_classes:
        return f"label {label} out of range [0, {num_classes})"
    return None


# ---------------------------------------------------------------- validation pass

def _check(item: tuple[str, int, int, Optional[int]]) -> Optional[str]:
    path, label, num_classes, max_resolution = item
    return label_problem(label, num_classes) or check_image(path, max_resolution)


def worker_count(opts: FFCVConf) -> int:
    return max(1, min(opts.num_workers, os.cpu_count() or 1))  # more processes than cores only add overhead


def validate(listing: Listing, opts: FFCVConf, desc: str) -> list[Optional[str]]:
    """One reason (or None) per sample, checked in parallel; strict: raise at the first bad one."""
    items = [(p, y, len(listing.classes), opts.max_resolution) for p, y in listing.samples]
    workers = worker_count(opts)
    with (multiprocessing.Pool(workers) if workers > 1 else _InProcess()) as pool:
        reasons = []
        for (path, _), reason in tqdm(zip(listing.samples, pool.imap(_check, items, chunksize=16)),
                                      total=len(items), desc=f"checking {desc}", unit="img"):
            if reason is not None and opts.strict:
                raise BadImageError(f"{path}: {reason} (data.ffcv.strict=true stops at the first bad image)")
            reasons.append(reason)
    return reasons


class _InProcess:
    """Pool stand-in for one worker: no process start-up, and errors keep their traceback."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


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
    stats = [(p, y, *_stat(p)) for p, y in listing.samples]
    fingerprint = _fingerprint({"classes": listing.classes, "files": stats, "empty": listing.empty_dirs}, opts)
    record = up_to_date(path, fingerprint)
    if record is not None:
        return WriteResult(**{**{k: record[k] for k in ("found", "written", "skipped", "empty_dirs", "report")},
                              "path": str(path), "up_to_date": True})
    if listing.empty_dirs and opts.strict:
        raise BadImageError(f"{listing.empty_dirs[0]}: empty class folder (data.ffcv.strict=true)")
    path.parent.mkdir(parents=True, exist_ok=True)
    reasons = validate(listing, opts, desc or path.name)
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


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


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
