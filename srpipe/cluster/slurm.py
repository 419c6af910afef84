"""Slurm: stages as submitit job arrays (tiles chunked per task) or single jobs, chained afterok (`SlurmExecutor`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable

from srpipe import state
from srpipe.chain import ALL, STAGES, ChainState, Stage, StageSummary
from srpipe.cluster.local import run_units
from srpipe.cluster.profiles import Profile
from srpipe.config import Config, load_config
from srpipe.errors import StageError
from srpipe.layout import RunLayout


@dataclass(frozen=True)
class ClusterLimits:
    """What the cluster lets one user queue: `MaxArraySize` (indices 0..N-1) and how many jobs in all."""

    max_array_size: int = 1001  # Slurm's default
    max_jobs: int = 10000  # MaxJobCount, or the account's MaxSubmitJobs when lower


def parse_limits(scontrol_config: str, max_submit: int = 0) -> ClusterLimits:
    """Limits from `scontrol show config` text, lowered to the association's MaxSubmitJobs when it has one."""
    values = dict(re.findall(r"^(\w+)\s*=\s*(\S+)", scontrol_config, re.MULTILINE))
    array = int(values.get("MaxArraySize", 1001))
    jobs = int(values.get("MaxJobCount", 10000))
    return ClusterLimits(array, min(jobs, max_submit) if max_submit > 0 else jobs)


def cluster_limits() -> ClusterLimits:
    """Read the running cluster's limits (`scontrol show config`, `sacctmgr show assoc` for this user)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    assoc = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=MaxSubmit"],
        capture_output=True,
        text=True,
    ).stdout
    submits = [int(v) for v in assoc.split() if v.strip().isdigit()]
    return parse_limits(config, min(submits) if submits else 0)


def plan_arrays(
    units: list[str], tiles_per_task: int, limits: ClusterLimits, max_jobs: int = 0
) -> list[list[list[str]]]:
    """Split `units` into arrays of tasks: each array <= MaxArraySize tasks, all tasks <= the job budget.

    Tiles per task grow beyond `tiles_per_task` only when the budget (half the cluster's, or `max_jobs`) needs it.
    """
    if not units:
        return []
    budget = max_jobs or max(1, limits.max_jobs // 2)  # leave room for other users' and later stages' jobs
    per_task = max(tiles_per_task, math.ceil(len(units) / budget))
    tasks = [units[i : i + per_task] for i in range(0, len(units), per_task)]
    size = limits.max_array_size
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


class UnitTask(Checkpointable):
    """One array task: run `stage` over its chunk with the local per-unit runner; a requeued task skips done units."""

    def __init__(self, run_dir: str, stage: str) -> None:
        self.run_dir, self.stage = run_dir, stage

    def __call__(self, units: list[str]) -> dict:
        """Run the not-yet-done units of the chunk; record failures with this task's log path; return the summary."""
        env = submitit.JobEnvironment()
        layout = RunLayout(Path(self.run_dir))
        cfg = load_config(layout.config)
        mine = units[env.global_rank :: env.num_tasks]  # several ranks (e.g. one per GPU) take tiles round-robin
        ledger = Ledger(layout.slurm(self.stage) / "ledger.txt", env.job_id)
        stage = STAGES[self.stage]
        summary = run_units(cfg, stage, mine, log_path=str(env.paths.stdout), on_done=ledger.note)
        print(summary.line(), flush=True)
        return {"done": summary.done, "skipped": summary.skipped, "failed": summary.failed}


class Ledger:
    """`_slurm/<stage>/ledger.txt`: one `unit job` line per finished unit (an audit that no unit ran twice)."""

    def __init__(self, path: Path, job_id: str) -> None:
        self.path, self.job_id = path, job_id

    def note(self, unit: str) -> None:
        """Append `unit job`: one short O_APPEND write per unit, atomic on a local or NFS file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as ledger:
            ledger.write(f"{unit} {self.job_id}\n")


class StageJob(Checkpointable):
    """A whole-run stage as one job (many ranks for train); on preemption or time limit it requeues and resumes."""

    def __init__(self, run_dir: str, stage: str) -> None:
        self.run_dir, self.stage = run_dir, stage

    def __call__(self) -> dict:
        """Run the stage on this rank; raise when it failed, so that afterok stops the chain."""
        env = submitit.JobEnvironment()
        cfg = load_config(RunLayout(Path(self.run_dir)).config)
        stage = STAGES[self.stage]
        summary = run_units(cfg, stage, [ALL], rank=env.global_rank, log_path=str(env.paths.stdout))
        print(summary.line(), flush=True)
        if summary.failed:
            raise StageError(f"{self.stage} failed on rank {env.global_rank}: {summary.failed[ALL]}")
        return state.done_info(cfg.run_path, self.stage, ALL) if env.global_rank == 0 else {}


def _executor(cfg: Config, profile: Profile, stage: str, name: str, after: list[str]) -> submitit.SlurmExecutor:
    """A submitit executor in its own folder with the profile's resources, container and dependencies."""
    folder = cfg.layout.slurm(stage) / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}-{name}")
    executor = submitit.SlurmExecutor(folder=folder, python=profile.python_command(cfg.run_path), max_num_timeout=3)
    res = profile.resources(stage)
    extra: dict[str, object] = {"kill_on_invalid_dep": "yes", **profile.sbatch}
    if res.requeue:
        extra["requeue"] = True
    params: dict[str, object] = {
        "job_name": f"srpipe-{stage}",
        "time": res.time_min,
        "mem": f"{int(res.mem_gb * 1024)}M",
        "cpus_per_task": res.cpus_per_task,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node,
        "array_parallelism": profile.array_parallelism,
        "setup": [*(f"module load {m}" for m in profile.modules), *profile.setup],
        "additional_parameters": extra,
        "signal_delay_s": min(90, max(10, res.time_min * 6)),
    }
    if res.partition:
        params["partition"] = res.partition
    if profile.account:
        params["account"] = profile.account
    if profile.qos:
        params["qos"] = profile.qos
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.nodes * res.tasks_per_node > 1 or STAGES[stage].mpi:
        params["srun_args"] = [f"--mpi={profile.mpi}"]  # under srun, MPI_Init needs Slurm's PMI even for one rank
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
    executor.update_parameters(**params)
    return executor


