"""Evaluation, one way for every use: validation during training, the test set once at the end, 10 crops, the
figures' batch, and study=eval on a saved model."""
from __future__ import annotations

from typing import Optional

import torch
from tqdm import tqdm

from recondec.config import Config
from recondec.data import Loaders
from recondec.models import AugmentedLoss, AugmentedNet
from recondec.training.device import autocast, to_device
from recondec.training.metrics import EvalMetrics, ten_crop_probs
from recondec.training.reliability import oom_hint


class VisualBatch:
    """A few validation images with their reconstructions, for the figures."""

    def __init__(self, inputs: torch.Tensor, recons: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        self.inputs = inputs.float().cpu()
        self.recons = {k: v.float().cpu() for k, v in recons.items()}
        self.targets = {k: v.float().cpu() for k, v in targets.items()}


class Evaluator:
    def __init__(self, cfg: Config, model: AugmentedNet, loss: AugmentedLoss, device: torch.device, quiet: bool):
        self.cfg, self.model, self.loss, self.device, self.quiet = cfg, model, loss, device, quiet

    def _batches(self, loader, desc: str):
        for x, y in tqdm(loader, desc=desc, disable=self.quiet, leave=False):
            yield to_device(x, y, self.device, self.cfg.trainer.channels_last)

    def _guarded(self, what: str):
        return oom_hint(what, self.cfg.schedule.batch_size, self.cfg.trainer.precision, self.device)

    @torch.no_grad()
    def evaluate(self, loader, ssim: bool = True, desc: str = "validate"
                 ) -> tuple[dict[str, float], Optional[VisualBatch]]:
        """Top-1 / top-5, the loss terms and the reconstruction metrics on `loader`, and the figures' batch."""
        self.model.eval()
        metrics = EvalMetrics(self.cfg.data.num_classes, self.device, ssim)
        visual = None
        for x, y in self._batches(loader, desc):
            with self._guarded(desc), autocast(self.device, self.cfg.trainer.precision):
                out = self.model(x)
                terms = self.loss(out, x, y)
            targets = {**out.targets, "image": self.loss.image_target(x)}
            metrics.update(out.logits, y, terms, out.recons, targets)
            if visual is None and out.recons:
                n = self.cfg.trainer.recon_images
                visual = VisualBatch(x[:n] * self.loss.image_std, {k: v[:n] for k, v in out.recons.items()},
                                     {k: targets[k][:n] for k in out.recons})
        return metrics.compute(), visual

    @torch.no_grad()
    def ten_crop(self, loader, desc: str) -> dict[str, float]:
        """Top-1 / top-5 of softmax averaged over 10 crops of each uncropped image."""
        self.model.eval()
        metrics = EvalMetrics(self.cfg.data.num_classes, self.device)
        size = self.cfg.backbone.image_size
        for x, y in self._batches(loader, f"{desc} (10 crops)"):
            with self._guarded("10-crop evaluation"), autocast(self.device, self.cfg.trainer.precision):
                probs = ten_crop_probs(lambda c: self.model(c, decode=False).logits, x, size)
            metrics.update(probs, y, {}, {}, {})
        out = metrics.compute()
        return {"top1_10crop": out["top1"], "top5_10crop": out["top5"]}

    def final(self, loaders: Loaders) -> dict[str, float]:
        """The final model on the test set (trainer.test) and on 10 crops (trainer.ten_crop): read once per run."""
        metrics = {}
        if loaders.test is not None and self.cfg.trainer.test:
            test, _ = self.evaluate(loaders.test, ssim=True, desc="test")
            metrics.update({f"test/{k}": v for k, v in test.items()})
        if loaders.ten_crop is not None and (loaders.test is None or self.cfg.trainer.test):
            split = loaders.ten_crop_split
            metrics.update({f"{split}/{k}": v for k, v in self.ten_crop(loaders.ten_crop, split).items()})
        return metrics
