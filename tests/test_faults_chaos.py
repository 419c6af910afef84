"""The chaos run (local mode, a process pool): seeded SIGKILLs of every command of the chain (download, curate,
train-delineation, train, infer, mosaic, evaluate), each landing inside the command's work (a seeded delay after its
first write into the run directory), each followed by a re-run, until the run completes. Then every output (EOPatches,
curated tiles, shards, models, predictions, mosaics, STAC, metrics) equals an unbroken run's by content, no unit ran
twice after it was done, and nothing temporary is left (a re-run sweeps what its killed predecessors left). The counts
go to benchmarks/results/faults.json."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from srpipe import state
from srpipe.chain import CHAIN
from tests.conftest import REPO, aoi_geojson, tiny_settings, write_config

pytestmark = pytest.mark.faults
SEED = 25
# command: (the stages it runs, kills, the longest seeded delay after its first write in s); train checkpoints at
# each epoch end (~8 s each here), evaluate takes ~60 s and restarts whole, mosaic takes 0.3 s
COMMANDS = {
    "download": (["download"], 3, 0.4),
    "curate": (["curate", "curate-reduce"], 3, 0.4),
    "train-delineation": (["train-delineation"], 1, 2.0),
    "train": (["train"], 2, 20.0),
    "infer": (["infer"], 2, 0.5),
    "mosaic": (["mosaic"], 1, 0.1),
    "catalog": (["catalog"], 0, 0.0),
    "evaluate": (["evaluate"], 1, 15.0),
}
OUTPUTS = ("eopatches", "curation/tiles", "curation/stats.json", "datasets", "models", "predictions", "mosaics")
# evaluate's scores are compared by value, to 1e-6 (relative and absolute): on bitwise-equal models and predictions,
# the chaos run's and the unbroken run's scores were measured 2e-6 dB (PSNR) and 6e-8 (SSIM) apart, float32 rounding
SCORES = ("reports/metrics.json", "reports/samples.csv")
VOLATILE = {"seconds", "elapsed_s", "train_s", "history"}  # wall-clock times: they differ between any two runs


def _plain(value: object, run: Path) -> object:
    """`value` without its wall-clock times, the run's folder as BASE, tensors as the SHA-256 of their bytes."""
    if isinstance(value, dict):
        return {str(k): _plain(v, run) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list | tuple):
        return [_plain(v, run) for v in value]
    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.detach().contiguous().numpy().tobytes()).hexdigest()
    return str(value).replace(str(run.parent), "BASE") if isinstance(value, str) else value


def _content(path: Path, run: Path) -> bytes:
    """A file's content as the comparison sees it: .gz by its data (the header holds a time), .pt and .json without
    wall-clock times, text with the run's folder as BASE; plots and the SHA-256 sidecars are not compared."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".pt":
        return json.dumps(_plain(torch.load(path, weights_only=False), run), sort_keys=True).encode()
    if path.suffix == ".json":
        return json.dumps(_plain(json.loads(path.read_text()), run), sort_keys=True).encode()
    if path.suffix in (".csv", ".vrt", ".toml"):
        return path.read_bytes().replace(str(run.parent).encode(), b"BASE")
    return path.read_bytes()


def _content_sums(run: Path) -> dict[str, str]:
    """{path: SHA-256 of its content} of the chain's outputs."""
    sums = {}
    for top in OUTPUTS:
        for path in sorted(p for p in [run / top, *(run / top).rglob("*")] if p.is_file()):
            if path.suffix not in (".png", ".sha256") and path.name != "history.csv":
                sums[str(path.relative_to(run))] = hashlib.sha256(_content(path, run)).hexdigest()
    return sums


