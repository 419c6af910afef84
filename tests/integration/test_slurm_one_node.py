"""The Slurm launch layer on the real local cluster (hpc/slurm-local/up.sh): arrays, kills, resubmit, Horovod.

Ranks that train in sync via submitit and resume after a cancel, for both backends:
tests/integration/test_chain_on_two_nodes.py
(test_two_host_training_resumes_exactly_after_a_cancel_and_after_a_requeue), one rank on each of two hosts.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from srpipe.chain import CHAIN
from srpipe.cluster.slurm import submissions
from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config
from tests.helpers import (
    SLURM_ENV,
    content_sums,
    final_states,
    fresh_run,
    job_ids,
    mosaic_pixels,
    rank_checksums,
    slurm_profile,
    wait_jobs,
    write_faults_result,
)
from tests.helpers import active_jobs as _active  # the chaos test's names (it is edited elsewhere)
from tests.helpers import job_ids as _job_ids
from tests.helpers import slurm_profile as _profile

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
CHAOS_SEED, CHAOS_KILLS = 26, 4
ARRAYS = ("download", "curate", "infer")  # the chain's array stages: their running tasks are the targets
STAGE_OUTPUTS = {"download": "eopatches", "curate": "curation/tiles", "infer": "predictions"}


def _chaos_plan(rng: random.Random) -> dict[str, list[int]]:
    """{stage: ordinals}: kill the n-th task of `stage` (counted as tasks start writing) for each n; a seeded pick of
    CHAOS_KILLS of the first two tasks of each array stage (the third is left for a kill that missed)."""
    pairs = [(stage, n) for stage in ARRAYS for n in range(2)]
    chosen = rng.sample(pairs, CHAOS_KILLS)
    return {stage: sorted(n for s, n in chosen if s == stage) for stage in ARRAYS}


def _ledger(run: Path, stage: str) -> list[tuple[str, str]]:
    """(unit, task id) lines of the stage's ledger: one per finished unit, in the order they finished."""
    path = run / f"_slurm/{stage}/ledger.txt"
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _chunks(run: Path) -> dict[str, tuple[str, list[str]]]:
    """{task id: (stage, its units)} of every array task submitted for the run."""
    return {t: (sub["stage"], units) for sub in submissions(run) for t, units in sub.get("tasks", {}).items()}


def _owners(run: Path) -> dict[str, dict[str, str]]:
    """{stage: {unit: task id}}: the task of the latest submission that holds each unit."""
    owners: dict[str, dict[str, str]] = {stage: {} for stage in ARRAYS}
    for task, (stage, units) in _chunks(run).items():
        if stage in owners:
            owners[stage] |= dict.fromkeys(units, task)
    return owners


def _entries(run: Path, stage: str) -> dict[str, int]:
    """{path: mtime in ns} of every file and folder under the stage's outputs (temporaries included)."""
    out = {}
    for folder, dirs, files in os.walk(run / STAGE_OUTPUTS[stage]):
        for name in dirs + files:
            try:
                out[os.path.join(folder, name)] = os.stat(os.path.join(folder, name)).st_mtime_ns
            except FileNotFoundError:  # renamed while we looked
                pass
    return out


def _writer(path: str, owners: dict[str, str]) -> str | None:
    """The task whose unit `path` belongs to (`<tile>/`, `<tile>.h5`, `.<tile>.tmp-...`), or None."""
    for part in Path(path).parts:
        unit = part.lstrip(".").split(".")[0]
        if unit in owners:
            return owners[unit]
    return None


def _kill_task(task: str) -> None:
    """SIGKILL every process of the task `task` (an array's "<array>_<index>", or a job id where a resubmit of one
    chunk made a plain job) on this host at once, found by its Slurm environment, then `scancel --signal=KILL --full`
    it: scancel alone takes longer than a tiny task's work."""
    array, _, index = task.partition("_")
    marks = {f"SLURM_ARRAY_JOB_ID={array}", f"SLURM_ARRAY_TASK_ID={index}"} if index else {f"SLURM_JOB_ID={task}"}
    marks = {mark.encode() for mark in marks}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marks <= set((entry / "environ").read_bytes().split(b"\0")):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):  # ended while we looked
            pass
    subprocess.run(["scancel", "--signal=KILL", "--full", task], capture_output=True)


