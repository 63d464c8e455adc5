"""Residual backbones: torchvision compatibility, every variant on every ResNet, switches under downsample=pool."""
import pytest
import torch
import torch.nn as nn
import torchvision

from recondec.checks import check_backbone
from recondec.config import BackboneConf, ConfigError, DecoderInit, Downsample, LossConf, LossForm
from recondec.models import build_loss, build_model
from recondec.models.backbones import build_encoder, load_pretrained
from recondec.models.decoders import ResidualStageDecoder

from ..conftest import VARIANTS, variant_params
from .test_augmented import load_variant
from .test_backbones import seed_cache

LEVELS = ["image", "stem", "layer1", "layer2", "layer3"]  # what a stacked decoder from layer4 reconstructs
LOSS = LossConf(weights={"image": 1.0}, default_weight=0.5, form=LossForm.mean)
SMALL = [("resnet18_small", 32, None), ("resnet18_small", 32, Downsample.pool)]
IMAGENET = [("resnet18", 64, None), ("resnet18", 64, Downsample.pool)]
HEAVY = [("resnet50", 64, None), ("resnet50", 64, Downsample.pool)]


def backbone(name: str, size: int, downsample=None, **kw) -> BackboneConf:
    """resnet18_small at width 0.125 (8-16-32-64 channels) unless told: small and quick on a CPU."""
    kw = {"width": 0.125, **kw} if name == "resnet18_small" else kw
    return BackboneConf(name, image_size=size, downsample=downsample, dropout=0.0, decoder_init=DecoderInit.he, **kw)


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_torchvision_state_dict_loads_and_gives_identical_logits(tmp_path, name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # stands in for the pretrained IMAGENET1K_V1 file
    model = build_model(BackboneConf(name, image_size=64, pretrained=str(path)), load_variant("baseline"), 1000)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, reference(x))
    assert set(model.encoder.state_dict()) == set(reference.state_dict())


def test_resnet18_weights_by_name_load_from_the_torch_hub_cache():
    source = build_encoder("resnet18", 10, 32)
    seed_cache("resnet18", "IMAGENET1K_V1", source.state_dict())
    check_backbone(BackboneConf("resnet18", image_size=32, pretrained="DEFAULT"))  # offline, from the cache
    encoder = build_encoder("resnet18", 10, 32)
    assert load_pretrained(encoder, "IMAGENET1K_V1", "resnet18") == []
    assert torch.equal(encoder.layer3[0].downsample[0].weight, source.layer3[0].downsample[0].weight)


def check_variant_trains_a_step(name, size, downsample, variant):
    torch.manual_seed(0)
    v = load_variant(variant)
    model = build_model(backbone(name, size, downsample), v, 5)
    loss_fn = build_loss(model, LOSS, [0.25, 0.25, 0.25])
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 3])
    out = model(x)
    terms = loss_fn(out, x, y)
    expected = set() if variant == "baseline" else {"image"} if variant.endswith("_first") else set(LEVELS)
    assert set(terms) == {"ce", "total"} | {f"recon/{lv}" for lv in expected}
    for level, rec in out.recons.items():
        assert rec.shape == (x if level == "image" else out.targets[level]).shape, level
    if variant != "baseline":  # the reconstruction alone reaches the encoder's first conv
        recon = sum(v for k, v in terms.items() if k.startswith("recon/"))
        (conv1_grad,) = torch.autograd.grad(recon, [model.encoder.conv1.weight], retain_graph=True)
        assert conv1_grad.abs().sum() > 0
    terms["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,size,downsample", SMALL)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_on_resnet18_small_builds_trains_a_step_and_matches_its_targets(name, size, downsample, variant):
    check_variant_trains_a_step(name, size, downsample, variant)


@pytest.mark.parametrize("name,size,downsample", IMAGENET)
@pytest.mark.parametrize("variant", variant_params("swwae_all", "sae_layerwise"))
def test_every_variant_on_resnet18_builds_trains_a_step_and_matches_its_targets(name, size, downsample, variant):
    check_variant_trains_a_step(name, size, downsample, variant)


