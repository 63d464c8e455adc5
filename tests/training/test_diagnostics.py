"""Every run shows whether its unsupervised objective acted (gradient shares, encoder movement), and a decoder that
does not depend on its input stops the run instead of reading as "no effect"."""
import logging

import mlflow
import pytest
import torch

from recondec.checks import validate
from recondec.config import LossForm, ScheduleConf
from recondec.job import JobInfo, build_trainer
from recondec.models.losses import euclidean
from recondec.run import run_job
from recondec.training import pretrain
from recondec.training.diagnostics import DeadDecoderError, encoder_convs, run_medians
from recondec.training.pretrain import ProbeFailed, probe_lr

from ..conftest import TINY

# the configuration that once produced dead stacked decoders: the reference init, no warm start, SGD at a fixed LR
DEAD = [*TINY, "backbone.decoder_init=reference", "variant=swwae_all", "schedule=vgg_finetune",
        "schedule.batch_size=32",
        "schedule.pretrain.epochs=0", "schedule.decoder.probe_lr=false", "schedule.decoder.lr=1e-3",
        "schedule.decoder.epochs=1", "schedule.joint.epochs=0"]


def test_the_guard_stops_the_configuration_that_used_to_produce_dead_decoders(compose_cfg, tmp_path):
    overrides = [*DEAD, "logger.experiment=dead"]
    with pytest.raises(DeadDecoderError) as error:
        run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    message = str(error.value)
    assert message.startswith("dead decoder after stage 'decoder': the reconstruction of image")
    assert "backbone.decoder_init=he" in message and "schedule.pretrain.epochs>0" in message
    assert "trainer.dead_decoder=warn" in message
    (run,) = mlflow.search_runs(experiment_names=["dead"], output_format="list")
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("DeadDecoderError")
    assert run.data.metrics["decoder/input_dependence/image"] < 1e-6
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # the dead stage is never checkpointed as done


def test_the_guard_can_be_told_to_warn(compose_cfg, caplog):
    overrides = [*DEAD, "trainer.dead_decoder=warn"]
    with caplog.at_level(logging.WARNING):
        result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    assert "dead decoder after stage 'decoder'" in caplog.text and result.metrics["val/top1"] >= 0


def test_a_healthy_job_passes_the_guard_after_every_stage(compose_cfg):
    overrides = [*TINY, "variant=swwae_all", "schedule=vgg_finetune", "schedule.batch_size=32",
                 "schedule.pretrain.epochs=1", "schedule.pretrain.probe_steps=4", "schedule.pretrain.probe_batches=1",
                 "schedule.decoder.epochs=1", "schedule.joint.epochs=1", "logger.experiment=healthy"]
    result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    client = mlflow.MlflowClient()
    history = client.get_metric_history(result.run_id, "decoder/input_dependence/image")
    assert [m.step for m in history] == [1, 2, 3]  # after the pre-training, decoder and joint stages
    assert min(m.value for m in history) > 1e-3


def _shares_by_hand(trainer):
    """The share definition written out: |d(w * term)/dW| / |d ce/dW| at the first and last encoder conv."""
    model, loss_fn = trainer.model, trainer.job_loss
    convs = encoder_convs(model)
    for conv in (convs[0], convs[-1]):
        conv.weight.requires_grad_(True)  # frozen in the decoder stage
    x, y = trainer.monitor.batches[0]
    model.eval()
    terms = loss_fn(model(x), x, y)
    out = {}
    for where, conv in (("first_conv", convs[0]), ("last_conv", convs[-1])):
        ce = torch.autograd.grad(terms["ce"], conv.weight, retain_graph=True)[0].norm()
        recon = sum(w * terms[f"recon/{lv}"] for lv, w in loss_fn.weights.items())
        out[f"grad_share/recon/{where}"] = (torch.autograd.grad(recon, conv.weight, retain_graph=True)[0].norm()
                                            / ce).item()
        w = loss_fn.weights["image"]
        out[f"grad_share/image/{where}"] = (torch.autograd.grad(w * terms["recon/image"], conv.weight,
                                                                retain_graph=True)[0].norm() / ce).item()
    return out


def test_gradient_shares_are_the_weighted_terms_gradients_over_the_cross_entropys(compose_cfg):
    trainer = build_trainer(validate(compose_cfg(*TINY, "variant=sae_all", "loss=balanced",
                                                 "trainer.diagnostic_batches=1")), None)
    trainer.enter_stage(trainer.stages[0])  # the decoder stage: the encoder is frozen, the shares still measured
    shares = trainer.monitor.grad_shares()
    assert not any(p.requires_grad for p in trainer.model.encoder.parameters())  # left frozen
    assert set(shares) == {f"grad_share/{t}/{w}" for t in ("image", "pool1", "pool2", "pool3", "pool4", "recon")
                           for w in ("first_conv", "last_conv")}
    for key, value in _shares_by_hand(trainer).items():
        assert shares[key] == pytest.approx(value, rel=1e-4), key
    baseline = build_trainer(validate(compose_cfg(*TINY, "variant=baseline")), None)
    assert baseline.monitor.metrics() == {"encoder/rel_change": 0.0}


