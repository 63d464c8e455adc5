"""experiment=finetune_fmnist: the paper's protocol. One cached classifier; every variant and the baseline start
from it, see the same batches in their joint stage, and differ only by the decoding pathway."""
import json

import mlflow
import pytest
import torch

from recondec.checks import validate
from recondec.config import ConfigError
from recondec.job import JobInfo
from recondec.run import run_job
from recondec.training.loop import Trainer
from recondec.training.schedule import lr_factor

from ..conftest import VARIANTS
from .test_presets import TINY


def test_finetune_preset_is_the_papers_protocol(compose_cfg):
    cfg = compose_cfg("experiment=finetune_fmnist", return_hydra_config=True)
    # the pre-registered arms only (its family: baseline vs each decoder arm); seeds 0.. (the pilot's are 100-102)
    assert cfg.hydra.sweeper.params.variant.split(",") == ["baseline", "swwae_all", "sae_all", "swwae_first"]
    seeds = [int(s) for s in cfg.hydra.sweeper.params["trainer.seed"].split(",")]
    assert seeds == list(range(len(seeds))) and len(seeds) >= 5
    conf = validate(compose_cfg("experiment=finetune_fmnist"))
    assert conf.classifier.epochs > 0 and conf.classifier.schedule.optimizer.value == "adamw"
    s = conf.schedule  # the fine-tuning: the paper's optimiser, decoders first on the frozen classifier
    assert (s.optimizer.value, s.momentum, s.weight_decay, s.bias_lr_mult, s.bias_decay_mult) == \
        ("sgd", 0.9, 5e-4, 2.0, 0.0)
    assert s.pretrain.epochs > 0 and s.decoder.freeze_encoder and s.decoder.epochs > 0 and s.joint.epochs > 0
    # a fine-tuning that decays to 0 after a warm-up shorter than it, from a classifier under the small-image recipe
    assert s.lr_schedule.value == "cosine" and 0 < s.warmup_epochs < s.joint.epochs
    assert conf.backbone.batch_norm and conf.classifier.schedule.train_crop.value == "pad_crop"
    assert conf.report.equivalence_margin == 0.5  # the TOST margin and MDE goal for this protocol


@pytest.fixture
def recorded(monkeypatch):
    """What each job's joint stage starts from (the encoder weights) and what it steps through: each step's labels
    and LR."""
    seen = []
    enter, step = Trainer.enter_stage, Trainer.train_step

    def enter_stage(self, stage, reseed=True):
        enter(self, stage, reseed)
        if stage.name == "joint":
            seen.append({"encoder": {k: v.clone() for k, v in self.model.encoder.state_dict().items()},
                         "labels": [], "lrs": []})

    def train_step(self, x, y):
        if self.stage.name == "joint":
            seen[-1]["labels"].append(y.clone())
            seen[-1]["lrs"].append(self.optimizer.param_groups[0]["lr"])
        return step(self, x, y)

    monkeypatch.setattr(Trainer, "enter_stage", enter_stage)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    return seen


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_job_fine_tunes_the_one_cached_classifier(compose_cfg, tmp_path, recorded):
    base = ["experiment=finetune_fmnist", f"classifier.cache_dir={tmp_path}/classifiers", "classifier.epochs=1",
            "schedule.pretrain.probe_steps=2", "schedule.pretrain.probe_batches=1", *TINY]
    results = {}
    for variant in VARIANTS:
        overrides = [*base, f"variant={variant}"]
        results[variant] = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    runs = mlflow.search_runs(experiment_names=["finetune_fmnist"], output_format="list")
    classifiers = [r for r in runs if r.data.tags.get("role") == "classifier"]
    assert len(classifiers) == 1  # trained by the first job, reused by the other six
    (folder,) = (tmp_path / "classifiers").glob("*/")
    assert json.loads((folder / "classifier.json").read_text())["run_id"] == classifiers[0].info.run_id
    cached = torch.load(folder / "encoder.pt")
    for result in results.values():
        tags = mlflow.get_run(result.run_id).data.tags
        assert (tags["classifier_run"], tags["classifier_key"]) == (classifiers[0].info.run_id, folder.name)
    # the joint stage of the baseline and of each variant starts from the cached classifier, bit for bit, and
    # steps through the same batches at the same LRs (the decoder stages before it neither move the encoder nor
    # shift the order)
    assert len(recorded) == 1 + len(VARIANTS)  # the classifier's own job, then the fine-tuning jobs
    first = recorded[1]
    assert len(first["lrs"]) > 1
    # the fine-tuning LR is the preset's warm-up + cosine, which is 0 where the stage ends: the last iterate is not
    # the noise of a constant LR
    schedule, steps = validate(compose_cfg(*base)).schedule, len(first["lrs"])
    assert first["lrs"] == pytest.approx([schedule.joint.lr * lr_factor(i, steps, 1, schedule) for i in range(steps)])
    assert lr_factor(steps, steps, 1, schedule) == 0.0
    for job in recorded[1:]:
        assert job["encoder"].keys() == cached.keys()
        assert all(torch.equal(job["encoder"][k], cached[k]) for k in cached)
        assert job["lrs"] == first["lrs"]
        assert len(job["labels"]) == len(first["labels"])
        assert all(torch.equal(a, b) for a, b in zip(job["labels"], first["labels"], strict=True))
    # another classifier setting is another classifier
    overrides = [*base, "variant=baseline", "classifier.epochs=2"]
    run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    runs = mlflow.search_runs(experiment_names=["finetune_fmnist"], output_format="list")
    assert sum(r.data.tags.get("role") == "classifier" for r in runs) == 2
    assert len(list((tmp_path / "classifiers").glob("*/encoder.pt"))) == 2


def test_one_classifier_per_seed_unless_one_is_shared(compose_cfg):
    from recondec.studies.classifier import classifier_key

    def key(*overrides):
        return classifier_key(validate(compose_cfg("experiment=finetune_fmnist", *overrides)))

    assert key("trainer.seed=0") != key("trainer.seed=1")  # a verdict over classifiers, not about one
    assert key("trainer.seed=0", "variant=baseline") == key("trainer.seed=0", "variant=swwae_all")
    assert key("trainer.seed=0", "classifier.seed=0") == key("trainer.seed=1", "classifier.seed=0")
    # a few-label grid's classifier learns from the seed's own labelled subset
    low = "data.labels_per_class=100"
    assert key(low, "trainer.seed=0", "classifier.seed=7") != key(low, "trainer.seed=1", "classifier.seed=7")


def test_a_given_classifier_and_a_trained_one_conflict(compose_cfg, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    overrides = ["experiment=finetune_fmnist", f"classifier.cache_dir={tmp_path}", f"backbone.pretrained={weights}"]
    with pytest.raises(ConfigError, match=r"classifier.epochs=\d+ trains the classifier .* backbone.pretrained=.*w.pt"):
        run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))


def test_semi_supervised_rows_fine_tune_the_classifier_of_the_labelled_images_alone(compose_cfg):
    """The classifier never sees the unlabelled images: a grid with and without them starts from one classifier,
    and the few-label one from another than the full training set's."""
    from recondec.studies.classifier import classifier_key

    def key(*overrides):
        return classifier_key(validate(compose_cfg("experiment=finetune_fmnist", "trainer.seed=0", *overrides)))

    low = "data.labels_per_class=100"
    assert key(low) == key(low, "schedule.unlabelled_batch_size=64", "variant=swwae_all") != key()
