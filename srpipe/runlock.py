"""The run-directory lock: one `srpipe run` / `submit` / stage command per run directory at a time.

A lock file created with O_EXCL (atomic on local and NFS file systems) holds the owner's host, pid and process start
time; a lock whose owner is gone from this host (dead, or its pid reused) is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from srpipe.errors import SrpipeError

_TAKEOVER_STALE_S = 60.0  # a takeover marker older than this was left by a process killed mid-takeover
_UNREADABLE_STALE_S = 5.0  # an unreadable lock older than this was left by a process killed while writing it


class RunLockedError(SrpipeError):
    """Another srpipe process holds the run directory."""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _age_s(path: Path) -> float:
    """Seconds since `path` was last written (0 when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _owner(command: str) -> dict:
    """This process as a lock owner."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "command": command, "at": time.time()}


def _read(path: Path) -> dict | None:
    """The lock's owner record; None when there is no lock; {} when it cannot be read (being written, or garbage)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_stale(owner: dict) -> bool:
    """True when `owner` ran on this host and that process is gone (its pid dead, or now another process's)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    return _start_time(owner["pid"]) != owner.get("start")


def _try_create(path: Path, owner: dict) -> bool:
    """Create the lock file holding `owner`; False when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(owner))
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: Path, stale: dict) -> None:
    """Remove `path` if it still holds `stale`, one taker at a time (a `.takeover` marker, itself O_EXCL)."""
    marker = path.with_name(path.name + ".takeover")
    if _age_s(marker) > _TAKEOVER_STALE_S:
        marker.unlink(missing_ok=True)
    if not _try_create(marker, _owner("takeover")):
        return  # another process is taking it over: the caller's next try sees its lock
    try:
        if _read(path) == stale:
            path.unlink(missing_ok=True)
    finally:
        marker.unlink(missing_ok=True)


def _describe(path: Path, owner: dict) -> str:
    """The error for a held lock: who holds it, since when, and what to do."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("at", 0)))
    who = f"`{owner.get('command', '?')}` (pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, since {since})"
    return (
        f"run directory {path.parent.parent} is in use by {who}; wait for it to finish, or stop it first "
        f"(if that process is gone from host {owner.get('host', '?')}, delete {path})"
    )


def acquire(path: Path, command: str) -> dict:
    """Take the lock at `path` for `command` (taking over a stale one); RunLockedError naming its owner if held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _owner(command)
    for _ in range(5):  # a few rounds: a stale lock taken over by a racer, a lock file being written
        if _try_create(path, me):
            return me
        owner = _read(path)
        if owner is None:
            continue
        if (owner and is_stale(owner)) or (not owner and _age_s(path) > _UNREADABLE_STALE_S):
            print(f"srpipe: taking over the stale lock {path} ({owner or 'unreadable'}; its owner is gone)", flush=True)
            _take_over(path, owner)
            continue
        if owner:
            raise RunLockedError(_describe(path, owner))
        time.sleep(0.1)  # an owner still writing its record
    owner = _read(path) or {}
    raise RunLockedError(_describe(path, owner))


def release(path: Path, me: dict) -> None:
    """Remove the lock at `path` if it is still `me`'s."""
    if _read(path) == me:
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(path: Path, command: str) -> Iterator[dict]:
    """Hold the lock at `path` for the block (see `acquire`)."""
    me = acquire(path, command)
    try:
        yield me
    finally:
        release(path, me)
