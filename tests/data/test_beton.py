"""The .beton writer: round trips, every kind of bad input, atomic writes, skipping up-to-date files."""
from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recondec.config import WriteMode
from recondec.data import beton
from recondec.data.beton import write_arrays, write_listing
from recondec.data.images import BadImageError, list_classes, list_split

from .conftest import ffcv_conf, good_tree, smooth_image, stored

pytestmark = pytest.mark.timeout(120)  # ffcv's writer waits forever on a dead worker: never let a test hang


def _write_tree(root: Path, out: Path, split="train", **kw):
    listing = list_split(root, split, list_classes(root / "train"))
    return write_listing(listing, out / f"{split}.beton", ffcv_conf(out, **kw)), listing


def test_arrays_round_trip_exactly_in_raw_mode(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 9, 11, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 40).astype(np.int64)
    result = write_arrays(images, labels, tmp_path / "a.beton", ffcv_conf(tmp_path))
    assert (result.found, result.written, result.skipped) == (40, 40, 0)
    back = stored(tmp_path / "a.beton")
    assert np.array_equal(np.stack([im for im, _ in back]), images)
    assert [y for _, y in back] == labels.tolist()
    assert os.path.getsize(tmp_path / "a.beton") < 5 * 2 ** 20  # small page size for a small set


def test_folder_round_trip(tmp_path):
    root = good_tree(tmp_path / "src")
    result, listing = _write_tree(root, tmp_path / "out")
    assert (result.found, result.written, result.skipped) == (36, 36, 0)
    back = stored(tmp_path / "out" / "train.beton")
    for (path, label), (image, stored_label) in zip(listing.samples, back):
        assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB"))), path
        assert stored_label == label == ["cat", "dog", "fox"].index(Path(path).parent.name)


def test_jpg_mode_is_close(tmp_path):
    root = good_tree(tmp_path / "src")
    result, listing = _write_tree(root, tmp_path / "out", write_mode=WriteMode.jpg, jpeg_quality=95)
    for (path, _), (image, _) in zip(listing.samples, stored(tmp_path / "out" / "train.beton")):
        source = np.asarray(Image.open(path).convert("RGB")).astype(float)
        assert image.shape == source.shape and np.abs(image - source).mean() < 3


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def bad_tree(root: Path) -> dict[str, str]:
    """A tree with every kind of input; returns {file name: expected reason fragment} for the bad ones."""
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(smooth_image(rng, 40, 50))
    good = root / "train" / "good"
    for i in range(3):
        _save(good / f"{i}.jpg", Image.fromarray(smooth_image(rng, 40, 50)))
    mixed = root / "train" / "mixed"
    _save(mixed / "gray.jpg", rgb.convert("L"))
    _save(mixed / "cmyk.jpg", rgb.convert("CMYK"))
    rgba = rgb.convert("RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent: must come out white
    _save(mixed / "rgba.png", rgba)
    _save(mixed / "palette.png", rgb.convert("P"))
    _save(mixed / "palette_alpha.png", rgba.convert("P"))
    _save(mixed / "gray16.png", Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)))
    _save(mixed / "large.jpg", Image.fromarray(smooth_image(rng, 900, 1200)))  # above the (lowered) warning limit
    jpeg = (good / "0.jpg").read_bytes()
    (mixed / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (mixed / "corrupt.jpg").write_bytes(jpeg[:300] + b"\x00" * (len(jpeg) - 600) + jpeg[-300:])
    (mixed / "zero.jpg").write_bytes(b"")
    (mixed / "notes.jpg").write_text("not an image\n")
    _save(mixed / "locked.jpg", rgb)
    os.chmod(mixed / "locked.jpg", 0)
    os.symlink(root / "nowhere.jpg", mixed / "dangling.jpg")
    _save(mixed / "bomb.png", Image.new("RGB", (1500, 1500)))
    (mixed / "readme.txt").write_text("not an image extension: not a candidate\n")
    (root / "train" / "empty").mkdir()
    _save(root / "train" / "stray.jpg", rgb)  # beside the class folders: no label
    return {"truncated.jpg": "truncated", "corrupt.jpg": "corrupt", "zero.jpg": "empty file",
            "notes.jpg": "not an image", "locked.jpg": "unreadable", "dangling.jpg": "unreadable",
            "bomb.png": "decompression-bomb", "stray.jpg": "no label"}


@pytest.fixture
def locked_for_root(monkeypatch):
    """chmod 000 does not stop root: make opening locked.jpg fail as it would for anyone else."""
    if os.geteuid() == 0:
        real_open = builtins.open

        def open_(file, *args, **kwargs):
            mode = args[0] if args else kwargs.get("mode", "r")
            if str(file).endswith("locked.jpg") and mode in ("r", "rb"):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)  # forked writer workers inherit it