def _numbers(value: object) -> list[float]:
    """Every number inside a JSON value, depth first."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


def _scores(run: Path) -> np.ndarray:
    """Every number of evaluate's metrics.json and samples.csv, but wall-clock times and the downstream delineation
    scores (`mcc`: a net trained for `evaluate.downstream_budget_s` of wall time, so not reproducible between any
    two runs, killed or not)."""
    metrics = _plain(json.loads((run / SCORES[0]).read_text()), run)
    metrics.pop("mcc", None)
    samples = pd.read_csv(run / SCORES[1]).select_dtypes("number").to_numpy().ravel().tolist()
    return np.array(_numbers(metrics) + samples, dtype=float)


def _finished(run: Path) -> dict[tuple[str, str], float]:
    """{(stage, unit): finished_at} of every done marker."""
    return {(s, u): r["finished_at"] for s in CHAIN for u, r in state.done_records(run, s).items()}


def _writes(run: Path) -> dict[str, int]:
    """{file: mtime in ns} under the run directory, but its lock (what every command takes first); os.walk, as it
    skips the folders that a rename takes away while it looks."""
    out = {}
    for folder, _, files in os.walk(run):
        for name in files:
            try:
                if not name.endswith(("run.lock", ".takeover")):
                    out[os.path.join(folder, name)] = os.stat(os.path.join(folder, name)).st_mtime_ns
            except FileNotFoundError:  # replaced while we looked
                pass
    return out


def _command(config: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-m", "srpipe", name, str(config)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill_after_progress(proc: subprocess.Popen, run: Path, delay_s: float) -> bool:
    """SIGKILL the command's process group `delay_s` after its first write into the run directory; whether the kill
    landed (False when the command ended first). Progress, not wall time since the start, sets the moment: it lands
    inside the work on a fast machine and a slow one alike."""
    before = _writes(run)
    while proc.poll() is None:
        if _writes(run) != before:
            time.sleep(delay_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return proc.wait() == -signal.SIGKILL
        time.sleep(0.02)
    return False


def _chaos(config: Path, run: Path, rng: random.Random) -> dict:
    """Run each command, killing it (whole process group) at seeded moments in its work, then re-run it to the end."""
    counts = {"kills_injected": 0, "commands_hit": {}, "reruns_needed": 0, "units_duplicated": 0}
    for name, (_, kills, max_delay_s) in COMMANDS.items():
        for _ in range(kills):
            before = _finished(run)
            if _kill_after_progress(_command(config, name), run, rng.uniform(0.0, max_delay_s)):
                counts["kills_injected"] += 1
                counts["commands_hit"][name] = counts["commands_hit"].get(name, 0) + 1
            after = _finished(run)
            counts["units_duplicated"] += sum(1 for k, t in before.items() if after.get(k) != t)
            counts["reruns_needed"] += 1
        before = _finished(run)
        proc = _command(config, name)
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
        counts["units_duplicated"] += sum(1 for k, t in before.items() if _finished(run).get(k) != t)
    return counts


def test_seeded_kills_across_the_whole_chain_lose_duplicate_and_alter_nothing(tmp_path, tiny_run):
    start = time.perf_counter()
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "chaos.toml", tiny_settings(tmp_path / "run", aoi))
    run, unbroken = tmp_path / "run", tiny_run.parent / "run"
    subprocess.run([sys.executable, "-m", "srpipe", "plan", str(config)], check=True, capture_output=True)
    counts = _chaos(config, run, random.Random(SEED))
    mine, theirs = _content_sums(run), _content_sums(unbroken)
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    scores, reference = _scores(run), _scores(unbroken)
    if scores.shape != reference.shape or not np.allclose(scores, reference, rtol=1e-6, atol=1e-6, equal_nan=True):
        differing += list(SCORES)
    lost = [(s, u) for s in CHAIN for u in state.done_units(unbroken, s) if not state.is_done(run, s, u)]
    left = [str(p) for p in run.rglob("*") if ".tmp-" in p.name or p.name.endswith((".takeover", "run.lock"))]
    counts |= {"units_lost": len(lost), "differing_outputs": len(differing), "temporary_files_left": len(left)}
    counts |= {"outputs_compared": len(mine) + len(SCORES), "seed": SEED}
    counts |= {"seconds": round(time.perf_counter() - start, 1)}
    print(f"chaos: {json.dumps(counts)}")
    write_faults_result("chaos_local", counts)
    assert set(counts["commands_hit"]) == {name for name, (_, kills, _) in COMMANDS.items() if kills}, counts
    assert (lost, differing, left, counts["units_duplicated"]) == ([], [], [], 0), (counts, differing[:10], left)


def write_faults_result(key: str, counts: dict) -> None:
    """benchmarks/results/faults.json: the machine, the commit and, under `key`, a chaos run's counts."""
    path = REPO / "benchmarks" / "results" / "faults.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    record |= {"machine": platform.node(), "cpus": os.cpu_count(), "commit": commit.stdout.strip(), key: counts}
    state.write_json(path, record)
