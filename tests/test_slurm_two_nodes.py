"""The two-node Slurm cluster (hpc/slurm-local/up.sh --nodes 2): two hosts, each in a network namespace of its own.

Importable helpers for other tests: TWO_NODE_ENV (merge it into a submitter's environment), two_node_env(),
up_two_nodes(), slurm() and final_states().
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slurm]

NODES = ("srn1", "srn2")  # NodeNames = host names, at 10.77.0.11 and 10.77.0.12 on bridge srbr0
NODE_IFACE = "eth0"  # each node's veth end, in its own network namespace
TWO_NODE_ENV = {
    "SLURM_CONF": "/etc/slurm-2node/slurm.conf",  # every Slurm client (sbatch, srun, sacct, ...) reads this
    # Open MPI refuses to run as root without these; they reach the ranks through srun's --export=ALL.
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}
PYTHON = str(REPO / ".venv/bin/python")
ACTIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


def two_node_env(**extra: str) -> dict[str, str]:
    """This process's environment aimed at the two-node cluster."""
    return {**os.environ, **TWO_NODE_ENV, **extra}


def one_node_env() -> dict[str, str]:
    """This process's environment aimed at the default one-node cluster (/etc/slurm/slurm.conf)."""
    return {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}


def up_two_nodes() -> None:
    """Bring the two-node cluster up (idempotent; ~0.3 s when it is already up)."""
    up = subprocess.run(
        ["bash", str(REPO / "hpc/slurm-local/up.sh"), "--nodes", "2"], capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 0, up.stdout + up.stderr


def slurm(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs) -> str:
    """Run a Slurm command (against the two-node cluster unless `env` says otherwise) and return its stdout."""
    result = subprocess.run(
        args, capture_output=True, text=True, env=env or two_node_env(), timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def final_states(
    job_ids: list[str], expected: int | None = None, steps: bool = False, timeout_s: float = 120
) -> list[dict[str, str]]:
    """sacct's rows (JobID, State, NodeList) for `job_ids` once every one is in a final state.

    slurmdbd records a job's end a moment after it leaves squeue, and an array task can be missing from sacct
    for a second or two: poll until no row is PENDING/RUNNING/... and, with `expected`, until there are that many
    allocation rows (array tasks count one each). `steps` adds the job steps' rows (12.batch, 12.0, ...).
    """
    end = time.monotonic() + timeout_s
    while True:
        allocations_only = [] if steps else ["-X"]
        out = slurm("sacct", "-n", "-P", *allocations_only, "-j", ",".join(job_ids), "-o", "JobID,State,NodeList")
        rows = [dict(zip(("JobID", "State", "NodeList"), line.split("|"), strict=True)) for line in out.splitlines()]
        live = [r for r in rows if r["State"].split()[0] in ACTIVE]
        allocations = [r for r in rows if "." not in r["JobID"]]
        if not live and (expected is None or len(allocations) >= expected):
            return rows
        assert time.monotonic() < end, f"jobs not finished after {timeout_s} s: {rows}"
        time.sleep(0.5)


def hostnames(nodelist: str) -> list[str]:
    """`srn[1-2]` -> ['srn1', 'srn2']."""
    return slurm("scontrol", "show", "hostnames", nodelist).split()


@pytest.fixture(scope="module", autouse=True)
def two_node_cluster() -> None:
    """Bring the two-node cluster up (idempotent); skip when this machine cannot run it."""
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client here; run hpc/slurm-local/install.sh")
    if os.geteuid() != 0:
        pytest.skip("the two-node cluster needs root (network namespaces); run `make services` as root")
    up_two_nodes()


def test_srun_runs_one_task_on_each_host() -> None:
    out = slurm("srun", "--nodes=2", "--ntasks-per-node=1", "sh", "-c", 'echo "$SLURM_JOB_ID $(hostname)"')
    job_ids, hosts = zip(*(line.split() for line in out.splitlines()), strict=True)
    assert sorted(hosts) == list(NODES)
    assert socket.gethostname() not in hosts  # a host name of their own, not the machine's

    rows = final_states([job_ids[0]], steps=True)
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

    rows = final_states([job_id], expected=4)
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
