"""Decoder warm start and learning rates: what lets SGD train stacked decoders from the reference init.

From N(0, 0.001^2) every decoder conv scales its input by about 0.05, so a stack of 13 convs outputs ~1e-20 and
the convs above the first block get no gradient at all. The reference therefore trains each decoder block alone
first: block l reconstructs level l-1 from the frozen encoder's clean level-l activation (and its switches),
loss weight 1 in the sum form, with a learning rate of its own (the supplement's Table S-1). The stacked decoder
is built from the same blocks, so it starts from them.

Where no LR is given for a block, the supplement's rule picks it: try each candidate LR for a short run from the
same start on the same batches and keep the one whose reconstruction loss dropped most. A candidate whose run killed
the block (its output no longer depends on its input: every ReLU dead, only the biases left) is refused, however
much its loss dropped: a constant output can beat the near-zero output of the init, and a dead decoder passes no
gradient to anything below or above it. The paper gives no LR for
the stacked-decoder stage either; ``schedule.decoder.probe_lr=true`` applies the same rule to the whole decoder
with the variant's own loss.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import torch

from recondec.config import LossForm, PretrainConf, ScheduleConf
from recondec.models import AugmentedLoss, AugmentedNet
from recondec.models.losses import euclidean
from recondec.training.schedule import build_optimizer, param_groups

log = logging.getLogger(__name__)


def pretrain_loss(model: AugmentedNet, image_std: list[float]) -> AugmentedLoss:
    """Every level the decoder reconstructs at weight 1 (sum form), no classification term."""
    return AugmentedLoss({level: 1.0 for level in model.levels}, LossForm.reference, image_std,
                         classification_weight=0.0, detach_targets=True)


@dataclass
class BlockBatch:
    """What one decoder block needs from one batch: its clean input and the level it must reconstruct."""
    h: torch.Tensor
    switches: torch.Tensor | None
    pre_pool_size: tuple[int, int]
    out_size: tuple[int, int]
    target: torch.Tensor

    def output(self, block: torch.nn.Module) -> torch.Tensor:
        return block(self.h, self.switches, self.pre_pool_size, self.out_size)

    def loss(self, block: torch.nn.Module) -> torch.Tensor:
        return euclidean(self.output(block), self.target, LossForm.reference)


def input_dependence(outputs: list[torch.Tensor]) -> float:
    """How much a module's outputs vary over the batch: the mean over elements of the std over samples.
    Exactly 0 when the module maps every input to the same output (a dead decoder)."""
    return sum(o.float().std(0).mean().item() for o in outputs) / len(outputs)


class ProbeFailed(RuntimeError):
    """No candidate LR lowered the loss without killing the module; the message names it and what to change."""


@torch.no_grad()
def block_batches(model: AugmentedNet, loss_fn: AugmentedLoss, images: Iterable[torch.Tensor]
                  ) -> list[list[BlockBatch]]:
    """Per block, the cached inputs and targets of each batch (the encoder is frozen: computed once)."""
    per_block: list[list[BlockBatch]] = [[] for _ in model.decoder.blocks]
    for x in images:
        enc = model.encode(x)
        for i in range(len(per_block)):
            below = loss_fn.image_target(x) if i == 0 else enc.activations[i - 1]
            if i == 0 and model.bgr:
                below = below.flip(1)  # the block writes the weights' channel order
            per_block[i].append(BlockBatch(enc.activations[i], enc.switches[i], enc.pre_pool_sizes[i],
                                           tuple(below.shape[-2:]), below))
    return per_block


def probe_lr(module: torch.nn.Module, losses: list[Callable[[], torch.Tensor]], candidates: list[float], steps: int,
             schedule: ScheduleConf, spread: Callable[[], dict[str, float]] | None = None,
             collapse_ratio: float = 1e-3, what: str = "the module",
             held_out: list[Callable[[], torch.Tensor]] | None = None) -> tuple[float, dict[float, float]]:
    """The LR among `candidates` whose `steps` optimiser steps on `module` (cycling over the per-batch `losses`)
    lowered the mean loss of the `held_out` batches (validation; default: the same `losses`) the most, relative to
    where it started; the module is left as it was. Returns the LR and the relative drop of each candidate tried
    (-inf where the loss diverged or the module collapsed).

    `spread` measures, per output that carries a loss, how much it depends on the module's input
    (``input_dependence``): a candidate after which any of them fell below `collapse_ratio` times its starting value
    has collapsed to a constant output and is refused. When every candidate is refused, ProbeFailed names `what`.

    Candidates are tried from the largest down; the drop rises as the LR falls out of divergence and then
    shrinks again, so the scan stops at the first LR that lowered the loss less than an earlier one did."""
    start = {k: v.clone() for k, v in module.state_dict().items()}

    measured = held_out or losses

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(loss().item() for loss in measured) / len(measured)

    def collapsed(spread_before: dict[str, float]) -> bool:
        if spread is None:
            return False
        with torch.no_grad():
            after = spread()
        return any(not after[k] >= collapse_ratio * v for k, v in spread_before.items())

    before = mean_loss()
    spread_before, drops = (spread() if spread else {}), {}
    for lr in sorted(candidates, reverse=True):
        module.load_state_dict(start)
        optimizer = build_optimizer(param_groups(module.named_parameters(), schedule, lr), schedule)
        for t in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = losses[t % len(losses)]()
            if not torch.isfinite(loss) or loss.item() > 1e3 * before:
                break  # diverged: no need to finish
            loss.backward()
            optimizer.step()
        after = mean_loss()
        ok = math.isfinite(after) and before > 0 and not collapsed(spread_before)
        drops[lr] = (before - after) / before if ok else -math.inf
        best = max(drops, key=drops.get)
        if 0 < drops[lr] < drops[best]:
            break  # past the peak
    module.load_state_dict(start)
    if drops[best] <= 0:
        tried = ", ".join(f"{k:g}: {d:+.3g}" for k, d in drops.items())
        raise ProbeFailed(f"LR probe for {what}: no candidate lowered its reconstruction loss without killing it "
                          f"(relative drop per LR, -inf: diverged or collapsed to a constant output: {tried}). "
                          "Widen schedule.pretrain.lr_candidates, give the LR (schedule.pretrain.lrs.<level>, or "
                          "schedule.decoder.lr with probe_lr=false), lengthen the probe "
                          "(schedule.pretrain.probe_steps), or start the decoder elsewhere (backbone.decoder_init=he)")
    return best, drops


def block_lrs(model: AugmentedNet, loss_fn: AugmentedLoss, conf: PretrainConf, schedule: ScheduleConf,
              sample_images: Callable[[int], list[torch.Tensor]], val_images: list[torch.Tensor]) -> dict[str, float]:
    """LR per block, keyed by the level the block decodes from: conf.lrs where given, the probe elsewhere (trained
    on training batches, judged on `val_images`)."""
    names = [m.name for m in model.encoder.macro_layers[:len(model.decoder.blocks)]]
    lrs = {name: conf.lrs[name] for name in names if name in conf.lrs}
    todo = [i for i, name in enumerate(names) if name not in lrs]
    if todo:
        per_block = block_batches(model, loss_fn, sample_images(conf.probe_batches))
        per_block_val = block_batches(model, loss_fn, val_images)
        for i in todo:
            block = model.decoder.blocks[i]
            losses = [partial(b.loss, block) for b in per_block[i]]

            def spread(batches=per_block_val[i], block=block) -> dict[str, float]:
                return {"output": input_dependence([b.output(block) for b in batches])}

            lrs[names[i]], drops = probe_lr(block, losses, conf.lr_candidates, conf.probe_steps, schedule, spread,
                                            what=f"the decoder block from {names[i]} (layer-wise pre-training)",
                                            held_out=[partial(b.loss, block) for b in per_block_val[i]])
            log.info("pretrain LR probe, block from %s: %s -> lr %g", names[i],
                     ", ".join(f"{lr:g}: {d:+.3f}" for lr, d in drops.items()), lrs[names[i]])
    return {name: lrs[name] for name in names}


def decoder_lr(model: AugmentedNet, loss_fn: AugmentedLoss, conf: PretrainConf, schedule: ScheduleConf,
               sample_images: Callable[[int], list[torch.Tensor]], val_images: list[torch.Tensor]) -> float:
    """The decoder stage's LR by the same rule: the whole decoder, the variant's reconstruction terms (the
    classification term is constant while the encoder is frozen), on cached encoder outputs; trained on training
    batches, judged on `val_images`."""
    with torch.no_grad():
        cached = [(x, model.encode(x)) for x in sample_images(conf.probe_batches)]
        cached_val = [(x, model.encode(x)) for x in val_images]

    def recon_loss(x: torch.Tensor, enc) -> torch.Tensor:
        return loss_fn.weighted_recon(loss_fn.recon_terms(model.decode(enc, x), x))

    def spread() -> dict[str, float]:  # of each reconstruction that carries a loss (an unused one may die)
        outputs = [model.decode(enc, x).recons for x, enc in cached_val]
        return {level: input_dependence([r[level] for r in outputs]) for level in loss_fn.weights}

    lr, drops = probe_lr(model.decoder, [partial(recon_loss, x, enc) for x, enc in cached], conf.lr_candidates,
                         conf.probe_steps, schedule, spread, what="the decoder (the decoder stage's LR)",
                         held_out=[partial(recon_loss, x, enc) for x, enc in cached_val])
    log.info("decoder-stage LR probe: %s -> lr %g", ", ".join(f"{k:g}: {d:+.3f}" for k, d in drops.items()), lr)
    return lr
