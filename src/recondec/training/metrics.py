"""Metrics that accumulate on the device and are read only at log time (no host sync per step)."""
from __future__ import annotations

import torch
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.transforms.v2.functional import ten_crop

from recondec.training.distributed import all_reduce_mean


class RunningMeans:
    """Per-key running means of scalar tensors, kept on the device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def compute(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        means = torch.stack([self.sums[k] for k in keys]) / max(1, self.count)
        values = all_reduce_mean(means).tolist()  # one sync (and one all-reduce across DDP ranks)
        return dict(zip(keys, values))


def ten_crop_probs(classify, images: torch.Tensor, size: int) -> torch.Tensor:
    """Class probabilities averaged over 10 crops of size x size: the 4 corners and the centre of the image,
    then of its mirror image (the VGG / Caffe ``oversample`` protocol). `classify` maps images to logits."""
    crops = ten_crop(images, [size, size])
    return torch.stack([classify(c).float().softmax(dim=-1) for c in crops]).mean(dim=0)


def _ssim_kernel(size: int) -> int:
    k = min(11, size if size % 2 else size - 1)
    return k if k >= 3 else 0


class EvalMetrics:
    """Top-1 / top-5, per reconstructed level MSE and PSNR, and (with `ssim`) the image's SSIM (torchmetrics). SSIM is
    the costly one (its Gaussian windows over every channel), and of the image it is the number people compare: the
    feature levels, with tens to hundreds of channels, have MSE and PSNR only."""

    def __init__(self, num_classes: int, device: torch.device, ssim: bool = True):
        self.device, self.with_ssim = device, ssim
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device)
        # "loss/<term>" and "mse/<level>": means over samples (each batch weighs its size, so a short last batch
        # is not over-weighted), summed across DDP ranks by torchmetrics at compute time
        self.means: dict[str, MeanMetric] = {}
        self.psnr: dict[str, PeakSignalNoiseRatio] = {}
        self.ssim: dict[str, StructuralSimilarityIndexMeasure] = {}

    def update(self, logits, labels, losses: dict[str, torch.Tensor], recons: dict[str, torch.Tensor],
               targets: dict[str, torch.Tensor]) -> None:
        self.top1.update(logits, labels)
        self.top5.update(logits, labels)
        values = {**{f"loss/{k}": v for k, v in losses.items()},
                  **{f"mse/{lv}": torch.mean((recons[lv].float() - targets[lv].float()) ** 2) for lv in recons}}
        for key, value in values.items():
            if key not in self.means:  # a NaN stays NaN, not dropped ("disable" would drop the weights in 1.9)
                self.means[key] = MeanMetric(nan_strategy=float("nan")).to(self.device)
            self.means[key].update(value.detach().float(), weight=len(labels))
        for level, rec in recons.items():
            target = targets[level].float()
            if level not in self.psnr:
                # the image target lives on the 0-1 scale; a feature level's peak is the largest target
                # activation of the first validation batch (the val order is fixed, so runs compare)
                peak = 1.0 if level == "image" else max(float(target.max() - target.min()), 1e-8)
                self.psnr[level] = PeakSignalNoiseRatio(data_range=peak).to(self.device)
                k = _ssim_kernel(min(target.shape[-2:]))
                if k and self.with_ssim and level == "image":
                    # the standard 11x11 Gaussian window where the map is large enough, else a uniform k x k one
                    self.ssim[level] = StructuralSimilarityIndexMeasure(
                        data_range=peak, kernel_size=k, gaussian_kernel=k == 11).to(self.device)
            self.psnr[level].update(rec.float(), target)
            if level in self.ssim:
                self.ssim[level].update(rec.float(), target)

    def compute(self) -> dict[str, float]:
        out = {"top1": self.top1.compute().item() * 100, "top5": self.top5.compute().item() * 100}
        out.update({k: m.compute().item() for k, m in self.means.items()})
        out.update({f"psnr/{k}": m.compute().item() for k, m in self.psnr.items()})
        out.update({f"ssim/{k}": m.compute().item() for k, m in self.ssim.items()})
        return out
