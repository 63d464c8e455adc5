"""ffcv and torchvision loaders: the same batches (shape, dtype, normalisation, labels), deadlines instead of
hangs, epoch order, built-in sets written on first use. Each ffcv Loader costs seconds of numba compilation:
the loaders are built once per module."""
from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from recondec.config import REPO_ROOT, DataConf, Loader, Order
from recondec.data import build_loaders, ten_crop_view_size
from recondec.data.beton import write_dataset
from recondec.data.ffcv_loader import GuardedLoader, LoaderStalled, ensure_betons

from .conftest import ffcv_conf, folder_conf, good_tree

BATCH, SIZE = 8, 32
timeout = pytest.mark.timeout(120)  # ffcv waits forever on a dead worker thread: every ffcv test has a hard limit


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("loaders")
    root = good_tree(base / "src")  # 3 classes, 12 train and 4 val images each
    write_dataset(folder_conf(root, base / "beton"))
    return root, base / "beton"


@pytest.fixture(scope="module")
def ffcv_loaders(tree):
    return build_loaders(folder_conf(*tree), SIZE, BATCH, seed=0, ten_crop=True)


@pytest.fixture(scope="module")
def tv_loaders(tree):
    return build_loaders(folder_conf(*tree, loader=Loader.torchvision), SIZE, BATCH, seed=0, ten_crop=True)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _labels(batches) -> list[int]:
    return torch.cat([y for _, y in batches]).tolist()


@timeout
@pytest.mark.slow
def test_ffcv_and_torchvision_give_the_same_kind_of_batches(tree, ffcv_loaders, tv_loaders):
    data = folder_conf(*tree)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std - 1e-4, (1 - mean) / std + 1e-4
    assert (ffcv_loaders.num_train, ffcv_loaders.num_val) == (tv_loaders.num_train, tv_loaders.num_val) == (36, 12)
    for split in ("train", "val"):
        ours, theirs = getattr(ffcv_loaders, split), getattr(tv_loaders, split)
        assert len(ours) == len(theirs) == (4 if split == "train" else 2)  # train drops the last partial batch
        a, b = _epoch(ours), _epoch(theirs)
        assert [tuple(x.shape) for x, _ in a] == [tuple(x.shape) for x, _ in b]
        assert a[0][0].shape == (BATCH, 3, SIZE, SIZE)
        for x, y in a + b:
            assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.ndim == 1
            assert (x >= lo).all() and (x <= hi).all() and x.min() < 0 < x.max()
        assert set(_labels(a)) == set(_labels(b)) == {0, 1, 2}
    val_a, val_b = _epoch(ffcv_loaders.val), _epoch(tv_loaders.val)
    assert _labels(val_a) == _labels(val_b)  # same files, same class indices, same (sequential) order
    mean_a = torch.cat([x for x, _ in val_a]).mean(dim=(0, 2, 3))
    mean_b = torch.cat([x for x, _ in val_b]).mean(dim=(0, 2, 3))
    assert torch.allclose(mean_a, mean_b, atol=0.1), (mean_a, mean_b)  # same normalisation, same centre crop


@timeout
@pytest.mark.slow
def test_ten_crop_view_is_the_whole_centre_square_at_256_over_224_scale(ffcv_loaders, tv_loaders):
    side = ten_crop_view_size(SIZE)
    assert side == 37 and ten_crop_view_size(224) == 256
    views = [_epoch(loaders.ten_crop) for loaders in (ffcv_loaders, tv_loaders)]
    for view, loaders in zip(views, (ffcv_loaders, tv_loaders)):
        assert [tuple(x.shape) for x, _ in view] == [(BATCH, 3, side, side), (4, 3, side, side)]
        assert _labels(view) == _labels(_epoch(loaders.val))  # the same images in the same order
    # the view's centre, cropped to SIZE, is close to the single-crop val image (both centre 224/256)
    centre = (side - SIZE) // 2
    for view, loaders in zip(views, (ffcv_loaders, tv_loaders)):
        single = torch.cat([x for x, _ in _epoch(loaders.val)])
        cropped = torch.cat([x for x, _ in view])[..., centre:centre + SIZE, centre:centre + SIZE]
        assert (cropped - single).abs().mean() < 0.15
    ffcv_view, tv_view = (torch.cat([x for x, _ in v]) for v in views)
    assert (ffcv_view - tv_view).abs().mean() < 0.15  # ffcv and torchvision cut the same square


