"""Atomic writes and completion markers."""

import pytest

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
