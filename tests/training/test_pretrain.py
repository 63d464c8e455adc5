"""Layer-wise decoder pre-training: why the warm start exists, that it works, and the LR probe."""
import pytest
import torch

from recondec.checks import validate
from recondec.config import LossForm
from recondec.job import build_trainer
from recondec.models.losses import euclidean
from recondec.training.pretrain import probe_lr
from recondec.training.stages import plan_stages

from ..conftest import TINY

SGD = ["backbone.decoder_init=reference", "schedule=vgg_finetune", "schedule.batch_size=32",
       "schedule.pretrain.probe_steps=20",
       "schedule.pretrain.probe_batches=2", "schedule.pretrain.lr_candidates=[10,1,0.1,0.01,0.001,1e-4,1e-5]"]


def stacked_image_grads(model, x, loss_fn):
    """Gradient of the stacked decoder's image loss at every decoder conv weight."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    euclidean(out.recons["image"], loss_fn.image_target(x), LossForm.reference).backward()
    return {f"block{i}.conv{j}": conv.weight.grad.clone() for i, block in enumerate(model.decoder.blocks)
            for j, conv in enumerate(block.convs)}


@pytest.mark.slow
def test_stacked_decoder_convs_get_gradients_only_after_layerwise_pretraining(compose_cfg):
    cfg = validate(compose_cfg(*TINY, *SGD, "variant=swwae_first", "schedule.pretrain.epochs=1",
                               "data.train_limit=640"))
    trainer = build_trainer(cfg, None)
    assert [s.name for s in trainer.stages] == ["pretrain", "decoder", "joint"]
    x = next(iter(trainer.loaders.val))[0]
    before = stacked_image_grads(trainer.model, x, trainer.job_loss)
    # from N(0, 0.001^2) each conv scales its input by ~0.01, so the stacked output is ~1e-27 and every decoder
    # conv weight gets a gradient below 1e-20: no learning rate an SGD run could use moves them
    assert all(g.abs().max() < 1e-20 for g in before.values()), {k: g.abs().max().item() for k, g in before.items()}

    trainer.enter_stage(trainer.stages[0])
    trainer.train_epoch()
    after = stacked_image_grads(trainer.model, x, trainer.job_loss)
    # every conv now gets a gradient, at least 1e8 times what it got from the raw init
    gain = {k: (after[k].abs().max() / before[k].abs().max().clamp_min(1e-38)).item() for k in after}
    assert all(g.abs().max() > 0 for g in after.values()) and min(gain.values()) > 1e8, gain


def test_pretraining_is_a_stage_only_for_models_with_a_decoder(compose_cfg):
    cfg = validate(compose_cfg(*TINY, *SGD))
    assert [s.name for s in plan_stages(cfg.schedule, has_decoder=True)] == ["pretrain", "decoder", "joint"]
    assert [s.name for s in plan_stages(cfg.schedule, has_decoder=False)] == ["joint"]


@pytest.mark.slow
def test_given_block_lrs_are_used_and_the_others_probed(compose_cfg):
    cfg = validate(compose_cfg(*TINY, *SGD, "variant=sae_all", "+schedule.pretrain.lrs.pool5=0.123"))
    trainer = build_trainer(cfg, None)
    trainer.enter_stage(trainer.stages[0])
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    # weights and biases of 5 blocks; biases at 2x (vgg_finetune's bias_lr_mult) without weight decay
    assert len(lrs) == 10 and lrs[-2:] == [0.123, 0.246]
    assert trainer.optimizer.param_groups[-1]["weight_decay"] == 0
    assert all(lr in (10, 1, 0.1, 0.01, 0.001, 1e-4, 1e-5) for lr in lrs[0:8:2])  # probed: a candidate


def test_probe_picks_the_lr_with_the_largest_loss_drop_stops_past_the_peak_and_restores_the_module():
    from recondec.config import ScheduleConf

    torch.manual_seed(0)
    block = torch.nn.Linear(4, 4)
    start = {k: v.clone() for k, v in block.state_dict().items()}
    data = [(torch.randn(16, 4), torch.randn(16, 4)) for _ in range(2)]
    losses = [lambda x=x, t=t: euclidean(block(x), t, LossForm.reference) for x, t in data]
    best, drops = probe_lr(block, losses, [10.0, 0.1, 0.01, 1e-6, 1e-9], 10, ScheduleConf())
    assert drops[10.0] < 0  # diverges
    assert best == 0.1 and drops[0.1] > drops[0.01] > 0  # a least-squares fit: the largest stable step wins
    assert 1e-6 not in drops and 1e-9 not in drops  # 0.01 already did worse than 0.1: the scan stopped there
    assert all(torch.equal(v, start[k]) for k, v in block.state_dict().items())


def test_probe_refuses_a_learning_rate_that_kills_the_module():
    """A ReLU block whose bias starts far too high: a large LR drives it below zero in one step, the output is
    then the constant 0 and the loss (small targets) drops more than any LR that learns. Without the spread check
    the probe takes it; with it, every such candidate is refused."""
    from recondec.config import ScheduleConf
    from recondec.training.pretrain import input_dependence

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    torch.nn.init.normal_(block[0].weight, 0, 0.1)
    torch.nn.init.constant_(block[0].bias, 3.0)
    mixing = torch.randn(4, 4)
    data = [(x, 0.1 * (x @ mixing).relu()) for x in (torch.randn(32, 4) for _ in range(2))]
    losses = [lambda x=x, t=t: euclidean(block(x), t, LossForm.reference) for x, t in data]

    def spread():
        return {"output": input_dependence([block(x) for x, _ in data])}

    blind, _ = probe_lr(block, losses, [10.0, 1.0, 0.1, 0.01], 10, ScheduleConf())
    seeing, drops = probe_lr(block, losses, [10.0, 1.0, 0.1, 0.01], 10, ScheduleConf(), spread)
    assert blind == 10.0  # the dead block "won"
    assert seeing == 0.01 and drops[10.0] == drops[1.0] == drops[0.1] == -float("inf") and drops[0.01] > 0


def test_he_init_lets_the_stacked_decoder_pass_gradient_to_every_conv_from_the_start(compose_cfg):
    """decoder_init=he: the stacked decoder's image depends on the input and every decoder conv gets a gradient
    before any warm start; from the reference init both are below 1e-15 (a random tiny encoder here: its pool5 is
    small, hence the modest absolute bounds)."""
    def stacked(init: str):
        trainer = build_trainer(validate(compose_cfg(*TINY, *SGD, "variant=swwae_first",
                                                     f"backbone.decoder_init={init}")), None)
        x = next(iter(trainer.loaders.val))[0]
        grads = stacked_image_grads(trainer.model, x, trainer.job_loss)
        spread = trainer.model(x).recons["image"].std(0).mean().item() / x.std(0).mean().item()
        return trainer.model, min(g.abs().max().item() for g in grads.values()), spread

    _, ref_grad, ref_spread = stacked("reference")
    model, he_grad, he_spread = stacked("he")
    assert ref_grad < 1e-15 and ref_spread < 1e-15, (ref_grad, ref_spread)
    assert he_grad > 1e-6 and he_spread > 1e-5, (he_grad, he_spread)
    conv = model.decoder.blocks[-1].convs[0]
    assert abs(conv.weight.std().item() / (2 / conv.weight[0].numel()) ** 0.5 - 1) < 0.2  # He-normal, fan-in


def test_decoders_of_a_batch_norm_encoder_learn_to_reconstruct(compose_cfg):
    """vgg16_small with batch norm: a decoder-only stage raises the validation image PSNR of SWWAE-all."""
    cfg = validate(compose_cfg(*TINY, "variant=swwae_all", "backbone.batch_norm=true", "data.train_limit=256",
                               "schedule.decoder.epochs=4", "schedule.joint.epochs=0", "schedule.decoder.lr=1e-2"))
    trainer = build_trainer(cfg, None)
    before = trainer.evaluator.evaluate(trainer.loaders.val, ssim=False)[0]["psnr/image"]
    trainer.enter_stage(trainer.stages[0])
    for _ in range(4):
        trainer.train_epoch()
    after = trainer.evaluator.evaluate(trainer.loaders.val, ssim=False)[0]["psnr/image"]
    assert after > before + 1.0, (before, after)
