"""Optimisers and learning-rate schedules (per stage: warm-up, then constant / step / cosine)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recondec.config import LRSchedule, Optimizer, ScheduleConf, StageConf


@dataclass(frozen=True)
class Stage:
    name: str           # "decoder" (stage 1: encoder frozen) or "joint" (stage 2)
    conf: StageConf
    first_epoch: int    # global index of its first epoch

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.conf.epochs


def plan_stages(schedule: ScheduleConf, has_decoder: bool) -> list[Stage]:
    """The protocol: decoders alone first (skipped when there is no decoder), then joint training."""
    stages, epoch = [], 0
    for name, conf in (("decoder", schedule.decoder), ("joint", schedule.joint)):
        if conf.epochs == 0 or (conf.freeze_encoder and not has_decoder):
            continue
        stages.append(Stage(name, conf, epoch))
        epoch += conf.epochs
    return stages


def build_optimizer(params, schedule: ScheduleConf, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    kw = {"fused": True} if fused else {}
    if schedule.optimizer is Optimizer.sgd:
        return torch.optim.SGD(params, lr=lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay, **kw)
    return torch.optim.AdamW(params, lr=lr, weight_decay=schedule.weight_decay, **kw)


def lr_factor(step: int, steps_per_epoch: int, stage_epochs: int, schedule: ScheduleConf) -> float:
    """Multiplier of the stage's base LR at `step` (counted from the stage's start)."""
    warmup = schedule.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if schedule.lr_schedule is LRSchedule.step:
        epoch = step // steps_per_epoch
        return schedule.step_gamma ** sum(epoch >= m for m in schedule.step_epochs)
    if schedule.lr_schedule is LRSchedule.cosine:
        total = max(1, stage_epochs * steps_per_epoch - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    return 1.0


def build_scheduler(optimizer, steps_per_epoch: int, stage_epochs: int, schedule: ScheduleConf):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, stage_epochs, schedule))
