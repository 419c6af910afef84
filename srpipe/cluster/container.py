"""Wrap a command line for a container runtime (Apptainer or Charliecloud); no runtime is needed to build it.

    >>> container_argv("apptainer", "srpipe.sif", ["/scratch/run"], ["srpipe", "download", "/scratch/run"], gpu=True)
    ['apptainer', 'exec', '--nv', '--bind', '/scratch/run', 'srpipe.sif', 'srpipe', 'download', '/scratch/run']
    >>> container_argv("charliecloud", "/img/srpipe", ["/scratch/run"], ["srpipe", "download", "/scratch/run"])
    ['ch-run', '--unset-env=*', '--set-env', '-b', '/scratch/run:/scratch/run', '/img/srpipe', '--', 'srpipe', \
'download', '/scratch/run']

A bind is `SRC` (mounted at the same path inside, so the absolute paths of a run's config.toml resolve) or
`SRC:DST`; both absolute. With Charliecloud, DST must exist in the image (containers/srpipe.def creates /rundir,
/scratch and /data; ch-run binds the host's /tmp at /tmp, so anything under /tmp exists too). Charliecloud starts
from an empty environment plus the image's own (`--unset-env='*' --set-env`), so pass what the command needs
(e.g. Slurm/PMIx variables for `srun --mpi=pmix`) in `env`.

GPUs: Apptainer gets `--nv`. Charliecloud has no run-time flag: the host's NVIDIA libraries are injected into the
image directory once (`ch-fromhost --nvidia IMAGE_DIR`), so `gpu` changes nothing in its command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RUNTIMES = {"apptainer": "apptainer", "singularity": "singularity", "charliecloud": "ch-run", "ch-run": "ch-run"}


def _split_bind(bind: str) -> tuple[str, str]:
    """`SRC` or `SRC:DST` -> (SRC, DST); both must be absolute and hold no ',' or further ':'."""
    parts = bind.split(":")
    if len(parts) > 2 or not all(parts) or "," in bind:
        raise ValueError(f"bind {bind!r}: expected SRC or SRC:DST (absolute paths without ',' or ':')")
    src, dst = parts[0], parts[-1]
    if not (src.startswith("/") and dst.startswith("/")):
        raise ValueError(f"bind {bind!r}: SRC and DST must be absolute paths")
    return src, dst


def container_argv(
    runtime: str,
    image: str,
    binds: Sequence[str],
    argv: Sequence[str],
    gpu: bool = False,
    env: Mapping[str, str] | None = None,
    keep_env: bool = False,
) -> list[str]:
    """The command line running `argv` in `image` with `runtime` (apptainer, singularity, charliecloud or ch-run).

    Apptainer/Singularity: `apptainer exec [--nv] [--bind A,B] [--env K=V ...] IMAGE argv...`.
    Charliecloud: `ch-run --unset-env=* --set-env [--set-env=K=V ...] [-b SRC:DST ...] IMAGE -- argv...`;
    with `keep_env` (a Slurm job's wrapper) the caller's environment passes through: no `--unset-env`/`--set-env`.
    """
    exe = RUNTIMES.get(runtime)
    if exe is None:
        raise ValueError(f"unknown container runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if not image:
        raise ValueError("container image path is empty")
    if not argv:
        raise ValueError("no command to run in the container")
    pairs = [_split_bind(b) for b in binds]
    variables = dict(env or {})
    for name in variables:
        if not name or "=" in name:
            raise ValueError(f"bad environment variable name {name!r}")
    if exe == "ch-run":
        cmd = [exe] if keep_env else [exe, "--unset-env=*", "--set-env"]
        cmd += [f"--set-env={k}={v}" for k, v in variables.items()]
        for src, dst in pairs:
            cmd += ["-b", f"{src}:{dst}"]
        return [*cmd, image, "--", *argv]
    cmd = [exe, "exec"]
    if gpu:
        cmd.append("--nv")
    if pairs:
        cmd += ["--bind", ",".join(src if src == dst else f"{src}:{dst}" for src, dst in pairs)]
    for k, v in variables.items():
        cmd += ["--env", f"{k}={v}"]
    return [*cmd, image, *argv]
