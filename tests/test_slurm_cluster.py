"""The Slurm launch layer on the real local cluster (hpc/slurm-local/up.sh): arrays, kills, resubmit, Horovod.

Ranks that train in sync via submitit and resume after a cancel, for both backends: tests/test_cluster_two_nodes.py
(test_a_rank_on_each_host_trains_in_sync_and_resumes_exactly_after_cancel), one rank on each of two hosts.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from srpipe.chain import CHAIN
from srpipe.cluster.slurm import submissions
from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config
from tests.helpers import (
    SLURM_ENV,
    final_states,
    fresh_run,
    job_ids,
    mosaic_pixels,
    rank_checksums,
    slurm_profile,
    wait_jobs,
)
from tests.helpers import active_jobs as _active  # the chaos test's names (it is edited elsewhere)
from tests.helpers import job_ids as _job_ids
from tests.helpers import slurm_profile as _profile
from tests.test_faults_chaos import _content_sums, write_faults_result

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
CHAOS_SEED, CHAOS_KILLS = 26, 4
ARRAYS = ("download", "curate", "infer")  # the chain's array stages: their running tasks are the targets


def _running_tasks(run: Path) -> dict[str, str]:
    """{task id: stage} of the run's array tasks that squeue shows RUNNING now."""
    ids = ",".join(sorted({j for sub in submissions(run) for j in sub["job_ids"]}))
    out = subprocess.run(["squeue", "-h", "-r", "-j", ids, "-o", "%i|%T|%j"], capture_output=True, text=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    return {task: name.removeprefix("srpipe-") for task, st, name in rows if st == "RUNNING" and "_" in task}


def _kill_while_active(run: Path, rng: random.Random, counts: dict) -> None:
    """Until none of the run's jobs is queued or running: SIGKILL running array tasks at seeded moments (each task
    first seen running is a target with probability 1/2, killed a seeded 0.5-4 s later) while kills remain."""
    first_seen: dict[str, float] = {}
    targets: dict[str, float] = {}
    while _active([j for sub in submissions(run) for j in sub["job_ids"]]):
        for task, stage in _running_tasks(run).items():
            if task not in first_seen and stage in ARRAYS:
                first_seen[task] = time.monotonic()
                if counts["kills_injected"] + len(targets) < CHAOS_KILLS and rng.random() < 0.5:
                    targets[task] = time.monotonic() + rng.uniform(0.5, 4.0)
            if task in targets and time.monotonic() >= targets[task]:
                subprocess.run(["scancel", "--signal=KILL", "--full", task], check=True)
                del targets[task]
                counts["kills_injected"] += 1
                counts["stages_hit"][stage] = counts["stages_hit"].get(stage, 0) + 1
        time.sleep(0.3)


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
    """`srpipe submit all` returns at once; running array tasks are SIGKILLed at seeded moments (`scancel
    --signal=KILL`, their dependants cancelled by Slurm), `srpipe resubmit STAGE --downstream` follows until the run
    is done; then no unit finished twice (the ledgers) and every output equals the local run's by content."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "tiny.toml", tiny_settings(tmp_path / "run", aoi))
    start = time.monotonic()
    result = srpipe("submit", "all", str(config), "--profile", str(_profile(tmp_path)))
    assert time.monotonic() - start < 60, "submit must return at once, not wait for the jobs"
    assert len(_job_ids(result.stdout)) == 9, result.stdout  # one job or array per stage of the chain
    run, local = tmp_path / "run", tiny_run.parent / "run"
    counts = {"kills_injected": 0, "stages_hit": {}, "resubmits": 0}
    rng = random.Random(CHAOS_SEED)
    _kill_while_active(run, rng, counts)
    while (stage := _first_unfinished(run)) is not None:
        assert counts["resubmits"] < 8, (counts, srpipe("status", str(run), check=False).stdout)
        srpipe("resubmit", str(run), stage, "--downstream")
        counts["resubmits"] += 1
        _kill_while_active(run, rng, counts)
    srpipe("resubmit", str(run), "evaluate")  # nothing to submit; like every locked command it sweeps this host's
    # temporaries whose writer is dead (the killed tasks ran here; another node's are left to a command run there)
    left = [str(p) for p in run.rglob("*") if ".tmp-" in p.name]
    ledgers = {s: Counter((run / f"_slurm/{s}/ledger.txt").read_text().split()[::2]) for s in ARRAYS}
    mine, theirs = _content_sums(run), _content_sums(local)
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    counts |= {"units_duplicated": sum(n - 1 for c in ledgers.values() for n in c.values())}
    counts |= {"differing_outputs": len(differing), "outputs_compared": len(mine), "seed": CHAOS_SEED}
    counts |= {"temporary_files_left": len(left)}
    counts |= {"seconds": round(time.monotonic() - start, 1)}
    print(f"chaos on Slurm: {json.dumps(counts)}")
    write_faults_result("chaos_slurm", counts)
    assert counts["kills_injected"] >= 3 and len(counts["stages_hit"]) >= 2, counts
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
    mosaics, expected = mosaic_pixels(tmp_path / "slurm"), mosaic_pixels(tmp_path / "local")
    assert mosaics.keys() == expected.keys() == {"demo_2016-10-31_32618.tif"}
    np.testing.assert_array_equal(mosaics["demo_2016-10-31_32618.tif"], expected["demo_2016-10-31_32618.tif"])


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
