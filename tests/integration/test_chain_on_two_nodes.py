"""srpipe on the two-node cluster (hpc/slurm-local/up.sh --nodes 2): arrays over both hosts with local mode's outputs,
and training with one rank on each host, for both backends, over the link between the hosts' network namespaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config
from tests.helpers import (
    NODE_IFACE,
    NODES,
    checkpoint_gaps,
    copy_run,
    hostnames,
    job_ids,
    mosaic_pixels,
    rank_checksums,
    two_node_env,
    two_node_final_rows,
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


def test_submit_all_runs_arrays_on_both_hosts_and_ends_as_local_mode(tiny_run: Path, tmp_path: Path):
    """The whole chain submitted to two hosts: download, curate and infer tasks ran on both, outputs equal local's."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "tiny.toml", tiny_settings(tmp_path / "run", aoi))
    profile = _profile(tmp_path, nodes=1, cpus_per_task=2)  # one training process, as local mode trains
    result = srpipe("submit", "all", str(config), "--profile", str(profile), env=two_node_env())
    ids = job_ids(result.stdout)
    rows = _wait(ids)
    assert {r["State"] for r in rows} == {"COMPLETED"}, rows
    submissions = [json.loads(line) for line in (tmp_path / "run/_slurm/submissions.jsonl").read_text().splitlines()]
    for stage in ("download", "curate", "infer"):
        arrays = {job.split("_")[0] for s in submissions if s["stage"] == stage for job in s["tasks"]}
        hosts = {h for r in rows if r["JobID"].split("_")[0] in arrays for h in hostnames(r["NodeList"])}
        assert hosts == set(NODES), (stage, rows)
    run, local = tmp_path / "run", tiny_run.parent / "run"
    for tile in sorted(p.name for p in (local / "curation" / "tiles").glob("*.json")):
        assert json.loads((run / "curation/tiles" / tile).read_text()) == json.loads(
            (local / "curation/tiles" / tile).read_text()
        )
    mosaics, expected = mosaic_pixels(run), mosaic_pixels(local)
    assert mosaics.keys() == expected.keys() and mosaics
    for name in expected:
        np.testing.assert_array_equal(mosaics[name], expected[name])


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
