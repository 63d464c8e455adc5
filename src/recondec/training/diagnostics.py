"""Does the unsupervised objective act, and is the decoder alive? Measured on a few fixed validation batches.

- ``grad_share/<term>/first_conv`` and ``.../last_conv``: the norm of a reconstruction term's gradient (weighted as
  in the loss) at the encoder's first and last conv weight, relative to the norm of the cross-entropy's gradient
  there; ``<term>`` is ``image``, ``pool1``, ..., and ``recon`` for all of them together. A share of 1 % means the
  decoder cannot shape the encoder, whatever it reconstructs.
- ``run_median/grad_share/recon/{first,last}_conv``: the median of those shares over every validation of the run.
  The share at the end alone can mislead: as the cross-entropy's gradient falls towards zero the last share can
  read large (or small) after the terms mattered most, while the classifier was learning.
- ``encoder/rel_change``: the mean over the encoder's conv layers of ||W - W0|| / ||W0||, W0 the weights the run
  started from (the classifier it fine-tunes, or its initialisation).
- ``input_dependence``: the spread of a level's reconstruction over the batch (mean over elements of the std over
  samples) relative to its target's. A decoder whose output no longer depends on its input (every ReLU dead, or a
  stacked decoder still at the ~1e-20 output of the reference initialisation) reads about 0 here, and
  ``check_alive`` stops the run instead of letting "no effect" pass for a result.

Eval mode (no dropout noise), float32, the unwrapped model: the numbers do not depend on DDP, compilation or
the random streams, which these measurements do not touch.
"""
from __future__ import annotations

import logging
import statistics
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from recondec.config import DeadDecoder
from recondec.models import AugmentedLoss, AugmentedNet

log = logging.getLogger(__name__)


class DeadDecoderError(RuntimeError):
    """A loss-carrying reconstruction does not depend on the input; the message says what to change."""


def encoder_convs(model: AugmentedNet) -> list[nn.Conv2d]:
    return [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]  # in forward order (a ResNet: with
    # its shortcut convs)


def spread(t: torch.Tensor) -> float:
    """Mean over elements of the standard deviation over the samples of a batch."""
    return t.float().std(0).mean().item()


@contextmanager
def _grad_enabled_for(params: list[nn.Parameter]) -> Iterator[None]:
    """Let autograd reach `params` even while a stage has frozen them."""
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ObjectiveMonitor:
    """The diagnostics of one run: fixed batches (validation images), the encoder's starting weights."""

    def __init__(self, model: AugmentedNet, loss_fn: AugmentedLoss, batches: list[tuple[torch.Tensor, torch.Tensor]],
                 grad_shares: bool = True):
        self.model, self.loss_fn, self.batches, self.with_shares = model, loss_fn, batches, grad_shares
        self.convs = encoder_convs(model)
        self.start = [c.weight.detach().clone() for c in self.convs]

    def rel_change(self) -> float:
        changes = [((c.weight.detach() - w0).norm() / w0.norm().clamp_min(1e-12)).item()
                   for c, w0 in zip(self.convs, self.start)]
        return sum(changes) / len(changes)

    def grad_shares(self) -> dict[str, float]:
        """grad_share/<term>/{first,last}_conv, averaged over the fixed batches; {} without reconstruction terms."""
        if not self.loss_fn.weights or not self.batches or not self.with_shares:
            return {}
        where = {"first_conv": self.convs[0].weight, "last_conv": self.convs[-1].weight}
        sums: dict[str, float] = {}
        with _eval_mode(self.model), _grad_enabled_for(list(where.values())):
            for x, y in self.batches:
                for key, value in self._batch_shares(x, y, where).items():
                    sums[key] = sums.get(key, 0.0) + value / len(self.batches)
        return sums

    def _batch_shares(self, x: torch.Tensor, y: torch.Tensor, where: dict[str, torch.Tensor]) -> dict[str, float]:
        out = self.model(x)
        terms = self.loss_fn(out, x, y)
        weighted = {level: w * terms[f"recon/{level}"] for level, w in self.loss_fn.weights.items()}
        weighted["recon"] = sum(weighted.values())
        ce = self.loss_fn.classification_weight * terms["ce"]
        ce_norms = self._norms(ce, where)
        shares = {}
        for term, value in weighted.items():
            for name, norm in self._norms(value, where).items():
                shares[f"grad_share/{term}/{name}"] = norm / ce_norms[name] if ce_norms[name] > 0 else float("inf")
        return shares

    @staticmethod
    def _norms(value: torch.Tensor, where: dict[str, torch.Tensor]) -> dict[str, float]:
        grads = torch.autograd.grad(value, list(where.values()), retain_graph=True, allow_unused=True)
        return {name: 0.0 if g is None else g.norm().item() for name, g in zip(where, grads)}

    @torch.no_grad()
    def input_dependence(self, layerwise: bool = False) -> dict[str, float]:
        """Per reconstructed level: spread of the reconstruction / spread of its target, on the first fixed batch.
        layerwise: every decoder block on the clean activation of its level (what pre-training trains)."""
        x, _ = self.batches[0]
        with _eval_mode(self.model):
            out = self.model(x, layerwise=layerwise)
        targets = {**out.targets, "image": self.loss_fn.image_target(x)}
        return {level: spread(rec) / max(spread(targets[level]), 1e-12) for level, rec in out.recons.items()}

    def metrics(self) -> dict[str, float]:
        return {**self.grad_shares(), "encoder/rel_change": self.rel_change()}


