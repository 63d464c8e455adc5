"""Distributed set-up: processes spawned inside the Hydra job, torchrun, or SLURM tasks (submitit).

`trainer.devices=N` spawns N worker processes from the Hydra job itself, so the config is composed once and
`-m` sweeps work unchanged. Under torchrun or a SLURM launcher the processes already exist; their rank and
world size come from the environment. Rank 0 alone logs to MLflow and writes checkpoints.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_from_launcher() -> DistEnv:
    """Rank and world size set by torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or by SLURM (SLURM_PROCID, ...)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        _slurm_master_address()
        return DistEnv(int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_LOCALID", 0)),
                       int(os.environ["SLURM_NTASKS"]))
    return DistEnv()


def _slurm_master_address() -> None:
    """The first node of the allocation hosts the rendezvous; the port is derived from the job id."""
    if "MASTER_ADDR" not in os.environ:
        import submitit

        env = submitit.JobEnvironment()
        os.environ["MASTER_ADDR"] = env.hostnames[0]
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(env: DistEnv, device: torch.device) -> None:
    if not env.enabled or dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def spawn(fn: Callable, nprocs: int, *args):
    """Run fn(rank, nprocs, *args) in nprocs fresh processes on this machine and return rank 0's return value
    (picklable); an error in any rank is raised here."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    results = mp.get_context("spawn").SimpleQueue()
    procs = mp.start_processes(_returning, args=(fn, results, nprocs, *args), nprocs=nprocs, join=False,
                               start_method="spawn")
    result = None
    while not procs.join(timeout=0.2):  # reading while waiting: a large result cannot block rank 0's exit
        if not results.empty():
            result = results.get()
    return results.get() if not results.empty() else result


def _returning(rank: int, fn: Callable, results, nprocs: int, *args) -> None:
    value = fn(rank, nprocs, *args)
    if rank == 0:
        results.put(value)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a choice made once, e.g. a probed learning rate)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
