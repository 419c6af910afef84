"""What every benchmarks/results/*.json records beside its figures: the commit measured, whether the tree was dirty,
the machine and when.

Scripts run as `python benchmarks/NAME.py` (benchmarks/ first on sys.path) and import it as `from provenance import
provenance`; they call it when the measurement starts and write `provenance() | figures`. A file that gathers results
measured one by one (a run per key) stamps each and heads the file with `common(parts)`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WATCHED = ("srpipe", "benchmarks", "configs")  # an untracked file here can change what is measured


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _dirty() -> bool:
    """True where tracked files differ from HEAD (staged or not) or untracked files lie under WATCHED."""
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=REPO).returncode != 0
    return changed or bool(_git("ls-files", "--others", "--exclude-standard", "--", *WATCHED))


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:  # the installed version, without importing torch (seconds) into scripts that do not use it
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """{"commit": HEAD's full hash, "dirty": bool, "machine": {cpu, cpus, platform, python, torch}, "measured_at": ISO
    8601 UTC}."""
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": _dirty(),
        "machine": {
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": _version("torch"),
        },
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def common(records: list[dict]) -> dict:
    """{"commit", "dirty"} of `records` (results measured one by one, each with its own provenance) where they all
    agree; else both null with a "provenance" note."""
    states = {(r.get("commit"), r.get("dirty")) for r in records}
    if len(states) == 1 and None not in next(iter(states)):
        commit, dirty = states.pop()
        return {"commit": commit, "dirty": dirty}
    note = "its parts were measured at different commits or tree states (or did not record them): each says its own"
    return {"commit": None, "dirty": None, "provenance": note}
