"""Corrupt checkpoints: detected by the SHA-256 recorded at write time; a corrupt latest falls back to the previous."""

from __future__ import annotations

import pytest
import torch

from srpipe.errors import StageError
from srpipe.training.checkpoint import LATEST, PREVIOUS, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.faults


def _save_two(folder):
    """Two checkpoints, steps 1 and 2, as training writes them."""
    for step in (1, 2):
        save_checkpoint(folder, {"model": {"w": torch.full((64,), float(step))}, "step": step})


def test_two_checkpoints_are_kept_and_the_latest_is_loaded(tmp_path):
    _save_two(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PREVIOUS, PREVIOUS + ".sha256", LATEST, LATEST + ".sha256"]
    assert load_checkpoint(tmp_path)["step"] == 2
    assert load_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    _save_two(tmp_path)
    data = bytearray((tmp_path / LATEST).read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10  # inside the tensor data: torch itself would load it without a word
    (tmp_path / LATEST).write_bytes(bytes(data))
    assert load_checkpoint(tmp_path)["step"] == 1
    out = capsys.readouterr().out
    assert (
        f"checkpoint {tmp_path / LATEST} is corrupt" in out
        and f"resuming from the one before it, {tmp_path / PREVIOUS}" in out
    )


def test_every_checkpoint_corrupt_names_them_and_the_command(tmp_path):
    _save_two(tmp_path)
    for name in (LATEST, PREVIOUS):
        (tmp_path / name).write_bytes(b"\x00" * 10)
    with pytest.raises(StageError, match=rf"{PREVIOUS} is corrupt.*delete them .* re-run `srpipe train`"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_model_file_names_the_file_and_the_command_that_rebuilds_it(tmp_path, damage):
    from srpipe.models.trained import load_model

    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(256)}, "model_config": {}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a model" * 10)
    with pytest.raises(StageError, match=rf"model file {path} is corrupt .*re-run `srpipe train`"):
        load_model(path)
