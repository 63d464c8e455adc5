"""DDP on CPU (gloo): the averaged gradients of two ranks equal the one-process gradient of the same global
batch, and a short SGD trajectory follows the one-process one; one MLflow run per job; ranks from torchrun or
SLURM; the SLURM launcher config.

Why not compare AdamW weights: two ranks sum their halves of the batch in another order than one process
(float32, ~1e-5 of a tensor's largest gradient here), and AdamW's step lr * m / (sqrt(v) + eps) is blind to the
gradient's scale, so those rounding differences become weight differences that depend on the machine's kernels
(thread count, vector width). SGD moves each weight by lr * g: the same rounding stays at the rounding level.
"""
import os

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from recondec.checks import validate
from recondec.config import Config
from recondec.job import JobInfo, build_trainer
from recondec.run import run_job
from recondec.training import distributed
from recondec.training.distributed import DistEnv

from ..conftest import TINY

STEPS = 4
# SGD at a constant LR, no dropout, deterministic kernels; swwae_all exercises the switch scatter and every loss term
SGD_RUN = [*TINY, "backbone.decoder_init=reference", "data.train_limit=128", "variant=swwae_all", "loss=balanced",
           "trainer.deterministic=true",
           "backbone.dropout=0", "schedule.optimizer=sgd", "schedule.lr_schedule=constant",
           "schedule.warmup_epochs=0", "schedule.joint.lr=0.01"]
# Float32 reordering (one sum of 32 samples vs two sums of 16, then the all-reduce) measured here at 1.4e-5 of
# each tensor's largest gradient (about 120 float32 epsilons); 1e-3 leaves 70x headroom, and a broken DDP
# (gradients summed, not averaged: 100 %; both ranks on one shard: tens of %) is far above it.
GRAD_RTOL = 1e-3


def _steps_of_one_rank(rank: int, world_size: int, resolved: dict, out: str) -> None:
    """The product's own path (loaders sharded by rank, DDP wrap, train_step) for STEPS joint steps."""
    cfg = validate(OmegaConf.merge(OmegaConf.structured(Config), resolved))
    trainer = build_trainer(cfg, None, DistEnv(rank, rank, world_size))
    try:
        trainer.enter_stage(trainer.stages[-1])  # the joint stage: encoder and decoder train
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.loaders.train.set_epoch(0)
        batches, grads = iter(trainer.loaders.train), None
        for step in range(STEPS):
            trainer.train_step(*next(batches))
            if step == 0:
                grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        end = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        if rank == 0:
            torch.save({"grads": grads, "start": start, "end": end}, out)
    finally:
        distributed.shutdown()


def _run(compose_cfg, tmp_path, world_size: int, *extra: str) -> dict:
    resolved = OmegaConf.to_container(compose_cfg(*SGD_RUN, *extra), resolve=True)
    out = str(tmp_path / f"steps{world_size}{len(extra)}.pt")
    if world_size == 1:
        _steps_of_one_rank(0, 1, resolved, out)
    else:
        distributed.spawn(_steps_of_one_rank, world_size, resolved, out)
    return torch.load(out)


def _max_rel_to_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def one_and_two_ranks(tmp_path_factory):
    from ..conftest import make_composer

    tmp = tmp_path_factory.mktemp("ddp")
    compose_cfg = make_composer(tmp)
    return _run(compose_cfg, tmp, 1), _run(compose_cfg, tmp, 2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ranks_average_to_the_one_process_gradient_of_the_global_batch(one_and_two_ranks):
    one, two = one_and_two_ranks
    assert one["grads"].keys() == two["grads"].keys()
    for k, g1 in one["grads"].items():
        assert _max_rel_to_max(two["grads"][k], g1) <= GRAD_RTOL, k


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_short_sgd_trajectory_on_two_ranks_follows_the_one_process_one(one_and_two_ranks):
    """SGD's displacement is linear in the gradients: GRAD_RTOL on the gradients bounds it to about the same
    fraction of each tensor's largest displacement over the STEPS steps."""
    one, two = one_and_two_ranks
    for k, w1 in one["end"].items():
        assert torch.equal(one["start"][k], two["start"][k]), k  # the same initial weights on every rank
        moved1, moved2 = w1 - one["start"][k], two["end"][k] - two["start"][k]
        assert moved1.abs().max() > 0, k  # the tensor trained
        assert _max_rel_to_max(moved2, moved1) <= GRAD_RTOL, k


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_two_ranks_average_to_the_one_process_gradient(one_and_two_ranks, compose_cfg, tmp_path):
    """trainer.compile under DDP: the compiled forward-and-loss traces through the DDP wrapper, whose gradient
    hooks still average across ranks."""
    one, _ = one_and_two_ranks
    compiled = _run(compose_cfg, tmp_path, 2, "trainer.compile=true")
    for k, g1 in one["grads"].items():
        assert _max_rel_to_max(compiled["grads"][k], g1) <= GRAD_RTOL, k


# semi-supervised: 130 labelled images (13 per class: 4 batches of 32) and 126 unlabelled ones (3 batches of 32: the
# unlabelled stream wraps within the STEPS steps); each rank takes its shard of both streams
SEMI = ["data.train_limit=256", "data.labels_per_class=13", "schedule.unlabelled_batch_size=32"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_semi_supervised_two_ranks_follow_the_one_process_gradients_and_trajectory(compose_cfg, tmp_path):
    one, two = _run(compose_cfg, tmp_path, 1, *SEMI), _run(compose_cfg, tmp_path, 2, *SEMI)
    for k, g1 in one["grads"].items():
        assert _max_rel_to_max(two["grads"][k], g1) <= GRAD_RTOL, k
        moved1, moved2 = one["end"][k] - one["start"][k], two["end"][k] - two["start"][k]
        assert _max_rel_to_max(moved2, moved1) <= GRAD_RTOL, k


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_two_process_job_makes_exactly_one_mlflow_run(compose_cfg, tmp_path):
    overrides = [*TINY, "variant=sae_first", "trainer.devices=2", "logger.experiment=ddp2", "schedule.decoder.epochs=0"]
    result = run_job(validate(compose_cfg(*overrides)), JobInfo(overrides=overrides))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("ddp2").experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]  # rank 1 logs nothing
    steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss/total")]
    assert steps == [1]


def test_batch_size_must_split_over_devices(compose_cfg):
    from recondec.checks import validate
    from recondec.config import ConfigError

    with pytest.raises(ConfigError, match="schedule.batch_size"):
        validate(compose_cfg("trainer.devices=3", "schedule.batch_size=32"))


def test_slurm_launcher_config_composes_with_one_task_per_gpu(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu",
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4  # one task, one DDP rank, per GPU
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0  # requeued after preemption
    plugin = instantiate(launcher)
    assert type(plugin).__name__ == "SlurmLauncher" and plugin.params["tasks_per_node"] == 4


def test_ranks_come_from_torchrun_or_slurm(monkeypatch):
    from recondec.training.distributed import DistEnv, env_from_launcher

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert env_from_launcher() == DistEnv()  # a plain process: one rank
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("MASTER_ADDR", "node001")  # submitit's JobEnvironment gives the first host otherwise
    env = env_from_launcher()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (9, 1, 16, False)
    assert int(os.environ["MASTER_PORT"]) == 20000 + 123456 % 20000  # the same on every task
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert env_from_launcher() == DistEnv(3, 3, 4)  # torchrun's variables win
