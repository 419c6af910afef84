"""Site profiles: where and with what resources each stage runs; typed TOML, validated by key.

The shipped profiles live in the package (`srpipe/cluster/site_profiles/`, also reachable as `hpc/profiles/` in a
checkout), so `--profile NAME` works from an installed srpipe; a site's own profile is given as a TOML path.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from srpipe.cluster.container import container_argv
from srpipe.config import build_dataclass, read_toml
from srpipe.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parent / "site_profiles"


@dataclass(frozen=True)
class Resources:
    """What one job (an array task, or a whole-run stage's job) asks for; `tasks_per_node` > 1 means MPI ranks."""

    partition: str = ""  # "" = the profile's partition
    time_min: int = 60
    mem_gb: float = 4.0
    cpus_per_task: int = 1
    nodes: int = 1
    tasks_per_node: int = 1  # train: one rank per GPU; infer: ranks take the task's tiles round-robin
    gpus_per_node: int = 0
    requeue: bool = True  # requeue on preemption or time limit (submitit checkpointing), resume from the checkpoint


@dataclass(frozen=True)
class Container:
    """Run every task inside an image: `runtime` "" (no container), "apptainer" or "charliecloud"."""

    runtime: Literal["", "apptainer", "charliecloud"] = ""
    image: str = ""  # apptainer: a .sif file; charliecloud: an unpacked image directory
    binds: tuple[str, ...] = ()  # extra host paths (the run directory is always bound)
    python: str = "python"  # the interpreter inside the image


@dataclass(frozen=True)
class Profile:
    """A site: `executor` local (process pool) or slurm, queue settings, per-stage resources, container, modules."""

    name: str = "local"
    executor: Literal["local", "slurm"] = "local"
    partition: str = ""
    account: str = ""
    qos: str = ""
    array_parallelism: int = 64  # the %N of every array: tasks of one array running at once
    tiles_per_task: int = 16  # units of work (tiles) per array task
    max_jobs: int = 0  # the most array tasks one submission may queue (0 = from the cluster's limits)
    mpi: str = "pmix"  # `srun --mpi=` of MPI jobs (train, multi-rank jobs); Debian's Open MPI fails under pmi2
    python: str = ""  # interpreter on the nodes without a container ("" = the one running srpipe)
    modules: tuple[str, ...] = ()  # `module load` these before each task
    setup: tuple[str, ...] = ()  # extra shell lines before each task (e.g. `export OMP_NUM_THREADS=1`)
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch options, e.g. {constraint = "a100"}
    defaults: Resources = field(default_factory=Resources)
    stages: dict[str, Resources] = field(default_factory=dict)  # per-stage overrides of `defaults`
    container: Container = field(default_factory=Container)

    def resources(self, stage: str) -> Resources:
        """The resources of `stage`: its own table over the defaults, with the profile's partition."""
        res = self.stages.get(stage, self.defaults)
        return res if res.partition else dataclasses.replace(res, partition=self.partition)

    def python_command(self, run_dir: Path) -> str:
        """The python command that runs every task: plain, or wrapped in `apptainer exec` / `ch-run`."""
        plain = self.python or shlex.quote(sys.executable)
        return container_command(self.container, [str(run_dir)], plain)


def container_command(container: Container, paths: list[str], python: str = "python") -> str:
    """Shell prefix that runs `python` in `container` with `paths` + its binds visible at the same place.

    The job's environment is kept (submitit and PMIx need its SLURM_* / PMIX_* variables inside the container).
    """
    if not container.runtime:
        return python
    binds = list(dict.fromkeys([*paths, *container.binds]))
    argv = container_argv(container.runtime, container.image, binds, [container.python], gpu=True, keep_env=True)
    return shlex.join(argv)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load `hpc/profiles/<name>.toml` (or a TOML path); stage tables override `[defaults]` key by key."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ConfigError(f"profile {name_or_path!r} not found ({path}); known profiles: {known}")
    data = read_toml(path, "profile")
    data.setdefault("name", path.stem if path.resolve().parent == PROFILES_DIR else str(path.resolve()))
    defaults = data.get("defaults", {})
    stages = data.get("stages", {})
    if not isinstance(defaults, dict) or not isinstance(stages, dict):
        raise ConfigError(f"profile {path}: [defaults] and [stages.<name>] must be tables")
    from srpipe.chain import CHAIN  # the registry: names only, no stage code imported

    for stage, table in stages.items():
        if stage not in CHAIN:
            raise ConfigError(f"unknown profile key 'stages.{stage}'; allowed stages: {', '.join(CHAIN)}")
        if isinstance(table, dict):
            stages[stage] = {**defaults, **table}
    profile = build_dataclass(Profile, data, kind="profile")
    positive = {"array_parallelism": profile.array_parallelism, "tiles_per_task": profile.tiles_per_task}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"profile key '{key}' must be > 0, got {value}")
    if profile.container.runtime and not profile.container.image:
        raise ConfigError(f"profile key 'container.image' is needed for runtime {profile.container.runtime!r}")
    return profile
