"""Packaged pretrained weights (`<name>.pt` + `<name>.json`, made by `make pretrain`); torch-free lookups."""

from __future__ import annotations

from pathlib import Path

from srpipe.errors import StageError

WEIGHTS_DIR = Path(__file__).resolve().parent


def packaged() -> list[str]:
    """Names of the weights shipped in the package (usable as `train.init_from`)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def weights_path(init_from: str) -> Path:
    """The file `train.init_from` names: a packaged name (e.g. "sample-x4") or a path to a .pt file."""
    if init_from in packaged():
        return WEIGHTS_DIR / f"{init_from}.pt"
    path = Path(init_from)
    if not path.exists():
        names = ", ".join(packaged()) or "none"
        raise StageError(f"train.init_from = {init_from!r} is neither a packaged weights name ({names}) nor a file")
    return path