def _kill_while_active(run: Path, plan: dict[str, list[int]], rng: random.Random, chaos: dict) -> None:
    """Until none of the run's jobs is queued or running: SIGKILL each planned array task a seeded 0-50 ms after its
    first write into the stage's outputs (progress, not wall time, sets the moment: the kill lands inside the task's
    work on a fast machine and a slow one alike). A kill that missed (the task had ended) moves to the stage's next
    task."""
    seen = {stage: _entries(run, stage) for stage in ARRAYS}
    owners, next_check = _owners(run), 0.0
    while True:
        if time.monotonic() >= next_check:
            if not _active([j for sub in submissions(run) for j in sub["job_ids"]]):
                break
            owners, next_check = _owners(run), time.monotonic() + 1.0
        for stage in ARRAYS:
            now = _entries(run, stage)
            written = [p for p, t in now.items() if seen[stage].get(p) != t]
            seen[stage] = now
            for task in dict.fromkeys(t for p in written if (t := _writer(p, owners[stage])) is not None):
                if task in chaos["seen"]:
                    continue
                ordinal = sum(1 for s in chaos["seen"].values() if s == stage)
                chaos["seen"][task] = stage
                if ordinal in plan[stage] and chaos["kills_landed"] + len(chaos["killed"]) < CHAOS_KILLS:
                    time.sleep(rng.uniform(0.0, 0.05))
                    _kill_task(task)
                    chaos["killed"][task] = stage
        time.sleep(0.05)
    _count_kills(run, plan, chaos)


def _count_kills(run: Path, plan: dict[str, list[int]], chaos: dict) -> None:
    """Move the ended killed tasks to the counts: landed when the task left a unit of its chunk unfinished."""
    chunks = _chunks(run)
    for task, stage in list(chaos["killed"].items()):
        finished = {unit for unit, t in _ledger(run, stage) if t == task}
        if set(chunks[task][1]) - finished:
            chaos["kills_landed"] += 1
            chaos["stages_hit"][stage] = chaos["stages_hit"].get(stage, 0) + 1
        else:  # it ended before the kill: the stage's next task to start writing is the target instead
            chaos["kills_missed"].append(task)
            plan[stage].append(sum(1 for s in chaos["seen"].values() if s == stage))
        del chaos["killed"][task]


def _first_unfinished(run: Path) -> str | None:
    """The first stage of the chain that `srpipe status` does not show all done."""
    status = srpipe("status", str(run), check=False).stdout
    for line in status.splitlines():
        fields = line.split()
        if fields and fields[0] in CHAIN and fields[1] != fields[2]:
            return fields[0]
    return None


