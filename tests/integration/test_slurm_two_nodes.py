"""The two-node Slurm cluster (hpc/slurm-local/up.sh --nodes 2): two hosts, each in a network namespace of its own.

Its helpers (two_node_env, up_two_nodes, slurm, two_node_final_rows, hostnames) are in tests/helpers.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import NODE_IFACE, NODES, hostnames, one_node_env, slurm, two_node_final_rows, up_two_nodes

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("two_node_cluster")]

PYTHON = sys.executable  # the venv running the tests, whichever checkout it lives in


def test_srun_runs_one_task_on_each_host() -> None:
    out = slurm("srun", "--nodes=2", "--ntasks-per-node=1", "sh", "-c", 'echo "$SLURM_JOB_ID $(hostname)"')
    job_ids, hosts = zip(*(line.split() for line in out.splitlines()), strict=True)
    assert sorted(hosts) == list(NODES)
    assert socket.gethostname() not in hosts  # a host name of their own, not the machine's

    rows = two_node_final_rows([job_ids[0]], steps=True)
    step = next(r for r in rows if r["JobID"] == f"{job_ids[0]}.0")
    assert step["State"] == "COMPLETED"
    assert hostnames(step["NodeList"]) == list(NODES)


ALLREDUCE = """
import json, socket, sys
import numpy as np
from mpi4py import MPI

def counters():  # /proc/net/dev is per network namespace: this node's interfaces only
    for line in open("/proc/net/dev"):
        name, _, fields = line.partition(":")
        if name.strip() == sys.argv[1]:
            fields = fields.split()
            return int(fields[0]), int(fields[8])
    raise SystemExit(f"no interface {sys.argv[1]}")

comm = MPI.COMM_WORLD
data = np.full(int(sys.argv[2]) // 8, comm.rank + 1.0)  # float64: argv[2] bytes
total = np.empty_like(data)
comm.Barrier()
rx0, tx0 = counters()
comm.Allreduce(data, total)
comm.Barrier()
rx1, tx1 = counters()
print(json.dumps({"rank": comm.rank, "host": socket.gethostname(), "rx": rx1 - rx0, "tx": tx1 - tx0,
                  "total": float(total[0])}))
"""


def test_mpi_allreduce_crosses_the_link(tmp_path: Path) -> None:
    """Two ranks on two hosts allreduce 8 MB: each host's veth counts at least that much both ways (TCP, not shm)."""
    payload = 8 << 20
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    out = slurm("srun", "--mpi=pmix", "--nodes=2", "--ntasks-per-node=1", PYTHON, str(script), NODE_IFACE, str(payload))
    ranks = sorted((json.loads(line) for line in out.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1], out
    assert sorted(r["host"] for r in ranks) == list(NODES)
    for r in ranks:
        assert r["total"] == 3.0  # 1 + 2: both contributions arrived
        assert r["rx"] >= payload and r["tx"] >= payload, r


def test_array_tasks_spread_over_both_hosts(tmp_path: Path) -> None:
    """Four one-node tasks of a whole node's CPUs each: while one runs on a host, the next must take the other."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    script = tmp_path / "task.sh"
    script.write_text(f'#!/bin/sh\nsleep 2\nhostname > {outputs}/task-"$SLURM_ARRAY_TASK_ID"\n')
    cpus = slurm("sinfo", "-h", "-n", NODES[0], "-o", "%c").strip()
    sbatch = ["sbatch", "--parsable", "--array=0-3", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}"]
    job_id = slurm(*sbatch, f"--output={tmp_path}/%A_%a.out", str(script)).strip()

    rows = two_node_final_rows([job_id], expected=4)
    assert sorted(r["JobID"] for r in rows) == [f"{job_id}_{i}" for i in range(4)], rows
    assert {r["State"] for r in rows} == {"COMPLETED"}, rows
    assert {r["NodeList"] for r in rows} == set(NODES), rows
    written = {p.name: p.read_text().strip() for p in outputs.iterdir()}
    assert sorted(written) == [f"task-{i}" for i in range(4)]
    assert written == {f"task-{r['JobID'].split('_')[1]}": r["NodeList"] for r in rows}


def test_one_node_cluster_still_answers() -> None:
    """With the two-node cluster up, the default cluster (no SLURM_CONF) still has its one node and runs jobs."""
    up = subprocess.run(["bash", str(REPO / "hpc/slurm-local/up.sh")], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    up_two_nodes()
    host = socket.gethostname().split(".")[0]
    assert slurm("sinfo", "-h", "-N", "-o", "%N", env=one_node_env()).split() == [host]
    assert slurm("srun", "-N1", "hostname", env=one_node_env()).strip() == host
    assert slurm("sinfo", "-h", "-N", "-o", "%N").split() == list(NODES)
