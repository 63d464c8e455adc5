"""Augmentation of the built-in sets (schedule.train_crop=pad_crop): a pure function of (seed, epoch, rank, batch), so
every arm of a seed sees the same images and a resumed run the batches it would have seen."""
import pytest
import torch

from recondec.checks import validate
from recondec.config import ConfigError, TrainCrop
from recondec.data import build_loaders
from recondec.data.augment import batch_generator, pad_crop_flip
from recondec.job import build_trainer

from ..conftest import TINY

AUG = [*TINY, "schedule.train_crop=pad_crop", "schedule.batch_size=16"]


def epoch_batches(loader, epoch: int, skip: int = 0) -> list[torch.Tensor]:
    loader.set_epoch(epoch, skip)
    return [x.clone() for x, _ in loader]


def test_pad_crop_flip_moves_and_mirrors_the_image_and_keeps_its_pixels():
    image = torch.arange(2 * 8 * 8, dtype=torch.uint8).view(1, 2, 8, 8).repeat(2000, 1, 1, 1)
    out = pad_crop_flip(image, 2, batch_generator(0, 0, 0, 0))
    assert out.shape == image.shape and out.dtype == torch.uint8
    # every crop is the image shifted by at most 2 pixels (zeros come in from the padding), maybe mirrored
    matches = 0
    for crop in out[:100]:
        views = [(image[0].flip(-1) if f else image[0])[:, 2 + dy:6 + dy, 2 + dx:6 + dx]
                 for dy in range(-2, 3) for dx in range(-2, 3) for f in (False, True)]
        matches += any(torch.equal(crop[:, 2:6, 2:6], v) for v in views)
    assert matches == 100
    flipped = sum(torch.equal(c, image[0].flip(-1)) for c in out)
    unchanged = sum(torch.equal(c, image[0]) for c in out)
    # offset (0, 0) has probability 1/25, with and without the flip: about 40 of each in 2,000
    assert 10 < flipped < 80 and 10 < unchanged < 80, (flipped, unchanged)
    assert pad_crop_flip(image, 2, batch_generator(0, 0, 0, 1)).ne(out).any()  # another batch, other draws


def test_every_arm_of_a_seed_sees_the_same_augmented_images_whatever_else_draws_random_numbers(compose_cfg):
    baseline = build_trainer(validate(compose_cfg(*AUG, "variant=baseline", "trainer.seed=3")), None)
    swwae = build_trainer(validate(compose_cfg(*AUG, "variant=swwae_all", "trainer.seed=3")), None)
    a = epoch_batches(baseline.loaders.train, 0)
    torch.rand(1000)  # an arm's dropout or decoder init draws from torch's global generator between batches
    b = epoch_batches(swwae.loaders.train, 0)
    assert len(a) == len(b) > 1 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_augmentation_differs_across_seeds_and_epochs_and_is_off_by_default(compose_cfg):
    def loader(seed, *extra):
        return build_trainer(validate(compose_cfg(*AUG, f"trainer.seed={seed}", "data.split_seed=0", *extra)),
                             None).loaders.train

    seed0, seed1 = loader(0), loader(1)
    assert seed0.crop_padding == 2
    # the same images in the same order (split_seed and the order seed differ only through trainer.seed: compare
    # one image's crops instead): the sample orders differ, so compare the augmentation stream directly
    g0, g1 = batch_generator(seed0.seed, 0, 0, 0), batch_generator(seed1.seed, 0, 0, 0)
    assert not torch.equal(torch.randint(0, 5, (32,), generator=g0), torch.randint(0, 5, (32,), generator=g1))
    e0, e1 = epoch_batches(seed0, 0), epoch_batches(seed0, 1)
    assert not torch.equal(e0[0], e1[0])
    plain = loader(0, "schedule.train_crop=null")
    assert plain.crop_padding is None
    # the un-augmented batch holds the same images as the augmented one, before the crop
    plain.set_epoch(0)
    x_plain, y_plain = next(iter(plain))
    seed0.set_epoch(0)
    x_aug, y_aug = next(iter(seed0))
    assert torch.equal(y_plain, y_aug) and not torch.equal(x_plain, x_aug)


def test_a_run_resumed_mid_epoch_sees_the_augmented_batches_it_would_have_seen(compose_cfg):
    train = build_trainer(validate(compose_cfg(*AUG, "trainer.seed=5")), None).loaders.train
    full = epoch_batches(train, 2)
    resumed = epoch_batches(train, 2, skip=2)
    assert len(full) > 3 and len(resumed) == len(full) - 2
    assert all(torch.equal(x, y) for x, y in zip(full[2:], resumed))


@pytest.mark.parametrize("overrides, allowed", [(["schedule.train_crop=random_resized"], "none or pad_crop"),
                                                (["data.loader=ffcv", "schedule.train_crop=pad_crop"],
                                                 "random_resized or resize_crop")])
def test_a_loader_refuses_an_augmentation_it_does_not_implement(compose_cfg, overrides, allowed):
    with pytest.raises(ConfigError, match=rf"schedule.train_crop=.* is invalid: allowed {allowed}"):
        validate(compose_cfg(*overrides))


def test_the_default_augmentation_is_filled_in_per_loader(compose_cfg):
    assert validate(compose_cfg()).schedule.train_crop is TrainCrop.none
    assert validate(compose_cfg("data.loader=ffcv")).schedule.train_crop is TrainCrop.random_resized
    loaders = build_loaders(validate(compose_cfg(*TINY)).data, 32, 16, 0)  # a caller that names none
    assert loaders.train.crop_padding is None
