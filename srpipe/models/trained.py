"""A trained HighRes-Net for inference and evaluation: `models/<name>/model.pt` (or `infer.model`'s weights) loaded
once per process."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import torch

from srpipe import state
from srpipe.config import Config, ModelConfig
from srpipe.data.augment import ensemble_views, self_ensemble
from srpipe.data.labelmap import lr_to_hr_map
from srpipe.data.normalise import BandScale
from srpipe.errors import StageError
from srpipe.models.calibration import Calibration
from srpipe.models.consistency import Constraint
from srpipe.models.highresnet import HighResNet, build_model
from srpipe.weights import inference_weights

MODEL_FILE = "model.pt"  # in models/<name>/: the weights with the normalisation they were trained with


def model_dir(cfg: Config) -> Path:
    """Folder of the configured model (`train.name`) in the run directory."""
    return cfg.layout.model(cfg.train.name)


@dataclasses.dataclass
class TrainedModel:
    """A trained model with the normalisation it was trained with."""

    net: HighResNet
    lr_scale: BandScale
    hr_scale: BandScale
    n_frames: int
    scale: int
    constraint: Constraint | None = None  # the run's consistency constraint (None: the one the net was built with)
    calibration: Calibration | None = None  # its intervals' calibration (models/calibration.py), None: uncalibrated

    def forward(self, lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The net's pass under `constraint`: (B, K, 4, h, w) LR-scaled frames, (B, K, h, w) masks -> (B, 4, s*h,
        s*w) label-scaled SR."""
        return self.net(lr, mask, self.constraint)

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor, mask: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
        """(B, K, 4, h, w) LR-scaled frames, (B, K, h, w) clear masks -> (B, 4, s*h, s*w) label-scaled SR (`floor`).

        Frames may leave [0, 1]: the network sees them clipped, the consistency constraint as they are.
        `ensemble`: the mean over the eight flips/rotations (`infer.self_ensemble`).
        """
        sr = self_ensemble(self.forward, lr, mask) if ensemble else self.forward(lr, mask)
        return self.floor(sr)

    def floor(self, sr: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) label-scaled SR clamped below at label value 0 per band; no ceiling (the DN conversion clips).

        Not at the training range's [0, 1]: input darker than the training data (water in another season) would
        come out brighter than it is, a bias the consistency constraint cannot undo.
        """
        zero = -self.hr_scale.low / (self.hr_scale.high - self.hr_scale.low)
        return torch.maximum(sr, torch.from_numpy(zero).to(sr)[:, None, None])

    def label_std(self, views_std: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) std in label-scaled [0, 1] units -> the same std in label units (x the hr_scale band range)."""
        band_range = torch.from_numpy(self.hr_scale.high - self.hr_scale.low).to(views_std)
        return views_std * band_range[:, None, None]


def ensemble_mean_std(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lr: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 4, h, w) frames, (B, K, h, w) masks -> the eight D4 views' mean and their per-pixel std (n - 1), both
    (B, 4, s*h, s*w) in label-scaled units: the self-ensemble and how much its views disagree."""
    views = torch.stack(ensemble_views(net, lr, mask))
    return views.mean(0), views.std(0)


def load_trained(cfg: Config) -> TrainedModel:
    """Load the configured `models/<name>/model.pt` (see `load_model`), with the run's consistency constraint."""
    return _constrained(model_dir(cfg) / MODEL_FILE, cfg.model)


def load_for_inference(cfg: Config) -> TrainedModel:
    """The model `srpipe infer` runs: `infer.model` (a packaged weights name or a .pt path) when set, else the run's
    trained `models/<train.name>/model.pt`; with the run's consistency constraint."""
    return _constrained(inference_weights(cfg), cfg.model)


def _constrained(path: str | Path, settings: ModelConfig) -> TrainedModel:
    """The model in `path` under the constraint the run's [model] section sets: the constraint has no weights, so it
    applies to weights trained without it too. A record of its own around the cached, shared net (left as it is),
    itself loaded once per process while the file and the settings are unchanged."""
    version = _version(path)
    return _under(*version, Constraint.of(settings, _load_model_file(*version).scale))


def load_model(path: str | Path) -> TrainedModel:
    """Load a model.pt in eval mode, once per process while the file is unchanged (so do not train the result)."""
    return _load_model_file(*_version(path))


def _version(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, inode, mtime_ns) of a model file: the key of the caches; StageError when it is missing."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe train` first")
    return (str(path.resolve()), *state.file_version(path))


@functools.lru_cache(maxsize=2)
def _under(path: str, inode: int, mtime_ns: int, constraint: Constraint) -> TrainedModel:
    """The cached model of one version of a model.pt under `constraint`."""
    return dataclasses.replace(_load_model_file(path, inode, mtime_ns), constraint=constraint)


@functools.lru_cache(maxsize=2)
def _load_model_file(path: str, inode: int, mtime_ns: int) -> TrainedModel:
    """The TrainedModel in one version of a model.pt; inode and mtime key the cache: a retrained model is reloaded."""
    try:
        saved = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # torch, pickle and zipfile raise their own kinds for a truncated or altered file
        raise StageError(
            f"model file {path} is corrupt ({type(exc).__name__}: {exc}); rebuild it: delete it and re-run "
            "`srpipe train` (for a run's own model, also delete _state/train/all.done)"
        ) from exc
    torch.set_flush_denormal(True)  # as in training: denormals slow CPU convolutions many times over
    # models saved before `model.padding` were zero-padded, before `model.consistency` unconstrained
    shape = {"padding": "zeros", "consistency": "off", **saved["model_config"]}
    net = build_model(ModelConfig(**shape), saved["scale"])
    net.load_state_dict({k: v.float() for k, v in saved["model"].items()})  # packaged weights are float16
    lr_scale, hr_scale = BandScale.from_json(saved["lr_scale"]), BandScale.from_json(saved["hr_scale"])
    net.set_lr_to_hr(*lr_to_hr_map(lr_scale, hr_scale, torch.device("cpu")))
    net.eval()
    calibration = Calibration.from_json(saved["calibration"]) if "calibration" in saved else None
    return TrainedModel(net, lr_scale, hr_scale, saved["n_frames"], saved["scale"], calibration=calibration)