STAGE_LR_KEYS = {"pretrain": "schedule.pretrain.lrs / lr_candidates", "decoder": "schedule.decoder.lr (or probe_lr)",
                 "joint": "schedule.joint.lr"}


def check_alive(ratios: dict[str, float], levels: list[str], stage: str, threshold: float,
                policy: DeadDecoder) -> None:
    """Stop (or warn) when a level in `levels` reconstructs the same thing whatever the input."""
    dead = {lv: ratios[lv] for lv in levels if lv in ratios and not ratios[lv] >= threshold}
    if not dead:
        return
    found = ", ".join(f"{lv} {r:.3g}" for lv, r in dead.items())
    message = (f"dead decoder after stage '{stage}': the reconstruction of {', '.join(dead)} does not depend on the "
               f"input (its spread over a batch relative to its target's: {found}; alive is >= {threshold:g}, "
               f"trainer.dead_decoder_threshold). A comparison with this run would read 'no effect'. Change the "
               f"decoder's start or the stage's learning rate: backbone.decoder_init=he, "
               f"{STAGE_LR_KEYS.get(stage, 'the stage LR')}, or warm-start the stacked decoder with "
               f"schedule.pretrain.epochs>0; trainer.dead_decoder=warn to go on anyway")
    if policy is DeadDecoder.warn:
        log.warning(message)
        return
    raise DeadDecoderError(message)


RUN_MEDIAN = "run_median/"


def run_medians(history: list[dict[str, float]]) -> dict[str, float]:
    """run_median/grad_share/recon/{first,last}_conv: the median over the validations that measured the share."""
    medians = {}
    for key in ("grad_share/recon/first_conv", "grad_share/recon/last_conv"):
        values = [entry[key] for entry in history if key in entry]
        if values:
            medians[RUN_MEDIAN + key] = statistics.median(values)
    return medians


def describe_objective(metrics: dict[str, float], decoders: bool = False) -> str:
    """One line for the job's summary: how much the reconstruction terms push the encoder, how far it moved.
    `decoders`: the job has reconstruction terms (a run with no share measured then trained its decoders alone)."""
    moved = metrics.get("encoder/rel_change")
    moved_text = f"encoder moved {100 * moved:.1f}% from its start" if moved is not None else ""
    first = metrics.get("grad_share/recon/first_conv")
    if first is None:
        what = ("reconstruction terms on the decoders only (no end-to-end stage measured their share)" if decoders
                else "no reconstruction terms")
        return f"{what}; {moved_text}" if moved_text else what
    last = metrics.get("grad_share/recon/last_conv", float("nan"))
    parts = ", ".join(f"{k.split('/')[1]} {100 * v:.1f}%" for k, v in metrics.items()
                      if k.startswith("grad_share/") and k.endswith("/first_conv") and "/recon/" not in k)
    median = metrics.get(RUN_MEDIAN + "grad_share/recon/first_conv")
    over_run = f" (median over the run's validations: {100 * median:.1f}%)" if median is not None else ""
    return (f"reconstruction gradient = {100 * first:.1f}% of the cross-entropy's at the first conv ({parts}), "
            f"{100 * last:.1f}% at the last conv{over_run}; {moved_text}")
