"""Memory and time limits and a second start, on the real local cluster: a task Slurm kills over its `mem_gb`, then
one killed at its `time_min`; `srpipe status` names each cause, the fix and the log, and `resubmit` with raised
limits completes the run with every tile done once (the ledger). A second start while the run's tasks are queued is
refused at once."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import tomli_w

from srpipe import state
from srpipe.cluster.slurm import submissions
from tests.conftest import REPO, srpipe
from tests.helpers import fresh_run, job_ids, wait_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.faults, pytest.mark.usefixtures("slurm_cluster")]


def _download_profile(tmp_path: Path, name: str, **download: object) -> Path:
    """The slurm-local profile, all tiles in one array task, with `download` overriding its resources."""
    data = tomllib.loads((REPO / "hpc/profiles/slurm-local.toml").read_text())
    data.update(name=name, tiles_per_task=8, array_parallelism=1)
    setup = download.pop("setup", None)
    if setup:
        data["setup"] = [*data.get("setup", []), *setup]
    data["stages"]["download"] = download
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _failed_lines(run: Path) -> list[str]:
    status = srpipe("status", str(run), check=False)
    assert status.returncode == 1, status.stdout
    return [line for line in status.stdout.splitlines() if line.startswith("  FAILED download")]


def test_tasks_killed_at_their_memory_and_time_limits_are_named_and_resubmit_with_raised_limits_completes(tmp_path):
    run = fresh_run(tmp_path)
    starved = _download_profile(tmp_path, "starved", mem_gb=0.1)  # the task peaks at ~0.25 GB
    ids = job_ids(srpipe("submit", "download", str(run), "--profile", str(starved)).stdout)
    wait_jobs(ids)
    lines = _failed_lines(run)
    assert lines and all("killed over its memory limit; raise mem_gb in the profile" in line for line in lines), lines
    assert all(re.search(r"\(log: \S+_log\.out\)$", line) for line in lines), lines
    # memory raised, but the node is slow (a setup line sleeps past the 1-minute limit) and nothing requeues it
    slow = _download_profile(tmp_path, "slow", mem_gb=2.5, time_min=1, requeue=False, setup=["sleep 150"])
    again = job_ids(srpipe("resubmit", str(run), "download", "--profile", str(slow)).stdout)
    assert again and again != ids
    wait_jobs(again, timeout_s=300)
    lines = _failed_lines(run)
    assert lines and all(
        " TIMEOUT before the unit finished: killed at its time limit; raise time_min" in line for line in lines
    ), lines
    enough = _download_profile(tmp_path, "enough", mem_gb=2.5, time_min=10)
    wait_jobs(job_ids(srpipe("resubmit", str(run), "download", "--profile", str(enough)).stdout))
    status = srpipe("status", str(run))
    assert re.search(r"^download\s+6\s+6\s+0\s+0\s+0\s", status.stdout, re.MULTILINE), status.stdout
    ledger = Counter(line.split()[0] for line in (run / "_slurm/download/ledger.txt").read_text().splitlines())
    assert len(ledger) == 6 and set(ledger.values()) == {1}, ledger  # no tile finished twice, none before the last


def test_a_second_start_while_the_runs_tasks_are_queued_is_refused_at_once_and_runs_nothing(tmp_path):
    run = fresh_run(tmp_path)
    held = _download_profile(tmp_path, "held", setup=["sleep 300"])  # its task stays queued or running
    ids = job_ids(srpipe("submit", "download", str(run), "--profile", str(held)).stdout)
    try:
        for argv in (
            ["run", str(run)],
            ["submit", "download", str(run), "--profile", str(held)],
            ["download", str(run)],
        ):
            second = srpipe(*argv, check=False)
            assert second.returncode == 2, (argv, second.stdout, second.stderr)
            assert f"has Slurm tasks queued or running ({ids[0]}" in second.stderr, second.stderr
            assert "srpipe status" in second.stderr and "scancel" in second.stderr, second.stderr
    finally:
        subprocess.run(["scancel", ids[0]], check=True)
        wait_jobs(ids)
    assert state.done_units(run, "download") == [] and len(submissions(run)) == 1  # nothing ran, nothing queued
