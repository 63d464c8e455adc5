"""ffcv loaders over train.beton / val.beton, guarded so that a stalled pipeline raises instead of hanging.

Train: RandomResizedCrop in the decoder, then a horizontal flip; val: a centre crop of 224/256 of the shorter
side, resized. Images are normalised with data.mean / data.std (0-1 scale). On CPU, NormalizeImage comes
right after the decoder (after ToTorchImage it loops forever, ffcv issue #396) and batches are float32.
Training batches are channels_last-strided views of ffcv's NHWC buffers (shape (N, 3, S, S) all the same):
the NHWC -> NCHW copy runs in ffcv's one Python thread and halves the throughput on 2 cores; the trainer's
`.to(memory_format=...)` makes whatever layout it needs. Validation batches are contiguous.
On GPU: ToDevice, channels_last and fp16 normalisation on the device (needs cupy), then a cast to float32
on the device, because every loader hands out float32.

ffcv reuses a small ring of output buffers: a batch stays valid while the next few batches are loaded, so
clone it to keep it longer.
"""
from __future__ import annotations

import importlib.util
import queue
import threading
import time
import warnings
import weakref
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from recondec.config import DataConf, Order, TrainCrop, dataset_kind
from recondec.data.base import Loaders, assemble_loaders, ten_crop_view_size
from recondec.data.beton import beton_labels, beton_path, beton_splits, prepare_command, write_dataset
from recondec.data.splits import split_training_set

VAL_CROP_RATIO = 224 / 256

# exceptions that killed ffcv's EpochIterator threads (ffcv swallows them and its consumer waits forever)
_thread_errors: "weakref.WeakKeyDictionary[threading.Thread, BaseException]" = weakref.WeakKeyDictionary()
_previous_excepthook = threading.excepthook


def _record_thread_error(args) -> None:
    if args.thread is not None and args.exc_value is not None:
        _thread_errors[args.thread] = args.exc_value
    _previous_excepthook(args)


def _install_thread_hook() -> None:
    """Record the exceptions of dying threads (chained to the hook before it); installed by the first loader that
    needs it, not by importing this module."""
    global _previous_excepthook
    if threading.excepthook is not _record_thread_error:
        _previous_excepthook, threading.excepthook = threading.excepthook, _record_thread_error


class LoaderStalled(RuntimeError):
    """No batch within data.ffcv.batch_timeout_s, or an ffcv worker died; the message names the .beton file."""


class GuardedLoader:
    """The loader protocol over an ffcv Loader: int64 labels, float32 images, a deadline per batch.

    The ffcv iterator runs behind a relay thread that fetches one batch per request (so no extra batch is
    buffered, which ffcv's buffer ring would overwrite); the consumer waits for each batch at most
    `timeout_s` and fails at once when ffcv's worker thread has died with an exception.
    """

    def __init__(self, loader, fname: str, timeout_s: float, poll_s: float = 0.2, labelled: bool = True):
        self.loader, self.fname, self.timeout_s, self.poll_s = loader, fname, timeout_s, poll_s
        self.labelled = labelled  # False: labels read -1, as the other builders' unlabelled streams
        self.skip_batches = 0
        _install_thread_hook()

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The sample order is a function of (seed, epoch); resuming skips batches without decoding them."""
        self.loader.next_epoch = epoch
        self.skip_batches = skip_batches

    def _epoch_iterator(self):
        if not self.skip_batches:
            return iter(self.loader)
        from ffcv.loader.epoch_iterator import EpochIterator

        # as ffcv's Loader.__iter__, minus the batches already seen
        bs, loader = self.loader.batch_size, self.loader
        order = loader.next_traversal_order()[:len(loader) * bs][self.skip_batches * bs:]
        loader.next_epoch += 1
        if len(order) == 0:  # every batch skipped: ffcv's page cache cannot be built for no pages
            return iter(())
        if loader.code is None:
            loader.generate_code()
        return EpochIterator(loader, order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        source = self._epoch_iterator()
        self.skip_batches = 0
        relay = _Relay(source)
        try:
            while (batch := self._next_batch(relay, source)) is not None:
                images, labels = batch
                labels = labels.reshape(-1).long()
                yield images.float(), labels if self.labelled else torch.full_like(labels, -1)
        finally:
            relay.stop()
            if isinstance(source, threading.Thread):  # ffcv's EpochIterator; else it would wait for __del__
                source.close()

    def _next_batch(self, relay: "_Relay", source):
        """The next batch, None at the end; LoaderStalled past the deadline or as soon as ffcv's thread died."""
        relay.request()
        start = dead_since = time.monotonic()
        while (reply := relay.reply(self.poll_s)) is None:
            worker = source if isinstance(source, threading.Thread) else None
            cause = _thread_errors.get(worker) if worker is not None else None
            if worker is None or worker.is_alive():
                dead_since = time.monotonic()
            # a finished worker has queued its end marker: dead and silent for a while means it died
            died = time.monotonic() - dead_since > 10 * self.poll_s
            if cause is not None or died or time.monotonic() - start > self.timeout_s:
                raise self._stalled(cause, died) from cause
        kind, value = reply
        if kind == "error":
            raise value
        return value if kind == "item" else None

    def _stalled(self, cause: Optional[BaseException], died: bool = False) -> LoaderStalled:
        if cause is not None or died:
            what = f"{type(cause).__name__}: {cause}" if cause is not None else "it died (error not captured)"
            return LoaderStalled(f"the ffcv loader of {self.fname} failed in a worker thread: {what}")
        return LoaderStalled(f"the ffcv loader of {self.fname} delivered no batch within {self.timeout_s:g} s "
                             "(data.ffcv.batch_timeout_s): an ffcv worker probably failed (ffcv swallows their "
                             "errors); check the file, or rewrite it with src/prepare.py")

    @property
    def num_samples(self) -> int:
        return len(self.loader.indices)


