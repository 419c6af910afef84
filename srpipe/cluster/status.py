"""`srpipe status` of any run (done / stale and why / failed / pending from the markers and fingerprints, plus the
sacct/squeue states of its Slurm jobs when it has any) and resubmission of what is unfinished or stale."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from srpipe import state
from srpipe.chain import CHAIN, STAGES, ChainState, run_chain
from srpipe.cluster.profiles import Profile
from srpipe.cluster.slurm import SlurmExecutor, submissions
from srpipe.config import Config

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD"}


@dataclass
class StageProgress:
    """One stage: its units, which are done, stale or failed ({unit: reason}) or pending, its active Slurm tasks."""

    stage: str
    units: list[str]
    done: list[str] = field(default_factory=list)
    stale: dict[str, str] = field(default_factory=dict)  # done once, on inputs that have changed since (why)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # never submitted, or their task ended without a record
    queued: list[str] = field(default_factory=list)  # in a task that is queued or running now
    active_jobs: dict[str, str] = field(default_factory=dict)  # {job id: state} of tasks queued or running

    def line(self) -> str:
        """One row of `srpipe status`."""
        jobs = ", ".join(f"{j} {s}" for j, s in sorted(self.active_jobs.items())) or "-"
        pending = len(self.pending) + len(self.queued)
        counts = f"{len(self.units):>6}{len(self.done):>6}{len(self.stale):>7}{len(self.failed):>8}{pending:>9}"
        return f"{self.stage:<18}{counts}  {jobs}"


def _expand(job_id: str) -> list[str]:
    """Expand sacct/squeue's `123_[0-3,7%2]` into `123_0` ... `123_7`; other ids are returned as they are."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    out = []
    for part in match.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{match.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_job_states(text: str) -> dict[str, str]:
    """{task id: state} from `JobID|State` lines (sacct -P or squeue -o '%i|%T'); 'CANCELLED by 0' -> CANCELLED."""
    states = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, job_state = line.split("|", 1)
        for task in _expand(job.strip()):
            states[task] = job_state.split()[0] if job_state.split() else "UNKNOWN"
    return states


# what slurmstepd writes into a task's log when it kills the task at a limit (cgroup OOM, OverMemoryKill, time)
_MEMORY = re.compile(r"exceeded (job )?memory limit|oom[-_ ]kill|out of memory", re.IGNORECASE)
_TIME = re.compile(r"DUE TO TIME LIMIT")


def _log_tail(log: str, n_bytes: int = 65536) -> str:
    """The last `n_bytes` of a task's stdout and stderr logs (submitit's `<id>_log.out` and `.err`), '' if absent."""
    text = ""
    for path in (Path(log), Path(log).with_suffix(".err")):
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - n_bytes))
                text += f.read().decode(errors="replace")
    return text


def limit_cause(stage: str, job_state: str, log: str) -> str:
    """': over its memory limit; raise ...' when Slurm killed the task at its memory or time limit, else ''.

    sacct says OUT_OF_MEMORY or TIMEOUT where the site enforces limits with cgroups; where slurmstepd polls memory
    (OverMemoryKill) the state is FAILED or CANCELLED, and only the task's log says why."""
    tail = _log_tail(log) if job_state not in ("OUT_OF_MEMORY", "TIMEOUT") else ""
    fix = "in the profile ([stages.{s}] or [defaults]), then `srpipe resubmit RUN {s} --profile PROFILE`"
    if job_state == "OUT_OF_MEMORY" or _MEMORY.search(tail):
        return ": killed over its memory limit; raise mem_gb " + fix.format(s=stage)
    if job_state == "TIMEOUT" or _TIME.search(tail):
        return ": killed at its time limit; raise time_min " + fix.format(s=stage)
    return ""


def job_states(job_ids: list[str]) -> dict[str, str]:
    """{task id: state} of `job_ids` (array ids expand to their tasks): sacct, then squeue for the live ones."""
    if not job_ids:  # a local run: no Slurm client needed
        return {}
    ids = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State"], capture_output=True, text=True)
    squeue = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-j", ids, "-o", "%i|%T"], capture_output=True, text=True
    )
    return {**parse_job_states(sacct.stdout), **parse_job_states(squeue.stdout)}


def submitted_tasks(run_dir: Path) -> list[str]:
    """Every Slurm task id the run's submissions recorded, sorted."""
    return sorted({t for sub in submissions(run_dir) for t in sub["tasks"]})


def active_tasks(run_dir: Path) -> dict[str, str]:
    """{task id: state} of the run's Slurm tasks that are queued or running now ({} without a submission, no query)."""
    return {task: s for task, s in job_states(submitted_tasks(run_dir)).items() if s in ACTIVE}


