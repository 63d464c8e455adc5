import pytest
import torch

from recondec.config import BackboneConf, ConfigError, LossConf, LossForm, LossLevels, Topology, Unpool, VariantConf
from recondec.models import build_loss, build_model
from recondec.models.losses import convert_weight, euclidean

REFERENCE = {"image": 1e-4, "pool1": 1e-12, "pool2": 1e-12, "pool3": 1e-12, "pool4": 1e-10}


def test_reference_form_is_sum_over_twice_the_batch():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert euclidean(pred, target, LossForm.reference).item() == pytest.approx((1 + 4 + 4 + 9) / 4)
    assert euclidean(pred, target, LossForm.mean).item() == pytest.approx((1 + 4 + 4 + 9) / 4)
    assert euclidean(pred[:1], target[:1], LossForm.reference).item() == pytest.approx(5 / 2)


def test_reference_weights_equal_converted_mean_weights():
    torch.manual_seed(0)
    v = VariantConf("swwae_all", Topology.stacked, Unpool.switch, LossLevels.all)
    model = build_model(BackboneConf("vgg16_small", image_size=64, width=0.125, classifier_width=16), v, 5)
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    out = model(x)
    sizes = {"image": x[0].numel(), **{k: t[0].numel() for k, t in out.targets.items()}}
    mean_w = {k: convert_weight(w, sizes[k], LossForm.mean) for k, w in REFERENCE.items()}
    ref = build_loss(model, LossConf(weights=REFERENCE), [0.2] * 3)(out, x, y)
    mean = build_loss(model, LossConf(weights=mean_w, form=LossForm.mean), [0.2] * 3)(out, x, y)
    torch.testing.assert_close(ref["total"], mean["total"], rtol=1e-5, atol=0)
    assert convert_weight(1e-4, 3 * 224 * 224, LossForm.mean) == pytest.approx(7.5264)
    assert convert_weight(7.5264, 3 * 224 * 224, LossForm.reference) == pytest.approx(1e-4)


def test_image_target_is_input_minus_mean_on_the_0_1_scale():
    v = VariantConf("sae_first", Topology.stacked, Unpool.fixed, LossLevels.first)
    model = build_model(BackboneConf("vgg16_small", image_size=32, width=0.125, classifier_width=16), v, 5)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    x01 = torch.rand(1, 3, 32, 32)
    x = (x01 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    fn = build_loss(model, LossConf(weights={"image": 1.0}), std.tolist())
    torch.testing.assert_close(fn.image_target(x), x01 - mean.view(1, 3, 1, 1))


def test_a_missing_weight_names_the_key():
    v = VariantConf("sae_all", Topology.stacked, Unpool.fixed, LossLevels.all)
    model = build_model(BackboneConf("vgg16_small", image_size=32, width=0.125, classifier_width=16), v, 5)
    with pytest.raises(ConfigError, match="loss.weights.pool3"):
        build_loss(model, LossConf(weights={"image": 1.0, "pool1": 1.0, "pool2": 1.0}), [0.2] * 3)


def _conv1_grad(compose_cfg, variant: str, loss: str) -> torch.Tensor:
    """conv1_1's gradient of the whole loss for VGG-16 at 128 px on torchvision-normalised images; the decoder
    and encoder weights are the same for every variant (same seed, same architecture)."""
    from recondec.checks import validate
    from recondec.models import build_loss, build_model

    cfg = validate(compose_cfg("backbone=vgg16", "backbone.image_size=128", "backbone.classifier_width=64",
                               f"variant={variant}", f"loss={loss}", "data.mean=[0.485,0.456,0.406]",
                               "data.std=[0.229,0.224,0.225]"))
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.variant, 10).eval()
    loss_fn = build_loss(model, cfg.loss, cfg.data.std)
    torch.manual_seed(1)
    x01 = torch.rand(2, 3, 128, 128)
    x = (x01 - torch.tensor(cfg.data.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    loss_fn(model(x), x, torch.tensor([0, 1]))["total"].backward()
    return model.encoder.features[0].weight.grad


@pytest.mark.slow
def test_converted_feature_weights_act_on_the_encoder_and_unconverted_ones_do_not(compose_cfg):
    """-all differs from -first only by the feature terms. With torchvision inputs the reference weights (set for
    Caffe's 0-255 activations) move conv1_1's gradient by ~0.003 %; converted (x3,321) by ~10 %."""
    def feature_effect(loss: str) -> float:
        first, all_levels = _conv1_grad(compose_cfg, "sae_first", loss), _conv1_grad(compose_cfg, "sae_all", loss)
        return ((all_levels - first).norm() / first.norm()).item()

    assert feature_effect("reference") < 1e-3
    assert feature_effect("reference_tv") > 1e-2
