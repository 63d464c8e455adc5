"""Optimisers and learning-rate schedules (per stage: warm-up, then constant / step / cosine)."""
from __future__ import annotations

import math

import torch

from recondec.config import LRSchedule, Optimizer, ScheduleConf


def param_groups(named_params, schedule: ScheduleConf, lr: float) -> list[dict]:
    """Weights at `lr`; biases at lr * bias_lr_mult with weight decay * bias_decay_mult (Caffe's lr_mult /
    decay_mult). Only parameters that require grad."""
    weights, biases = [], []
    for name, p in named_params:
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    groups = [{"params": weights, "lr": lr, "weight_decay": schedule.weight_decay},
              {"params": biases, "lr": lr * schedule.bias_lr_mult,
               "weight_decay": schedule.weight_decay * schedule.bias_decay_mult}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], schedule: ScheduleConf, fused: bool = False) -> torch.optim.Optimizer:
    """Each group carries its own lr and weight_decay (param_groups)."""
    kw = {"fused": True} if fused else {}
    if schedule.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, momentum=schedule.momentum, **kw)
    return torch.optim.AdamW(groups, **kw)


def lr_factor(step: int, steps_per_epoch: int, stage_epochs: int, schedule: ScheduleConf) -> float:
    """Multiplier of the stage's base LR at `step` (counted from the stage's start)."""
    warmup = schedule.warmup_epochs * steps_per_epoch
    if step < warmup:
        return min(1.0, (step + 1) / warmup)  # a fractional warm-up's last step would overshoot
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
