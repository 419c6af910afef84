"""Wall time of the whole chain in local mode against `srpipe submit all` on a Slurm profile, on the same config.

`python benchmarks/slurm_vs_local.py [CONFIG] [--profile slurm-local]`: CONFIG defaults to the tests' tiny run
(6 tiles). Both runs start from scratch in a temporary folder; the Slurm time runs from `submit` to the last job's
end, per stage from sacct. Writes benchmarks/results/slurm_vs_local.json; needs hpc/slurm-local/up.sh (or a cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import aoi_geojson, tiny_settings  # noqa: E402 - the tiny config is the tests' own


def _srpipe(*args: str) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "srpipe", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"srpipe {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _config(base: Path, name: str, source: Path | None) -> Path:
    """A copy of `source` (or the tiny config) whose run_dir is base/name."""
    if source is None:
        settings = tiny_settings(base / name, aoi_geojson(base / "aoi.geojson", 440100, 4164100, 443900, 4169900))
    else:
        settings = tomllib.loads(source.read_text())
        settings["run_dir"] = str(base / name)
        if "aoi" in settings.get("plan", {}):
            settings["plan"]["aoi"] = str((source.parent / settings["plan"]["aoi"]).resolve())
    path = base / f"{name}.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


def _wait(ids: list[str]) -> None:
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True, check=True)
        if not queue.stdout.strip():
            return
        time.sleep(1)


def _stage_seconds(ids: dict[str, list[str]]) -> dict[str, float]:
    """Elapsed seconds per stage: first start to last end of its jobs (sacct)."""
    out = {}
    for stage, jobs in ids.items():
        rows = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(jobs), "-o", "Start,End"], capture_output=True, text=True
        ).stdout.split()
        rows = [r for r in rows if "None" not in r and "Unknown" not in r]  # never started (a failed dependency)
        starts = [time.mktime(time.strptime(r.split("|")[0], "%Y-%m-%dT%H:%M:%S")) for r in rows]
        ends = [time.mktime(time.strptime(r.split("|")[1], "%Y-%m-%dT%H:%M:%S")) for r in rows]
        out[stage] = max(ends) - min(starts) if rows else float("nan")
    return out


def main() -> None:
    """Run both, write the JSON, print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", type=Path)
    parser.add_argument("--profile", default="slurm-local")
    args = parser.parse_args()
    measured = provenance()
    with tempfile.TemporaryDirectory(prefix="srpipe-bench-", dir="/tmp") as tmp:
        base = Path(tmp)
        start = time.perf_counter()
        _srpipe("run", str(_config(base, "local", args.config)))
        local_s = time.perf_counter() - start

        start = time.perf_counter()
        printed = _srpipe("submit", "all", str(_config(base, "slurm", args.config)), "--profile", args.profile)
        submit_s = time.perf_counter() - start
        ids = {
            line.split(": ")[0]: line.split(": ")[1].split(", ")
            for line in printed.splitlines()
            if ": " in line and not line.startswith("plan") and line.split(": ")[1][:1].isdigit()
        }
        _wait([j for jobs in ids.values() for j in jobs])
        slurm_s = time.perf_counter() - start
        status = subprocess.run(
            [sys.executable, "-m", "srpipe", "status", str(base / "slurm")], capture_output=True, text=True
        ).stdout
    result = measured | {
        "config": str(args.config or "tests/conftest.py tiny_settings (6 tiles)"),
        "profile": args.profile,
        "local_wall_s": round(local_s, 1),
        "slurm_wall_s": round(slurm_s, 1),
        "slurm_submit_s": round(submit_s, 1),
        "slurm_stage_s": _stage_seconds(ids),
        "slurm_status": status,
    }
    out = REPO / "benchmarks" / "results" / "slurm_vs_local.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
