"""Process group set-up: one process without a launcher, or many under `deepspeed`/`torchrun`.

With no launcher, the environment of a one-process world is filled in (a free local port),
so `persd train` runs as is on a laptop (DS_ACCELERATOR=cpu uses gloo) and on one GPU.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass
class World:
    rank: int
    local_rank: int
    size: int
    local_size: int
    device: str  # "cuda:N" or "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world() -> World:
    import warnings

    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    warnings.filterwarnings("ignore", message=r".*is deprecated. Please use `torch.distributed", category=FutureWarning)
    acc = get_accelerator()
    if acc.device_name() == "cpu" and os.environ.get("PERSD_DS_SHM_COMM", "0") != "1":
        # DeepSpeed would compile its shared-memory CPU all-reduce kernel on first use (about a
        # minute); CPU runs here are tests and laptops, where gloo alone is fast enough.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if acc.device_name() != "cpu":
        acc.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=acc.communication_backend_name(), verbose=False)
    size = dist.get_world_size()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", str(size))))
    device = acc.device_name(local_rank) if acc.device_name() != "cpu" else "cpu"
    return World(dist.get_rank(), local_rank, size, local_size, device)


def accelerator_name() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def close_world() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
