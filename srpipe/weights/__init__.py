"""Packaged pretrained weights (`<name>.pt` + `<name>.json`, made by `make pretrain`); torch-free lookups."""

from __future__ import annotations

from pathlib import Path

from srpipe.config import Config
from srpipe.errors import StageError

WEIGHTS_DIR = Path(__file__).resolve().parent


def packaged() -> list[str]:
    """Names of the weights shipped in the package (usable as `train.init_from`)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def weights_path(name: str, key: str = "train.init_from") -> Path:
    """The file a weights setting (`key`: `train.init_from`, `infer.model`) names: a packaged name (e.g. "sample-x4")
    or a path to a .pt file; StageError naming the key otherwise."""
    if name in packaged():
        return WEIGHTS_DIR / f"{name}.pt"
    path = Path(name)
    if not path.is_file():
        names = ", ".join(packaged()) or "none"
        raise StageError(f"{key} = {name!r} is neither a packaged weights name ({names}) nor a .pt file")
    return path


def inference_weights(cfg: Config) -> Path:
    """The weights `srpipe infer` runs: `infer.model`'s file when set, else the run's `models/<train.name>/model.pt`."""
    if cfg.infer.model:
        return weights_path(cfg.infer.model, "infer.model")
    return cfg.layout.model(cfg.train.name) / "model.pt"
