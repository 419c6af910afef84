"""srpipe on the two-node cluster (hpc/slurm-local/up.sh --nodes 2): arrays over both hosts with local mode's outputs,
and training with one rank on each host, for both backends, over the link between the hosts' network namespaces."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import tomli_w

from srpipe import state
from srpipe.chain import CHAIN
from srpipe.cluster.slurm import submissions
from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config
from tests.helpers import (
    NODE_IFACE,
    NODES,
    TWO_NODE_ENV,
    active_jobs,
    checkpoint_gaps,
    content_sums,
    copy_run,
    hostnames,
    job_ids,
    rank_checksums,
    stopped_processes,
    two_node_env,
    two_node_final_rows,
    write_faults_result,
)

pytestmark = [pytest.mark.slurm, pytest.mark.mpi, pytest.mark.usefixtures("two_node_cluster")]
BACKENDS = ["horovod", "ddp"]


def _profile(tmp_path: Path, **train: object) -> Path:
    """The shipped slurm-2node profile with `train` overrides of its train stage, as a TOML file in tmp_path."""
    data = tomllib.loads((REPO / "hpc/profiles/slurm-2node.toml").read_text())
    data["stages"]["train"].update(train)
    path = tmp_path / "profile.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _wait(ids: list[str], timeout_s: float = 1200) -> list[dict[str, str]]:
    """sacct's final rows (JobID, State, NodeList) of `ids`, array tasks one row each, once squeue holds none of
    them and sacct has a row for each (a job just submitted may be in neither for a moment)."""
    jobs = {i.split("_")[0] for i in ids}
    end = time.monotonic() + timeout_s
    while True:
        queue = ["squeue", "-h", "-r", "-j", ",".join(sorted(jobs)), "-o", "%i"]
        queued = subprocess.run(queue, capture_output=True, text=True, env=two_node_env()).stdout.split()
        rows = [] if queued else two_node_final_rows(ids)
        if rows and {r["JobID"].split("_")[0] for r in rows} == jobs:
            return rows
        assert time.monotonic() < end, f"jobs {sorted(jobs)} not finished after {timeout_s} s: {queued or rows}"
        time.sleep(2)


WORLD_SUM = """
import json, socket, sys, torch
from srpipe.training.ranks import make_world

def counters():  # /proc/net/dev is per network namespace: this host's interfaces only
    for line in open("/proc/net/dev"):
        name, _, fields = line.partition(":")
        if name.strip() == sys.argv[2]:
            return int(fields.split()[0]), int(fields.split()[8])

