"""Two runs at once: the run-directory lock (a second command fails at once; a dead owner's lock is taken over)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srpipe.config import load_config
from srpipe.runlock import RunLockedError, acquire, is_stale, release, run_lock
from tests.conftest import srpipe

pytestmark = pytest.mark.faults


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_refuses_a_second_owner_and_names_the_first(tmp_path):
    lock = tmp_path / "_state" / "run.lock"
    me = acquire(lock, "srpipe run first")
    with pytest.raises(RunLockedError, match=rf"srpipe run first.*pid {os.getpid()} on host"):
        acquire(lock, "srpipe run second")
    release(lock, me)
    assert not lock.exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    lock = tmp_path / "run.lock"
    with run_lock(lock, "srpipe run old") as old:
        pass
    stale = {**old, "pid": _dead_pid()}
    lock.write_text(json.dumps(stale))
    assert is_stale(stale)
    with run_lock(lock, "srpipe run new") as new:
        assert json.loads(lock.read_text()) == new and new["pid"] == os.getpid()
    assert not lock.exists()


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    lock = tmp_path / "run.lock"
    me = acquire(lock, "srpipe run")
    release(lock, me)
    reused = {**me, "start": "1"}  # this pid, but a process started at another time: the owner is gone
    lock.write_text(json.dumps(reused))
    assert is_stale(reused)
    release(lock, acquire(lock, "srpipe run"))


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": _dead_pid(), "start": "1", "command": "srpipe run"}))
    with pytest.raises(RunLockedError, match=f"host node-elsewhere.*delete {lock}"):
        acquire(lock, "srpipe run")


def test_an_unreadable_lock_is_taken_over_once_it_is_old(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text('{"host": ')  # a process killed while writing its record
    with pytest.raises(RunLockedError):
        acquire(lock, "srpipe run")
    old = time.time() - 60
    os.utime(lock, (old, old))
    release(lock, acquire(lock, "srpipe run"))


def _race(lock: str, barrier, wins) -> None:
    """One racer: wait at the barrier, try the lock, count a win, hold it a moment."""
    barrier.wait()
    try:
        acquire(Path(lock), "srpipe run racer")
    except RunLockedError:
        return
    with wins.get_lock():
        wins.value += 1
    time.sleep(1.0)


def test_of_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid(), "start": "1", "command": "x"}))
    ctx = multiprocessing.get_context("fork")
    barrier, wins = ctx.Barrier(6), ctx.Value("i", 0)
    procs = [ctx.Process(target=_race, args=(str(lock), barrier, wins)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert wins.value == 1


def test_a_second_run_or_submit_on_a_running_run_dir_fails_at_once(tiny_config):
    first = subprocess.Popen(
        [sys.executable, "-m", "srpipe", "run", str(tiny_config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    lock = load_config(tiny_config).layout.lock
    try:
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        for args in (["run", str(tiny_config)], ["submit", "all", str(tiny_config), "--profile", "local"]):
            start = time.perf_counter()
            second = srpipe(*args, check=False)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"pid {first.pid} on host" in second.stderr and "srpipe run" in second.stderr
            assert time.perf_counter() - start < 30  # at once: no waiting for the first run
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # dies holding the lock
        first.wait()
    assert lock.exists()
    taken = srpipe("plan", str(tiny_config))  # a stale lock of a dead srpipe run is taken over
    assert "taking over the stale lock" in taken.stdout and not lock.exists()
