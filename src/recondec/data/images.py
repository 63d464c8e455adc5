"""Image-folder trees and the images in them: listing a split (class folders, or a flat folder with a label
file), opening any image as RGB, and checking every image of a listing in parallel. Used by the .beton writer,
the torchvision loader and the configuration checks alike, so all three see the same files the same way."""
from __future__ import annotations

import multiprocessing
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from recondec.config import FFCVConf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
VAL_LABEL_FILES = ("val_labels.txt", "val.txt")  # for a flat val/ folder: "<file name> <class index>" per line


class BadImageError(ValueError):
    """A bad input with data.ffcv.strict=true; the message names the file and the reason."""


@dataclass
class Listing:
    samples: list[tuple[str, int]]  # (path, label) of every file found, in a fixed order
    classes: list[str]
    empty_dirs: list[str]           # class folders without an image file


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


def _check_file(item: tuple[str, Optional[int]]) -> Optional[str]:
    return check_image(*item)


def worker_count(opts: FFCVConf) -> int:
    return max(1, min(opts.num_workers, os.cpu_count() or 1))  # more processes than cores only add overhead


def _pool(workers: int):
    return multiprocessing.Pool(workers) if workers > 1 else _InProcess()


def check_images(listing: Listing, opts: FFCVConf, desc: str) -> list[Optional[str]]:
    """One reason (or None) per sample, checked in parallel; strict: raise at the first bad one."""
    items = [(p, y, len(listing.classes), opts.max_resolution) for p, y in listing.samples]
    with _pool(worker_count(opts)) as pool:
        reasons = []
        for (path, _), reason in tqdm(zip(listing.samples, pool.imap(_check, items, chunksize=16)),
                                      total=len(items), desc=f"checking {desc}", unit="img"):
            if reason is not None and opts.strict:
                raise BadImageError(f"{path}: {reason} (data.ffcv.strict=true stops at the first bad image)")
            reasons.append(reason)
    return reasons


def check_files(paths: Sequence[str], workers: int, desc: str,
                max_resolution: Optional[int] = None) -> list[Optional[str]]:
    """check_image's reason (or None) for each path, in `workers` processes (labels are not its business)."""
    with _pool(workers) as pool:
        return list(tqdm(pool.imap(_check_file, [(p, max_resolution) for p in paths], chunksize=16),
                         total=len(paths), desc=f"checking {desc}", unit="img"))


def file_stat(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file, (-1, -1) when it cannot be read: what says a file changed since a check."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


class _InProcess:
    """Pool stand-in for one worker: no process start-up, and errors keep their traceback."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)
