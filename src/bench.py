"""Benchmarks, one subcommand each.

    python src/bench.py train                        # a training step per variant, default config (CPU size)
    python src/bench.py train backbone=vgg16 trainer=gpu schedule.batch_size=64   # any Hydra overrides
    python src/bench.py train --real-loop --compile    # beside the bare step: the job's loop, torch.compile
    python src/bench.py profile backbone=vgg16       # parameters and forward FLOPs per variant
    python src/bench.py terms backbone=vgg16 backbone.image_size=224 input=caffe   # does each loss term act?
    python src/bench.py loader                       # ffcv vs torchvision DataLoader on 2,000 synthetic JPEGs
    python src/bench.py loader --images /data/tree   # on an ImageFolder tree of yours (train/ and val/)
    python src/bench.py loader --write-mode raw --os-cache --batch-size 128 --workers 2
    python src/bench.py check-images --num-images 50000   # the torchvision loader's bad-image check, per file

`train`: the real training step (Trainer.train_epoch, joint stage: every parameter trains) on one synthetic
batch that already sits on the device, for the baseline and each variant, one after another in one process;
the baseline runs first and again last, and the ratios use the mean of the two (their difference is printed
as the noise of the measurement). Prints img/s, forward GFLOPs per image, the step-time ratio over the
baseline next to the FLOPs ratio, and on GPU the achieved TFLOP/s and MFU against the bf16 peak.
`--real-loop` adds the job's own loop for the same variant and batch (its loader, metrics, MLflow logging, as
`python src/main.py` builds it) and its share of the bare step's img/s; `--compile` adds the step under
torch.compile and its speed-up over eager.

`loader`: both loaders produce the same batches (RandomResizedCrop to --size px, horizontal flip, normalised
float32, int64 labels) from the same images with the same batch size and number of workers (ffcv threads,
DataLoader processes); warm-up epochs (ffcv's compilation, worker start-up) are not timed. Prints images/s of
each, their ratio, and the .beton's size against the source files'.

`check-images`: what the check of data.bad_images (data/folder_check.py) costs before a torchvision-loader job, on
synthetic photo-sized JPEGs (or --images): the first check (every file decoded, in --workers processes, as
data.num_workers gives them) and a cached one (the listing, sizes and modification times only), in files/s and
extrapolated to ImageNet's 1,281,167 training images. Freshly written files sit in the page cache: a cold disk adds
its read time to the first check.
"""
import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from recondec.config import BadImages, DataConf, FFCVConf, Loader, Order, WriteMode, variant_names

# ---------------------------------------------------------------- synthetic photo-like JPEGs