@pytest.mark.slow
@pytest.mark.parametrize("name,size,downsample", HEAVY)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_on_resnet50_builds_trains_a_step_and_matches_its_targets(name, size, downsample, variant):
    check_variant_trains_a_step(name, size, downsample, variant)


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet18_small", 32),
                                       pytest.param("resnet50", 64, marks=pytest.mark.slow)])
def test_downsample_pool_gives_switches_at_every_stage(name, size):
    strided = build_encoder(name, 10, size)
    pooled = build_encoder(name, 10, size, downsample="pool")
    assert not any(m.stride[0] > 1 for m in pooled.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, size, size)
    out, ref = pooled(x, need_switches=True), strided(x, need_switches=True)
    assert [a.shape for a in out.activations] == [a.shape for a in ref.activations]  # the same sizes as strided
    for stage, traces in zip(["stem", "layer1", "layer2", "layer3", "layer4"], out.switches):
        first = traces[0]
        if stage in ("layer2", "layer3", "layer4") or (stage == "stem" and name != "resnet18_small"):
            assert first.main_switches is not None and first.main_switches.shape[-2:] == \
                   (first.pool_size[0] // 2, first.pool_size[1] // 2), stage
        if stage in ("layer2", "layer3", "layer4"):
            assert first.shortcut_switches is not None, stage
        if stage == "layer1":
            assert first.main_switches is None
    # without downsample=pool, the only switches a ResNet has are its stem's max-pool (none for resnet18_small)
    assert all(t.main_switches is None and t.shortcut_switches is None for ts in ref.switches for t in ts)
    assert (ref.switches[0][0].maxpool_switches is None) == (name == "resnet18_small")


@pytest.mark.parametrize("name,size", [("resnet18_small", 33), ("resnet18", 65)])
@pytest.mark.parametrize("downsample", [None, Downsample.pool])
def test_odd_sizes_decode_to_the_shapes_of_their_targets_and_top_shape_is_layer4s(name, size, downsample):
    model = build_model(backbone(name, size, downsample), load_variant("swwae_all"), 5)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    for level, rec in out.recons.items():
        assert rec.shape == (x if level == "image" else out.targets[level]).shape, level
    enc = model.encoder(x)
    assert model.encoder.top_shape(size) == tuple(enc.activations[-1].shape[1:])


@pytest.mark.parametrize("level,mirrors", [("avgpool", ["avgpool"]), ("fc", ["fc", "avgpool"])])
def test_decoding_from_the_fc_levels_of_a_resnet(level, mirrors):
    variant = load_variant("swwae_first")
    variant.decode_from = level
    model = build_model(backbone("resnet18_small", 32, Downsample.pool), variant, 10)
    assert model.decoder.fc.mirrors == mirrors
    linears = [m for m in model.decoder.fc.net if isinstance(m, nn.Linear)]
    widths = {"fc": 10, "avgpool": 64}  # the logits; layer4's 64 channels, pooled
    assert [m.in_features for m in linears] == [widths[name] for name in mirrors]
    assert linears[-1].out_features == 64 * 4 * 4  # layer4's map at 32 px
    x = torch.randn(2, 3, 32, 32)
    assert model(x).recons["image"].shape == x.shape


@pytest.mark.parametrize("downsample", [None, Downsample.pool])
def test_at_he_init_every_level_of_a_stacked_resnet_decoder_is_live(downsample):
    """Units that halve the size start with both paths open: their shortcut mirror writes one cell in four, so a
    closed branch would leave three in four exactly zero (and without gradient behind the ReLU)."""
    torch.manual_seed(0)
    model = build_model(backbone("resnet18_small", 32, downsample), load_variant("sae_all"), 10)
    out = model(torch.randn(4, 3, 32, 32))
    for level in ("layer1", "stem", "image"):
        assert (out.recons[level] != 0).float().mean() > 0.3, level


def test_torchvision_weights_with_downsample_pool_and_downsample_on_a_vgg_are_refused():
    seed_cache("resnet18", "IMAGENET1K_V1", build_encoder("resnet18", 10, 32).state_dict())
    with pytest.raises(ConfigError, match=r"^backbone\.downsample='pool' is invalid: allowed stride or null with "
                                          r"backbone\.pretrained='IMAGENET1K_V1' \(torchvision's weights"):
        check_backbone(BackboneConf("resnet18", image_size=32, pretrained="IMAGENET1K_V1",
                                    downsample=Downsample.pool))
    with pytest.raises(ConfigError, match=r"^backbone\.downsample='pool' is invalid: allowed null for "
                                          r"backbone=vgg16_small"):
        check_backbone(BackboneConf("vgg16_small", image_size=32, downsample=Downsample.pool))


def test_without_max_pools_sae_and_swwae_decoders_of_resnet18_small_coincide():
    torch.manual_seed(0)
    sae = build_model(backbone("resnet18_small", 32), load_variant("sae_all"), 10)
    swwae = build_model(backbone("resnet18_small", 32), load_variant("swwae_all"), 10)
    swwae.load_state_dict(sae.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(sae(x).recons["image"], swwae(x).recons["image"])
    pooled_sae = build_model(backbone("resnet18_small", 32, Downsample.pool), load_variant("sae_all"), 10)
    pooled_swwae = build_model(backbone("resnet18_small", 32, Downsample.pool), load_variant("swwae_all"), 10)
    pooled_swwae.load_state_dict(pooled_sae.state_dict())
    assert not torch.equal(pooled_sae(x).recons["image"], pooled_swwae(x).recons["image"])  # switches now differ


def test_residual_decoders_mirror_each_unit_and_start_with_closed_branches():
    model = build_model(backbone("resnet18", 64), load_variant("swwae_all"), 10)
    stages = list(model.decoder.blocks)
    assert all(isinstance(s, ResidualStageDecoder) for s in stages) and len(stages) == 5  # stem .. layer4
    layer2 = stages[2].units[0]
    assert isinstance(layer2.main[0], nn.ConvTranspose2d) and layer2.main[0].stride == (2, 2)  # undoes conv1's
    assert isinstance(layer2.shortcut, nn.ConvTranspose2d) and layer2.shortcut.out_channels == 64
    assert stages[1].units[0].shortcut is None  # layer1's identity shortcut stays identity
    closed = [u.main[0].weight.abs().sum() == 0 for s in stages[1:] for u in s.units]
    assert closed == [u.shortcut is None for s in stages[1:] for u in s.units]  # He init: identity units start closed
    assert stages[0].units[0].main[0].weight.abs().sum() > 0  # the stem's conv (to the image) is not a branch


def test_a_decoder_only_run_on_a_frozen_resnet_raises_image_psnr():
    torch.manual_seed(0)
    model = build_model(backbone("resnet18_small", 32, Downsample.pool), load_variant("swwae_first"), 10)
    model.set_encoder_frozen(True)
    loss_fn = build_loss(model, LossConf(weights={"image": 1.0}, form=LossForm.mean), [1.0, 1.0, 1.0])
    x = torch.rand(4, 3, 32, 32) - 0.5
    optimiser = torch.optim.Adam([p for p in model.decoder.parameters()], lr=1e-3)

    def psnr() -> float:
        with torch.no_grad():
            mse = ((model(x).recons["image"] - x) ** 2).mean()
        return (10 * torch.log10(1.0 / mse)).item()

    before = psnr()
    for _ in range(30):
        optimiser.zero_grad()
        loss_fn(model(x), x, torch.zeros(4, dtype=torch.long))["recon/image"].backward()
        optimiser.step()
    assert psnr() > before + 3
