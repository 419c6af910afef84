"""Atomic writes and completion markers."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srpipe import state


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