world = make_world(sys.argv[1])
values = torch.full((int(sys.argv[3]) // 4,), world.rank + 1.0)  # float32: argv[3] bytes
world.sum(torch.zeros(1))
rx0, tx0 = counters()
total = world.sum(values)
world.sum(torch.zeros(1))
rx1, tx1 = counters()
print(json.dumps({"rank": world.rank, "size": world.size, "backend": world.backend, "host": socket.gethostname(),
                  "rx": rx1 - rx0, "tx": tx1 - tx0, "total": total[0].item()}))
world.close()
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_sums_over_the_link_between_the_hosts(tmp_path: Path, backend: str):
    """srpipe's own World, one rank per host (srun): 8 MB summed, and each host's veth carried at least that."""
    payload = 8 << 20
    script = tmp_path / "world_sum.py"
    script.write_text(WORLD_SUM)
    cmd = ["srun", "--mpi=pmix", "--nodes=2", "--ntasks-per-node=1", sys.executable, str(script), backend, NODE_IFACE]
    out = subprocess.run([*cmd, str(payload)], capture_output=True, text=True, env=two_node_env(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ranks = sorted((json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")), key=lambda r: r["rank"])
    assert [(r["rank"], r["size"], r["backend"]) for r in ranks] == [(0, 2, backend), (1, 2, backend)], out.stdout
    assert sorted(r["host"] for r in ranks) == list(NODES)
    for r in ranks:
        assert r["total"] == 3.0 and r["rx"] >= payload and r["tx"] >= payload, r


CHAOS_SEED, CHAOS_KILLS = 26, 4
ARRAYS = ("download", "curate", "infer")  # the chain's array stages: their running tasks are the targets
STAGE_OUTPUTS = {"download": "eopatches", "curate": "curation/tiles", "infer": "predictions"}


def _chaos_plan(rng: random.Random) -> dict[str, list[int]]:
    """{stage: ordinals}: kill the n-th task of `stage` (counted as tasks reach their first write) for each n; a
    seeded pick of CHAOS_KILLS of the first two tasks of each array stage (a later one stands in for a kill that
    missed)."""
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


def _task_of(pid: int) -> str | None:
    """The Slurm task that process `pid` runs for ("<array>_<index>", or the job id of a plain job), from its
    environment; None when it has no Slurm job or has ended."""
    try:
        items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    env = dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID")


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


def _kill_while_active(run: Path, plan: dict[str, list[int]], chaos: dict) -> None:
    """Until none of the run's jobs is queued or running: each array task stops itself at its first write into its
    stage's outputs (srpipe's fault hook, SRPIPE_PAUSE_AT); a planned one is SIGKILLed there, every other is
    continued (SIGCONT). Progress, not wall time, sets the moment: the kill lands inside the task's work on a fast
    machine and a slow one alike."""
    chunks, next_check = _chunks(run), 0.0
    while True:
        if time.monotonic() >= next_check:
            if not active_jobs([j for sub in submissions(run) for j in sub["job_ids"]]):
                break
            next_check = time.monotonic() + 1.0
        for pid in stopped_processes():
            if (task := _task_of(pid)) is not None and task not in chunks:
                chunks = _chunks(run)  # a task that started before its submission was recorded
            if task not in chunks or task in chaos["killed"]:
                continue
            stage = chunks[task][0]
            if task not in chaos["seen"]:
                ordinal = sum(1 for s in chaos["seen"].values() if s == stage)
                chaos["seen"][task] = stage
                if ordinal in plan[stage] and chaos["kills_landed"] + len(chaos["killed"]) < CHAOS_KILLS:
                    _kill_task(task)
                    chaos["killed"][task] = stage
                    continue
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    _count_kills(run, plan, chaos)


def _pause_at_first_write(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """Make each array task of the next submission stop itself at its first write into its stage's outputs, before
    or after the rename (seeded)."""
    globs = ",".join(f"*/{folder}/*" for folder in STAGE_OUTPUTS.values())
    monkeypatch.setenv(state.PAUSE_ENV, f"{globs}:1:{rng.choice(('before', 'after'))}")


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


def _sweep_on_each_host(run: Path) -> int:
    """Remove, on each host, the temporaries of its killed writers (a command sweeps only its own host's)."""
    code = "import sys; from pathlib import Path; from srpipe.state import sweep_temporaries; "
    code += "print(len(sweep_temporaries(Path(sys.argv[1]))))"
    removed = 0
    for node in NODES:
        cmd = ["srun", f"--nodelist={node}", "--nodes=1", "--ntasks=1", sys.executable, "-c", code, str(run)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=two_node_env(), timeout=120, check=True)
        removed += int(out.stdout.split()[-1])
    return removed


@pytest.mark.faults
def test_submit_all_on_two_hosts_under_seeded_task_kills_resubmits_to_the_local_runs_outputs(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`srpipe submit all` to both hosts returns at once; seeded array tasks are SIGKILLed at their first write
    (their processes, then `scancel --signal=KILL`; Slurm cancels their dependants), `srpipe resubmit STAGE
    --downstream` follows until the run is done; then exactly CHAOS_KILLS kills landed in the planned stages, the
    download, curate and infer arrays ran tasks on both hosts, no unit finished twice (the ledgers) and every output
    equals the local run's by content."""
    for key, value in TWO_NODE_ENV.items():  # every Slurm command of srpipe and of this test: the two-node cluster
        monkeypatch.setenv(key, value)
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "tiny.toml", tiny_settings(tmp_path / "run", aoi))
    rng = random.Random(CHAOS_SEED)
    plan = _chaos_plan(rng)
    planned_stages = {stage for stage, ordinals in plan.items() if ordinals}
    chaos = {"kills_landed": 0, "kills_missed": [], "stages_hit": {}, "seen": {}, "killed": {}}
    start = time.monotonic()
    profile = _profile(tmp_path, nodes=1, cpus_per_task=2)  # one training process, as local mode trains
    _pause_at_first_write(monkeypatch, rng)
    result = srpipe("submit", "all", str(config), "--profile", str(profile))
    assert time.monotonic() - start < 60, "submit must return at once, not wait for the jobs"
    assert len(job_ids(result.stdout)) == 9, result.stdout  # one job or array per stage of the chain
    run, local = tmp_path / "run", tiny_run.parent / "run"
    resubmits = 0
    _kill_while_active(run, plan, chaos)
    while (stage := _first_unfinished(run)) is not None:
        assert resubmits < 8, (chaos, srpipe("status", str(run), check=False).stdout)
        _pause_at_first_write(monkeypatch, rng)
        srpipe("resubmit", str(run), stage, "--downstream")
        resubmits += 1
        _kill_while_active(run, plan, chaos)
    swept = _sweep_on_each_host(run)
    left = [str(p) for p in run.rglob("*") if ".tmp-" in p.name]
    ledgers = {s: Counter((run / f"_slurm/{s}/ledger.txt").read_text().split()[::2]) for s in ARRAYS}
    mine, theirs = content_sums(run), content_sums(local)
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    counts = {k: chaos[k] for k in ("kills_landed", "kills_missed", "stages_hit")} | {"resubmits": resubmits}
    counts |= {"units_duplicated": sum(n - 1 for c in ledgers.values() for n in c.values())}
    counts |= {"differing_outputs": len(differing), "outputs_compared": len(mine), "seed": CHAOS_SEED}
    counts |= {"temporaries_swept": swept, "temporary_files_left": len(left)}
    counts |= {"seconds": round(time.monotonic() - start, 1)}
    print(f"chaos on Slurm: {json.dumps(counts)}")
    write_faults_result("chaos_slurm", counts)
    assert counts["kills_landed"] == CHAOS_KILLS and set(counts["stages_hit"]) == planned_stages, (counts, plan)
    assert {s: len(c) for s, c in ledgers.items()} == {"download": 6, "curate": 6, "infer": 6}, ledgers
    assert (counts["units_duplicated"], differing, left) == (0, [], []), (counts, differing[:10], left)
    tasks = [t for sub in submissions(run) if sub["stage"] in ARRAYS for t in sub.get("tasks", {})]
    rows = two_node_final_rows(tasks)
    for stage in ARRAYS:
        arrays = {t.split("_")[0] for sub in submissions(run) if sub["stage"] == stage for t in sub.get("tasks", {})}
        started = [r for r in rows if r["JobID"].split("_")[0] in arrays and r["NodeList"] != "None assigned"]
        hosts = {h for r in started for h in hostnames(r["NodeList"])}  # a task killed there ran there too
        assert hosts == set(NODES), (stage, rows)


TRAIN_EPOCHS = 5  # a cancel or requeue after the first checkpoint (step 2) leaves most of the training to resume


def _train_run(tiny_run: Path, target: Path, backend: str) -> Path:
    """A copy of the finished tiny run with training (and what follows) to do again: TRAIN_EPOCHS epochs, checkpoints
    every 2 steps."""
    run = copy_run(tiny_run.parent / "run", target, clear=("train", "infer", "mosaic", "evaluate"))
    shutil.rmtree(run / "models" / "highresnet")
    config = tomllib.loads((run / "config.toml").read_text())
    config["train"].update(epochs=TRAIN_EPOCHS, checkpoint_every_steps=2, backend=backend)
    (run / "config.toml").write_text(tomli_w.dumps(config))
    return run


def _hosts_and_checksums(run: Path) -> tuple[list[str], list[float]]:
    """Each rank's host and final parameter checksum, rank 0 first."""
    folder = run / "_state" / "train"
    results = [json.loads((folder / "all.done").read_text())]
    results += [json.loads(p.read_text()) for p in sorted(folder.glob("all.rank*.json"))]
    return [r["host"] for r in results], rank_checksums(run)


RESUME_ATOL = 1e-6  # the resumed two-host run against the unbroken one, every tensor of the checkpoints


def _first_checkpoint(run: Path) -> None:
    """Wait until the run's training has written its first checkpoint."""
    checkpoint = run / "models/highresnet/checkpoint.pt"
    end = time.monotonic() + 600
    while not checkpoint.exists():
        assert time.monotonic() < end, f"training of {run.name} stalled before its first checkpoint"
        time.sleep(0.5)


def _sbatch_training(run: Path, tmp_path: Path) -> str:
    """slurm/train-horovod.sbatch on both hosts (one rank each) for `run`; the job id."""
    env = two_node_env(RUN_DIR=str(run), SRPIPE_PYTHON=sys.executable)
    cmd = ["sbatch", "--parsable", f"--chdir={tmp_path}", "--nodes=2", "--ntasks-per-node=1", "--time=20"]
    job = subprocess.run([*cmd, str(REPO / "slurm/train-horovod.sbatch")], capture_output=True, text=True, env=env)
    assert job.returncode == 0, job.stderr
    return job.stdout.strip().split(";")[0]


def _assert_resumed_on_both_hosts(run: Path, log: str, backend: str, unbroken: Path) -> None:
    """The log says it resumed on 2 ranks; a rank ran on each host, in sync; every tensor as the unbroken run's."""
    assert "train: resuming highresnet" in log and f"2 rank(s) ({backend})" in log, log
    hosts, checksums = _hosts_and_checksums(run)
    assert sorted(hosts) == list(NODES) and checksums[0] == checksums[1]
    gaps = checkpoint_gaps(run, unbroken)
    assert max(gaps.values()) <= RESUME_ATOL, (run.name, sorted(gaps.items(), key=lambda kv: -kv[1])[:3])
    assert len((run / "models/highresnet/history.csv").read_text().splitlines()) == 1 + TRAIN_EPOCHS


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_host_training_resumes_exactly_after_a_cancel_and_after_a_requeue(tiny_run, tmp_path, backend):
    """A rank on srn1 and one on srn2, three trainings side by side: one unbroken (submitit); one cancelled after a
    checkpoint and resubmitted (`srpipe resubmit`); one started by slurm/train-horovod.sbatch with --nodes=2 and
    requeued (`scontrol requeue`) after a checkpoint, which the job resumes from. Both broken trainings end with every
    tensor of the unbroken one's final checkpoint."""
    broken, unbroken, requeued = (_train_run(tiny_run, tmp_path / n, backend) for n in ("broken", "unbroken", "sbatch"))
    profile = _profile(tmp_path)
    ids = [job_ids(srpipe("submit", "train", str(r), "--profile", str(profile), env=two_node_env()).stdout)[0]
           for r in (broken, unbroken)]  # fmt: skip
    sbatch_id = _sbatch_training(requeued, tmp_path)  # it starts when the cancel frees a CPU on each host
    _first_checkpoint(broken)
    time.sleep(1)
    subprocess.run(["scancel", ids[0]], check=True, env=two_node_env())
    _wait(ids[:1])
    assert not (broken / "_state/train/all.done").exists()
    again = job_ids(srpipe("resubmit", str(broken), "train", env=two_node_env()).stdout)
    _first_checkpoint(requeued)
    subprocess.run(["scontrol", "requeue", sbatch_id], check=True, env=two_node_env())
    rows = _wait([*again, ids[1], sbatch_id])
    assert all(r["State"] == "COMPLETED" and hostnames(r["NodeList"]) == list(NODES) for r in rows), rows
    log = next((broken / "_slurm/train").glob(f"*/{again[0]}_0_log.out")).read_text()
    _assert_resumed_on_both_hosts(broken, log, backend, unbroken)
    log = (tmp_path / f"srpipe-srpipe-train-{sbatch_id}.out").read_text()
    _assert_resumed_on_both_hosts(requeued, log, backend, unbroken)