@timeout
@pytest.mark.slow
def test_epoch_order_is_fixed_by_seed_and_epoch_and_resume_skips_batches(ffcv_loaders, tv_loaders):
    for loader in (ffcv_loaders.train, tv_loaders.train):
        loader.set_epoch(3)
        full = _labels(_epoch(loader))
        loader.set_epoch(3)
        assert _labels(_epoch(loader)) == full
        loader.set_epoch(4)
        assert _labels(_epoch(loader)) != full
        loader.set_epoch(3, skip_batches=2)
        assert _labels(_epoch(loader)) == full[2 * BATCH:]
        assert len(_epoch(loader)) == len(loader)  # skipping applies to one epoch only


@timeout
@pytest.mark.slow
# the injected exception is reported by the thread, and numba's cleanup after the dead thread prints a KeyError
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_error_in_an_ffcv_worker_becomes_an_error_naming_the_file(tree):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader as FFCVLoader
    from ffcv.pipeline.operation import Operation
    from ffcv.transforms import ToTensor

    class Boom(Operation):
        def generate_code(self):
            def boom(images, dst):
                raise RuntimeError("injected failure")
            return boom

        def declare_state_and_memory(self, previous_state):
            return replace(previous_state, jit_mode=False), None

    fname = str(tree[1] / "train.beton")
    ffcv = FFCVLoader(fname, batch_size=BATCH, num_workers=2, pipelines={
        "image": [CenterCropRGBImageDecoder((SIZE, SIZE), 1.0), ToTensor(), Boom()],
        "label": [IntDecoder(), ToTensor()]})
    start = time.monotonic()
    with pytest.raises(LoaderStalled, match=r"train\.beton failed in a worker thread: RuntimeError: injected"):
        next(iter(GuardedLoader(ffcv, fname, timeout_s=60)))
    assert time.monotonic() - start < 60  # reported when the thread dies, not at the deadline
    del ffcv
    gc.collect()  # numba's finalizers for the dead thread's compilation run here, under this test's filter


class _Stuck:
    """A loader whose batches never come (a worker died without a trace)."""

    def __len__(self):
        return 1

    def __iter__(self):
        threading.Event().wait()
        yield


def test_a_loader_that_delivers_nothing_times_out():
    start = time.monotonic()
    with pytest.raises(LoaderStalled, match=r"x\.beton delivered no batch within 0\.5 s"):
        next(iter(GuardedLoader(_Stuck(), "/data/x.beton", timeout_s=0.5)))
    assert time.monotonic() - start < 5


