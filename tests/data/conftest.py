"""Image trees and .beton readers shared by the data tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from recondec.config import IMAGENET_MEAN, IMAGENET_STD, DataConf, FFCVConf, Loader, Order, WriteMode


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like content: a coarse random grid upsampled, so JPEG round trips stay close."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR))


def good_tree(root: Path, classes=("cat", "dog", "fox"), per_class=(12, 4), seed=0) -> Path:
    """<root>/train/<class>/*.jpg|png and <root>/val/<class>/*, varied sizes."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(36, 56, 2)
                ext = "png" if i % 3 == 0 else "jpg"
                Image.fromarray(smooth_image(rng, h, w)).save(root / split / c / f"{i:03d}.{ext}")
    return root


def stored(fname) -> list[tuple[np.ndarray, int]]:
    """Every (image, label) of a .beton read straight from the file: raw pixels, or the stored JPEG decoded."""
    import cv2
    from ffcv.reader import Reader

    reader = Reader(str(fname))
    data = np.memmap(fname, mode="r")
    sizes = {int(e["ptr"]): int(e["size"]) for e in reader.alloc_table}
    out = []
    for m in reader.metadata:
        img, ptr = m["f0"], int(m["f0"]["data_ptr"])  # fields are stored as f0, f1 in writing order
        h, w = int(img["height"]), int(img["width"])
        if img["mode"] == 1:  # raw
            arr = np.array(data[ptr:ptr + h * w * 3]).reshape(h, w, 3)
        else:
            arr = cv2.imdecode(np.array(data[ptr:ptr + sizes[ptr]]), cv2.IMREAD_COLOR)[..., ::-1]
        out.append((arr, int(m["f1"])))
    return out


def ffcv_conf(beton_dir, **kw) -> FFCVConf:
    return FFCVConf(**{"beton_dir": str(beton_dir), "num_workers": 2, "write_mode": WriteMode.raw,
                       "max_resolution": 64, "order": Order.random, "batch_timeout_s": 60, **kw})


def folder_conf(root, beton_dir, loader=Loader.ffcv, **kw) -> DataConf:
    return DataConf(name="folder", loader=loader, root=str(root), num_classes=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    ffcv=ffcv_conf(beton_dir, **kw))

