"""The chaos run (local mode, a process pool): seeded SIGKILLs of every command of the chain (download, curate,
train-delineation, train, infer, mosaic, evaluate), each landing inside the command's work (set by its progress:
a seeded delay after a write into the run directory, or a seeded share of the time the stage took in an unbroken
run), each followed by a re-run, until the run completes. Then every output (EOPatches,
curated tiles, shards, models, predictions, mosaics, STAC, metrics) equals an unbroken run's by content, no unit ran
twice after it was done, and nothing temporary is left (a re-run sweeps what its killed predecessors left). The counts
go to benchmarks/results/faults.json when benchmarks/faults.py runs this test (a plain test run writes no tracked
file)."""

from __future__ import annotations

import itertools
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
from tests.helpers import content_sums, plain, write_faults_result

pytestmark = pytest.mark.faults
SEED = 25
# command: (kills, what sets each kill's moment): ("write", file, highest N, longest delay in s) is a seeded delay
# after the command's Nth write of `file` (None: any file) into the run directory; ("share", lo, hi) a seeded share of
# the time the stage took in the unbroken run, from the moment the command holds the run's lock (its work starts), for
# stages that write only at their end.
# train's kills follow an epoch's checkpoint (6 epochs of 3-8 s on 2-core machines), so they resume from it
COMMANDS = {
    "download": (3, ("write", None, 1, 0.4)),
    "curate": (3, ("write", None, 1, 0.4)),
    "train-delineation": (1, ("share", 0.3, 0.8)),
    "train": (2, ("write", "checkpoint.pt", 2, 1.5)),
    "infer": (2, ("write", None, 1, 0.5)),
    "mosaic": (1, ("write", None, 1, 0.1)),
    "catalog": (0, None),
    "evaluate": (1, ("share", 0.3, 0.8)),
}
MISSES_ALLOWED = 6  # kills that land after the command ended are retried; more misses than this fail the test
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


def _stage_seconds(run: Path) -> dict[str, float]:
    """{stage: seconds} of a run made by one `srpipe run`: from the previous stage's last done marker to its own."""
    ends = {s: max((r["finished_at"] for r in state.done_records(run, s).values()), default=None) for s in CHAIN}
    ended = [(s, t) for s, t in ends.items() if t is not None]
    return {s: t - before for (_, before), (s, t) in itertools.pairwise(ended)}


def _wait_for_writes(proc: subprocess.Popen, run: Path, name: str | None, count: int) -> bool:
    """Wait until the command has written a file named `name` (None: any) into the run directory `count` times;
    False when it ended first."""
    seen = _writes(run)
    while proc.poll() is None:
        now = _writes(run)
        written = [k for k, t in now.items() if seen.get(k) != t and (name is None or Path(k).name == name)]
        count, seen = count - bool(written), now
        if count <= 0:
            return True
        time.sleep(0.02)
    return False


def _wait_for_lock(proc: subprocess.Popen, run: Path) -> bool:
    """Wait until the command holds the run's lock (imports done, its work starts); False when it ended first."""
    lock = run / "_state" / "run.lock"
    while proc.poll() is None:
        try:
            if json.loads(lock.read_text()).get("pid") == proc.pid:
                return True
        except (OSError, ValueError):  # no lock yet, or being written
            pass
        time.sleep(0.02)
    return False


def _kill_at(proc: subprocess.Popen, run: Path, arm: tuple, rng: random.Random, seconds: float) -> bool:
    """SIGKILL the command's process group at the seeded moment `arm` sets (see COMMANDS); whether the kill landed
    (False when the command ended first). Progress, not wall time alone, sets it: kills land inside the work on a
    fast machine and a slow one alike."""
    if arm[0] == "write":
        _, name, most, longest = arm
        if not _wait_for_writes(proc, run, name, rng.randint(1, most)):
            return False
        time.sleep(rng.uniform(0.0, longest))
    else:
        if not _wait_for_lock(proc, run):
            return False
        time.sleep(rng.uniform(arm[1], arm[2]) * seconds)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait() == -signal.SIGKILL


def _chaos(config: Path, run: Path, rng: random.Random, seconds: dict[str, float]) -> dict:
    """Run each command, killing it (whole process group) at seeded moments in its work, then re-run it to the end.
    A kill that missed (the command ended first) is tried again on a fresh start, at most MISSES_ALLOWED times."""
    counts = {"kills_injected": 0, "kills_missed": 0, "commands_hit": {}, "reruns_needed": 0, "units_duplicated": 0}
    for name, (kills, arm) in COMMANDS.items():
        landed = 0
        while landed < kills and counts["kills_missed"] <= MISSES_ALLOWED:
            before = _finished(run)
            if _kill_at(_command(config, name), run, arm, rng, seconds.get(name, 0.0)):
                landed += 1
                counts["commands_hit"][name] = counts["commands_hit"].get(name, 0) + 1
            else:
                counts["kills_missed"] += 1
            after = _finished(run)
            counts["units_duplicated"] += sum(1 for k, t in before.items() if after.get(k) != t)
            counts["reruns_needed"] += 1
        counts["kills_injected"] += landed
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
    counts = _chaos(config, run, random.Random(SEED), _stage_seconds(unbroken))
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
