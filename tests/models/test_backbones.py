"""Encoders: torchvision compatibility, macro-layer shapes, the registry."""
import pytest
import torch
import torch.nn as nn
import torchvision

from recondec.config import BackboneConf, LossLevels, Topology, Unpool, VariantConf
from recondec.models import BACKBONES, build_model
from recondec.models.backbones import BackboneSpec, Encoder, build_encoder, load_pretrained

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


def test_caffe_alexnet_loads_torchvision_weights_where_shapes_match(tmp_path):
    reference = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder("alexnet_caffe", 1000, 227)
    skipped = load_pretrained(encoder, str(path))
    assert skipped and all(k.startswith("features.") for k in skipped)  # the convs have Caffe widths
    assert torch.equal(encoder.classifier[1].weight, reference.classifier[1].weight)


def test_foreign_state_dict_is_refused(tmp_path):
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="not a state dict of this backbone"):
        load_pretrained(build_encoder("vgg16", 10, 32, classifier_width=16), str(path))


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
