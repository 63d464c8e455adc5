"""Which images a run learns from, selects on and reports on: the held-out validation set is disjoint from every
training stream and from the test set, and the labelled subsets are stratified, shared by the arms of one seed and
different across seeds."""
import numpy as np
import pytest
import torch

from recondec.checks import validate
from recondec.config import ConfigError, DataConf
from recondec.data import build_loaders
from recondec.data.builtin import load_builtin
from recondec.data.splits import proportional_counts, split_training_set

from ..conftest import TINY


def test_validation_is_held_out_of_every_training_stream_and_is_not_the_test_set(compose_cfg):
    conf = validate(compose_cfg("data.labels_per_class=20", "schedule.unlabelled_batch_size=16"))
    loaders = build_loaders(conf.data, conf.backbone.image_size, 32, seed=0, unlabelled_batch_size=16)
    split = loaders.split
    assert len(split.val) == 144 and loaders.num_val == 144 and loaders.num_test == 359
    assert not set(split.val) & set(split.labelled) and not set(split.val) & set(split.unlabelled)
    assert len(split.val) + len(split.labelled) + len(split.unlabelled) == 1797 - 359  # nothing lost
    # by content: validation images appear in neither training stream nor in the test set
    source, test = load_builtin("digits")
    val_pixels = {source.images[i].tobytes() for i in split.val}
    train_pixels = {source.images[i].tobytes() for i in np.concatenate([split.labelled, split.unlabelled])}
    assert not val_pixels & {img.tobytes() for img in test.images}
    assert len(val_pixels) == 144 and not val_pixels & train_pixels  # digits has no duplicate images
    # the loaders hold exactly those images, and the held-out share is stratified
    assert torch.equal(loaders.val.labels, torch.from_numpy(source.labels[split.val]))
    assert proportional_counts(source.labels, 144) == dict(zip(*np.unique(source.labels[split.val],
                                                                          return_counts=True)))


def test_the_validation_set_does_not_depend_on_the_seed_or_on_the_training_settings(compose_cfg):
    def val_of(*overrides):
        conf = validate(compose_cfg(*overrides))
        return build_loaders(conf.data, conf.backbone.image_size, 32, seed=conf.trainer.seed).split.val

    reference = val_of()
    for overrides in (["trainer.seed=3"], ["data.train_limit=100"], ["data.labels_per_class=5"]):
        assert np.array_equal(val_of(*overrides), reference), overrides


def test_labelled_subsets_are_stratified_equal_across_arms_of_a_seed_and_differ_across_seeds(compose_cfg):
    def labelled(*overrides):
        conf = validate(compose_cfg(*TINY, "data.train_limit=null", "data.labels_per_class=10", *overrides))
        loaders = build_loaders(conf.data, conf.backbone.image_size, 32, seed=conf.trainer.seed)
        assert np.bincount(loaders.train.labels.numpy()).tolist() == [10] * 10
        return loaders.split.labelled

    arms = [labelled(f"variant={v}", "trainer.seed=1") for v in ("baseline", "swwae_all", "sae_layerwise")]
    assert all(np.array_equal(a, arms[0]) for a in arms)
    assert not np.array_equal(labelled("trainer.seed=2"), arms[0])
    assert np.array_equal(labelled("trainer.seed=2", "data.split_seed=1"), arms[0])  # a subset pinned by split_seed


def test_labels_per_class_needs_enough_images_of_every_class():
    labels = np.repeat(np.arange(3), [5, 9, 9])
    data = DataConf(name="digits", num_classes=3, val_size=1, labels_per_class=6)
    with pytest.raises(ConfigError, match=r"labels_per_class=6 is invalid: allowed at most 5"):
        split_training_set(labels, data, seed=0, holdout=False)
    data = DataConf(name="digits", num_classes=3, val_size=1, labels_per_class=5)
    split = split_training_set(labels, data, 0, holdout=False)
    assert np.bincount(labels[split.labelled]).tolist() == [5, 5, 5] and len(split.unlabelled) == 8


def test_a_built_in_set_needs_a_held_out_validation_set_and_an_image_folder_has_its_own(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="data.val_size=None is invalid: allowed an integer >= 1"):
        validate(compose_cfg("data.val_size=null"))
    with pytest.raises(ConfigError, match="data.val_size=10 is invalid: allowed null"):
        validate(compose_cfg("data=folder", f"data.root={tmp_path}", "data.num_classes=2", "data.val_size=10"))
