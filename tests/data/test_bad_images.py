"""Image folders with files that do not decode, read by the torchvision loader: refused before any MLflow run
(data.bad_images=refuse, the default) or left out and listed in the run (skip); the check is cached per folder."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recondec.checks import validate
from recondec.config import BadImages, ConfigError, Loader, refusing_bad_values
from recondec.data import build_loaders, images
from recondec.data.folder_check import cache_dir, check_image_folders
from recondec.job import JobInfo
from recondec.run import run_job

from ..conftest import TINY
from ..helpers import artifact_paths, runs_of
from .conftest import folder_conf, good_tree

GOOD_TRAIN, GOOD_VAL = 3 * 8, 3 * 4  # good_tree's images: 3 classes, 8 training and 4 validation images each


def bad_folder(root: Path) -> dict[str, str]:
    """good_tree plus a zero-byte JPEG and a truncated JPEG in train/, a text file named .jpg in val/; returns
    {path: what its reason says}."""
    good_tree(root, per_class=(8, 4))
    jpeg = (root / "train" / "dog" / "001.jpg").read_bytes()
    bad = {root / "train" / "cat" / "zero.jpg": "empty file", root / "train" / "dog" / "truncated.jpg": "truncated",
           root / "val" / "fox" / "notes.jpg": "not an image"}
    (root / "train" / "cat" / "zero.jpg").write_bytes(b"")
    (root / "train" / "dog" / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "val" / "fox" / "notes.jpg").write_text("not an image\n")
    return {str(p): reason for p, reason in bad.items()}


def folder_job(root: Path, *extra: str) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.loader=torchvision", "data.num_workers=0",
            "backbone.image_size=32", *TINY, "schedule.batch_size=8", "schedule.decoder.epochs=0",
            "logger.experiment=folder", *extra]


def all_runs(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_bad_images_are_refused_in_one_line_naming_them_before_any_mlflow_run(compose_cfg, tmp_path, capsys):
    bad = bad_folder(tmp_path / "tree")
    overrides = folder_job(tmp_path / "tree")
    with pytest.raises(SystemExit) as stop, refusing_bad_values():  # as src/main.py reports a bad value
        run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    assert stop.value.code == 2
    out = capsys.readouterr().err
    (err,) = [line for line in out.splitlines() if line.startswith("error:")]  # besides it: the check's progress bar
    assert err.startswith("error: data.root=") and "Traceback" not in out
    assert "3 of its 39 image files do not decode" in err and "data.bad_images=skip" in err
    for path, reason in bad.items():
        assert reason in err[err.index(f"{path} ("):].split(", /")[0], path  # the path, then why
    assert all_runs(tmp_path / "mlflow.db") == []


def test_skip_trains_without_them_and_lists_them_in_the_runs_bad_images_tsv(compose_cfg, tmp_path, caplog):
    bad = bad_folder(tmp_path / "tree")
    overrides = folder_job(tmp_path / "tree", "data.bad_images=skip")
    cfg = validate(compose_cfg(*overrides))
    with caplog.at_level(logging.WARNING):
        result = run_job(cfg, JobInfo(overrides=overrides))
    assert "3 of the 39 image files" in caplog.text and "left out" in caplog.text
    (run,) = runs_of(tmp_path / "mlflow.db", "folder")
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert "bad_images.tsv" in artifact_paths(tmp_path / "mlflow.db", run.info.run_id)
    listed = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
        run.info.run_id, "bad_images.tsv", str(tmp_path / "downloaded"))
    header, *rows = Path(listed).read_text().splitlines()
    assert header == "path\treason" and {row.split("\t")[0] for row in rows} == set(bad)
    loaders = build_loaders(cfg.data, 32, 8, seed=0)  # the job's data sets: what it trained and validated on
    train, val = loaders.train.loader.dataset.dataset, loaders.val.loader.dataset
    assert (loaders.num_train, loaders.num_val) == (GOOD_TRAIN, GOOD_VAL)
    assert not {p for p, _ in train.samples + val.samples} & set(bad)


def test_the_loader_itself_refuses_bad_images_by_default(tmp_path):
    bad_folder(tmp_path / "tree")
    with pytest.raises(ConfigError, match="data.bad_images=skip"):
        build_loaders(folder_conf(tmp_path / "tree", tmp_path / "beton", loader=Loader.torchvision), 32, 8, seed=0)


def test_the_ffcv_path_is_left_to_its_writer(compose_cfg, tmp_path, monkeypatch):
    """data.loader=ffcv: no check at validation (the .beton writer skips bad files and lists them in
    <beton>.report.tsv, tests/data/test_beton.py)."""
    bad_folder(tmp_path / "tree")
    opened = []
    monkeypatch.setattr(images, "check_image", lambda path, size: opened.append(path))
    validate(compose_cfg(*folder_job(tmp_path / "tree", "data.loader=ffcv")))
    assert opened == []


@pytest.fixture
def counted_checks(monkeypatch, tmp_path) -> list[str]:
    """The paths check_image opens (in this process: data.num_workers=0), with a cache of the test's own."""
    monkeypatch.setenv("RECONDEC_CACHE_DIR", str(tmp_path / "cache"))
    opened, real = [], images.check_image
    monkeypatch.setattr(images, "check_image", lambda path, size: opened.append(path) or real(path, size))
    return opened


def test_the_check_is_cached_per_folder_until_its_listing_changes(tmp_path, counted_checks):
    bad = bad_folder(tmp_path / "tree")
    data = folder_conf(tmp_path / "tree", tmp_path / "beton", loader=Loader.torchvision)
    data.bad_images, data.num_workers = BadImages.skip, 0
    first = check_image_folders(data)
    assert (first.checked, len(counted_checks), {p for p, _ in first.bad}) == (39, 39, set(bad))
    assert sorted(p.parent for p in cache_dir().glob("*.json")) == [tmp_path / "cache" / "image_checks"] * 2

    counted_checks.clear()
    assert check_image_folders(data) == first and counted_checks == []  # unchanged: nothing opened

    truncated = tmp_path / "tree" / "train" / "dog" / "truncated.jpg"
    truncated.write_bytes((tmp_path / "tree" / "train" / "dog" / "001.jpg").read_bytes())  # repaired: a new size
    after_repair = check_image_folders(data)
    assert len(counted_checks) == 26 and all("/train/" in p for p in counted_checks)  # train/ again, val/ cached
    assert {p for p, _ in after_repair.bad} == set(bad) - {str(truncated)}

    counted_checks.clear()
    notes = tmp_path / "tree" / "val" / "fox" / "notes.jpg"
    os.utime(notes, ns=(notes.stat().st_atime_ns, notes.stat().st_mtime_ns + 10**9))  # touched: same size
    check_image_folders(data)
    assert len(counted_checks) == 13 and all("/val/" in p for p in counted_checks)


def test_worker_processes_find_what_one_process_finds(tmp_path):
    bad = bad_folder(tmp_path / "tree")
    data = folder_conf(tmp_path / "tree", tmp_path / "beton", loader=Loader.torchvision)
    data.bad_images, data.num_workers = BadImages.skip, 2
    found = check_image_folders(data)
    assert {p: r for p, r in found.bad}.keys() == bad.keys()
    for path, reason in found.bad:
        assert bad[path] in reason