def submit_stage(
    cfg: Config,
    profile: Profile,
    stage: str,
    units: list[str] | None = None,
    after: list[str] | None = None,
    limits: ClusterLimits | None = None,
) -> list[str]:
    """Submit `stage` over `units` (default: all) as arrays or one job, after the jobs `after`; return job ids."""
    units = ChainState(cfg).units(STAGES[stage]) if units is None else units
    if not units:
        return []
    record: dict[str, list[str]] = {}
    logs: dict[str, str] = {}
    ids: list[str] = []
    if not STAGES[stage].mapped:
        job = _executor(cfg, profile, stage, "job", after or []).submit(StageJob(str(cfg.run_path), stage))
        ids, record, logs = [job.job_id], {job.job_id: ["all"]}, {job.job_id: str(job.paths.stdout)}
    else:
        arrays = plan_arrays(units, profile.tiles_per_task, limits or cluster_limits(), profile.max_jobs)
        for number, tasks in enumerate(arrays):
            executor = _executor(cfg, profile, stage, f"array{number}", after or [])
            jobs = executor.map_array(UnitTask(str(cfg.run_path), stage), tasks)
            ids.append(jobs[0].job_id.split("_")[0])
            record.update({job.job_id: chunk for job, chunk in zip(jobs, tasks, strict=True)})
            logs.update({job.job_id: str(job.paths.stdout) for job in jobs})
    line = {"stage": stage, "profile": profile.name, "job_ids": ids, "tasks": record, "logs": logs}
    line |= {"after": after or [], "submitted_at": time.time()}
    path = cfg.layout.submissions
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")
    return ids


def submissions(run_dir: Path) -> list[dict]:
    """Every submission recorded for the run, oldest first."""
    path = RunLayout(Path(run_dir)).submissions
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@dataclass
class SlurmExecutor:
    """Submit each stage per `profile`: per-tile stages as arrays, whole-run ones as jobs, each afterok the last."""

    profile: Profile
    after: list[str] = dataclasses.field(default_factory=list)  # jobs the first stage waits for
    limits: ClusterLimits | None = None

    def run(
        self, cfg: Config, stage: Stage, units: list[str], after: StageSummary | None, states: ChainState | None = None
    ) -> StageSummary:
        """Submit `stage` over `units` after `after`'s jobs (or this executor's `after`); returns at once."""
        if self.limits is None:
            self.limits = cluster_limits()
        waits = (after.jobs if after is not None and after.jobs else None) or self.after
        ids = submit_stage(cfg, self.profile, stage.name, units, waits, self.limits)
        self.after = ids or waits
        return StageSummary(stage.name, jobs=ids)
