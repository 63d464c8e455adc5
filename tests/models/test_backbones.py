"""Encoders: torchvision compatibility, macro-layer shapes, the registry."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from recondec.checks import check_backbone
from recondec.config import BackboneConf, ConfigError, LossLevels, Topology, Unpool, VariantConf
from recondec.models import BACKBONES, build_model
from recondec.models.backbones import BackboneSpec, Encoder, build_encoder, cached_file, load_pretrained

BASELINE = VariantConf("baseline", Topology.none)


@pytest.mark.parametrize("name,size", [("vgg16", 64), ("vgg16_bn", 64), ("alexnet", 96)])
def test_torchvision_state_dict_loads_and_gives_identical_logits(tmp_path, name, size):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # stands in for the pretrained IMAGENET1K_V1 file
    model = build_model(BackboneConf(name, image_size=size, pretrained=str(path)), BASELINE, 1000).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x))
    assert set(model.encoder.state_dict()) == set(reference.state_dict())


def test_caffe_alexnet_loads_its_own_layout_where_shapes_match_and_refuses_torchvision_weights(tmp_path):
    # its classifier is Linear, ReLU, Dropout, ... (dropout after relu6 / relu7): torchvision's fc indices
    # (classifier.1 / .4) do not exist, and its convs (Caffe widths, groups) match no torchvision tensor anyway
    tv = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tv)
    with pytest.raises(ValueError, match="not a state dict of this backbone"):
        load_pretrained(build_encoder("alexnet_caffe", 1000, 227, classifier_width=64), str(tv))
    source = build_encoder("alexnet_caffe", 1000, 227, classifier_width=64)
    own = tmp_path / "alexnet_caffe.pth"
    torch.save(source.state_dict(), own)
    encoder = build_encoder("alexnet_caffe", 10, 227, classifier_width=64)
    skipped = load_pretrained(encoder, str(own))
    assert skipped == ["classifier.6.weight", "classifier.6.bias"]  # another class count: fc8 keeps its init
    assert torch.equal(encoder.features[3].weight, source.features[3].weight)
    assert torch.equal(encoder.classifier[0].weight, source.classifier[0].weight)


def test_foreign_state_dict_is_refused(tmp_path):
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="not a state dict of this backbone"):
        load_pretrained(build_encoder("vgg16", 10, 32, classifier_width=16), str(path))


def seed_cache(name: str, weights: str, state) -> Path:
    """Put `state` where torch.hub caches torchvision's `weights` for `name` (the conftest's temporary TORCH_HOME):
    the file an online run downloads once."""
    path = cached_file(torchvision.models.get_model_weights(name)[weights])
    assert path.name == torchvision.models.get_model_weights(name)[weights].url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path) if not isinstance(state, bytes) else path.write_bytes(state)
    return path


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "DEFAULT"])
def test_weights_by_name_load_from_the_torch_hub_cache(weights):
    source = build_encoder("vgg16", 10, 32, classifier_width=16)
    seed_cache("vgg16", "IMAGENET1K_V1", source.state_dict())  # DEFAULT is the same file
    check_backbone(BackboneConf("vgg16", image_size=32, pretrained=weights))  # validates offline: no error
    encoder = build_encoder("vgg16", 10, 32, classifier_width=16)
    assert load_pretrained(encoder, weights, "vgg16") == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("junk", [b"not a checkpoint", {"conv.weight": torch.zeros(1)}])
def test_junk_in_the_cache_is_an_error_naming_the_file(junk):
    path = seed_cache("vgg16", "IMAGENET1K_V1", junk)
    with pytest.raises(ValueError, match=f"{path}.* is not a state dict of this backbone"):
        load_pretrained(build_encoder("vgg16", 10, 32, classifier_width=16), "IMAGENET1K_V1", "vgg16")


def test_unknown_weights_name_lists_the_valid_ones_and_only_torchvision_backbones_take_names():
    with pytest.raises(ConfigError, match=r"backbone.pretrained='IMAGENET9K'.*one of \['IMAGENET1K_V1', "):
        check_backbone(BackboneConf("alexnet", image_size=96, pretrained="IMAGENET9K"))
    with pytest.raises(ValueError, match="IMAGENET1K_FEATURES"):
        load_pretrained(build_encoder("vgg16", 10, 32, classifier_width=16), "IMAGENET9K", "vgg16")
    with pytest.raises(ConfigError, match="vgg16_small has no torchvision counterpart"):
        check_backbone(BackboneConf("vgg16_small", image_size=32, pretrained="IMAGENET1K_V1"))


def test_weights_not_cached_offline_say_where_to_place_the_file():
    with pytest.raises(ConfigError, match=r"not cached at .*vgg16-397923af\.pth and cannot be downloaded.*place it"):
        check_backbone(BackboneConf("vgg16", image_size=32, pretrained="IMAGENET1K_V1"))


def test_vgg16_macro_layers_match_configuration_d_at_224():
    enc = build_encoder("vgg16", 10, 224, classifier_width=16).eval()
    with torch.no_grad():
        out = enc(torch.zeros(1, 3, 224, 224), need_switches=True)
    shapes = [tuple(a.shape[1:]) for a in out.activations]
    assert shapes == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7)]
    assert [m.name for m in enc.macro_layers] == ["pool1", "pool2", "pool3", "pool4", "pool5"]
    assert [len(m.convs) for m in enc.macro_layers] == [2, 2, 3, 3, 3]
    assert all(s is not None and s.shape == a.shape for s, a in zip(out.switches, out.activations))


def test_alexnet_levels_and_overlapping_pools():
    enc = build_encoder("alexnet_caffe", 10, 227)
    assert [m.name for m in enc.macro_layers] == ["pool1", "pool2", "conv3", "conv4", "pool5"]
    assert [m.pool is not None and m.pool.overlapping for m in enc.macro_layers] == [True, True, False, False, True]
    assert enc.top_shape(227) == (256, 6, 6)


def test_caffe_alexnet_groups_dropout_and_initialisation_follow_the_reference():
    torch.manual_seed(0)
    enc = build_encoder("alexnet_caffe", 10, 227, classifier_width=512)
    convs = [m for m in enc.features if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # Caffe group 2 on conv2, conv4, conv5
    assert [c.groups for m in enc.macro_layers for c in m.convs] == [1, 2, 1, 2, 2]  # the description says so
    assert [type(m) for m in enc.classifier] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert enc.fc_taps == {"fc6": 1, "fc7": 4}  # the ReLU outputs, before each dropout
    # Caffe fillers: conv N(0, 0.01^2), fc6/fc7 N(0, 0.005^2), fc8 N(0, 0.01^2); biases 0.1 on conv2/4/5, fc6/7
    fcs = [m for m in enc.classifier if isinstance(m, nn.Linear)]
    assert all(m.bias.unique().numel() == 1 for m in convs + fcs)
    assert [m.bias[0].item() for m in convs + fcs] == pytest.approx([0.0, 0.1, 0.0, 0.1, 0.1, 0.1, 0.1, 0.0])
    stds = [m.weight.std().item() for m in convs + fcs]
    assert stds == pytest.approx([0.01] * 5 + [0.005, 0.005, 0.01], rel=0.1)
    # dropout after relu6: in training, fc6 is deterministic and everything from fc7 on is not
    enc.train()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        a, b = enc(x), enc(x)
    assert torch.equal(a.fc["fc6"], b.fc["fc6"]) and not torch.equal(a.fc["fc7"], b.fc["fc7"])
    assert a.logits.shape == (2, 10) and a.fc["fc7"].shape == (2, 512)


def test_caffe_alexnet_parameter_count_with_groups():
    with torch.device("meta"):
        enc = build_encoder("alexnet_caffe", 1000, 227)
    expected = (96 * 3 * 11 * 11 + 96                 # conv1
                + 256 * (96 // 2) * 5 * 5 + 256       # conv2, group 2: each filter sees half the inputs
                + 384 * 256 * 3 * 3 + 384             # conv3
                + 384 * (384 // 2) * 3 * 3 + 384      # conv4, group 2
                + 256 * (384 // 2) * 3 * 3 + 256      # conv5, group 2
                + 256 * 6 * 6 * 4096 + 4096           # fc6
                + 4096 * 4096 + 4096                  # fc7
                + 4096 * 1000 + 1000)                 # fc8
    assert sum(p.numel() for p in enc.parameters()) == expected == 60_965_224


def test_width_scaled_vgg16_has_13_convs_and_a_head_sized_to_the_input():
    enc = build_encoder("vgg16_small", 10, 64, width=0.5, classifier_width=32)
    convs = [m for m in enc.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and [c.out_channels for c in convs][:3] == [32, 32, 64]
    assert enc.classifier[0].in_features == 256 * 2 * 2  # 512 * 0.5 channels, 64 / 32 = 2 cells a side
    assert enc(torch.zeros(2, 3, 64, 64)).logits.shape == (2, 10)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_encoder("vgg16_small", 10, 48)


def test_a_new_backbone_is_one_registered_builder(monkeypatch):
    def tiny(num_classes, image_size, **_):
        features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        head = nn.Sequential(nn.Linear(16 * (image_size // 4) ** 2, 32), nn.ReLU(), nn.Dropout(),
                             nn.Linear(32, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, num_classes))
        return Encoder(features, nn.Identity(), head, ["pool1", "pool2"], {"fc6": 1, "fc7": 4})

    monkeypatch.setitem(BACKBONES, "tiny", BackboneSpec(tiny, "a multiple of 4", lambda s: s % 4 == 0))
    variant = VariantConf("swwae_all", Topology.stacked, Unpool.switch, LossLevels.all)
    model = build_model(BackboneConf("tiny", image_size=16), variant, 3)
    out = model(torch.randn(2, 3, 16, 16))
    assert set(out.recons) == {"image", "pool1"} and out.recons["image"].shape == (2, 3, 16, 16)


def test_batch_norm_builds_for_vgg16_small_only_in_its_encoder_and_is_refused_where_the_layout_is_fixed(compose_cfg):
    from recondec.checks import validate
    from recondec.config import ConfigError
    from recondec.models import build_model

    cfg = validate(compose_cfg("backbone.batch_norm=true", "variant=swwae_all"))
    model = build_model(cfg.backbone, cfg.variant, cfg.data.num_classes)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules()) == 13
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decoder.modules())  # decoders as in the paper
    plain = validate(compose_cfg("backbone.batch_norm=false"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d)
                   for m in build_model(plain.backbone, plain.variant, 10).modules())
    for backbone in ("vgg16", "vgg16_bn", "alexnet"):
        with pytest.raises(ConfigError, match=r"backbone.batch_norm=True is invalid: allowed null for backbone="):
            validate(compose_cfg(f"backbone={backbone}", "backbone.batch_norm=true"))
