"""Every variant x every backbone; the paper's loss table; gradients; decoder sizes."""
import pytest
import torch
from omegaconf import OmegaConf

from recondec.config import CONF_DIR, BackboneConf, LossConf, LossForm, LossLevels, Topology, Unpool, VariantConf
from recondec.models import build_loss, build_model
from recondec.models.profile import count_params

from ..conftest import VARIANTS

SMALL = {  # every backbone at a small size (a narrow head keeps VGG-16 quick on CPU)
    "vgg16": dict(image_size=32, classifier_width=16),
    "vgg16_bn": dict(image_size=32, classifier_width=16),
    "vgg16_small": dict(image_size=32, width=0.125, classifier_width=16),
    "alexnet": dict(image_size=63, classifier_width=16),
    "alexnet_caffe": dict(image_size=67, classifier_width=16),
}
ALL_LEVELS = {"vgg": ["image", "pool1", "pool2", "pool3", "pool4"],
              "alexnet": ["image", "pool1", "pool2", "conv3", "conv4"]}
LOSS = LossConf(weights={"image": 1.0, "pool1": 0.5, "pool2": 0.5, "pool3": 0.5, "pool4": 0.5}, default_weight=0.5,
                form=LossForm.mean)


def load_variant(name: str) -> VariantConf:
    node = OmegaConf.load(CONF_DIR / "variant" / f"{name}.yaml")
    if "defaults" in node:  # variant/swwae.yaml points at swwae_all
        node = OmegaConf.load(CONF_DIR / "variant" / f"{node.defaults[0]}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(VariantConf), node))


def expected_terms(variant: str, family: str) -> set[str]:
    """PAPER.md's table: baseline none; -first the image only; -all and -layerwise every level."""
    if variant == "baseline":
        return {"ce", "total"}
    levels = ["image"] if variant.endswith("_first") else ALL_LEVELS[family]
    return {"ce", "total"} | {f"recon/{lv}" for lv in levels}


@pytest.mark.parametrize("backbone", list(SMALL))
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_runs_and_has_the_papers_loss_terms(backbone, variant):
    torch.manual_seed(0)
    v = load_variant(variant)
    model = build_model(BackboneConf(backbone, **SMALL[backbone]), v, 5)
    loss_fn = build_loss(model, LOSS, [0.25, 0.25, 0.25])
    size = SMALL[backbone]["image_size"]
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 3])
    out = model(x)
    terms = loss_fn(out, x, y)
    family = "alexnet" if backbone.startswith("alexnet") else "vgg"
    assert set(terms) == expected_terms(variant, family)
    for level, rec in out.recons.items():
        target = x if level == "image" else out.targets[level]
        assert rec.shape == target.shape, level
    terms["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    expected_unpool = Unpool.switch if variant.startswith("swwae") else Unpool.fixed
    assert variant == "baseline" or v.unpool is expected_unpool


def test_swwae_names_the_showcase_swwae_all():
    assert load_variant("swwae") == load_variant("swwae_all")


def _recon_only_grads(variant: VariantConf, frozen: bool):
    torch.manual_seed(0)
    model = build_model(BackboneConf("vgg16_small", image_size=32, width=0.125, classifier_width=16), variant, 5)
    model.set_encoder_frozen(frozen)
    loss = LossConf(weights=LOSS.weights, default_weight=0.5, classification=0.0, form=LossForm.mean)
    loss_fn = build_loss(model, loss, [0.25] * 3)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    loss_fn(out, x, torch.zeros(4, dtype=torch.long))["total"].backward()
    return model


@pytest.mark.parametrize("variant", ["sae_first", "swwae_all", "swwae_layerwise"])
def test_reconstruction_gradients_reach_the_encoder_unless_frozen(variant):
    v = load_variant(variant)
    model = _recon_only_grads(v, frozen=False)
    conv1 = model.encoder.features[0].weight
    assert conv1.grad is not None and conv1.grad.abs().sum() > 0
    frozen = _recon_only_grads(v, frozen=True)
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert all(p.grad is not None for p in frozen.decoder.parameters())
    frozen.train()
    assert frozen.training and not frozen.encoder.training  # frozen encoder stays in eval mode


def test_detached_targets_stop_the_gradient_through_the_target_path():
    v = VariantConf("x", Topology.layerwise, Unpool.switch, LossLevels.all)
    torch.manual_seed(0)
    model = build_model(BackboneConf("vgg16_small", image_size=32, width=0.125, classifier_width=16), v, 5)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for detach in (False, True):
        model.zero_grad()
        loss = LossConf(weights={"image": 1.0}, default_weight=1.0, classification=0.0, form=LossForm.mean,
                        detach_targets=detach)
        fn = build_loss(model, loss, [0.25] * 3)
        fn.weights = {"pool1": 1.0}  # only the pool1 term: its target is the encoder's pool1 output
        fn(model(x), x, torch.zeros(2, dtype=torch.long))["total"].backward()
        grads.append(model.encoder.features[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


# VGG-16 configuration D, written out: (in, out) channels of the 13 convs, grouped per macro-layer
VGG16_BLOCKS = [[(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256), (256, 256), (256, 256)],
                [(256, 512), (512, 512), (512, 512)], [(512, 512), (512, 512), (512, 512)]]


def mirrored_params(blocks) -> int:
    """A mirrored 3x3 conv maps out -> in channels: 9*in*out weights and `in` biases."""
    return sum(9 * cin * cout + cin for block in blocks for cin, cout in block)


@pytest.mark.parametrize("variant", ["sae_all", "swwae_first", "sae_layerwise", "swwae_layerwise"])
def test_vgg16_decoder_parameter_count_equals_the_mirrored_architecture(variant):
    model = build_model(BackboneConf("vgg16", image_size=32, classifier_width=16), load_variant(variant), 10)
    assert count_params(model.decoder) == mirrored_params(VGG16_BLOCKS) == 14_714_179
    stds = [m.weight.std().item() for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(abs(s - 1e-3) < 2e-4 for s in stds)  # N(0, 0.001^2) init
    assert all((m.bias == 0).all() for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d))


def test_decoding_from_fc_levels_adds_the_fc_pathway():
    sizes = {}
    for level in ("fc6", "fc7", "fc8"):
        v = VariantConf("x", Topology.stacked, Unpool.switch, LossLevels.first, decode_from=level)
        model = build_model(BackboneConf("vgg16_small", image_size=32, width=0.125, classifier_width=16), v, 5)
        out = model(torch.randn(2, 3, 32, 32))
        assert out.recons["image"].shape == (2, 3, 32, 32)
        sizes[level] = count_params(model.decoder.fc)
    top = 64 * 1 * 1  # pool5 of the 0.125-wide VGG at 32 px
    assert sizes["fc6"] == 16 * top + top
    assert sizes["fc7"] == (16 * 16 + 16) + (16 * top + top)
    assert sizes["fc8"] == (5 * 16 + 16) + (16 * 16 + 16) + (16 * top + top)


def test_decoding_from_a_lower_level_reconstructs_only_below_it():
    v = VariantConf("x", Topology.stacked, Unpool.fixed, LossLevels.all, decode_from="pool3")
    model = build_model(BackboneConf("vgg16_small", image_size=32, width=0.125, classifier_width=16), v, 5)
    assert model.levels == ["image", "pool1", "pool2"]
    assert set(model(torch.randn(1, 3, 32, 32)).recons) == {"image", "pool1", "pool2"}