class _Relay:
    """Calls next() on an iterator in a daemon thread, one item per request, so the caller can time out."""

    _STOP = object()

    def __init__(self, iterator):
        self.iterator = iterator
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True, name="ffcv-relay").start()

    def _serve(self) -> None:
        while self.requests.get() is not self._STOP:
            try:
                self.replies.put(("item", next(self.iterator)))
            except StopIteration:
                self.replies.put(("end", None))
                return
            except BaseException as e:
                self.replies.put(("error", e))
                return

    def request(self) -> None:
        self.requests.put(True)

    def reply(self, wait_s: float):
        """("item", x), ("end", None) or ("error", exception); None when nothing came within wait_s."""
        try:
            return self.replies.get(timeout=wait_s)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.requests.put(self._STOP)


# ---------------------------------------------------------------- pipelines

def _on_gpu(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def image_pipeline(decoder, device: str, mean: Sequence[float], std: Sequence[float], flip: bool,
                   channels_last: bool) -> list:
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    mean255, std255 = np.array(mean) * 255, np.array(std) * 255  # NormalizeImage works on the 0-255 scale
    ops = [decoder] + ([RandomHorizontalFlip()] if flip else [])
    if _on_gpu(device) and importlib.util.find_spec("cupy") is not None:
        return ops + [ToTensor(), ToDevice(torch.device(device), non_blocking=True), ToTorchImage(channels_last=True),
                      NormalizeImage(mean255, std255, np.float16)]
    ops += [NormalizeImage(mean255, std255, np.float32), ToTensor()]  # normalise before ToTensor: see module doc
    if _on_gpu(device):
        ops.append(ToDevice(torch.device(device), non_blocking=True))
    return ops + [ToTorchImage(channels_last=channels_last or _on_gpu(device))]


def label_pipeline(device: str) -> list:
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze()]
    return ops + ([ToDevice(torch.device(device), non_blocking=True)] if _on_gpu(device) else [])


def _order(data: DataConf, distributed: bool):
    from ffcv.loader import OrderOption

    order = data.ffcv.order
    if order is Order.quasi_random and distributed:
        warnings.warn("data.ffcv.order=quasi_random is not available with data.ffcv.distributed=true in ffcv; "
                      "using random", stacklevel=3)
        order = Order.random
    return {Order.random: OrderOption.RANDOM, Order.quasi_random: OrderOption.QUASI_RANDOM,
            Order.sequential: OrderOption.SEQUENTIAL}[order]


def _distributed(data: DataConf, world_size: int) -> bool:
    if data.ffcv.distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("data.ffcv.distributed=true shards through torch.distributed, whose process group is "
                           "not initialised in this process")
    if world_size > 1 and not data.ffcv.distributed:
        warnings.warn(f"{world_size} ranks with data.ffcv.distributed=false: every rank reads the whole data set",
                      stacklevel=3)
    return data.ffcv.distributed


def _indices(fname: str, limit: Optional[int]) -> np.ndarray:
    from ffcv.reader import Reader

    n = Reader(fname).num_samples
    return np.arange(int(n) if limit is None else min(limit, int(n)))  # int64: a uint64 count would index as float


