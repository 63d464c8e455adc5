"""The protocol's stages, and what entering one sets up: what it trains and freezes, its LRs (given, or probed by
the supplement's rule), its loss, its optimiser and LR schedule, and the DDP wrapping of what it trains.

Stage 0 (``pretrain``) trains every decoder block alone on the frozen encoder's clean activations (the warm start);
stage 1 (``decoder``) trains the decoders with the encoder frozen; stage 2 (``joint``) trains everything on
classification + reconstruction. Any of them can be switched off in ``schedule/`` (0 epochs).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from recondec.config import Config, PretrainConf, ScheduleConf, StageConf
from recondec.models import AugmentedLoss, AugmentedNet
from recondec.training import distributed
from recondec.training.distributed import DistEnv
from recondec.training.pretrain import block_lrs, decoder_lr, pretrain_loss
from recondec.training.schedule import build_optimizer, build_scheduler, param_groups

log = logging.getLogger(__name__)


class StageName(enum.StrEnum):
    pretrain = "pretrain"
    decoder = "decoder"
    joint = "joint"


@dataclass(frozen=True)
class Stage:
    name: StageName
    conf: StageConf | PretrainConf
    first_epoch: int    # global index of its first epoch

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.conf.epochs

    @property
    def seed(self) -> int:
        """Its own random stream, whatever stages ran before it."""
        return list(StageName).index(self.name)


def plan_stages(schedule: ScheduleConf, has_decoder: bool) -> list[Stage]:
    """The stages a job runs, in order: the decoder stages only for a model with a decoder."""
    confs = {StageName.pretrain: schedule.pretrain, StageName.decoder: schedule.decoder,
             StageName.joint: schedule.joint}
    stages, epoch = [], 0
    for name, conf in confs.items():
        if conf.epochs == 0 or (conf.freeze_encoder and not has_decoder):
            continue
        stages.append(Stage(name, conf, epoch))
        epoch += conf.epochs
    return stages


@dataclass
class StageSetup:
    net: torch.nn.Module          # what the training step calls: the model, DDP-wrapped on several ranks
    loss: AugmentedLoss           # what the stage minimises
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lr_text: str                  # for the log
    metrics: dict[str, float] = field(default_factory=dict)  # the LRs a probe chose


def freeze_for(stage: Stage, model: AugmentedNet) -> None:
    """The encoder frozen (in eval mode) where the stage says so; pre-training trains the decoder blocks only."""
    model.set_encoder_frozen(stage.conf.freeze_encoder)
    if model.decoder is not None:
        model.decoder.requires_grad_(stage.name is not StageName.pretrain)
        model.decoder.blocks.requires_grad_(True)


def wrap(model: AugmentedNet, device: torch.device, env: DistEnv) -> torch.nn.Module:
    """DDP registers only parameters that require grad, so it is re-wrapped whenever a stage (un)freezes."""
    if not env.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def set_up_stage(stage: Stage, model: AugmentedNet, job_loss: AugmentedLoss, cfg: Config, device: torch.device,
                 env: DistEnv, steps_per_epoch: int, train_images: Callable[[int], list[torch.Tensor]],
                 val_images: list[torch.Tensor]) -> StageSetup:
    """Everything a stage trains with. LR probes train on `train_images(n)` (rank 0's first batches) and judge on
    `val_images`; every rank uses rank 0's choice."""
    freeze_for(stage, model)
    net, metrics = wrap(model, device, env), {}
    if stage.name is StageName.pretrain:
        lrs = distributed.broadcast_object(block_lrs(model, job_loss, stage.conf, cfg.schedule, train_images,
                                                     val_images))
        groups = [g for block, lr in zip(model.decoder.blocks, lrs.values())
                  for g in param_groups(block.named_parameters(), cfg.schedule, lr)]
        loss = pretrain_loss(model, cfg.data.std).to(device)
        metrics = {f"pretrain/lr/{k}": v for k, v in lrs.items()}
        lr_text = "per block " + ", ".join(f"{k} {v:g}" for k, v in lrs.items())
    else:
        probe = stage.conf.probe_lr and model.decoder is not None
        lr = distributed.broadcast_object(decoder_lr(model, job_loss, cfg.schedule.pretrain, cfg.schedule,
                                                     train_images, val_images)) if probe else stage.conf.lr
        groups, loss = param_groups(model.named_parameters(), cfg.schedule, lr), job_loss
        metrics = {f"{stage.name}/lr": lr} if probe else {}
        lr_text = f"lr {lr:g}" + (" (probed)" if probe else "")
    # torch's fused optimisers run on CPU and CUDA: one kernel per step instead of one per parameter and op
    optimizer = build_optimizer(groups, cfg.schedule, fused=device.type in ("cpu", "cuda"))
    scheduler = build_scheduler(optimizer, steps_per_epoch, stage.conf.epochs, cfg.schedule)
    return StageSetup(net, loss, optimizer, scheduler, lr_text, metrics)