def test_encoder_change_is_the_mean_relative_change_of_the_conv_weights_from_the_start(compose_cfg):
    trainer = build_trainer(validate(compose_cfg(*TINY, "variant=swwae_first")), None)
    start = [c.weight.detach().clone() for c in encoder_convs(trainer.model)]
    assert trainer.monitor.rel_change() == 0.0
    trainer.enter_stage(trainer.stages[-1])
    trainer.train_epoch()
    by_hand = [((c.weight - w0).norm() / w0.norm()).item() for c, w0 in zip(encoder_convs(trainer.model), start)]
    assert trainer.monitor.rel_change() == pytest.approx(sum(by_hand) / len(by_hand)) and min(by_hand) > 0


def test_every_validation_logs_the_diagnostics_and_the_summary_prints_them(compose_cfg, capsys):
    overrides = [*TINY, "variant=swwae_all", "logger.experiment=diag"]
    result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    client = mlflow.MlflowClient()
    for key in ("grad_share/recon/first_conv", "grad_share/pool4/last_conv", "encoder/rel_change"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2], key
    rel = client.get_metric_history(result.run_id, "encoder/rel_change")
    assert rel[0].value == 0.0 < rel[1].value  # frozen in the decoder stage, moved in the joint one
    out = capsys.readouterr().out
    share = result.metrics["grad_share/recon/first_conv"]
    assert f"reconstruction gradient = {100 * share:.1f}% of the cross-entropy's at the first conv" in out
    assert f"encoder moved {100 * result.metrics['encoder/rel_change']:.1f}% from its start" in out
    # the share over the whole run: the median of both validations' shares (of two values, their mean)
    history = [m.value for m in client.get_metric_history(result.run_id, "grad_share/recon/first_conv")]
    median = result.metrics["run_median/grad_share/recon/first_conv"]
    assert median == pytest.approx(sum(history) / 2)
    assert f"(median over the run's validations: {100 * median:.1f}%)" in out


def test_the_run_median_of_the_shares_is_the_median_over_the_validations_that_measured_them():
    history = [{"epoch": 1, "grad_share/recon/first_conv": 0.5, "grad_share/recon/last_conv": 0.1},
               {"epoch": 2},  # no validation this epoch
               {"epoch": 3, "grad_share/recon/first_conv": 0.02, "grad_share/recon/last_conv": 0.3},
               {"epoch": 4, "grad_share/recon/first_conv": 0.1, "grad_share/recon/last_conv": 0.2}]
    assert run_medians(history) == {"run_median/grad_share/recon/first_conv": 0.1,
                                    "run_median/grad_share/recon/last_conv": 0.2}
    assert run_medians(history[:1] + history[2:3]) == {"run_median/grad_share/recon/first_conv": pytest.approx(0.26),
                                                       "run_median/grad_share/recon/last_conv": pytest.approx(0.2)}
    assert run_medians([{"epoch": 1, "encoder/rel_change": 0.1}]) == {}  # a baseline has no shares


def test_a_probe_that_refuses_every_candidate_is_an_error_naming_the_module():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    torch.nn.init.normal_(block[0].weight, 0, 0.1)
    torch.nn.init.constant_(block[0].bias, 3.0)  # every candidate below drives it to the constant 0
    data = [(x, 0.1 * x.relu()) for x in (torch.randn(32, 4) for _ in range(2))]
    losses = [lambda x=x, t=t: euclidean(block(x), t, LossForm.reference) for x, t in data]

    def spread():
        return {"output": pretrain.input_dependence([block(x) for x, _ in data])}

    with pytest.raises(ProbeFailed, match="LR probe for the block from pool9: no candidate lowered"):
        probe_lr(block, losses, [10.0, 1.0, 0.1], 10, ScheduleConf(), spread, what="the block from pool9")


def test_the_decoder_probe_judges_collapse_on_the_levels_that_carry_a_loss(compose_cfg, monkeypatch):
    seen = {}

    def record(module, losses, candidates, steps, schedule, spread=None, **kw):
        seen["levels"] = sorted(spread())
        return candidates[0], {candidates[0]: 0.5}

    monkeypatch.setattr(pretrain, "probe_lr", record)
    for variant, levels in (("swwae_first", ["image"]), ("sae_all", ["image", "pool1", "pool2", "pool3", "pool4"])):
        trainer = build_trainer(validate(compose_cfg(*TINY, f"variant={variant}", "schedule.decoder.probe_lr=true")),
                                None)
        trainer.enter_stage(trainer.stages[0])
        assert seen["levels"] == levels, variant


def test_the_summary_line_says_what_the_reconstruction_terms_did():
    from recondec.training.diagnostics import describe_objective

    baseline = describe_objective({"encoder/rel_change": 0.1})
    assert baseline == "no reconstruction terms; encoder moved 10.0% from its start"
    # a decoder trained on a frozen classifier (the reconstruction study) has terms, only none reach the encoder
    assert describe_objective({"encoder/rel_change": 0.0}, decoders=True).startswith(
        "reconstruction terms on the decoders only")
    line = describe_objective({"grad_share/recon/first_conv": 0.05, "grad_share/recon/last_conv": 0.2,
                               "grad_share/image/first_conv": 0.05}, decoders=True)
    assert line.startswith("reconstruction gradient = 5.0% of the cross-entropy's at the first conv (image 5.0%)")
