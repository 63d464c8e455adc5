"""The GPU path's speed options, exercised on CPU (where torch has them too): bf16 autocast, channels_last and
torch.compile train every variant (switch unpooling included) and agree with the plain fp32 step; a checkpoint
written under bf16 resumes exactly."""
import pytest
import torch

from recondec.checks import validate
from recondec.job import build_trainer
from recondec.training.device import autocast

from ..conftest import TINY, variant_params
from .test_reliability import EXACT, assert_same_weights, run, weights

STEPS = 2


def first_steps(compose_cfg, variant: str, *overrides: str) -> tuple[list[float], torch.Tensor]:
    """Losses of the first STEPS joint-stage training steps from the same start, and the update they made to the
    weights (all of them, flattened)."""
    cfg = validate(compose_cfg(*TINY, f"variant={variant}", "trainer.deterministic=true", *overrides))
    trainer = build_trainer(cfg, None)
    trainer.enter_stage(trainer.stages[-1])
    trainer.loaders.train.set_epoch(0)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    losses = []
    for (x, y), _ in zip(trainer.loaders.train, range(STEPS)):
        trainer.optimizer.zero_grad(set_to_none=True)
        x, y = trainer._to_device(x, y)
        with autocast(trainer.device, trainer.cfg.trainer.precision):  # the trainer's own: what a job runs
            terms = trainer.loss_terms(x, y)
        terms["total"].backward()
        trainer.optimizer.step()
        losses.append(terms["total"].item())
    update = torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(trainer.model.parameters(), start)])
    return losses, update


_FP32: dict[str, tuple[list[float], torch.Tensor]] = {}


def fp32_steps(compose_cfg, variant: str) -> tuple[list[float], torch.Tensor]:
    """The plain fp32 eager reference, computed once per variant for every option compared with it."""
    if variant not in _FP32:
        _FP32[variant] = first_steps(compose_cfg, variant)
    return _FP32[variant]


def agreement(update: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine similarity of two weight updates (1: the same direction)."""
    return torch.nn.functional.cosine_similarity(update.double(), reference.double(), dim=0).item()


@pytest.mark.parametrize("option,tolerance", [("trainer.precision=bf16", 0.05), ("trainer.channels_last=true", 1e-4)],
                         ids=["bf16", "channels_last"])
@pytest.mark.parametrize("variant", variant_params("swwae_all"))
def test_speed_option_trains_every_variant_as_fp32_does(compose_cfg, variant, option, tolerance):
    ref_losses, ref_update = fp32_steps(compose_cfg, variant)
    losses, update = first_steps(compose_cfg, variant, option)
    assert all(torch.isfinite(torch.tensor(losses)))
    # the same start and batches: the loss agrees with fp32 within the option's precision
    assert all(abs(a - b) <= tolerance * abs(b) for a, b in zip(losses, ref_losses)), (losses, ref_losses)
    # and training moved the weights the same way (bf16: within its 8-bit mantissa)
    assert agreement(update, ref_update) > (0.9 if "bf16" in option else 0.9999)


# compiling takes most of a minute per variant on 2 cores: every variant runs with the slow tests
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.timeout(600)
def test_torch_compile_trains_every_variant_as_eager_does(compose_cfg, variant):
    from torch._dynamo.utils import counters

    ref_losses, ref_update = fp32_steps(compose_cfg, variant)
    counters.clear()
    losses, update = first_steps(compose_cfg, variant, "trainer.compile=true")
    assert counters["stats"]["unique_graphs"] >= 1  # the step went through dynamo, not around it
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(losses, ref_losses)), (losses, ref_losses)
    assert agreement(update, ref_update) > 0.9999


@pytest.mark.slow
def test_a_checkpoint_written_under_bf16_resumes_exactly(compose_cfg):
    overrides = [*EXACT, "trainer.precision=bf16", "trainer.checkpoint_every_n_steps=1", "logger.experiment=bf16"]
    first = run(compose_cfg, *overrides)
    expected = weights(first.checkpoint)
    assert expected["encoder.features.0.weight"].dtype == torch.float32  # autocast: the weights stay fp32
    # damage the end-of-run checkpoint: resume=auto continues from the step before and redoes the last step
    (first.checkpoint.parent / "best.pt").unlink()
    first.checkpoint.write_bytes(first.checkpoint.read_bytes()[: first.checkpoint.stat().st_size // 2])
    again = run(compose_cfg, *overrides, "resume=auto")
    assert again.run_id == first.run_id
    assert_same_weights(weights(again.checkpoint), expected)
