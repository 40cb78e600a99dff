"""Data-parallel training with torchrun: `<section>.nproc_per_node` > 1 makes
the train or distill stage relaunch itself as

    python -m torch.distributed.run --standalone --nproc-per-node N -m tasks.<stage>

Each process trains a DistributedDataParallel replica on its share of every
epoch (DistributedSampler, reshuffled per epoch with set_epoch), with NCCL on
GPUs (one per process) and gloo on the CPU. Gradients are averaged, so every
replica holds the same weights; batch-norm statistics are taken from rank 0
before each validation pass, so every rank computes the same validation loss
and makes the same early-stopping decision. Rank 0 alone logs, evaluates on
the full split and saves.

Several machines: run the same command on each with `--nnodes`,
`--node-rank` and `--rdzv-endpoint host:port` instead of `--standalone`
(DISTILLERY_TORCHRUN_ARGS replaces the launcher's arguments).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from tasks.core.errors import DistilleryError

LAUNCHER_ARGS_ENV = "DISTILLERY_TORCHRUN_ARGS"


def under_torchrun() -> bool:
    """True in a process torchrun started (it sets these for every worker)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(module: str, nproc: int) -> int | None:
    """Run `module` under torchrun with `nproc` processes and return its exit
    code, or None when nothing needs launching (1 process, or already under torchrun)."""
    if nproc <= 1 or under_torchrun():
        return None
    args = shlex.split(os.environ.get(LAUNCHER_ARGS_ENV, "")) or ["--standalone", f"--nproc-per-node={nproc}"]
    # One intra-op thread share per process, so N processes do not oversubscribe the cores.
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *args, "-m", module], env=env).returncode


def stage_main(stage: str, section: str, nproc: int, run: Callable[[], None]) -> None:
    """A training stage's main: `run()` here (in the process group under
    torchrun), or this stage relaunched under torchrun when `nproc` > 1."""
    code = relaunch(f"tasks.{stage}", nproc)
    if code is None:
        with process_group():
            run()
    elif code:
        raise DistilleryError(
            f"{stage}: torchrun with {section}.nproc_per_node={nproc} processes exited with "
            f"{code} (their errors are above)"
        )


@contextmanager
def process_group() -> Iterator[None]:
    """The DDP process group for the life of a stage under torchrun; nothing otherwise."""
    if not under_torchrun():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's GPU under torchrun (one per process), else CUDA or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_sum(*values: float) -> list[float]:
    """Each value summed over the ranks (the values themselves with one process)."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_main(flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank: one decision for all."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=device() if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
