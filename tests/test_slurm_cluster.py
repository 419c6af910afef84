"""The Slurm launch layer on the real local cluster (hpc/slurm-local/up.sh): arrays, kills, resubmit, Horovod."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tomli_w

from srpipe.chain import CHAIN
from srpipe.cluster.slurm import submissions
from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config
from tests.test_faults_chaos import _content_sums, write_faults_result

pytestmark = pytest.mark.slurm
ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    """Bring the local cluster up (idempotent); skip when this machine cannot run it."""
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client here; run hpc/slurm-local/install.sh")
    os.environ.update(ENV)
    up = subprocess.run(["bash", str(REPO / "hpc/slurm-local/up.sh")], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr


def _profile(tmp_path: Path, train_tasks: int = 1, **top: object) -> Path:
    """The slurm-local profile with `top` overrides and `train_tasks` Horovod ranks, as a TOML file in tmp_path."""
    data = tomllib.loads((REPO / "hpc/profiles/slurm-local.toml").read_text())
    data.update(top)
    data["stages"]["train"] = {
        **data["stages"]["train"],
        "tasks_per_node": train_tasks,
        "cpus_per_task": 3 - train_tasks,
    }
    path = tmp_path / "profile.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _job_ids(stdout: str) -> list[str]:
    """Job ids from the `stage: 12, 13` lines that `srpipe submit` prints."""
    ids = []
    for line in stdout.splitlines():
        stage, _, jobs = line.partition(": ")
        if stage in CHAIN and jobs[:1].isdigit():
            ids += jobs.split(", ")
    return ids


def _active(job_ids: list[str]) -> list[str]:
    ids = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    out = subprocess.run(["squeue", "-h", "-r", "-j", ids, "-o", "%i %T"], capture_output=True, text=True).stdout
    return [
        line for line in out.splitlines() if line.split()[-1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
    ]


def wait_jobs(job_ids: list[str], timeout_s: float = 900) -> None:
    """Wait until none of `job_ids` (arrays included) is queued or running."""
    end = time.monotonic() + timeout_s
    while _active(job_ids):
        assert time.monotonic() < end, f"jobs still active after {timeout_s} s: {_active(job_ids)}"
        time.sleep(2)


def final_states(job_ids: list[str], timeout_s: float = 120) -> str:
    """sacct's `JobID|State` lines once every job has ended (slurmdbd records an end a moment after squeue)."""
    end = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"], capture_output=True, text=True
        ).stdout
        live = [line for line in out.split() if line.split("|")[-1] in ("PENDING", "RUNNING", "COMPLETING")]
        if not live or time.monotonic() > end:
            return out
        time.sleep(1)


def _fresh_run(tmp_path: Path, **train: object) -> Path:
    """A planned tiny run in tmp_path (the same settings as the session's local `tiny_run`)."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    settings = tiny_settings(tmp_path / "run", aoi)
    settings["train"].update(train)
    config = write_config(tmp_path / "tiny.toml", settings)
    srpipe("plan", str(config))
    return tmp_path / "run"


def _copy_run(source: Path, target: Path, clear: tuple[str, ...]) -> Path:
    """Copy a finished run to `target` (its config.toml pointing there), forgetting the stages `clear`."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("_slurm"))
    config = tomllib.loads((target / "config.toml").read_text())
    config["run_dir"] = str(target)
    (target / "config.toml").write_text(tomli_w.dumps(config))
    for stage in clear:
        shutil.rmtree(target / "_state" / stage, ignore_errors=True)
    return target


