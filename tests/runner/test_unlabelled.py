"""Semi-supervised training: data.labelled splits the training set, schedule.unlabelled_batch_size adds a batch of
unlabelled images to every step, and those images train the reconstruction terms only."""
import pytest
import torch

from recondec.checks import validate
from recondec.config import ConfigError
from recondec.data import build_loaders
from recondec.run import JobInfo, build_trainer, run_job

from ..conftest import TINY

SEMI = [*TINY, "data.train_limit=300", "data.labelled=100", "schedule.unlabelled_batch_size=20", "variant=swwae_all"]


def test_labelled_and_unlabelled_streams_are_disjoint_and_cover_the_training_set(compose_cfg):
    conf = validate(compose_cfg(*SEMI))
    loaders = build_loaders(conf.data, conf.backbone.image_size, 32, seed=0, unlabelled_batch_size=20)
    whole = build_loaders(validate(compose_cfg(*SEMI, "data.labelled=null", "schedule.unlabelled_batch_size=0")).data,
                          conf.backbone.image_size, 32,
                          seed=0).train
    labelled, unlabelled = loaders.train, loaders.unlabelled
    assert (len(labelled.labels), len(unlabelled.labels)) == (100, 200) and loaders.num_train == 100
    # the first 100 images keep their labels, the other 200 are the unlabelled pool: together, the training set
    assert torch.equal(torch.cat([labelled.images, unlabelled.images]), whole.images)
    assert torch.equal(labelled.labels, whole.labels[:100]) and bool((unlabelled.labels == -1).all())
    # one epoch of the unlabelled stream visits every unlabelled image once, in its own shuffled order
    unlabelled.set_epoch(0)
    seen = torch.cat([x for x, _ in unlabelled])
    assert seen.shape[0] == 200 and not torch.equal(seen, unlabelled.images)
    assert torch.equal(seen.flatten(1).sort(0).values, unlabelled.images.flatten(1).sort(0).values)


def test_an_unlabelled_batch_gives_no_classification_gradient_and_a_reconstruction_one(compose_cfg):
    trainer = build_trainer(validate(compose_cfg(*SEMI)), None)
    trainer.enter_stage(trainer.stages[-1])  # joint: classification + reconstruction
    x, y = next(iter(trainer.loaders.train))
    xu = trainer._next_unlabelled().requires_grad_()
    terms = trainer.loss_terms(x, y, xu)
    grad = {k: torch.autograd.grad(terms[k], xu, retain_graph=True)[0] for k in ("ce", "recon/image", "unlabelled")}
    assert torch.count_nonzero(grad["ce"]) == 0 and torch.count_nonzero(grad["recon/image"]) == 0
    assert grad["unlabelled"].abs().sum() > 0
    # the labelled terms are those of the labelled batch alone
    alone = trainer.loss_terms(x, y)
    torch.testing.assert_close(terms["ce"], alone["ce"])
    torch.testing.assert_close(terms["total"], alone["total"] + terms["unlabelled"])


def test_training_reports_the_unlabelled_term(compose_cfg):
    result = run_job(compose_cfg(*SEMI), JobInfo(overrides=SEMI))
    assert result.metrics["train/loss/unlabelled"] > 0


@pytest.mark.parametrize("override, key", [
    ("data.labelled=0", "data.labelled"),
    ("data.labelled=null", "schedule.unlabelled_batch_size"),  # nothing left unlabelled
    ("schedule.unlabelled_batch_size=-1", "schedule.unlabelled_batch_size"),
])
def test_bad_semi_supervised_settings_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_cfg(*SEMI, override))


def test_more_labelled_images_than_training_images_is_an_error(compose_cfg):
    conf = validate(compose_cfg(*SEMI, "data.labelled=301"))
    with pytest.raises(ConfigError, match=r"data.labelled=301 is invalid: allowed at most 300, the training images"):
        build_loaders(conf.data, conf.backbone.image_size, 32, seed=0, unlabelled_batch_size=20)


def test_the_baseline_ignores_unlabelled_images(compose_cfg):
    trainer = build_trainer(validate(compose_cfg(*SEMI, "variant=baseline")), None)
    assert trainer.loaders.unlabelled is not None and trainer.unlabelled is None


def test_semi_supervised_training_on_an_image_folder(compose_cfg, tmp_path):
    from ..data.conftest import good_tree

    root = good_tree(tmp_path / "tree")  # 3 classes, 12 training images each
    overrides = ["data=folder", f"data.root={root}", "data.loader=torchvision", "data.num_workers=0",
                 "data.labelled=12", "schedule.unlabelled_batch_size=8", "variant=swwae_all", "schedule.batch_size=4",
                 "backbone.image_size=32", "backbone.width=0.125", "backbone.classifier_width=16",
                 "schedule.decoder.epochs=1", "schedule.joint.epochs=1", "trainer.progress=false",
                 "trainer.recon_images=2"]
    result = run_job(compose_cfg(*overrides), JobInfo(overrides=overrides))
    assert result.metrics["train/loss/unlabelled"] > 0
