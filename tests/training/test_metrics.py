"""Validation metrics: means over samples, whatever the batch sizes."""
import pytest
import torch
import torch.nn.functional as F

from recondec.training.metrics import EvalMetrics


def test_validation_losses_and_mse_are_per_sample_means_with_a_short_last_batch():
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 5), torch.randint(0, 5, (10,))
    recons, targets = torch.rand(10, 3, 8, 8), torch.rand(10, 3, 8, 8)
    metrics = EvalMetrics(5, torch.device("cpu"))
    for batch in torch.arange(10).split(4):  # 4, 4 and a last batch of 2
        metrics.update(logits[batch], labels[batch], {"ce": F.cross_entropy(logits[batch], labels[batch])},
                       {"image": recons[batch]}, {"image": targets[batch]})
    out = metrics.compute()
    assert out["loss/ce"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert out["mse/image"] == pytest.approx(F.mse_loss(recons, targets).item(), rel=1e-6)
    # the mean of the three batch means differs: the short batch would weigh double
    batch_means = [F.cross_entropy(logits[b], labels[b]) for b in torch.arange(10).split(4)]
    assert torch.stack(batch_means).mean().item() != pytest.approx(out["loss/ce"], rel=1e-6)


def test_a_nan_validation_loss_shows_as_nan():
    metrics = EvalMetrics(3, torch.device("cpu"))
    logits, labels = torch.randn(4, 3), torch.arange(4) % 3
    for loss in (torch.tensor(1.0), torch.tensor(float("nan"))):
        metrics.update(logits, labels, {"ce": loss}, {}, {})
    assert torch.isnan(torch.tensor(metrics.compute()["loss/ce"]))


def test_ssim_is_left_out_when_not_asked_for_and_the_rest_is_unchanged():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    recons = {"image": torch.rand(8, 3, 16, 16)}
    targets = {"image": torch.rand(8, 3, 16, 16)}
    out = {}
    for ssim in (True, False):
        metrics = EvalMetrics(4, torch.device("cpu"), ssim=ssim)
        metrics.update(logits, labels, {"total": torch.tensor(1.0)}, recons, targets)
        out[ssim] = metrics.compute()
    assert "ssim/image" in out[True] and "ssim/image" not in out[False]
    assert out[False] == {k: v for k, v in out[True].items() if k != "ssim/image"}
