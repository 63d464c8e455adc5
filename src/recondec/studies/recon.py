"""The reconstruction study (the paper's first finding): how much of the image survives at each level.

The classifier (backbone.pretrained, or trained once and cached: classifier.epochs) is frozen, and for each level
an SAE-first decoder (fixed unpooling) and an SWWAE-first decoder (switch unpooling) are trained to reconstruct
the image from that level alone, with the image loss at weight 1 as in the reference's reconstruction models.
Each decoder is one ordinary tracked job; the study then writes a table of the per-level validation error
(MSE, PSNR, SSIM) and a figure with one row per level.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from recondec.checks import derive
from recondec.config import Config, variant_option
from recondec.data import build_loaders
from recondec.job import TRAIN, JobInfo, JobResult, launch, machine_tags
from recondec.models import build_model
from recondec.studies.classifier import with_classifier
from recondec.tracking.sweep import ParentRun

log = logging.getLogger(__name__)
KINDS = ("sae", "swwae")  # SAE-first (fixed unpooling) and SWWAE-first (switches), conf/variant/<kind>_first.yaml


def decoder_job(cfg: Config, kind: str, level: str) -> Config:
    """The job that trains one decoder on the frozen classifier: <kind>-first from `level`, the image loss at
    weight 1 as in the reference's reconstruction models, a decoder stage only."""
    name = f"{kind}_from_{level}"
    return derive(cfg, {"output_dir": str(Path(cfg.output_dir) / name), "logger.run_name": name, "study": "train",
                        "variant": {**variant_option(f"{kind}_first"), "decode_from": level},
                        "schedule.decoder.epochs": cfg.recon.decoder_epochs, "schedule.joint.epochs": 0,
                        "loss.weights.image": 1.0, "loss.scale": 1.0})


def run_recon_study(cfg: Config, info: JobInfo) -> dict[str, dict[str, float]]:
    """One MLflow parent run for the study (a child of the sweep's, in a sweep); each decoder a child run. The
    classifier is backbone.pretrained, or the cached one (trained now if missing)."""
    if cfg.classifier.epochs:
        cfg = with_classifier(cfg, info.overrides)
    parent = ParentRun(cfg.logger.tracking_uri, cfg.logger.experiment, "recon study",
                       {"role": "study", "study": "recon", **machine_tags(cfg)}, info.parent_run_id)
    try:
        results = _train_decoders(cfg, info, parent)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end()
    return results


def _train_decoders(cfg: Config, info: JobInfo, parent: ParentRun) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    decoders: dict[str, tuple[Config, JobResult]] = {}
    for level in cfg.recon.levels:
        for kind in KINDS:
            job = decoder_job(cfg, kind, level)
            result = launch(job, JobInfo(overrides=[*info.overrides, f"recon={job.logger.run_name}"],
                                         parent_run_id=parent.run_id), TRAIN)
            results[job.logger.run_name] = {k: v for k, v in result.metrics.items()
                                            if k.startswith("val/") and "image" in k}
            decoders[job.logger.run_name] = (job, result.checkpoint)
    table = recon_table(cfg.recon.levels, results)
    figure = recon_figure(cfg, decoders)
    _log_summary(cfg, table, figure, parent)
    print(table)
    return results


def recon_table(levels, results) -> str:
    lines = ["| level | SAE MSE | SWWAE MSE | SAE PSNR (dB) | SWWAE PSNR (dB) | SAE SSIM | SWWAE SSIM |",
             "|---|---|---|---|---|---|---|"]
    for lv in levels:
        sae, sww = results[f"sae_from_{lv}"], results[f"swwae_from_{lv}"]
        lines.append(f"| {lv} | {sae['val/mse/image']:.4f} | {sww['val/mse/image']:.4f} | "
                     f"{sae['val/psnr/image']:.2f} | {sww['val/psnr/image']:.2f} | "
                     f"{sae.get('val/ssim/image', float('nan')):.3f} | {sww.get('val/ssim/image', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def _reconstruct(job: Config, checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    model = build_model(job.backbone, job.variant, job.data.num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
    return model.eval()(images).recons["image"]


def recon_figure(cfg: Config, checkpoints):
    """One row per level: the inputs, then SAE and SWWAE reconstructions side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever display the machine has
    import matplotlib.pyplot as plt

    job = next(iter(checkpoints.values()))[0]  # every decoder's job reads the same data
    loaders = build_loaders(job.data, job.backbone.image_size, job.schedule.batch_size, job.trainer.seed)
    images, _ = next(iter(loaders.val))
    images = images[:cfg.recon.figure_images]
    std = torch.tensor(job.data.std).view(1, 3, 1, 1)
    mean = torch.tensor(job.data.mean).view(1, 3, 1, 1)
    levels = list(cfg.recon.levels)
    n = images.shape[0]
    fig, axes = plt.subplots(len(levels), 3 * n, figsize=(0.9 * 3 * n, 1.0 * len(levels)), squeeze=False)
    for r, lv in enumerate(levels):
        cols = [("input", images * std + mean)]
        for kind in KINDS:
            sub, ckpt = checkpoints[f"{kind}_from_{lv}"]
            cols.append((kind.upper(), _reconstruct(sub, ckpt, images) + mean))
        for c in range(n):
            for j, (title, batch) in enumerate(cols):
                ax = axes[r][3 * c + j]
                ax.imshow(batch[c].clamp(0, 1).permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=6)
        axes[r][0].set_ylabel(lv, fontsize=7)
    fig.suptitle("reconstructions from each level: input | SAE (fixed unpooling) | SWWAE (switches)", fontsize=8)
    fig.tight_layout()
    return fig


def _log_summary(cfg: Config, table: str, figure, parent: ParentRun) -> None:
    import matplotlib.pyplot as plt

    out = Path(cfg.output_dir)
    (out / "recon_table.md").write_text(table)
    figure.savefig(out / "recon_levels.png", dpi=120)
    plt.close(figure)
    parent.log_artifact(out / "recon_table.md", "report")
    parent.log_artifact(out / "recon_levels.png", "report")
