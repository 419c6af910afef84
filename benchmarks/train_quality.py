"""Quality benchmark: registered HighRes-Net (every loss on) vs bicubic on the sample's test tiles, cPSNR in dB.

Curates the demo area with the method's 140 patches per label date, trains the delineation net, then HighRes-Net +
ShiftNet, within one wall-clock budget (default 30 min, both trainings together, on this machine's CPU), then scores
every test sample after registration (PROBA-V cPSNR: best integer shift up to 3 label px, brightness-corrected), for
one pass of the model and for its flip/rotation self-ensemble. Writes benchmarks/results/train_quality.json and the
per-term loss curves. Usage: python benchmarks/train_quality.py [--run-dir DIR] [--compare MODEL_PT] [--budget-min 30]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import tomli_w
import torch

from srpipe.config import Config, CurateConfig, ModelConfig, load_config
from srpipe.curate.dataset import ShardDataset, iter_samples, shard_paths
from srpipe.curate.reduce import load_stats, scales
from srpipe.delineation import load_delineation, train_delineation
from srpipe.losses import cpsnr, sr_losses
from srpipe.metrics import masked_psnr
from srpipe.models import ShiftNet, build_model
from srpipe.models.highresnet import bicubic, masked_median
from srpipe.models.trained import TrainedModel, load_model, load_trained, model_dir
from srpipe.train import lr_to_hr_map, train

REPO = Path(__file__).resolve().parents[1]
# In [0, 1] label units the pixel MSE is ~3e-3 and its gradient tiny: at the method's weights (mean matching 10,
# perceptual 0.05) the other terms' gradients dwarf it and SR never leaves bicubic. These weights give each extra term
# a minor share (gradient_shares in the result); mean matching is Huber below 0.02 (see LossConfig).
BENCH_WEIGHTS = {
    "ssim_weight": 1e-3,
    "mean_match_weight": 0.01,
    "mean_match_delta": 0.02,
    "perceptual_weight": 1e-4,
    "shift_reg_weight": 1e-5,
}
RESULTS = REPO / "benchmarks" / "results"


def _prepare(run_dir: Path) -> None:
    """Plan, download and curate the demo area into `run_dir` (the method's 140 patches per label date) unless done."""
    if shard_paths(run_dir / "datasets", "test"):
        return
    settings = tomllib.loads((REPO / "configs" / "demo.toml").read_text())
    settings["plan"]["aoi"] = str(REPO / "configs" / settings["plan"]["aoi"])
    settings["curate"]["patches_per_tile"] = CurateConfig.patches_per_tile
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "benchmark.toml"
    config.write_text(tomli_w.dumps({**settings, "run_dir": str(run_dir)}))
    for stage in ("plan", "download", "curate"):
        subprocess.run([sys.executable, "-m", "srpipe", stage, str(config if stage == "plan" else run_dir)], check=True)


@torch.no_grad()
def score(model: TrainedModel, run_dir: Path, max_shift: int, ensemble: bool) -> dict[str, np.ndarray]:
    """Per test sample: cPSNR and PSNR of SR (one pass, or the flip/rotation self-ensemble) and of bicubic."""
    out: dict[str, list] = {k: [] for k in ("sr_cpsnr", "bic_cpsnr", "sr_psnr", "bic_psnr")}
    for shard in iter_samples(shard_paths(run_dir / "datasets", "test")):
        for i in range(0, len(shard["lr"]), 32):
            lr, m = torch.from_numpy(shard["lr"][i : i + 32]), torch.from_numpy(shard["lr_mask"][i : i + 32])
            hr, hm = torch.from_numpy(shard["hr"][i : i + 32]), torch.from_numpy(shard["hr_mask"][i : i + 32])
            sr, bic = model.super_resolve(lr, m, ensemble), bicubic(masked_median(lr, m), 4).clamp(0, 1)
            out["sr_cpsnr"].append(cpsnr(sr, hr, hm, max_shift))
            out["bic_cpsnr"].append(cpsnr(bic, hr, hm, max_shift))
            out["sr_psnr"].append(masked_psnr(sr, hr, hm))
            out["bic_psnr"].append(masked_psnr(bic, hr, hm))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def gradient_shares(cfg: Config, net: torch.nn.Module, batch_size: int = 32) -> dict[str, float]:
    """Norm of each weighted extra term's gradient in `net`'s parameters / the pixel term's, on training samples."""
    torch.manual_seed(cfg.train.seed)
    data = ShardDataset(shard_paths(cfg.run_path / "datasets", "train"))
    batch = {k: torch.stack([data[i][k] for i in range(batch_size)]) for k in ("lr", "lr_mask", "hr", "hr_mask")}
    shiftnet = ShiftNet(cfg.model.shiftnet_channels, cfg.model.shiftnet_pool).eval()
    delineation, lr_to_hr = load_delineation(cfg), lr_to_hr_map(*scales(load_stats(cfg.run_path)), torch.device("cpu"))
    weights = ("shift_reg_weight", "mean_match_weight", "perceptual_weight", "ssim_weight")

    def grad(**loss_weights: float) -> torch.Tensor:
        net.zero_grad()
        loss_cfg = dataclasses.replace(cfg.loss, **({w: 0.0 for w in weights} | loss_weights))
        sr_losses(loss_cfg, net(batch["lr"], batch["lr_mask"]), batch, shiftnet, delineation, lr_to_hr)[0].backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    pixel = grad()
    return {w: float((grad(**{w: getattr(cfg.loss, w)}) - pixel).norm() / pixel.norm()) for w in weights}


def _summary(s: dict[str, np.ndarray]) -> dict:
    return {
        "sr_cpsnr_db": float(s["sr_cpsnr"].mean()),
        "bicubic_cpsnr_db": float(s["bic_cpsnr"].mean()),
        "gain_cpsnr_db": float((s["sr_cpsnr"] - s["bic_cpsnr"]).mean()),
        "share_sr_beats_bicubic_cpsnr": float((s["sr_cpsnr"] > s["bic_cpsnr"]).mean()),
        "sr_psnr_db": float(s["sr_psnr"].mean()),
        "bicubic_psnr_db": float(s["bic_psnr"].mean()),
        "n_samples": len(s["sr_cpsnr"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/srpipe-train-quality"))
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--delineation-min", type=float, default=2.0)
    parser.add_argument("--compare", type=Path, help="another model.pt to score on the same test samples")
    args = parser.parse_args()
    _prepare(args.run_dir)
    base = load_config(args.run_dir / "config.toml")
    cfg = dataclasses.replace(
        base,
        model=ModelConfig(channels=32, encoder_layers=4, shiftnet_channels=32),  # sized for 2 CPU cores
        loss=dataclasses.replace(base.loss, crop_border_px=8, **BENCH_WEIGHTS),  # 64 px labels: an 8 px border
        delineation=dataclasses.replace(base.delineation, max_minutes=args.delineation_min, epochs=50),
        train=dataclasses.replace(
            base.train,
            name="quality",
            epochs=1000,
            batch_size=16,
            checkpoint_every_steps=0,
            lr_schedule="cosine",
            augment=True,
        ),
    )
    for folder in (model_dir(cfg), args.run_dir / "models" / cfg.delineation.name):
        shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    train_delineation(cfg)
    shares = {"at_init": gradient_shares(cfg, build_model(cfg.model, cfg.source.scale))}
    print("train_quality: gradient norm of each weighted term / the pixel term's, at initialisation:", shares)
    left_min = args.budget_min - (time.perf_counter() - start) / 60
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_minutes=left_min))
    summary = train(cfg)
    budget_used_min = (time.perf_counter() - start) / 60
    model = load_trained(cfg)
    trained = {
        "self_ensemble": _summary(score(model, args.run_dir, cfg.loss.cpsnr_max_shift_px, ensemble=True)),
        "one_pass": _summary(score(model, args.run_dir, cfg.loss.cpsnr_max_shift_px, ensemble=False)),
    }
    shares["trained"] = gradient_shares(cfg, copy.deepcopy(model.net))  # the cached net stays clean
    result = {
        "budget_min": args.budget_min,
        "budget_used_min": round(budget_used_min, 2),
        "machine": f"{os.cpu_count()} CPU cores, shared with other jobs (load average {os.getloadavg()[0]:.1f} at end)",
        "train": summary,
        "settings": {k: dataclasses.asdict(getattr(cfg, k)) for k in ("model", "loss", "train", "curate")},
        "gradient_shares": shares,  # |grad of weight x term| / |grad of the pixel term| in HighRes-Net's parameters
        "registered_model": trained,
    }
    if args.compare:  # another model.pt (e.g. an earlier model), scored on the same test samples
        other = load_model(args.compare)
        result["compared_model"] = {"path": str(args.compare)}
        result["compared_model"] |= _summary(score(other, args.run_dir, cfg.loss.cpsnr_max_shift_px, ensemble=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir(cfg) / "loss_curves.png", RESULTS / "train_quality_loss_curves.png")
    (RESULTS / "train_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
