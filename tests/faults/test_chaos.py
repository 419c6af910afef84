"""The chaos run (local mode, a process pool): seeded SIGKILLs of every command of the chain (download, curate,
train-delineation, train, infer, mosaic, evaluate), each followed by a re-run, until the run completes. Each kill lands
at a seeded point of the command's progress: srpipe's fault hook (SRPIPE_PAUSE_AT) stops the command's process at its
n-th atomic write, just before or just after the rename, and this test SIGKILLs the command's whole process group
there; so every planned kill lands inside the work, on a fast machine and a slow one alike. Then every output
(EOPatches, curated tiles, shards, models, predictions, mosaics, STAC, metrics) equals an unbroken run's by content,
no unit ran twice after it was done, and nothing temporary is left (a re-run sweeps what its killed predecessors
left). The counts go to benchmarks/results/faults.json when benchmarks/faults.py runs this test (a plain test run
writes no tracked file)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from srpipe import state
from srpipe.chain import CHAIN
from tests.conftest import aoi_geojson, tiny_settings, write_config
from tests.helpers import content_sums, plain, stopped_processes, write_faults_result

pytestmark = pytest.mark.faults
SEED = 25
# command: (kills, (the writes that count: globs of their paths, the highest n)): each kill stops the command at a
# seeded n-th such write, before or after its rename (seeded too), and kills it there. On 2-core machines a tiny run's
# commands write 12 (download) to 40 (train) times; train's kills follow an epoch's checkpoint (its temporary complete,
# or renamed), so they resume from the one before or from it
COMMANDS = {
    "download": (3, ("*", 4)),
    "curate": (3, ("*", 4)),
    "train-delineation": (1, ("*", 2)),
    "train": (2, ("*/checkpoint.pt", 2)),
    "infer": (2, ("*", 4)),
    "mosaic": (1, ("*", 3)),
    "catalog": (0, None),
    "evaluate": (1, ("*", 4)),
}
MOMENTS = ("before", "after")  # of the rename that publishes the write
MISSES_ALLOWED = 3  # a kill whose command ends first (it had fewer than n such writes left) is retried on a fresh start
# evaluate's scores are compared by value, to 1e-6 relative and 1e-5 absolute: on bitwise-equal models and
# predictions, the chaos run's and the unbroken run's scores were measured up to 4e-6 dB (PSNR) and 1.5e-6 (SSIM of
# a sample) apart, float32 rounding in CPU kernels whose threads sum in no fixed order
SCORES = ("reports/metrics.json", "reports/samples.csv")


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
    metrics = plain(json.loads((run / SCORES[0]).read_text()), run)
    metrics.pop("mcc", None)
    samples = pd.read_csv(run / SCORES[1]).select_dtypes("number").to_numpy().ravel().tolist()
    return np.array(_numbers(metrics) + samples, dtype=float)


def _finished(run: Path) -> dict[tuple[str, str], float]:
    """{(stage, unit): finished_at} of every done marker."""
    return {(s, u): r["finished_at"] for s in CHAIN for u, r in state.done_records(run, s).items()}


def _command(config: Path, name: str, log: Path, pause: str = "") -> subprocess.Popen:
    """Start `srpipe NAME CONFIG` in a process group of its own, stderr to `log`; `pause`: its SRPIPE_PAUSE_AT."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", state.PAUSE_ENV: pause}
    args = [sys.executable, "-m", "srpipe", name, str(config)]
    with log.open("ab") as err:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _kill_at(config: Path, name: str, arm: tuple[str, int], rng: random.Random, log: Path) -> bool:
    """Run the command until the fault hook stops one of its processes at the seeded write `arm` sets (see
    COMMANDS), then SIGKILL its whole process group; whether the kill landed (False: the command ended first)."""
    globs, most = arm
    proc = _command(config, name, log, f"{globs}:{rng.randint(1, most)}:{rng.choice(MOMENTS)}")
    while proc.poll() is None:
        if proc.pid in stopped_processes().values():
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait() == -signal.SIGKILL
        time.sleep(0.01)
    return False


def _chaos(config: Path, run: Path, rng: random.Random, logs: Path) -> dict:
    """Run each command, killing it (whole process group) at seeded points of its work, then re-run it to the end.
    A kill that missed (the command ended first) is tried again on a fresh start, at most MISSES_ALLOWED times."""
    counts = {"kills_injected": 0, "kills_missed": 0, "commands_hit": {}, "reruns_needed": 0, "units_duplicated": 0}
    for name, (kills, arm) in COMMANDS.items():
        landed = 0
        while landed < kills and counts["kills_missed"] <= MISSES_ALLOWED:
            before = _finished(run)
            if _kill_at(config, name, arm, rng, logs / f"{name}.log"):
                landed += 1
                counts["commands_hit"][name] = counts["commands_hit"].get(name, 0) + 1
            else:
                counts["kills_missed"] += 1
            after = _finished(run)
            counts["units_duplicated"] += sum(1 for k, t in before.items() if after.get(k) != t)
            counts["reruns_needed"] += 1
        counts["kills_injected"] += landed
        before = _finished(run)
        proc = _command(config, name, logs / f"{name}.log")
        assert proc.wait(timeout=600) == 0, (logs / f"{name}.log").read_text()[-3000:]
        counts["units_duplicated"] += sum(1 for k, t in before.items() if _finished(run).get(k) != t)
    return counts


def test_seeded_kills_across_the_whole_chain_lose_duplicate_and_alter_nothing(tmp_path, tiny_run):
    start = time.perf_counter()
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "chaos.toml", tiny_settings(tmp_path / "run", aoi))
    run, unbroken = tmp_path / "run", tiny_run.parent / "run"
    subprocess.run([sys.executable, "-m", "srpipe", "plan", str(config)], check=True, capture_output=True)
    counts = _chaos(config, run, random.Random(SEED), tmp_path)
    mine, theirs = content_sums(run), content_sums(unbroken)
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    scores, reference = _scores(run), _scores(unbroken)
    if scores.shape != reference.shape or not np.allclose(scores, reference, rtol=1e-6, atol=1e-5, equal_nan=True):
        differing += list(SCORES)
    lost = [(s, u) for s in CHAIN for u in state.done_units(unbroken, s) if not state.is_done(run, s, u)]
    left = [str(p) for p in run.rglob("*") if ".tmp-" in p.name or p.name.endswith((".takeover", "run.lock"))]
    counts |= {"units_lost": len(lost), "differing_outputs": len(differing), "temporary_files_left": len(left)}
    counts |= {"outputs_compared": len(mine) + len(SCORES), "seed": SEED}
    counts |= {"seconds": round(time.perf_counter() - start, 1)}
    print(f"chaos: {json.dumps(counts)}")
    write_faults_result("chaos_local", counts)
    assert counts["commands_hit"] == {name: kills for name, (kills, _) in COMMANDS.items() if kills}, counts
    assert counts["kills_injected"] == sum(kills for kills, _ in COMMANDS.values()) == 13, counts
    assert (lost, differing, left, counts["units_duplicated"]) == ([], [], [], 0), (counts, differing[:10], left)