def photo_like(seed: int, label: int, num_classes: int) -> Image.Image:
    """Smooth random structure at several scales, a class tint and fine grain: JPEG sizes like real photos."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(360, 441)), int(rng.integers(310, 391))
    image = np.zeros((h, w, 3))
    for cells, weight in ((3, 1.0), (8, 0.5), (24, 0.25), (72, 0.12)):
        coarse = rng.random((cells, cells, 3))
        image += weight * np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    tint = np.array([np.cos(2 * np.pi * (label / num_classes + k / 3)) for k in range(3)])
    image = image / 1.87 + 0.25 * tint + rng.normal(0, 0.03, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def _save_one(job: tuple[str, int, int, int]) -> None:
    path, seed, label, num_classes = job
    photo_like(seed, label, num_classes).save(path, quality=90)


def synthetic_tree(root: Path, num_images: int, num_classes: int, workers: int) -> Path:
    """<root>/train/<class>/*.jpg (num_images) and a small <root>/val/ (the loaders need one)."""
    jobs = []
    for split, n in (("train", num_images), ("val", num_classes)):
        for i in range(n):
            label = i % num_classes
            folder = root / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((str(folder / f"{i:05d}.jpg"), i + (split == "val") * 10 ** 6, label, num_classes))
    with multiprocessing.Pool(workers) as pool:
        pool.map(_save_one, jobs, chunksize=32)
    return root


# ---------------------------------------------------------------- loader benchmark

def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _epoch(loader, epoch: int) -> tuple[int, float]:
    loader.set_epoch(epoch)
    seen, start = 0, time.perf_counter()
    for _, labels in loader:
        seen += len(labels)
    return seen, time.perf_counter() - start


def measure(loaders: dict, warmup: int, epochs: int) -> dict[str, list[float]]:
    """Images/s per timed epoch of each loader; the loaders take turns epoch by epoch, so that a load that
    comes and goes on the machine weighs on both alike."""
    rates = {name: [] for name in loaders}
    for epoch in range(warmup + epochs):
        for name, loader in loaders.items():
            seen, seconds = _epoch(loader, epoch)
            if epoch >= warmup:
                rates[name].append(seen / seconds)
    return rates


def source_tree(args: argparse.Namespace, work: Path) -> Path:
    """--images, or synthetic JPEGs in <work>/images (generated unless there already)."""
    if args.images is not None:
        return args.images
    root = work / "images"
    if not (root / "train").is_dir():
        print(f"generating {args.num_images} synthetic JPEGs in {root} ...")
        synthetic_tree(root, args.num_images, args.classes, args.workers)
    return root


def add_loader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="an ImageFolder tree (train/, val/); default: synthetic JPEGs")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=224, help="output size of RandomResizedCrop")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="ffcv threads = DataLoader processes")
    p.add_argument("--write-mode", choices=[m.value for m in WriteMode], default="jpg")
    p.add_argument("--max-resolution", type=int, default=256)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--os-cache", action="store_true", help="ffcv: read through the page cache (mmap)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs")
    p.add_argument("--workdir", type=Path, help="keep images and .beton here (reused when up to date)")


def run_loader(args: argparse.Namespace) -> None:
    from recondec.data import build_loaders
    from recondec.data.beton import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        root = source_tree(args, work)
        ffcv = FFCVConf(beton_dir=str(work / f"beton-{args.write_mode}-{args.max_resolution}"),
                        os_cache=args.os_cache, order=Order.random, write_mode=WriteMode(args.write_mode),
                        max_resolution=args.max_resolution, jpeg_quality=args.jpeg_quality,
                        num_workers=args.workers)
        num_classes = sum(1 for e in os.scandir(root / "train") if e.is_dir())
        data = DataConf(name="bench", loader=Loader.ffcv, root=str(root), num_classes=num_classes,
                        num_workers=args.workers, ffcv=ffcv)
        written = write_dataset(data)["train"]
        print(written.summary())
        loaders = {}
        for kind in (Loader.ffcv, Loader.torchvision):
            data.loader = kind
            loaders[kind.value] = build_loaders(data, args.size, args.batch_size, seed=0).train
        rates = measure(loaders, args.warmup, args.epochs)
        report(args, root, Path(written.path), written.written, rates)


def report(args, root: Path, beton: Path, n: int, rates: dict[str, list[float]]) -> None:
    source, packed = _tree_bytes(root / "train"), beton.stat().st_size
    mean = {name: sum(r) / len(r) for name, r in rates.items()}
    print(f"\n{n} training images, {args.size} px RandomResizedCrop + flip, normalised float32, batch "
          f"{args.batch_size}, {args.workers} workers, {args.epochs} timed epochs each after {args.warmup} warm-up")
    for name, r in rates.items():
        print(f"  {name:<12} {mean[name]:8.0f} img/s   (epochs: {', '.join(f'{x:.0f}' for x in r)})")
    print(f"  ratio ffcv / torchvision: {mean['ffcv'] / mean['torchvision']:.2f}x")
    print(f"  .beton ({args.write_mode}, max {args.max_resolution} px{', os_cache' if args.os_cache else ''}): "
          f"{packed / 2**20:.1f} MiB vs source JPEGs {source / 2**20:.1f} MiB ({packed / source:.2f}x)")


# ---------------------------------------------------------------- the bad-image check

IMAGENET_TRAIN_FILES = 1_281_167


def add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="an ImageFolder tree (train/, val/); default: synthetic JPEGs")
    p.add_argument("--num-images", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="checking processes (data.num_workers)")
    p.add_argument("--workdir", type=Path, help="keep the images here (reused when there)")


def _timed_check(data: DataConf):
    from recondec.data.folder_check import check_image_folders

    start = time.perf_counter()
    found = check_image_folders(data)
    return found, time.perf_counter() - start


def run_check_images(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        root = source_tree(args, work)
        cache = Path(tmp) / "cache"  # a cache of its own, empty: the first pass decodes every file
        os.environ["RECONDEC_CACHE_DIR"] = str(cache)
        num_classes = sum(1 for e in os.scandir(root / "train") if e.is_dir())
        data = DataConf(name="bench", loader=Loader.torchvision, root=str(root), num_classes=num_classes,
                        num_workers=args.workers, bad_images=BadImages.skip)
        found, first = _timed_check(data)
        _, cached = _timed_check(data)
        shutil.rmtree(cache, ignore_errors=True)
    rate, cached_rate = found.checked / first, found.checked / cached
    print(f"\n{found.checked} files ({len(found.bad)} bad) in {root}, {min(args.workers, os.cpu_count() or 1)} "
          "processes")
    print(f"  first check (every file decoded): {rate:10.0f} files/s  ({first:.1f} s)")
    print(f"  cached (listing, sizes, mtimes):  {cached_rate:10.0f} files/s  ({cached:.2f} s)")
    print(f"  ImageNet's {IMAGENET_TRAIN_FILES:,} training files at these rates: first check "
          f"{IMAGENET_TRAIN_FILES / rate / 60:.1f} min, cached {IMAGENET_TRAIN_FILES / cached_rate:.1f} s "
          "(files in the page cache here: a cold disk adds its read time)")


# ---------------------------------------------------------------- training step and profile

VARIANTS = ",".join(variant_names())


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", default=VARIANTS, help="comma-separated variants (the baseline is always included)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone=vgg16 trainer=gpu")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, compilation)")
    p.add_argument("--real-loop", action="store_true",
                   help="also time the job's own loop (its data loader, metrics, MLflow logging) beside the bare step")
    p.add_argument("--compile", action="store_true",
                   help="also time the step with torch.compile off and on, side by side")


def variant_configs(args: argparse.Namespace, output_dir: str) -> dict:
    """variant -> validated config (the baseline first), with the user's overrides."""
    from hydra import compose, initialize_config_dir

    from recondec.checks import validate
    from recondec.config import CONF_DIR, register_schema

    register_schema()
    names = ["baseline"] + [v for v in args.variants.split(",") if v and v != "baseline"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return {v: validate(compose("config", overrides=[*args.overrides, f"variant={v}", f"output_dir={output_dir}"]))
                for v in names}


def run_train(args: argparse.Namespace) -> None:
    from recondec.tools.benchmark import bench_variant, format_table, mean_of_runs
    from recondec.training.device import resolve_device

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = variant_configs(args, tmp)
        first = next(iter(cfgs.values()))
        print(f"training step: backbone={first.backbone.name} at {first.backbone.image_size} px, batch "
              f"{first.schedule.batch_size}, {first.trainer.precision}, {resolve_device(first.trainer.device)}, "
              f"{'compiled' if first.trainer.compile else 'eager'}; "
              f"{args.steps} timed steps after {args.warmup} warm-up")
        rows = []
        uri = f"sqlite:///{tmp}/bench.db" if args.real_loop else None
        for name, cfg in [*cfgs.items(), ("baseline", cfgs["baseline"])]:  # the baseline again at the end
            rows.append(bench_variant(cfg, args.steps, args.warmup, real_loop_uri=uri, compiled=args.compile))
            extra = "".join(f", {label} {value:.1f}" for label, value in (
                ("job loop", rows[-1].loop_img_per_s), ("eager", rows[-1].eager_img_per_s),
                ("compiled", rows[-1].compiled_img_per_s)) if value)
            print(f"  {name:<16} {rows[-1].img_per_s:10.1f} img/s{extra}", flush=True)
    base_first, base_last = rows[0], rows.pop()
    print(f"baseline first / last: {base_first.img_per_s:.1f} / {base_last.img_per_s:.1f} img/s "
          f"({abs(base_first.img_per_s / base_last.img_per_s - 1) * 100:.1f}% apart: the noise of the ratios)\n")
    rows[0] = mean_of_runs(base_first, base_last)
    print(format_table(rows))


def run_profile(args: argparse.Namespace) -> None:
    from recondec.tools.profile import profile_table

    cfgs = variant_configs(args, tempfile.gettempdir())
    first = next(iter(cfgs.values()))
    rows = profile_table(first.backbone, {n: c.variant for n, c in cfgs.items()}, first.data.num_classes)
    print(f"backbone={first.backbone.name} at {first.backbone.image_size} px, {first.data.num_classes} classes; "
          "FLOPs of one forward pass of one image (2 per multiply-add)\n")
    print("| variant | encoder params | decoder params | total params | forward GFLOPs/img | x baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        total = r["encoder_params"] + r["decoder_params"]
        print(f"| {r['variant']} | {r['encoder_params']:,} | {r['decoder_params']:,} | {total:,} | "
              f"{r['gflops']:.3f} | {r['gflops'] / rows[0]['gflops']:.2f} |")


def add_terms_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batches", type=int, default=2, help="training batches to average over")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone=vgg16 input=caffe loss=reference")


def run_terms(args: argparse.Namespace) -> None:
    from hydra import compose, initialize_config_dir

    from recondec.checks import validate
    from recondec.config import CONF_DIR, register_schema
    from recondec.tools.term_shares import format_term_table, measure_term_shares

    register_schema()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose("config", overrides=[*args.overrides, f"output_dir={tempfile.gettempdir()}"]))
    print(f"backbone={cfg.backbone.name} at {cfg.backbone.image_size} px ({cfg.backbone.pretrained or 'its init'}), "
          f"variant={cfg.variant.name}, loss {cfg.loss.form.value} form, input mean {cfg.data.mean} std {cfg.data.std} "
          f"{cfg.backbone.channel_order.value.upper()}; {args.batches} batches of {cfg.schedule.batch_size}\n")
    print(format_term_table(*measure_term_shares(cfg, args.batches)))


COMMANDS = {"train": (add_train_args, run_train, "training-step throughput per variant"),
            "terms": (add_terms_args, run_terms, "each loss term's size and share of loss and gradient"),
            "profile": (add_model_args, run_profile, "parameters and forward FLOPs per variant"),
            "loader": (add_loader_args, run_loader, "ffcv vs torchvision DataLoader throughput"),
            "check-images": (add_check_args, run_check_images, "the cost of the torchvision loader's image check")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
        sub.choices[name].set_defaults(run=run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
