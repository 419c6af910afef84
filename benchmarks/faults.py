"""Chaos benchmark: runs the two chaos tests (local mode and Slurm) and records their counts with the commit measured.

The tests themselves write no tracked file; this script sets $SRPIPE_FAULTS_RESULT so that each writes its counts
into benchmarks/results/faults.json, then adds the machine, the commit and whether the tree was dirty.
Usage: python benchmarks/faults.py   (as root with the local Slurm cluster up: `make services`)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "faults.json"
TESTS = [
    "tests/faults/test_chaos.py::test_seeded_kills_across_the_whole_chain_lose_duplicate_and_alter_nothing",
    "tests/integration/test_chain_on_two_nodes.py::"
    "test_submit_all_on_two_hosts_under_seeded_task_kills_resubmits_to_the_local_runs_outputs",
]


def main() -> None:
    measured = provenance()
    RESULTS.unlink(missing_ok=True)
    env = {**os.environ, "SRPIPE_FAULTS_RESULT": str(RESULTS)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", *TESTS], cwd=REPO, env=env)
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record = measured | record
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
