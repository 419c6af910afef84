"""Chaos benchmark: runs the two chaos tests (local mode and Slurm) and records their counts with the commit measured.

The tests themselves write no tracked file; this script sets $SRPIPE_FAULTS_RESULT so that each writes its counts
into benchmarks/results/faults.json, then adds the machine, the commit and whether the tree was dirty.
Usage: python benchmarks/faults.py   (as root with the local Slurm cluster up: `make services`)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "faults.json"
TESTS = [
    "tests/test_faults_chaos.py::test_seeded_kills_across_the_whole_chain_lose_duplicate_and_alter_nothing",
    "tests/test_slurm_cluster.py::test_submit_all_under_seeded_task_kills_resubmits_to_the_local_runs_outputs",
]


def _commit() -> tuple[str, bool]:
    """HEAD's short hash and whether the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    return head.stdout.strip(), dirty


def main() -> None:
    commit, dirty = _commit()
    RESULTS.unlink(missing_ok=True)
    env = {**os.environ, "SRPIPE_FAULTS_RESULT": str(RESULTS)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", *TESTS], cwd=REPO, env=env)
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record |= {"machine": platform.node(), "cpus": os.cpu_count(), "commit": commit, "dirty": dirty}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
