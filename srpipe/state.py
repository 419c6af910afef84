"""Completion markers and atomic writes: a re-run skips done units; a killed task leaves no half-written output."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from srpipe.layout import RunLayout


def _folder(run_dir: str | Path, stage: str) -> Path:
    return RunLayout(Path(run_dir)).state(stage)


def _marker(run_dir: str | Path, stage: str, unit: str, kind: str) -> Path:
    return _folder(run_dir, stage) / f"{unit}.{kind}"


def is_done(run_dir: Path, stage: str, unit: str) -> bool:
    """True when `unit` of `stage` has a done marker (whether it is still current is the stage registry's call)."""
    return _marker(run_dir, stage, unit, "done").exists()


def done_info(run_dir: Path, stage: str, unit: str) -> dict[str, Any]:
    """What `mark_done` recorded for a finished unit ({} when not done)."""
    path = _marker(run_dir, stage, unit, "done")
    return json.loads(path.read_text()) if path.exists() else {}


def mark_done(run_dir: Path, stage: str, unit: str, info: dict[str, Any] | None = None) -> None:
    """Record `unit` as finished (written last, after its outputs) and clear an earlier failure."""
    write_json(_marker(run_dir, stage, unit, "done"), {"finished_at": time.time(), **(info or {})})
    _marker(run_dir, stage, unit, "failed").unlink(missing_ok=True)


def mark_started(run_dir: Path, stage: str, unit: str, info: dict[str, Any]) -> None:
    """Record that `unit` started on the inputs in `info` (a resumable unit resumes only on the same inputs)."""
    write_json(_marker(run_dir, stage, unit, "started"), {"started_at": time.time(), **info})


def started_info(run_dir: Path, stage: str, unit: str) -> dict[str, Any]:
    """What `mark_started` recorded ({} when never started)."""
    path = _marker(run_dir, stage, unit, "started")
    return json.loads(path.read_text()) if path.exists() else {}


def mark_failed(run_dir: Path, stage: str, unit: str, error: str, log: str = "", log_path: str = "") -> None:
    """Record why `unit` failed (`log`: traceback; `log_path`: the task's log file), so status and resubmit name it."""
    record = {"failed_at": time.time(), "error": error, "log": log, "log_path": log_path}
    write_json(_marker(run_dir, stage, unit, "failed"), record)


def failure_records(run_dir: Path, stage: str) -> dict[str, dict[str, Any]]:
    """{unit: the whole .failed record (error, log, log_path)} of the units of `stage` that failed."""
    folder = _folder(run_dir, stage)
    return {p.name[: -len(".failed")]: json.loads(p.read_text()) for p in sorted(folder.glob("*.failed"))}


def failure_record(run_dir: Path, stage: str, unit: str) -> dict[str, Any]:
    """The .failed record of one unit ({} when it has none)."""
    path = _marker(run_dir, stage, unit, "failed")
    return json.loads(path.read_text()) if path.exists() else {}


def failures(run_dir: Path, stage: str) -> dict[str, str]:
    """{unit: error} of the units of `stage` that failed and have not finished since."""
    folder = _folder(run_dir, stage)
    return {p.name[: -len(".failed")]: json.loads(p.read_text())["error"] for p in sorted(folder.glob("*.failed"))}


def done_units(run_dir: Path, stage: str) -> list[str]:
    """Units of `stage` with a done marker, sorted."""
    folder = _folder(run_dir, stage)
    return sorted(p.name[: -len(".done")] for p in folder.glob("*.done"))


def done_records(run_dir: Path, stage: str) -> dict[str, dict[str, Any]]:
    """{unit: its done record} of every finished unit of `stage`, sorted by unit (one folder listing)."""
    folder = _folder(run_dir, stage)
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as entries:  # scandir and str names: pathlib's glob and sort cost seconds at 16k units
        names = sorted(e.name for e in entries if e.name.endswith(".done") and not e.name.startswith("."))
    records = {}
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            records[name[: -len(".done")]] = json.loads(f.read())
    return records


# `_tmp_name`, and its writers' scratch beside it (`cog.write_cog`: "<temporary>.d")
_TMP = re.compile(r"^\..*\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}(\.[^.]*)?(\.d)?$")


def _tmp_name(path: Path) -> Path:
    """A hidden sibling of `path` that keeps its suffix (GDAL and fiona pick formats by it) and names its writer."""
    return path.with_name(f".{path.stem}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers on this host left under `run_dir`; return them.

    Only files and folders named by `atomic_path` whose writer (host, pid) is this host's and gone are removed: a
    writer alive here, or on another node of a shared file system, keeps its temporary.
    """
    host, removed = socket.gethostname(), []
    for folder, dirs, files in os.walk(run_dir):
        for name in [*dirs, *files]:
            found = _TMP.match(name)
            if not found or found["host"] != host or _alive(int(found["pid"])):
                continue
            path = Path(folder) / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
        dirs[:] = [d for d in dirs if not _TMP.match(d)]
    return removed


# the fault-injection hook: "<glob>[,<glob>...]:<n>:<before|after>" stops this process (SIGSTOP) at its n-th atomic
# write whose path matches a glob, before or after the rename; unset (as users run), it does nothing
PAUSE_ENV = "SRPIPE_PAUSE_AT"
_PAUSE_RULE = re.compile(r"^(?P<globs>.+):(?P<n>[1-9]\d*):(?P<moment>before|after)$")
_paused: Counter[str] = Counter()


def _pause_point(path: Path, moment: str) -> None:
    """Stop this process where SRPIPE_PAUSE_AT names (see PAUSE_ENV): the fault tests SIGKILL it there, so that a
    kill lands at a chosen point of a command's progress on a fast machine and a slow one alike."""
    rule = os.environ.get(PAUSE_ENV)
    if not rule:
        return
    found = _PAUSE_RULE.match(rule)
    if found is None:
        raise ValueError(f"{PAUSE_ENV}={rule!r}: expected '<glob>[,<glob>...]:<n>:<before|after>'; unset it to run")
    if found["moment"] != moment or not any(fnmatch(str(path), g) for g in found["globs"].split(",")):
        return
    _paused[rule] += 1
    if _paused[rule] == int(found["n"]):
        os.kill(os.getpid(), signal.SIGSTOP)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        _pause_point(path, "before")
        if path.is_dir() and tmp.is_dir():
            old = _tmp_name(path)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _pause_point(path, "after")
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(payload: object, path: str | Path) -> None:
    """`torch.save` to a file object at `path`'s temporary: torch then names the archive inside `archive`, not after
    the temporary, so equal payloads give equal bytes (and the SHA-256 a STAC item records stays the same)."""
    import torch

    with open(path, "wb") as f:
        torch.save(payload, f)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_version(path: str | Path) -> tuple[int, int]:
    """(inode, mtime in ns) of `path`: changes whenever an atomic write replaces the file (a cache key)."""
    info = Path(path).stat()
    return info.st_ino, info.st_mtime_ns
