"""Every variant x every backbone; the paper's loss table; gradients; decoder sizes."""
import pytest
import torch
from omegaconf import OmegaConf

from recondec.config import CONF_DIR, BackboneConf, LossConf, LossForm, LossLevels, Topology, Unpool, VariantConf
from recondec.models import build_loss, build_model
from recondec.models.backbones import ConvSpec
from recondec.models.decoders import make_conv, mirror
from recondec.models.unpool import switch_unpool
from recondec.tools.profile import count_params

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
    """docs/paper.md's table: baseline none; -first the image only; -all and -layerwise every level."""
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


# ---------------------------------------------------------------- the authors' AlexNet (recon-dec/alexnet)

def test_caffe_alexnet_image_decoder_is_the_references_three_layers():
    torch.manual_seed(0)
    backbone = BackboneConf("alexnet_caffe", image_size=227, classifier_width=16)
    model = build_model(backbone, load_variant("swwae_all"), 5)
    image_block = model.decoder.blocks[0].convs
    # dec:conv1-pre 5x5 96->96 + ReLU, dec:conv1-body deconv 11x11/4 -> 48 + ReLU, dec:conv1-post 5x5 -> 3 (linear;
    # a stride-1 Caffe deconvolution is a conv with the same kernel and size-keeping padding, as in every block)
    assert [type(c) for c in image_block] == [torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Conv2d]
    assert [tuple(c.weight.shape) for c in image_block] == [(96, 96, 5, 5), (96, 48, 11, 11), (3, 48, 5, 5)]
    assert [(c.stride[0], c.padding[0]) for c in image_block] == [(1, 2), (4, 0), (1, 2)]
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        enc = model.encoder(x, need_switches=True)
        h = switch_unpool(enc.activations[0], enc.switches[0], model.encoder.macro_layers[0].pool, (55, 55))
        sizes = []
        for conv in image_block:
            h = conv(h, output_size=(227, 227)) if isinstance(conv, torch.nn.ConvTranspose2d) else conv(h)
            sizes.append(tuple(h.shape[1:]))
    assert sizes == [(96, 55, 55), (48, 227, 227), (3, 227, 227)]  # (55 - 1) * 4 + 11 = 227
    # the decoder convs carry no groups; biases as the reference: 0.1 on the mirrors of conv2/4/5, 0 elsewhere
    blocks = [[c for c in b.convs] for b in model.decoder.blocks]
    assert all(c.groups == 1 for b in blocks for c in b)
    assert all(c.bias.unique().numel() == 1 for b in blocks for c in b)
    assert [c.bias[0].item() for b in blocks for c in b] == pytest.approx([0.0] * 3 + [0.1, 0.0, 0.1, 0.1])
    assert all(abs(c.weight.std().item() - 1e-3) < 2e-4 for b in blocks for c in b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_of_caffe_alexnet_reconstructs_at_227(variant):
    torch.manual_seed(0)
    model = build_model(BackboneConf("alexnet_caffe", image_size=227, classifier_width=16), load_variant(variant), 5)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 227, 227))
    shapes = {"image": (2, 3, 227, 227), "pool1": (2, 96, 27, 27), "pool2": (2, 256, 13, 13),
              "conv3": (2, 384, 13, 13), "conv4": (2, 384, 13, 13)}
    # every decoder reconstructs every level below pool5 (-first variants put a loss on the image only)
    assert {k: tuple(v.shape) for k, v in out.recons.items()} == ({} if variant == "baseline" else shapes)
    assert out.logits.shape == (2, 5)


def test_caffe_alexnet_decoder_parameter_count():
    with torch.device("meta"):
        model = build_model(BackboneConf("alexnet_caffe", image_size=227), load_variant("swwae_all"), 1000)
    expected = (256 * 384 * 3 * 3 + 384      # dec:conv5 (no groups in the decoder)
                + 384 * 384 * 3 * 3 + 384    # dec:conv4
                + 384 * 256 * 3 * 3 + 256    # dec:conv3
                + 256 * 96 * 5 * 5 + 96      # dec:conv2
                + 96 * 96 * 5 * 5 + 96       # dec:conv1-pre
                + 96 * 48 * 11 * 11 + 48     # dec:conv1-body
                + 48 * 3 * 5 * 5 + 3)        # dec:conv1-post
    assert count_params(model.decoder) == expected == 4_503_811
    assert count_params(model.encoder) == 60_965_224


def test_caffe_alexnet_fc_decoder_starts_as_the_reference():
    torch.manual_seed(0)
    v = VariantConf("x", Topology.stacked, Unpool.switch, LossLevels.first, decode_from="fc8")
    model = build_model(BackboneConf("alexnet_caffe", image_size=227, classifier_width=64), v, 5)
    dec_fc8, dec_fc7, dec_fc6 = [m for m in model.decoder.fc.net if isinstance(m, torch.nn.Linear)]
    assert all(m.bias.unique().numel() == 1 for m in (dec_fc8, dec_fc7, dec_fc6))
    assert [m.bias[0].item() for m in (dec_fc8, dec_fc7, dec_fc6)] == pytest.approx([0.0, 0.1, 0.1])
    assert dec_fc6.weight.shape == (256 * 6 * 6, 64) and abs(dec_fc6.weight.std().item() - 0.005) < 2e-4
    assert abs(dec_fc7.weight.std().item() - 0.005) < 1e-3 and abs(dec_fc8.weight.std().item() - 0.01) < 3e-3
    with torch.no_grad():
        assert model(torch.randn(2, 3, 227, 227)).recons["image"].shape == (2, 3, 227, 227)


def test_a_grouped_encoder_conv_is_mirrored_with_the_same_groups():
    conv = make_conv(mirror(ConvSpec(in_channels=8, out_channels=16, kernel_size=3, stride=1, padding=1, groups=2)))
    assert (conv.in_channels, conv.out_channels, conv.groups) == (16, 8, 2)
    up = make_conv(mirror(ConvSpec(in_channels=4, out_channels=8, kernel_size=4, stride=2, padding=1, groups=4)))
    assert isinstance(up, torch.nn.ConvTranspose2d) and (up.in_channels, up.out_channels, up.groups) == (8, 4, 4)


def test_vgg16_fc_decoder_starts_at_std_001_as_the_reference_reconstruction_models():
    variant = VariantConf("swwae_first", Topology.stacked, Unpool.switch, LossLevels.first, decode_from="fc8")
    model = build_model(BackboneConf("vgg16", image_size=32, classifier_width=64), variant, 10)
    linears = [m for m in model.decoder.fc.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(abs(m.weight.std().item() - 0.01) < 1e-3 for m in linears)
    convs = [m for b in model.decoder.blocks for m in b.convs]
    assert all(abs(c.weight.std().item() - 1e-3) < 2e-4 for c in convs)  # the conv blocks keep N(0, 0.001^2)
