"""Training on several processes with PyTorch DistributedDataParallel: the process group and what ranks share.

``echoengine train ... --distributed N`` starts N processes on this machine
through ``torchrun`` (:func:`launch`); ``torchrun`` started by hand runs
them on several machines. Each process joins the group from torchrun's
variables (:func:`process_group`: gloo on CPUs, nccl on GPUs, one GPU per
process), reads its shard of every global batch of the training data (and
of the validation data), and averages gradients with the others (DDP;
batch norm, dropout and mixup work as in one process on the whole batch:
:mod:`echoengine.syncbatch`); the losses and accuracies of an epoch are
summed over the ranks (:func:`sum_over_ranks`),
so every rank takes the same early-stopping and schedule decisions, and only
rank 0 writes (:func:`is_main`): metadata, checkpoints, weights, history,
TensorBoard and the report. Without a process group every function here is
the single-process case (rank 0 of 1).

Examples
--------
>>> world(), is_main()
(1, True)
>>> sum_over_ranks(2.0, 3, 4)
(2.0, 3, 4)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from echoengine.errors import EchoError

__all__ = ["barrier", "is_main", "launch", "main_first", "process_group", "rank", "sum_over_ranks", "world",
           "wrap"]

#: The variables torchrun gives each process it starts.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world() -> int:
    """Processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (nothing without a process group)."""
    if world() > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it: what it stores in a shared cache, they read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def sum_over_ranks(*values: float) -> tuple:
    """Each value summed over the ranks (the values themselves without a process group)."""
    if world() == 1:
        return values
    total = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(total)
    return tuple(type(v)(t) for v, t in zip(values, total.tolist(), strict=True))


def wrap(model: nn.Module, device: torch.device, *, freezing: bool) -> nn.Module:
    """``model`` for training across the ranks (DDP), or itself without a process group.

    With ``freezing`` (a backbone frozen for some epochs) the wrapper looks
    for parameters that got no gradient in each step.
    """
    if world() == 1:
        return model
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for parameter in frozen:  # every parameter is registered, so that unfreezing later syncs it too
        parameter.requires_grad_(True)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=freezing)
    for parameter in frozen:
        parameter.requires_grad_(False)
    return wrapped


def started_by_torchrun(environ: Mapping[str, str]) -> bool:
    """Whether this process was started by torchrun (or ``--distributed``) as one of several."""
    return all(name in environ for name in TORCHRUN_VARIABLES) and int(environ["WORLD_SIZE"]) > 1


@contextmanager
def process_group(environ: Mapping[str, str], *, device: str) -> Iterator[None]:
    """Join the training processes started by torchrun (nothing when not started so); leave the group after.

    ``device`` is the run's ``train.device``: processes on CUDA use nccl
    and GPU ``LOCAL_RANK``; on the CPU, gloo.
    """
    if not started_by_torchrun(environ):
        yield
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    try:
        yield
    finally:
        dist.destroy_process_group()


def launch(processes: int, argv: Sequence[str]) -> int:
    """Run ``echoengine ARGV`` in ``processes`` processes on this machine (torchrun, standalone); their exit status.

    Each process uses one thread per core share (torchrun sets
    ``OMP_NUM_THREADS=1``); rank 0 prints.
    """
    if processes < 2:
        raise EchoError(f"--distributed takes 2 or more processes, got {processes}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "echoengine", *argv]
    return subprocess.run(command, check=False).returncode
