"""The chaos run (local mode, a process pool): seeded SIGKILLs of `srpipe download` and `srpipe curate` inside their
work (a seeded delay after each run's first finished unit), each followed by a re-run, until the run completes; then
its outputs equal an unbroken run's, no unit ran twice after it was done, and nothing temporary is left (a re-run
sweeps what its killed predecessors left). The counts go to benchmarks/results/faults.json."""

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

import pytest

from srpipe import state
from tests.conftest import REPO, aoi_geojson, tiny_settings, write_config

pytestmark = pytest.mark.faults
SEED, KILLS_PER_STAGE = 25, 3
STAGES = {"download": ["download"], "curate": ["curate", "curate-reduce"]}  # command: the stages it runs
OUTPUTS = ("eopatches", "curation/tiles", "curation/stats.json", "datasets")


def _content_sums(run: Path) -> dict[str, str]:
    """{path: SHA-256} of the stages' outputs (a .gz by its data: its header holds the time it was written)."""
    sums = {}
    for top in OUTPUTS:
        for path in sorted(p for p in [run / top, *(run / top).rglob("*")] if p.is_file()):
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            sums[str(path.relative_to(run))] = hashlib.sha256(data).hexdigest()
    return sums


def _finished(run: Path) -> dict[tuple[str, str], float]:
    """{(stage, unit): finished_at} of every done marker."""
    stages = [s for group in STAGES.values() for s in group]
    return {(s, u): r["finished_at"] for s in stages for u, r in state.done_records(run, s).items()}


def _command(config: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-m", "srpipe", name, str(config)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill_after_progress(proc: subprocess.Popen, run: Path, before: dict, delay_s: float) -> str | None:
    """SIGKILL the command's process group `delay_s` after its first new done marker; return the stage that made
    it (None when the command ended first). Progress, not wall time, sets the moment: it lands inside the work on
    a fast machine and a slow one alike."""
    while proc.poll() is None:
        new = [stage for (stage, unit), t in _finished(run).items() if before.get((stage, unit)) != t]
        if new:
            time.sleep(delay_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return new[0] if proc.wait() == -signal.SIGKILL else None
        time.sleep(0.02)
    return None


def _chaos(config: Path, run: Path, rng: random.Random) -> dict:
    """Run each command, killing it (whole process group) at seeded moments in its work, then re-run it to the end."""
    counts = {"kills_injected": 0, "stages_hit": {}, "reruns_needed": 0, "units_duplicated": 0}
    for name in STAGES:
        for _ in range(KILLS_PER_STAGE):
            before = _finished(run)
            hit = _kill_after_progress(_command(config, name), run, before, rng.uniform(0.0, 0.4))
            if hit:
                counts["kills_injected"] += 1
                counts["stages_hit"][hit] = counts["stages_hit"].get(hit, 0) + 1
            after = _finished(run)
            counts["units_duplicated"] += sum(1 for k, t in before.items() if after.get(k) != t)
            counts["reruns_needed"] += 1
        before = _finished(run)
        proc = _command(config, name)
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-3000:]
        counts["units_duplicated"] += sum(1 for k, t in before.items() if _finished(run).get(k) != t)
    return counts


def test_seeded_kills_across_download_and_curate_lose_duplicate_and_alter_nothing(tmp_path, tiny_run):
    start = time.perf_counter()
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "chaos.toml", tiny_settings(tmp_path / "run", aoi))
    run, unbroken = tmp_path / "run", tiny_run.parent / "run"
    subprocess.run([sys.executable, "-m", "srpipe", "plan", str(config)], check=True, capture_output=True)
    counts = _chaos(config, run, random.Random(SEED))
    mine, theirs = _content_sums(run), _content_sums(unbroken)
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    lost = [
        (s, u) for s in ("download", "curate") for u in state.done_units(unbroken, s) if not state.is_done(run, s, u)
    ]
    left = [str(p) for p in run.rglob("*") if ".tmp-" in p.name or p.name.endswith((".takeover", "run.lock"))]
    counts |= {"units_lost": len(lost), "differing_outputs": len(differing), "temporary_files_left": len(left)}
    counts |= {"outputs_compared": len(mine), "seed": SEED, "seconds": round(time.perf_counter() - start, 1)}
    print(f"chaos: {json.dumps(counts)}")
    _write_result(counts)
    assert counts["kills_injected"] >= len(STAGES) * 2, counts
    assert (lost, differing, left, counts["units_duplicated"]) == ([], [], [], 0), (counts, left)


def _write_result(counts: dict) -> None:
    """benchmarks/results/faults.json: the machine, the commit and the chaos counts."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    record = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "commit": commit.stdout.strip(),
        "chaos_local": counts,
    }
    state.write_json(REPO / "benchmarks" / "results" / "faults.json", record)