@pytest.fixture
def small_bomb_limit(monkeypatch):
    """A 1500x1500 image stands for a decompression bomb (PIL refuses > 2x the limit, warns above it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)


def test_bad_inputs_are_converted_or_skipped_and_reported(tmp_path, locked_for_root, small_bomb_limit, capsys):
    expected_bad = bad_tree(tmp_path / "src")
    result, listing = _write_tree(tmp_path / "src", tmp_path / "out")
    print(result.summary())
    names = [Path(p).name for p, _ in listing.samples]
    assert "readme.txt" not in names and len(names) == 3 + 7 + len(expected_bad)
    assert result.written + result.skipped == result.found == len(names)
    assert (result.written, result.skipped, result.empty_dirs) == (10, len(expected_bad), 1)
    lines = [line.split("\t") for line in Path(result.report).read_text().splitlines()[1:]]
    reasons = {Path(p).name: r for p, r in lines}
    assert reasons.pop("empty").startswith("empty class folder")
    assert set(reasons) == set(expected_bad)
    for name, fragment in expected_bad.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert "10 written + 8 skipped = 18 found, 1 empty class folders" in capsys.readouterr().out

    written = {Path(p).name: image for (p, _), image in
               zip([s for s in listing.samples if Path(s[0]).name not in expected_bad],
                   [im for im, _ in stored(tmp_path / "out" / "train.beton")])}
    gray = written["gray.jpg"]
    assert gray.ndim == 3 and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert tuple(written["rgba.png"][0, 0]) == (255, 255, 255)
    assert written["gray16.png"].max() > 200  # scaled from 16 bits, not clipped to white
    assert max(written["large.jpg"].shape[:2]) == 64  # downscaled to max_resolution
    assert written["cmyk.jpg"].shape == (40, 50, 3)


def test_strict_stops_at_the_first_bad_file(tmp_path):
    root = good_tree(tmp_path / "src")
    (root / "train" / "dog" / "005.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match=r"dog/005\.jpg: empty file"):
        _write_tree(root, tmp_path / "out", strict=True)
    assert not (tmp_path / "out" / "train.beton").exists()
    (root / "train" / "empty").mkdir()
    with pytest.raises(BadImageError, match="empty: empty class folder"):
        _write_tree(root, tmp_path / "out", strict=True)


def test_flat_val_folder_with_label_file(tmp_path):
    root = good_tree(tmp_path / "src", per_class=(2, 0))
    rng = np.random.default_rng(3)
    flat = root / "val"
    for c in ("cat", "dog", "fox"):
        (flat / c).rmdir()
    for i in range(5):
        _save(flat / f"v{i}.jpg", Image.fromarray(smooth_image(rng, 30, 30)))
    (root / "val_labels.txt").write_text("v0.jpg 2\nv1.jpg 0\nv2.jpg 1\nv3.jpg 7\n")  # v3: bad index, v4: none
    result, listing = _write_tree(root, tmp_path / "out", split="val")
    assert (result.found, result.written, result.skipped) == (5, 3, 2)
    assert [y for _, y in stored(tmp_path / "out" / "val.beton")] == [2, 0, 1]
    report = Path(result.report).read_text()
    assert "v3.jpg\tlabel 7 out of range" in report and "v4.jpg\tno label" in report


def test_rerun_skips_an_up_to_date_file(tmp_path):
    root = good_tree(tmp_path / "src")
    first, _ = _write_tree(root, tmp_path / "out")
    out = tmp_path / "out" / "train.beton"
    stamp = out.stat().st_mtime_ns
    again, _ = _write_tree(root, tmp_path / "out")
    assert again.up_to_date and again.written == first.written and out.stat().st_mtime_ns == stamp
    changed, _ = _write_tree(root, tmp_path / "out", jpeg_quality=80)  # another option: written again
    assert not changed.up_to_date and out.stat().st_mtime_ns != stamp
    os.utime(root / "train" / "cat" / "001.jpg", ns=(1, 1))  # a changed source file: written again
    assert not _write_tree(root, tmp_path / "out", jpeg_quality=80)[0].up_to_date


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


def test_a_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    root = good_tree(tmp_path / "src")
    out = tmp_path / "out"

    def interrupted(self, allocations):
        raise KeyboardInterrupt  # Ctrl-C after the samples are written, before the file is complete

    monkeypatch.setattr(DatasetWriter, "finalize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_tree(root, out)
    assert not (out / "train.beton").exists() and _no_temporaries(out)
    monkeypatch.undo()

    _write_tree(root, out)
    before = (out / "train.beton").read_bytes()
    monkeypatch.setattr(DatasetWriter, "finalize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_tree(root, out, jpeg_quality=70)
    assert (out / "train.beton").read_bytes() == before and _no_temporaries(out)


def test_a_file_that_breaks_after_the_check_fails_the_write_instead_of_hanging(tmp_path, monkeypatch):
    root = good_tree(tmp_path / "src")
    broken = root / "train" / "fox" / "004.jpg"
    broken.write_bytes(b"garbage")
    monkeypatch.setattr(beton, "check_images", lambda listing, opts, desc: [None] * len(listing.samples))
    with pytest.raises(RuntimeError, match=r"fox/004\.jpg"):
        _write_tree(root, tmp_path / "out")
    assert not (tmp_path / "out" / "train.beton").exists() and _no_temporaries(tmp_path / "out")


def _imagenet_val_tree(root: Path) -> None:
    """train/<wnid>/ class folders and a flat val/ of ILSVRC2012_val_<n>.JPEG files, as ImageNet ships them."""
    rng = np.random.default_rng(4)
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / wnid).mkdir(parents=True)
        _save(root / "train" / wnid / "t.JPEG", Image.fromarray(smooth_image(rng, 30, 30)))
    (root / "val").mkdir()
    for n in (1, 2, 3):
        _save(root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", Image.fromarray(smooth_image(rng, 30, 30)))


def test_flat_imagenet_val_folder_labelled_by_torchvisions_devkit_meta_file(tmp_path):
    import torch

    from recondec.data.images import list_classes, list_split

    _imagenet_val_tree(tmp_path)
    torch.save(({"n01440764": ("tench",), "n01443537": ("goldfish",)}, ["n01443537", "n01440764", "n01443537"]),
               tmp_path / "meta.bin")  # what torchvision's ImageNet writes from the devkit
    listing = list_split(tmp_path, "val", list_classes(tmp_path / "train"))
    assert [(Path(p).name, y) for p, y in listing.samples] == [
        ("ILSVRC2012_val_00000001.JPEG", 1), ("ILSVRC2012_val_00000002.JPEG", 0), ("ILSVRC2012_val_00000003.JPEG", 1)]


def test_flat_imagenet_val_folder_labelled_by_the_devkit_archive(tmp_path, monkeypatch):
    import tarfile

    import scipy.io
    import torchvision.datasets.imagenet

    from recondec.data.images import list_classes, list_split

    _imagenet_val_tree(tmp_path)
    data = tmp_path / "devkit" / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"]
    synsets = np.array([(1, "n01440764", "tench", "", 0), (2, "n01443537", "goldfish", "", 0),
                        (3, "n00000001", "fish", "", 2)], dtype=[(f, object) for f in fields])
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n2\n1\n")
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "devkit" / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    monkeypatch.setattr(torchvision.datasets.imagenet, "_verify_archive", lambda *a: None)  # a home-made archive
    listing = list_split(tmp_path, "val", list_classes(tmp_path / "train"))
    assert [y for _, y in listing.samples] == [1, 1, 0]
    assert (tmp_path / "meta.bin").is_file()  # parsed once, as torchvision does
