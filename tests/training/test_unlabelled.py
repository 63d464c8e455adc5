"""Semi-supervised training: data.labels_per_class keeps K labels per class, schedule.unlabelled_batch_size adds a
batch of the other training images to every step, and those images enter the reconstruction terms only, at the
labelled-only step's balance between reconstruction and cross-entropy."""
import numpy as np
import pytest
import torch

from recondec.checks import validate
from recondec.config import ConfigError
from recondec.data import build_loaders
from recondec.job import JobInfo, build_trainer
from recondec.run import run_job

from ..conftest import TINY

SEMI = [*TINY, "data.train_limit=300", "data.labels_per_class=10", "schedule.unlabelled_batch_size=20",
        "variant=swwae_all"]


def test_labelled_and_unlabelled_streams_are_disjoint_and_cover_the_training_pool(compose_cfg):
    conf = validate(compose_cfg(*SEMI))
    loaders = build_loaders(conf.data, conf.backbone.image_size, 32, seed=0, unlabelled_batch_size=20)
    whole = build_loaders(validate(compose_cfg(*SEMI, "data.labels_per_class=null",
                                               "schedule.unlabelled_batch_size=0")).data,
                          conf.backbone.image_size, 32, seed=0)
    labelled, unlabelled, split = loaders.train, loaders.unlabelled, loaders.split
    assert (len(labelled.labels), len(unlabelled.labels)) == (100, 200) and loaders.num_train == 100
    assert np.bincount(labelled.labels.numpy()).tolist() == [10] * 10  # K per class
    # together the 300 images of the pool, each once; the unlabelled ones without their labels
    assert sorted([*split.labelled, *split.unlabelled]) == sorted(whole.split.labelled.tolist())
    pool = whole.train.images.flatten(1)
    both = torch.cat([labelled.images, unlabelled.images]).flatten(1)
    assert torch.equal(both.sort(0).values, pool.sort(0).values) and bool((unlabelled.labels == -1).all())
    # one epoch of the unlabelled stream visits every unlabelled image once, in its own shuffled order
    unlabelled.set_epoch(0)
    seen = torch.cat([x for x, _ in unlabelled])
    assert seen.shape[0] == 200 and not torch.equal(seen, unlabelled.images)
    assert torch.equal(seen.flatten(1).sort(0).values, unlabelled.images.flatten(1).sort(0).values)


def test_unlabelled_rows_give_no_classification_gradient_and_keep_the_balance_of_the_labelled_step(compose_cfg):
    trainer = build_trainer(validate(compose_cfg(*SEMI)), None)
    trainer.enter_stage(trainer.stages[-1])  # joint: classification + reconstruction
    x, y = next(iter(trainer.loaders.train))
    xu = trainer._next_unlabelled().requires_grad_()
    terms = trainer.loss_terms(x, y, xu)
    grad = {k: torch.autograd.grad(terms[k], xu, retain_graph=True)[0] for k in ("ce", "recon/image")}
    assert torch.count_nonzero(grad["ce"]) == 0 and grad["recon/image"].abs().sum() > 0
    alone = trainer.loss_terms(x, y)
    torch.testing.assert_close(terms["ce"], alone["ce"])  # cross-entropy over the labelled rows only
    # the unlabelled rows are more data, not more weight: with the labelled batch itself as the unlabelled one,
    # every term and the reconstruction-to-cross-entropy ratio are the labelled-only step's
    doubled = trainer.loss_terms(x, y, x.clone())
    recon = [k for k in alone if k.startswith("recon/")]
    assert len(recon) == 5
    for k in recon:
        torch.testing.assert_close(doubled[k], alone[k], rtol=1e-5, atol=0)
    torch.testing.assert_close(doubled["total"] / doubled["ce"], alone["total"] / alone["ce"], rtol=1e-5, atol=0)
    # and against a heavier-weighted rule (labelled terms plus unlabelled terms), which doubles the ratio
    assert (doubled["total"] - doubled["ce"]) < 1.5 * (alone["total"] - alone["ce"])


def stream_position(steps: int, batches_per_epoch: int) -> dict[str, int]:
    """Where the unlabelled stream stands after one batch per step (it starts a new epoch when one is asked for)."""
    return {"epoch": (steps - 1) // batches_per_epoch, "batch": (steps - 1) % batches_per_epoch + 1}


def test_training_draws_one_unlabelled_batch_per_step(compose_cfg):
    result = run_job(validate(compose_cfg(*SEMI)), JobInfo(overrides=SEMI))
    state = torch.load(result.checkpoint, weights_only=False)
    assert state["step"] == 2 * 3  # 100 labelled images, batch 32: 3 steps in each of the two stages
    assert state["unlabelled"] == stream_position(state["step"], 10)  # 200 images: 10 batches of 20


@pytest.mark.parametrize("override, key", [
    ("data.labels_per_class=0", "data.labels_per_class"),
    ("data.labels_per_class=null", "schedule.unlabelled_batch_size"),  # nothing left unlabelled
    ("schedule.unlabelled_batch_size=-1", "schedule.unlabelled_batch_size"),
])
def test_bad_semi_supervised_settings_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_cfg(*SEMI, override))


def test_more_labels_per_class_than_the_smallest_class_has_is_refused_before_any_work(compose_cfg):
    with pytest.raises(ConfigError, match=r"data.labels_per_class=40 is invalid: allowed at most \d+, the images of "
                                          "the smallest class"):
        validate(compose_cfg(*SEMI, "data.labels_per_class=40"))


def test_the_baseline_ignores_unlabelled_images(compose_cfg):
    trainer = build_trainer(validate(compose_cfg(*SEMI, "variant=baseline")), None)
    assert trainer.loaders.unlabelled is not None and trainer.unlabelled is None


def test_semi_supervised_training_on_an_image_folder(compose_cfg, tmp_path):
    from ..data.conftest import good_tree

    root = good_tree(tmp_path / "tree")  # 3 classes, 12 training images each
    overrides = ["data=folder", f"data.root={root}", "data.loader=torchvision", "data.num_workers=0",
                 "data.labels_per_class=4", "schedule.unlabelled_batch_size=8", "variant=swwae_all",
                 "schedule.batch_size=4", "backbone.image_size=32", "backbone.width=0.125",
                 "backbone.classifier_width=16", "backbone.decoder_init=he", "schedule.decoder.epochs=1",
                 "schedule.joint.epochs=1", "trainer.progress=false", "trainer.recon_images=2"]
    result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    state = torch.load(result.checkpoint, weights_only=False)
    assert state["step"] == 2 * 3  # 12 labelled images, batch 4, two epochs
    assert state["unlabelled"] == stream_position(6, 3)  # 24 unlabelled images: 3 batches of 8 per epoch