@timeout
@pytest.mark.slow
def test_builtin_set_is_written_on_first_use_and_split_as_the_memory_loader_splits_it(tmp_path):
    data = DataConf(name="digits", loader=Loader.ffcv, num_classes=10, train_limit=100, val_size=144,
                    labels_per_class=5, ffcv=ffcv_conf(tmp_path, order=Order.quasi_random))
    loaders = build_loaders(data, SIZE, BATCH, seed=0)
    assert (tmp_path / "train.beton").is_file() and (tmp_path / "test.beton").is_file()  # validation: in train
    assert (loaders.num_train, loaders.num_val, loaders.num_test) == (50, 144, 359)
    assert len(loaders.train) == 50 // BATCH
    x, y = next(iter(loaders.train))
    assert x.shape == (BATCH, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(np.unique(_labels(_epoch(loaders.val)))) == set(range(10))
    # the same images as the memory loader holds out, labels and leaves unlabelled
    memory = build_loaders(replace(data, loader=Loader.memory), SIZE, BATCH, seed=0).split
    for part in ("labelled", "val"):
        assert np.array_equal(getattr(loaders.split, part), getattr(memory, part)), part
    assert sorted(int(i) for i in loaders.val.loader.indices) == loaders.split.val.tolist()
    assert not set(loaders.split.val) & {int(i) for i in loaders.train.loader.indices}


def test_a_missing_folder_beton_says_how_to_write_it(tmp_path):
    data = folder_conf(good_tree(tmp_path / "src", per_class=(1, 1)), tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"python src/prepare\.py data=folder data\.root="):
        ensure_betons(data)


def test_quasi_random_with_distributed_falls_back_to_random(tmp_path):
    from ffcv.loader import OrderOption

    from recondec.data.ffcv_loader import _order

    data = DataConf(name="digits", loader=Loader.ffcv, num_classes=10, val_size=144,
                    ffcv=ffcv_conf(tmp_path, order=Order.quasi_random))
    with pytest.warns(UserWarning, match="quasi_random is not available with data.ffcv.distributed=true"):
        assert _order(data, distributed=True) is OrderOption.RANDOM
    assert _order(data, distributed=False) is OrderOption.QUASI_RANDOM


@timeout
@pytest.mark.slow
def test_prepare_command_writes_the_files(tmp_path):
    root = good_tree(tmp_path / "src", per_class=(3, 2))
    out = tmp_path / "beton"
    cmd = [sys.executable, str(REPO_ROOT / "src" / "prepare.py"), "data=folder", f"data.root={root}",
           "data.num_classes=3", f"data.ffcv.beton_dir={out}", "data.ffcv.num_workers=2"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "9 written + 0 skipped = 9 found" in run.stdout and (out / "val.beton").is_file()
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert again.stdout.count("up to date") == 2


def test_paper_era_crop_is_a_uniform_square_of_224_256_of_the_shorter_side():
    from recondec.data.ffcv_loader import VAL_CROP_RATIO, random_square_crop

    np.random.seed(0)
    crops = np.array([random_square_crop(300, 400, None, VAL_CROP_RATIO) for _ in range(2000)])
    side = int(300 * 224 / 256)
    assert (crops[:, 2] == side).all() and (crops[:, 3] == side).all()
    assert crops[:, 0].min() == 0 and crops[:, 0].max() == 300 - side  # every row offset reachable, none outside
    assert crops[:, 1].min() == 0 and crops[:, 1].max() == 400 - side


@timeout
@pytest.mark.slow
def test_both_image_loaders_train_on_paper_era_crops(tree):
    from recondec.config import TrainCrop

    for kind in (Loader.ffcv, Loader.torchvision):
        loaders = build_loaders(folder_conf(*tree, loader=kind), SIZE, BATCH, seed=0, train_crop=TrainCrop.resize_crop)
        x, y = next(iter(loaders.train))
        assert x.shape == (BATCH, 3, SIZE, SIZE) and torch.isfinite(x).all() and x.std() > 0
    steps = [type(t).__name__ for t in loaders.train.loader.dataset.dataset.transform.transforms]  # torchvision's
    assert steps[:3] == ["Resize", "RandomCrop", "RandomHorizontalFlip"]


def _rows(loader) -> list[int]:
    """The training-set rows a loader reads: ffcv's indices, or the torchvision Subset's."""
    if isinstance(loader, GuardedLoader):
        return [int(i) for i in loader.loader.indices]
    dataset = loader.loader.dataset
    while not hasattr(dataset, "indices"):  # the unlabelled stream wraps its Subset
        dataset = dataset.dataset
    return [int(i) for i in dataset.indices]


@timeout
@pytest.mark.slow
def test_image_folder_loaders_split_labelled_and_unlabelled_images_alike(tree):
    """data.labels_per_class on an image folder (stored class by class): K images of every class are labelled, the
    rest is the unlabelled stream; both loaders pick the same images."""
    split = {}
    for kind in (Loader.torchvision, Loader.ffcv):
        loaders = build_loaders(replace(folder_conf(*tree, loader=kind), labels_per_class=4), SIZE, BATCH, seed=0,
                                unlabelled_batch_size=4)
        labelled, unlabelled = _rows(loaders.train), _rows(loaders.unlabelled)
        assert loaders.num_train == 12 and len(loaders.unlabelled) == 24 // 4
        assert sorted(labelled + unlabelled) == list(range(36)) and not set(labelled) & set(unlabelled)
        split[kind] = labelled, loaders
    assert split[Loader.torchvision][0] == split[Loader.ffcv][0]
    tv = split[Loader.torchvision][1]
    targets = tv.train.loader.dataset.dataset.targets  # ImageFolder's class per row
    assert sorted(targets[i] for i in split[Loader.torchvision][0]) == [0] * 4 + [1] * 4 + [2] * 4
    for loaders in (tv, split[Loader.ffcv][1]):  # every builder's unlabelled stream hides its labels
        x, y = next(iter(loaders.unlabelled))
        assert x.shape == (4, 3, SIZE, SIZE) and bool((y == -1).all())
    assert bool((next(iter(split[Loader.ffcv][1].train))[1] >= 0).all())


@timeout
@pytest.mark.slow
def test_every_loader_is_a_batch_loader_that_skips_the_batches_a_resume_asks_it_to(ffcv_loaders, tv_loaders):
    from recondec.data import BatchLoader

    memory = build_loaders(DataConf(name="digits", num_classes=10, val_size=144), SIZE, BATCH, seed=0).train
    for loader in (memory, ffcv_loaders.train, tv_loaders.train, ffcv_loaders.val, tv_loaders.val):
        assert isinstance(loader, BatchLoader), type(loader)
        loader.set_epoch(3)
        full = _epoch(loader)
        loader.set_epoch(3, skip_batches=2)
        rest = _epoch(loader)
        assert len(full) == len(loader) and len(rest) == len(full) - 2, type(loader)
        assert [y.tolist() for _, y in rest] == [y.tolist() for _, y in full[2:]], type(loader)  # none when len 2