def _mosaic_pixels(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((run / "mosaics").glob("*.tif")):
        with rasterio.open(path) as src:
            out[path.name] = src.read()
    return out


def _rank_checksums(run: Path) -> list[float]:
    """The final parameter checksum of each training rank: rank 0 in the done marker, the others beside it."""
    folder = run / "_state" / "train"
    lead = json.loads((folder / "all.done").read_text())
    others = [json.loads(p.read_text()) for p in sorted(folder.glob("all.rank*.json"))]
    assert lead["ranks"] == 1 + len(others)
    return [lead["param_checksum"], *(o["param_checksum"] for o in others)]


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
    """SIGKILL every process of the array task `task` ("<array>_<index>") on this host at once, found by its Slurm
    environment, then `scancel --signal=KILL --full` it: scancel alone takes longer than a tiny task's work."""
    array, index = task.split("_")
    marks = {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={index}".encode()}
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
    mine, theirs = _content_sums(run), _content_sums(local)
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


def test_submit_all_on_the_demo_config_gives_the_same_mosaic_as_local_mode(tmp_path: Path):
    """The demo config (16 tiles; its time caps off, so that training is reproducible): Slurm chain == `srpipe run`.

    Cheaper than the demo where the size does not matter to the comparison: 20 patches per label date (not 140), one
    pass instead of the 8-view ensemble, a 5 s downstream test; every stage, tile and setting else is the demo's.
    """
    demo = tomllib.loads((REPO / "configs/demo.toml").read_text())
    demo["plan"]["aoi"] = str(REPO / "configs" / demo["plan"]["aoi"])
    demo["curate"].update(patches_per_tile=20)
    demo["train"].update(max_minutes=0.0, epochs=1)
    demo["delineation"].update(max_minutes=0.0, epochs=1)
    demo["infer"].update(self_ensemble=False)
    demo["evaluate"] = {"downstream_budget_s": 5.0}  # the downstream test's nets: seconds, not the demo's minute
    local = write_config(tmp_path / "local.toml", {**demo, "run_dir": str(tmp_path / "local")})
    slurm = write_config(tmp_path / "slurm.toml", {**demo, "run_dir": str(tmp_path / "slurm")})
    ids = _job_ids(srpipe("submit", "all", str(slurm), "--profile", str(_profile(tmp_path))).stdout)
    srpipe("run", str(local))  # meanwhile: the outputs are deterministic, so sharing the CPUs changes nothing
    wait_jobs(ids, timeout_s=1800)
    assert " FAILED " not in srpipe("status", str(tmp_path / "slurm")).stdout
    mosaics, expected = _mosaic_pixels(tmp_path / "slurm"), _mosaic_pixels(tmp_path / "local")
    assert mosaics.keys() == expected.keys() == {"demo_2016-10-31_32618.tif"}
    np.testing.assert_array_equal(mosaics["demo_2016-10-31_32618.tif"], expected["demo_2016-10-31_32618.tif"])


def test_scancelled_array_task_shows_failed_and_resubmit_completes_without_duplicates(tmp_path: Path):
    """A task killed with scancel leaves its tiles failed in status; resubmit runs only those; none runs twice."""
    run = _fresh_run(tmp_path)
    profile = _profile(tmp_path, tiles_per_task=2, array_parallelism=1)
    ids = _job_ids(srpipe("submit", "download", str(run), "--profile", str(profile)).stdout)
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
    again = _job_ids(srpipe("resubmit", str(run), "download").stdout)
    assert again and again != ids
    wait_jobs(again)
    status = srpipe("status", str(run))
    assert re.search(r"^download\s+6\s+6\s+0\s+0\s+0\s", status.stdout, re.MULTILINE), status.stdout  # all done
    ledger = Counter(line.split()[0] for line in (run / "_slurm/download/ledger.txt").read_text().splitlines())
    assert len(ledger) == 6 and set(ledger.values()) == {1}, ledger  # every tile done exactly once
    submitted = [json.loads(s) for s in (run / "_slurm/submissions.jsonl").read_text().splitlines()]
    assert sorted(u for units in submitted[1]["tasks"].values() for u in units) == sorted(killed)  # only those


@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_two_ranks_via_submitit_stay_in_sync_and_resume_after_cancel(tiny_run: Path, tmp_path: Path, backend: str):
    """2 ranks (srun --mpi=pmix) of either backend train in sync; cancelled after a checkpoint, resubmit resumes."""
    run = _copy_run(tiny_run.parent / "run", tmp_path / "run", clear=("train", "infer", "mosaic", "evaluate"))
    shutil.rmtree(run / "models" / "highresnet")
    config = tomllib.loads((run / "config.toml").read_text())
    config["train"].update(epochs=10, checkpoint_every_steps=2, backend=backend)
    (run / "config.toml").write_text(tomli_w.dumps(config))
    profile = _profile(tmp_path, train_tasks=2)
    ids = _job_ids(srpipe("submit", "train", str(run), "--profile", str(profile)).stdout)
    checkpoint = run / "models/highresnet/checkpoint.pt"
    end = time.monotonic() + 600
    while not checkpoint.exists():
        assert time.monotonic() < end and _active(ids), "training ended or stalled before its first checkpoint"
        time.sleep(0.5)
    time.sleep(1)
    subprocess.run(["scancel", ids[0]], check=True)
    wait_jobs(ids)
    assert not (run / "_state/train/all.done").exists()
    again = _job_ids(srpipe("resubmit", str(run), "train").stdout)
    wait_jobs(again)
    log = next((run / "_slurm/train").glob(f"*/{again[0]}_0_log.out")).read_text()
    assert "train: resuming highresnet" in log and f"2 rank(s) ({backend})" in log, log
    checksums = _rank_checksums(run)
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # the ranks ended with identical weights
    history = (run / "models/highresnet/history.csv").read_text().splitlines()
    assert len(history) == 1 + 10  # header + every epoch once: resumed, not restarted


def test_sbatch_templates_run_the_chain_with_horovod_training(tiny_run: Path, tmp_path: Path):
    """Every template in slurm/ submitted by hand, chained afterok: arrays, reduce, 2-rank Horovod, mosaic array."""
    run = _fresh_run(tmp_path)
    env = {**os.environ, **ENV, "RUN_DIR": str(run), "SRPIPE_PYTHON": sys.executable, "TILES_PER_TASK": "3"}

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
    checksums = _rank_checksums(run)
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert _mosaic_pixels(run).keys() == _mosaic_pixels(tiny_run.parent / "run").keys()
    assert (run / "reports/metrics.json").exists()