@pytest.mark.faults
def test_submit_all_under_seeded_task_kills_resubmits_to_the_local_runs_outputs(tiny_run: Path, tmp_path: Path):
    """`srpipe submit all` returns at once; seeded array tasks are SIGKILLed as they start writing (their processes,
    then `scancel --signal=KILL`; Slurm cancels their dependants), `srpipe resubmit STAGE --downstream` follows until
    the run is done; then exactly CHAOS_KILLS kills landed in the planned stages, no unit finished twice (the
    ledgers) and every output equals the local run's by content."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "tiny.toml", tiny_settings(tmp_path / "run", aoi))
    start = time.monotonic()
    result = srpipe("submit", "all", str(config), "--profile", str(_profile(tmp_path)))
    assert time.monotonic() - start < 60, "submit must return at once, not wait for the jobs"
    assert len(_job_ids(result.stdout)) == 9, result.stdout  # one job or array per stage of the chain
    run, local = tmp_path / "run", tiny_run.parent / "run"
    chaos = {"kills_landed": 0, "kills_missed": [], "stages_hit": {}, "seen": {}, "killed": {}}
    rng = random.Random(CHAOS_SEED)
    plan = _chaos_plan(rng)
    planned_stages = {stage for stage, ordinals in plan.items() if ordinals}
    resubmits = 0
    _kill_while_active(run, plan, rng, chaos)
    while (stage := _first_unfinished(run)) is not None:
        assert resubmits < 8, (chaos, srpipe("status", str(run), check=False).stdout)
        srpipe("resubmit", str(run), stage, "--downstream")
        resubmits += 1
        _kill_while_active(run, plan, rng, chaos)
    srpipe("resubmit", str(run), "evaluate")  # nothing to submit; like every locked command it sweeps this host's
    # temporaries whose writer is dead (the killed tasks ran here; another node's are left to a command run there)
    left = [str(p) for p in run.rglob("*") if ".tmp-" in p.name]
    ledgers = {s: Counter((run / f"_slurm/{s}/ledger.txt").read_text().split()[::2]) for s in ARRAYS}
    mine, theirs = content_sums(run), content_sums(local)
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    counts = {k: chaos[k] for k in ("kills_landed", "kills_missed", "stages_hit")} | {"resubmits": resubmits}
    counts |= {"units_duplicated": sum(n - 1 for c in ledgers.values() for n in c.values())}
    counts |= {"differing_outputs": len(differing), "outputs_compared": len(mine), "seed": CHAOS_SEED}
    counts |= {"temporary_files_left": len(left)}
    counts |= {"seconds": round(time.monotonic() - start, 1)}
    print(f"chaos on Slurm: {json.dumps(counts)}")
    write_faults_result("chaos_slurm", counts)
    assert counts["kills_landed"] == CHAOS_KILLS and set(counts["stages_hit"]) == planned_stages, (counts, plan)
    assert {s: len(c) for s, c in ledgers.items()} == {"download": 6, "curate": 6, "infer": 6}, ledgers
    assert (counts["units_duplicated"], differing, left) == (0, [], []), (counts, differing[:10], left)


def test_scancelled_array_task_shows_failed_and_resubmit_completes_without_duplicates(tmp_path: Path):
    """A task killed with scancel leaves its tiles failed in status; resubmit runs only those; none runs twice."""
    run = fresh_run(tmp_path)
    profile = slurm_profile(tmp_path, tiles_per_task=2, array_parallelism=1)
    ids = job_ids(srpipe("submit", "download", str(run), "--profile", str(profile)).stdout)
    first = f"{ids[0]}_0"
    end = time.monotonic() + 300
    while (
        "RUNNING"
        not in subprocess.run(["squeue", "-h", "-j", first, "-o", "%T"], capture_output=True, text=True).stdout
    ):
        assert time.monotonic() < end, "the first array task never started"
        time.sleep(0.5)
    # SIGKILL at once: a plain scancel sends SIGTERM, which submitit ignores for KillWait, and the tiles may finish
    subprocess.run(["scancel", "--signal=KILL", "--full", first], check=True)
    subprocess.run(["scancel", f"{ids[0]}_1"], check=True)  # and one still queued: its tiles never start
    wait_jobs(ids)
    status = srpipe("status", str(run), check=False)
    assert status.returncode == 1, status.stdout
    killed = {
        line.split()[2].rstrip(":") for line in status.stdout.splitlines() if line.startswith("  FAILED download")
    }
    assert "before the unit finished (" in status.stdout, status.stdout
    tasks = json.loads((run / "_slurm/submissions.jsonl").read_text().splitlines()[0])["tasks"]
    assert set(tasks[f"{ids[0]}_1"]) <= killed <= set(tasks[first] + tasks[f"{ids[0]}_1"]), status.stdout
    again = job_ids(srpipe("resubmit", str(run), "download").stdout)
    assert again and again != ids
    wait_jobs(again)
    status = srpipe("status", str(run))
    assert re.search(r"^download\s+6\s+6\s+0\s+0\s+0\s", status.stdout, re.MULTILINE), status.stdout  # all done
    ledger = Counter(line.split()[0] for line in (run / "_slurm/download/ledger.txt").read_text().splitlines())
    assert len(ledger) == 6 and set(ledger.values()) == {1}, ledger  # every tile done exactly once
    submitted = [json.loads(s) for s in (run / "_slurm/submissions.jsonl").read_text().splitlines()]
    assert sorted(u for units in submitted[1]["tasks"].values() for u in units) == sorted(killed)  # only those


def test_sbatch_templates_run_the_chain_with_horovod_training(tiny_run: Path, tmp_path: Path):
    """Every template in slurm/ submitted by hand, chained afterok: arrays, reduce, 2-rank Horovod, mosaic array."""
    run = fresh_run(tmp_path)
    env = {**os.environ, **SLURM_ENV, "RUN_DIR": str(run), "SRPIPE_PYTHON": sys.executable, "TILES_PER_TASK": "3"}

    def sbatch(template: str, *args: str, after: str = "") -> str:
        dep = [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"] if after else []
        cmd = ["sbatch", "--parsable", f"--chdir={tmp_path}", *dep, *args, str(REPO / "slurm" / template)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().split(";")[0]

    jobs = [sbatch("tiles-array.sbatch", "--array=0-1", "--export=ALL,STAGE=download")]
    jobs.append(sbatch("tiles-array.sbatch", "--array=0-1", "--export=ALL,STAGE=curate", after=jobs[-1]))
    jobs.append(sbatch("curate-reduce.sbatch", after=jobs[-1]))
    jobs.append(sbatch("train-horovod.sbatch", "--time=20", after=jobs[-1]))
    jobs.append(sbatch("tiles-array.sbatch", "--array=0-1", "--export=ALL,STAGE=infer", after=jobs[-1]))
    jobs.append(sbatch("mosaic.sbatch", "--array=0-0", after=jobs[-1]))  # one zone x one date: one unit
    jobs.append(sbatch("mosaic.sbatch", after=jobs[-1]))  # the catalog and the evaluation
    wait_jobs(jobs, timeout_s=1200)
    states = final_states(jobs)
    assert all(line.endswith("|COMPLETED") for line in states.split()), states
    checksums = rank_checksums(run)
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert mosaic_pixels(run).keys() == mosaic_pixels(tiny_run.parent / "run").keys()
    assert (run / "reports/metrics.json").exists()
