"""Process group set-up for `python`, `torchrun` and the `deepspeed` launcher alike."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from fastforec.errors import UserError

# DeepSpeed's C++ all-reduce op for CPU ranks: compiled by its first process group on a machine
SHM_EXTENSION = "deepspeed_shm_comm"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchError(UserError, RuntimeError):
    """The processes were launched in a way this machine cannot run (the message says how to fix it)."""


def check_local_rank(local_rank: int, gpus: int) -> None:
    """One process per GPU: local rank N drives GPU N, so it must exist."""
    if local_rank >= gpus:
        raise LaunchError(f"local rank {local_rank} has no GPU: this node has {gpus} visible GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}), and each "
                          "process drives one GPU; launch at most that many processes per node "
                          f"(torchrun --nproc_per_node {gpus}, deepspeed --num_gpus {gpus})")


def _local_device(local_rank: int | None) -> tuple[int, torch.device]:
    """This process's local rank (the launcher's LOCAL_RANK unless given) and its device: its GPU
    (made current) when CUDA is present, else the CPU."""
    if local_rank is None or local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.cuda.is_available():
        return local_rank, torch.device("cpu")
    check_local_rank(local_rank, torch.cuda.device_count())
    torch.cuda.set_device(local_rank)
    return local_rank, torch.device("cuda", local_rank)


def init_distributed(local_rank: int | None = None) -> DistInfo:
    """Join (or create) the process group. CUDA + NCCL when a GPU exists, else CPU + gloo.

    Without launcher variables (a plain `python train.py`) we declare a world of one ourselves:
    DeepSpeed would otherwise try MPI discovery, which needs mpi4py.
    """
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank, device = _local_device(local_rank)
    if not dist.is_initialized():
        import deepspeed  # deferred: importing it prints accelerator banners

        if device.type == "cpu" and os.environ.get("LOCAL_RANK") == "0" and not _shm_extension_built():
            print(f"DeepSpeed compiles its CPU communication extension ({SHM_EXTENSION}) first: once per "
                  f"machine, a minute or two", file=sys.stderr, flush=True)
        # DeepSpeed prints "... built successfully" to stdout, where a run's results go
        with contextlib.redirect_stdout(sys.stderr):
            deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def _shm_extension_built() -> bool:
    """Whether torch's extension cache holds DeepSpeed's compiled CPU op (True when unsure: the
    note is for the silent first minute, never worth a wrong warning)."""
    if sys.platform != "linux":
        return True  # DeepSpeed builds its shared-memory op on Linux only
    try:
        from deepspeed.git_version_info import installed_ops
        from torch.utils.cpp_extension import _get_build_directory  # torch's own cache layout

        if installed_ops.get(SHM_EXTENSION):
            return True  # built when DeepSpeed was installed (DS_BUILD_SHM_COMM=1)
        return any(Path(_get_build_directory(SHM_EXTENSION, verbose=False)).glob(f"{SHM_EXTENSION}*.so"))
    except (ImportError, OSError):
        return True


def init_inference(local_rank: int | None = None) -> DistInfo:
    """The device of an evaluation process, without DeepSpeed: one process (no process group) unless
    a launcher (torchrun, deepspeed) started several, which then join a plain torch process group
    (NCCL on GPUs, else gloo). Imports no DeepSpeed and builds no C++ extension, so `fastforec
    eval` starts in the time it takes to import torch."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank, device = _local_device(local_rank)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def all_ranks_true(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (one tiny all-reduce; every rank must call it)."""
    return all_ranks_each([flag], device)[0]


def all_ranks_each(flags: Sequence[bool | torch.Tensor], device: torch.device) -> list[bool]:
    """For each flag (a bool or a 0-d tensor), whether it holds on every rank: one all-reduce and
    one host sync for all of them. Every rank must call it with the same number of flags."""
    t = torch.stack([torch.as_tensor(f, device=device).reshape(()).to(torch.int32) for f in flags])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [bool(v) for v in t.tolist()]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
