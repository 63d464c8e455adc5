"""Training-throughput benchmark: the real training loop (Trainer.train_epoch) on synthetic batches that
already sit on the device, for the baseline and every variant, side by side in one process.

Reported per variant: img/s, forward GFLOPs per image, the step-time ratio over the baseline next to the
FLOPs ratio, and on GPU the achieved TFLOP/s (3 x forward FLOPs per trained image) and the MFU against the
device's dense bf16 peak. Optionally beside it: the same epoch through the job's own loaders and MLflow logging
(`real_loop`), and the step with torch.compile off and on (`compiled`). The main columns time the step as the
config has it (trainer=gpu compiles it).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from recondec.config import Config
from recondec.data import Loaders
from recondec.models import build_loss, build_model
from recondec.tools.profile import forward_flops
from recondec.training.device import resolve_device
from recondec.training.loop import Trainer

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets)
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


class SyntheticLoader:
    """The same on-device batch, `steps` times: measures the step, not the data pipeline."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int):
        self.x, self.y, self.steps = x, y, steps

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


@dataclass
class BenchRow:
    variant: str
    img_per_s: float
    gflops_fwd: float
    tflops: float
    mfu: Optional[float]
    loop_img_per_s: Optional[float] = None      # the job's loop: real loader, metrics, MLflow logging
    eager_img_per_s: Optional[float] = None     # the bare step without torch.compile
    compiled_img_per_s: Optional[float] = None  # the bare step under torch.compile


def device_peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def timed_epoch(trainer: Trainer, steps: int, warmup: int) -> float:
    """img/s of one joint-stage epoch of `steps` steps, after an untimed one of `warmup` steps (cuDNN autotuning,
    the allocator, compilation, loader start-up)."""
    trainer.enter_stage(trainer.stages[-1])  # the joint stage: every parameter trains
    trainer.steps_per_epoch = warmup
    trainer.train_epoch()
    trainer.steps_per_epoch = steps
    return trainer.train_epoch()["img_per_s"]


def step_img_per_s(cfg: Config, steps: int, warmup: int) -> tuple[float, int]:
    """The bare step: the training loop on one synthetic batch that already sits on the device.
    Returns img/s and the model's forward FLOPs per image."""
    device = resolve_device(cfg.trainer.device)
    torch.backends.cudnn.benchmark = True
    model = build_model(cfg.backbone, cfg.variant, cfg.data.num_classes).to(device)
    flops = forward_flops(model, cfg.backbone.image_size)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(model, cfg.loss, cfg.data.std).to(device)
    b, s = cfg.schedule.batch_size, cfg.backbone.image_size
    x = torch.randn(b, 3, s, s, device=device)
    y = torch.randint(0, cfg.data.num_classes, (b,), device=device)
    steps_total = max(steps, warmup)
    loaders = Loaders(SyntheticLoader(x, y, steps_total), SyntheticLoader(x, y, 1), b * steps_total, b, split=None)
    trainer = Trainer(cfg, model, loss_fn, loaders, device)
    return timed_epoch(trainer, steps, warmup), flops


def loop_img_per_s(cfg: Config, steps: int, warmup: int, tracking_uri: str) -> float:
    """The job's loop as `python src/main.py` builds it (job.build_trainer): its loaders, metrics, progress
    bookkeeping and MLflow logging every trainer.log_every_n_steps, into a throw-away database."""
    from recondec.job import build_trainer
    from recondec.tracking.mlflow_logger import MlflowTracker

    tracker = MlflowTracker(tracking_uri, "bench", f"loop {cfg.variant.name}", {}, cfg.data.mean)
    try:
        trainer = build_trainer(cfg, tracker)
        steps = min(steps, len(trainer.loaders.train))
        return timed_epoch(trainer, steps, min(warmup, steps))
    finally:
        tracker.finish()


def bench_variant(cfg: Config, steps: int, warmup: int, *, real_loop_uri: Optional[str] = None,
                  compiled: bool = False) -> BenchRow:
    cfg = copy.deepcopy(cfg)  # its trainer settings are switched below; the caller's config stays as given
    cfg.trainer.progress = False
    img_per_s, flops = step_img_per_s(cfg, steps, warmup)
    tflops = 3 * flops * img_per_s / 1e12
    peak = device_peak_tflops(resolve_device(cfg.trainer.device))
    row = BenchRow(cfg.variant.name, img_per_s, flops / 1e9, tflops, tflops / peak if peak else None)
    if real_loop_uri:
        row.loop_img_per_s = loop_img_per_s(cfg, steps, warmup, real_loop_uri)
    if compiled:  # the step with torch.compile off and on; the configured one is timed above
        configured = cfg.trainer.compile
        cfg.trainer.compile = not configured
        other = step_img_per_s(cfg, steps, warmup)[0]
        row.eager_img_per_s, row.compiled_img_per_s = (other, img_per_s) if configured else (img_per_s, other)
    return row


def mean_of_runs(a: BenchRow, b: BenchRow) -> BenchRow:
    """Two measurements of the same variant as one: throughput as the harmonic mean (mean step time)."""
    img_per_s = _harmonic(a.img_per_s, b.img_per_s)
    scale = img_per_s / a.img_per_s
    return BenchRow(a.variant, img_per_s, a.gflops_fwd, a.tflops * scale, a.mfu * scale if a.mfu else None,
                    _harmonic(a.loop_img_per_s, b.loop_img_per_s), _harmonic(a.eager_img_per_s, b.eager_img_per_s),
                    _harmonic(a.compiled_img_per_s, b.compiled_img_per_s))


def _harmonic(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return 2 / (1 / a + 1 / b) if a and b else None


def format_table(rows: list[BenchRow]) -> str:
    base = rows[0]
    loop, compiled = base.loop_img_per_s is not None, base.compiled_img_per_s is not None
    head = ["variant", "img/s", "fwd GFLOPs/img", "FLOPs ratio", "step-time ratio", "within FLOPs ratio +10%",
            "TFLOP/s", "MFU"]
    head += ["job loop img/s", "loop / step"] if loop else []
    head += ["eager img/s", "compiled img/s", "compiled / eager"] if compiled else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        flops_ratio = r.gflops_fwd / base.gflops_fwd
        time_ratio = base.img_per_s / r.img_per_s
        ok = "yes" if time_ratio <= flops_ratio * 1.10 else "NO"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        cells = [r.variant, f"{r.img_per_s:.1f}", f"{r.gflops_fwd:.3f}", f"{flops_ratio:.2f}", f"{time_ratio:.2f}",
                 ok, f"{r.tflops:.3f}", mfu]
        if loop:
            cells += [f"{r.loop_img_per_s:.1f}", f"{100 * r.loop_img_per_s / r.img_per_s:.0f}%"]
        if compiled:
            cells += [f"{r.eager_img_per_s:.1f}", f"{r.compiled_img_per_s:.1f}",
                      f"{r.compiled_img_per_s / r.eager_img_per_s:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
