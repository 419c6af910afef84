"""Atomic writes and completion markers."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from srpipe import state
from tests.helpers import stopped_processes


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), state.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "patch"
    target.mkdir()
    (target / "old").write_text("x")
    with state.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["patch"]


def test_done_clears_an_earlier_failure(tmp_path):
    state.mark_failed(tmp_path, "download", "t1", "boom")
    assert state.failures(tmp_path, "download") == {"t1": "boom"}
    state.mark_done(tmp_path, "download", "t1", {"n": 1})
    assert state.failures(tmp_path, "download") == {}
    assert state.is_done(tmp_path, "download", "t1")
    assert state.done_info(tmp_path, "download", "t1")["n"] == 1


def test_sweep_removes_only_the_temporaries_of_dead_writers_on_this_host(tmp_path):
    writer = (
        "import sys, time; from srpipe import state\n"
        "with state.atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.mkdir(); (tmp / 'half').write_text('x'); print(tmp, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / "patch")], stdout=subprocess.PIPE, text=True)
    killed = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    live = state._tmp_name(tmp_path / "tile.tif")
    live.write_text("being written by this process")
    elsewhere = tmp_path / f".tile.tmp-{socket.gethostname()}x-{proc.pid}-0123abcd.tif"
    elsewhere.write_text("another node's writer")
    assert killed.exists()
    assert state.sweep_temporaries(tmp_path) == [killed]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name])


def test_equal_torch_payloads_saved_through_temporaries_have_equal_bytes(tmp_path):
    for name in ("a.pt", "b.pt"):  # two atomic writes: two different temporaries
        with state.atomic_path(tmp_path / name) as tmp:
            state.save_torch({"w": torch.arange(6.0)}, tmp)
    assert state.file_sha256(tmp_path / "a.pt") == state.file_sha256(tmp_path / "b.pt")  # provenance hashes agree


def test_the_fault_hook_stops_a_process_at_the_nth_matching_write_and_rejects_a_bad_rule(tmp_path, monkeypatch):
    code = (
        "import sys; from srpipe import state\n"
        "for i in range(4):\n"
        "    state.write_text(f'{sys.argv[1]}/out/{i}.txt', 'x')\n"
        "    state.write_text(f'{sys.argv[1]}/log', 'y')\n"
    )
    env = {**os.environ, state.PAUSE_ENV: "*/out/*:3:before"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while proc.pid not in stopped_processes() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.pid in stopped_processes()  # stopped at its 3rd write under out/, its temporary complete
        names = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert names[1:] == ["0.txt", "1.txt"] and names[0].startswith(".2.tmp-"), names
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    monkeypatch.setenv(state.PAUSE_ENV, "*/out/*:three:before")
    with pytest.raises(ValueError, match="SRPIPE_PAUSE_AT='\\*/out/\\*:three:before': expected"):
        state.write_text(tmp_path / "out" / "9.txt", "x")
    assert not (tmp_path / "out" / "9.txt").exists() and not list((tmp_path / "out").glob(".9.tmp-*"))
    monkeypatch.delenv(state.PAUSE_ENV)
    state.write_text(tmp_path / "out" / "9.txt", "x")  # unset, as users run: nothing stops
    assert (tmp_path / "out" / "9.txt").read_text() == "x"