def ensure_betons(data: DataConf) -> dict[str, str]:
    """The paths of the data set's .beton files (beton_splits); built-in sets are written on first use, other
    sets need prepare.py."""
    paths = {s: beton_path(data, s) for s in beton_splits(data)}
    if all(p.is_file() for p in paths.values()):
        return {s: str(p) for s, p in paths.items()}
    if not dataset_kind(data.name).builtin:
        missing = [str(p) for p in paths.values() if not p.is_file()]
        raise FileNotFoundError(f"{' and '.join(missing)} not found: write the .beton files first with "
                                f"`{prepare_command(data)}`")
    for result in write_dataset(data).values():
        print(result.summary())
    return {s: str(p) for s, p in paths.items()}


def train_decoder(size: tuple[int, int], crop: TrainCrop):
    """ffcv's RandomResizedCrop, or the paper era's crop: a random square of 224/256 of the shorter side, resized
    to `size` (the same pixels as resizing the shorter side to 256/224 x size and cropping size x size)."""
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, ResizedCropRGBImageDecoder

    if crop is TrainCrop.random_resized:
        return RandomResizedCropRGBImageDecoder(size)

    class ResizeCropDecoder(ResizedCropRGBImageDecoder):
        scale, ratio = None, VAL_CROP_RATIO

        @property
        def get_crop_generator(self):
            return random_square_crop

    return ResizeCropDecoder(size)


def random_square_crop(height, width, _scale, ratio):
    """(i, j, h, w) of a uniformly placed square whose side is `ratio` x the shorter side (compiled by numba)."""
    side = int(ratio * min(height, width))
    i = int(np.random.uniform(0, height - side + 1))
    j = int(np.random.uniform(0, width - side + 1))
    return i, j, side, side


def build_ffcv_loaders(data: DataConf, image_size: int, batch_size: int, seed: int, *, device: str = "cpu",
                       rank: int = 0, world_size: int = 1, ten_crop: bool = False,
                       train_crop: TrainCrop = TrainCrop.random_resized, unlabelled_batch_size: int = 0) -> Loaders:
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    paths = ensure_betons(data)
    distributed = _distributed(data, world_size)
    size = (image_size, image_size)
    common = dict(batch_size=batch_size, num_workers=data.num_workers, os_cache=data.ffcv.os_cache,
                  distributed=distributed, seed=seed)
    builtin = dataset_kind(data.name).builtin  # its validation images are held out of train.beton
    split = split_training_set(beton_labels(paths["train"]), data, seed, holdout=builtin)
    timeout = data.ffcv.batch_timeout_s

    def train_loader(rows: np.ndarray, batch: int, order_seed: int, labelled: bool) -> GuardedLoader:
        # an unlabelled stream is the same pipeline, its labels replaced by -1
        loader = Loader(paths["train"], order=_order(data, distributed), drop_last=True, indices=rows,
                        **{**common, "batch_size": batch, "seed": order_seed},
                        pipelines={"image": image_pipeline(train_decoder(size, train_crop), device, data.mean,
                                                           data.std, flip=True, channels_last=True),
                                   "label": label_pipeline(device)})
        return GuardedLoader(loader, paths["train"], timeout, labelled=labelled)

    def eval_loader(path: str, rows: np.ndarray, side: int, crop_ratio: float) -> GuardedLoader:
        """The centre square of crop_ratio x the shorter side, resized to side x side."""
        loader = Loader(path, order=OrderOption.SEQUENTIAL, drop_last=False, indices=rows, **common,
                        pipelines={"image": image_pipeline(CenterCropRGBImageDecoder((side, side), crop_ratio),
                                                           device, data.mean, data.std, flip=False,
                                                           channels_last=False),
                                   "label": label_pipeline(device)})
        return GuardedLoader(loader, path, timeout)

    val_path = paths["train"] if builtin else paths["val"]
    val_rows = split.val[:data.val_limit] if builtin else _indices(paths["val"], data.val_limit)
    val = eval_loader(val_path, val_rows, image_size, VAL_CROP_RATIO)
    test_rows = _indices(paths["test"], data.test_limit) if "test" in paths else None
    test = eval_loader(paths["test"], test_rows, image_size, VAL_CROP_RATIO) if test_rows is not None else None
    crops = None
    if ten_crop:
        path, rows = (paths["test"], test_rows) if test is not None else (val_path, val_rows)
        crops = eval_loader(path, rows, ten_crop_view_size(image_size), 1.0)
    return assemble_loaders(split, train_loader, batch_size, seed, unlabelled_batch_size, val=val,
                            num_val=len(val_rows), test=test, num_test=len(test_rows) if test is not None else 0,
                            ten_crop=crops)
