"""Who started this process and where its rank 0 listens: read from torchrun's, Open MPI's or Slurm's variables.

Torch-free, so that the executors read ranks without importing torch. The rules follow submitit's
`TorchDistributedEnvironment`: under `srun` the rank is SLURM_PROCID, the world SLURM_STEP_NUM_TASKS, the local rank
SLURM_LOCALID, and rank 0's host the first of the step's nodes, on a port derived from the job and step ids.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """This process in its launcher's world: rank, world size, rank on this host, and which launcher set them."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # "torchrun" | "mpirun" | "srun" | "horovodrun" | "none"


def _ints(env: Mapping[str, str], *keys: str) -> list[int] | None:
    """The values of `keys` as ints, or None when any is missing or not a number."""
    values = [env.get(k, "") for k in keys]
    return [int(v) for v in values] if all(v.isdigit() for v in values) else None


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch:
    """This process's rank, size and local rank; torchrun's, then mpirun's, then srun's step variables."""
    env = os.environ if environ is None else environ
    for launcher, keys in (
        ("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
        ("horovodrun", ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK")),
        ("mpirun", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")),
        # SLURM_STEP_NUM_TASKS is set by srun only: a batch script's own shell (SLURM_NTASKS=2) is not a rank
        ("srun", ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")),
    ):
        found = _ints(env, *keys)
        if found is not None:
            return Launch(*found, launcher=launcher)
    return Launch()


def launcher_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank as set by `srun`, `mpirun`, `torchrun` or `horovodrun` (0 without a launcher)."""
    env = os.environ if environ is None else environ
    for key in ("PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if env.get(key, "").isdigit():
            return int(env[key])
    if env.get("SLURM_NTASKS", "1") != "1" and env.get("SLURM_PROCID", "").isdigit():
        return int(env["SLURM_PROCID"])
    return launch_from_env(env).rank


def launcher_size(environ: Mapping[str, str] | None = None) -> int:
    """How many ranks `srun`, `mpirun`, `torchrun` or `horovodrun` started (1 without a launcher)."""
    env = os.environ if environ is None else environ
    for key in ("WORLD_SIZE", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 1


def slurm_port(job_id: int, step_id: int) -> int:
    """A TCP port for rank 0 of a Slurm step, in 20000-39999: the same on every rank, different for nearby jobs."""
    return 20000 + (job_id * 16 + step_id) % 20000


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list such as `srn[1-2]` (expanded by `scontrol show hostnames`)."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def rendezvous(launch: Launch, environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """Rank 0's (host, port): MASTER_ADDR/MASTER_PORT when set, else derived from srun's step; None when unknown."""
    env = os.environ if environ is None else environ
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT", "").isdigit():
        return env["MASTER_ADDR"], int(env["MASTER_PORT"])
    if launch.launcher == "srun":
        nodes = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
        ids = _ints(env, "SLURM_JOB_ID", "SLURM_STEP_ID") or [0, 0]
        return env.get("MASTER_ADDR") or first_host(nodes), int(env.get("MASTER_PORT") or slurm_port(*ids))
    return None
