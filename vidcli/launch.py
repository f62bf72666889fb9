"""Process spawning and the process group, shared by the trainers and `generate --nproc`.

`vidcli.train.launcher` (train-ae, train-dit) and `vidcli.generate` start their local ranks the
same way: re-run a worker module under `torch.distributed.run`, one process per rank, and join
the process group through DeepSpeed (gloo on the CPU, NCCL on CUDA). Generation must not import
the training code (tests/test_layering.py), so this part lives here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from vidcli.console import log


def inside_distributed_job() -> bool:
    """True in a rank started by torchrun / deepspeed (RANK and WORLD_SIZE set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def default_single_rank_env() -> None:
    """Outside a distributed job: the environment of a one-rank job on a free local port."""
    if inside_distributed_job():
        return
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group() -> tuple[int, int]:
    """(rank, world size) after joining the process group (gloo on CPU, NCCL on CUDA)."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Destroy the process groups before a rank exits: a gloo group's threads still running at
    interpreter exit abort the process (SIGABRT), turning a finished rank into a failed one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(module: str, args: list[str], nproc: int) -> list[str]:
    """`python -m torch.distributed.run` running `python -m module args` on `nproc` local ranks."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    command += ["--nproc-per-node", str(nproc), "--master-port", str(free_port())]
    return [*command, "-m", module, *args]


def run_ranks(command: list[str], nproc: int) -> int:
    """Run a launcher command (ranks' output to stderr, stdout stays the CLI's); its exit code."""
    log.info("launching %s", " ".join(command))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(command, env=env, stdout=sys.stderr.fileno()).returncode
