"""Training-throughput benchmark: the real training loop (Trainer.train_epoch) on synthetic batches that
already sit on the device, for the baseline and every variant, side by side in one process.

Reported per variant: img/s, forward GFLOPs per image, the step-time ratio over the baseline next to the
FLOPs ratio, and on GPU the achieved TFLOP/s (3 x forward FLOPs per trained image) and the MFU against the
device's dense bf16 peak.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import DictConfig

from recondec.config import validate
from recondec.data import Loaders
from recondec.models import build_loss, build_model
from recondec.models.profile import forward_flops
from recondec.training.loop import Trainer, resolve_device

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


def device_peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def bench_variant(cfg: DictConfig, steps: int, warmup: int) -> BenchRow:
    conf = validate(cfg)
    device = resolve_device(conf.trainer.device)
    torch.backends.cudnn.benchmark = True
    model = build_model(conf.backbone, conf.variant, conf.data.num_classes).to(device)
    flops = forward_flops(model, conf.backbone.image_size)
    if conf.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(model, conf.loss, conf.data.std).to(device)
    b, s = conf.schedule.batch_size, conf.backbone.image_size
    x = torch.randn(b, 3, s, s, device=device)
    y = torch.randint(0, conf.data.num_classes, (b,), device=device)
    conf.trainer.progress = False
    trainer = Trainer(conf, model, loss_fn, Loaders(SyntheticLoader(x, y, warmup), None, b * warmup, 0), device)
    trainer.enter_stage(trainer.stages[-1])  # the joint stage: every parameter trains
    trainer.train_epoch()                    # warm-up: cuDNN autotuning, allocator, compilation
    trainer.loaders.train.steps = steps
    trainer.steps_per_epoch = steps
    img_per_s = trainer.train_epoch()["img_per_s"]
    tflops = 3 * flops * img_per_s / 1e12
    peak = device_peak_tflops(device)
    return BenchRow(conf.variant.name, img_per_s, flops / 1e9, tflops, tflops / peak if peak else None)


def mean_of_runs(a: BenchRow, b: BenchRow) -> BenchRow:
    """Two measurements of the same variant as one: throughput as the harmonic mean (mean step time)."""
    img_per_s = 2 / (1 / a.img_per_s + 1 / b.img_per_s)
    scale = img_per_s / a.img_per_s
    return BenchRow(a.variant, img_per_s, a.gflops_fwd, a.tflops * scale, a.mfu * scale if a.mfu else None)


def format_table(rows: list[BenchRow]) -> str:
    base = rows[0]
    lines = ["| variant | img/s | fwd GFLOPs/img | FLOPs ratio | step-time ratio | within FLOPs ratio +10% | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flops_ratio = r.gflops_fwd / base.gflops_fwd
        time_ratio = base.img_per_s / r.img_per_s
        ok = "yes" if time_ratio <= flops_ratio * 1.10 else "NO"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        lines.append(f"| {r.variant} | {r.img_per_s:.1f} | {r.gflops_fwd:.3f} | {flops_ratio:.2f} | {time_ratio:.2f} | "
                     f"{ok} | {r.tflops:.3f} | {mfu} |")
    return "\n".join(lines)