def _latest_tasks(cfg: Config, stage: str) -> tuple[dict[str, str], dict[str, str]]:
    """({unit: the last task it was submitted in}, {task: its log path}) for `stage`."""
    latest: dict[str, str] = {}
    logs: dict[str, str] = {}
    for sub in submissions(cfg.run_path):
        if sub["stage"] != stage:
            continue
        logs.update(sub.get("logs", {}))
        for task, units in sub["tasks"].items():
            latest.update(dict.fromkeys(units, task))
    return latest, logs


def stage_progress(
    cfg: Config, stage: str, jobs: dict[str, str] | None = None, states: ChainState | None = None
) -> StageProgress:
    """Progress of `stage`: done or stale from markers and fingerprints; failed from markers or from a Slurm task
    that ended without finishing the unit; queued while its task is. `jobs`: {job id: Slurm state}."""
    spec = STAGES[stage]
    states = ChainState(cfg) if states is None else states
    progress = StageProgress(stage, states.units(spec))
    latest, logs = _latest_tasks(cfg, stage)
    jobs = job_states(sorted(set(latest.values()))) if jobs is None else jobs
    records = state.failure_records(cfg.run_path, stage)
    for unit in progress.units:
        current = states.unit_state(spec, unit)
        task = latest.get(unit, "")
        job_state = jobs.get(task, "")
        if current.status in ("done", "stale"):
            problem = current.reason if current.status == "stale" else states.upstream_problem(spec, unit)
            if problem:
                progress.stale[unit] = problem
            else:
                progress.done.append(unit)
        elif job_state in ACTIVE:
            progress.queued.append(unit)
            progress.active_jobs[task] = job_state
        elif current.status == "failed":
            record = records[unit]
            progress.failed[unit] = f"{record['error']} (log: {record.get('log_path') or logs.get(task, '?')})"
        elif job_state and job_state != "COMPLETED":
            log, cause = logs.get(task, "?"), limit_cause(stage, job_state, logs.get(task, "?"))
            progress.failed[unit] = f"job {task} {job_state} before the unit finished{cause} (log: {log})"
        elif task and not job_state:  # neither sacct nor squeue knows it: an array task cancelled while queued
            progress.failed[unit] = f"job {task} CANCELLED before the unit finished (it never started; no log)"
        else:
            progress.pending.append(unit)
    return progress


def run_progress(cfg: Config) -> list[StageProgress]:
    """Progress of every stage of the chain, with one sacct/squeue query for the whole run."""
    jobs, states = job_states(submitted_tasks(cfg.run_path)), ChainState(cfg)
    return [stage_progress(cfg, stage, jobs, states) for stage in CHAIN]


def _grouped(kind: str, stage: str, reasons: dict[str, str], limit: int = 5) -> list[str]:
    """`  KIND stage unit: reason` lines, units of the same reason folded into one line past `limit`."""
    by_reason: dict[str, list[str]] = {}
    for unit, reason in reasons.items():
        by_reason.setdefault(reason, []).append(unit)
    lines = []
    for reason, units in by_reason.items():
        if len(units) <= limit:
            lines += [f"  {kind} {stage} {unit}: {reason}" for unit in units]
        else:
            lines.append(f"  {kind} {stage} {len(units)} units ({', '.join(units[:3])}, ...): {reason}")
    return lines


def status_text(cfg: Config) -> str:
    """The table of `srpipe status RUN`, then every stale unit (which input changed) and failed unit (why, log)."""
    rows = run_progress(cfg)
    header = f"{'stage':<18}{'units':>6}{'done':>6}{'stale':>7}{'failed':>8}{'pending':>9}  active jobs"
    lines = [f"run {cfg.run_path}", header, *(row.line() for row in rows)]
    for row in rows:
        lines += _grouped("STALE", row.stage, row.stale) + _grouped("FAILED", row.stage, row.failed)
    return "\n".join(lines)


def resubmit(cfg: Config, profile: Profile, stage: str, downstream: bool = False) -> dict[str, list[str]]:
    """Submit the units of `stage` that failed, are stale or never finished, none queued or running (no duplicates).

    With `downstream`, the later stages of the chain follow afterok, as `srpipe submit all` chains them.
    """
    progress = stage_progress(cfg, stage)
    todo = [u for u in progress.units if u in progress.failed or u in progress.stale or u in progress.pending]
    stages = list(CHAIN[CHAIN.index(stage) :]) if downstream else [stage]
    active = sorted({job.split("_")[0] for job in progress.active_jobs})
    executor = SlurmExecutor(profile, after=active)
    submitted = {}
    if todo:
        submitted |= {s.stage: s.jobs for s in run_chain(cfg, [stage], todo, executor)}
    if len(stages) > 1:
        submitted |= {s.stage: s.jobs for s in run_chain(cfg, stages[1:], None, executor)}
    return submitted
