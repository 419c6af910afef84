"""Training checkpoints, two deep: `checkpoint.pt` and the one before it, `checkpoint.previous.pt`, so that a corrupt
latest checkpoint (a truncated file on a shared file system, a flipped bit) costs one interval, not the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from srpipe import state
from srpipe.errors import StageError

LATEST, PREVIOUS = "checkpoint.pt", "checkpoint.previous.pt"


def _sums(path: Path) -> Path:
    """The SHA-256 recorded beside a checkpoint when it was written (torch's zip format checks no content)."""
    return path.with_name(path.name + ".sha256")


def save_checkpoint(folder: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as `folder`/checkpoint.pt atomically with its SHA-256 beside it; the one it replaces is kept
    as checkpoint.previous.pt (a kill between the renames leaves no checkpoint.pt: the previous one is the latest)."""
    latest, previous = folder / LATEST, folder / PREVIOUS
    with state.atomic_path(latest) as tmp:
        state.save_torch(payload, tmp)
        digest = state.file_sha256(tmp)
        if latest.exists():
            os.replace(latest, previous)
            _sums(previous).unlink(missing_ok=True)
            if _sums(latest).exists():
                os.replace(_sums(latest), _sums(previous))
        state.write_text(_sums(latest), digest)  # before the file it sums: no kill leaves a checkpoint unsummed
    return latest


def _read(path: Path) -> dict[str, Any]:
    """One checkpoint file's payload; StageError naming the file when its sum differs or it cannot be unpickled."""
    import torch

    sums = _sums(path)
    if not sums.exists() or sums.read_text().strip() != state.file_sha256(path):
        raise StageError(f"checkpoint {path} is corrupt (its SHA-256 differs from {sums.name}, or that is missing)")
    try:
        saved = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # torch, pickle and zipfile raise their own kinds for a truncated or altered file
        raise StageError(f"checkpoint {path} is corrupt ({type(exc).__name__}: {exc})") from exc
    if not isinstance(saved, dict) or "model" not in saved:
        raise StageError(f"checkpoint {path} is corrupt (not a training checkpoint)")
    return saved


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The latest readable checkpoint in `folder` (checkpoint.pt, else checkpoint.previous.pt); None when there is none.

    StageError naming both files and the fix when every checkpoint there is corrupt.
    """
    errors = []
    for name in (LATEST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            saved = _read(path)
        except StageError as exc:
            errors.append(str(exc))
            continue
        if errors:
            print(f"train: {errors[0]}; resuming from the one before it, {path}", flush=True)
        return saved
    if errors:
        raise StageError(
            f"{'; '.join(errors)}: delete them (training restarts from the start) and re-run `srpipe train`"
        )
    return None
