"""The Slurm launch layer on the real local cluster (hpc/slurm-local/up.sh): arrays, kills, resubmit, Horovod.

Ranks that train in sync via submitit and resume after a cancel, for both backends:
tests/integration/test_chain_on_two_nodes.py
(test_two_host_training_resumes_exactly_after_a_cancel_and_after_a_requeue), one rank on each of two hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO, srpipe
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

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


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
