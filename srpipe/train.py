"""Train HighRes-Net on the curated shards; resumable from `models/<name>/checkpoint.pt`; reads top to bottom."""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from srpipe import state
from srpipe.config import Config, ModelConfig
from srpipe.curate.dataset import ShardDataset, shard_paths
from srpipe.curate.normalise import BandScale
from srpipe.curate.reduce import load_stats, scales
from srpipe.errors import StageError
from srpipe.models import HighResNet, build_model
from srpipe.models.highresnet import bicubic, masked_median


def model_dir(cfg: Config) -> Path:
    """Folder of the configured model in the run directory."""
    return cfg.run_path / "models" / cfg.train.name


def masked_mse(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over clear label pixels: sr, hr (B, bands, H, W), mask (B, H, W) bool."""
    m = mask[:, None].to(sr.dtype).expand_as(sr)
    return ((sr - hr) ** 2 * m).sum() / m.sum().clamp_min(1)


def psnr_per_sample(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of values in [0, 1] over clear label pixels."""
    m = mask[:, None].to(sr.dtype).expand_as(sr)
    mse = ((sr.clamp(0, 1) - hr) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def validate(model: HighResNet, loader: DataLoader) -> dict[str, float]:
    """Mean masked PSNR of SR and of bicubic upsampling of the reference over a loader."""
    model.eval()
    sr_psnr, bic_psnr = [], []
    for batch in loader:
        sr = model(batch["lr"], batch["lr_mask"])
        bic = bicubic(masked_median(batch["lr"], batch["lr_mask"]), model.scale)
        sr_psnr.append(psnr_per_sample(sr, batch["hr"], batch["hr_mask"]))
        bic_psnr.append(psnr_per_sample(bic, batch["hr"], batch["hr_mask"]))
    model.train()
    if not sr_psnr:
        return {"val_psnr": float("nan"), "val_bicubic_psnr": float("nan")}
    return {"val_psnr": torch.cat(sr_psnr).mean().item(), "val_bicubic_psnr": torch.cat(bic_psnr).mean().item()}


def _save(path: Path, payload: dict) -> None:
    with state.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _write_history(folder: Path, history: list[dict]) -> None:
    state.write_json(folder / "history.json", history)
    with state.atomic_path(folder / "history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def train(cfg: Config) -> dict:
    """Train (or resume) the model; write checkpoint.pt each epoch and model.pt (best validation PSNR) at the end."""
    t = cfg.train
    folder = model_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    datasets = cfg.run_path / "datasets"
    train_paths, val_paths = shard_paths(datasets, "train"), shard_paths(datasets, "val")
    if not train_paths:
        raise StageError(f"no training shards in {datasets}; run `srpipe curate` first")
    lr_scale, hr_scale = scales(load_stats(cfg.run_path))
    torch.set_flush_denormal(True)  # denormal activations after a few Adam steps make CPU convolutions 20x slower
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)

    train_set, val_set = ShardDataset(train_paths), ShardDataset(val_paths)
    generator = torch.Generator().manual_seed(t.seed)
    loader = DataLoader(
        train_set,
        batch_size=t.batch_size,
        shuffle=True,
        drop_last=len(train_set) > t.batch_size,
        num_workers=t.loader_workers,
        generator=generator,
        persistent_workers=t.loader_workers > 0,
    )
    val_loader = DataLoader(val_set, batch_size=t.batch_size, num_workers=t.loader_workers)

    model = build_model(cfg.model, cfg.source.scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    epoch, step, elapsed, history, best = 0, 0, 0.0, [], {"val_psnr": -math.inf}
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():  # resume where the last finished epoch left off
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        epoch, step, elapsed, history, best = (saved[k] for k in ("epoch", "step", "elapsed_s", "history", "best"))
        generator.set_state(saved["generator"])
        print(f"train: resuming {folder.name} at epoch {epoch} (step {step}, {elapsed:.0f} s trained)")

    budget_s = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
    start = time.perf_counter() - elapsed
    out_of_time = False
    while epoch < t.epochs and not out_of_time:
        losses = []
        for batch in tqdm(loader, desc=f"train epoch {epoch + 1}/{t.epochs}", leave=False):
            sr = model(batch["lr"], batch["lr_mask"])
            loss = masked_mse(sr, batch["hr"], batch["hr_mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if time.perf_counter() - start > budget_s:
                out_of_time = True
                break
        epoch += 1
        row = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)), **validate(model, val_loader)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        history.append(row)
        print(
            f"train: epoch {epoch} loss {row['loss']:.5f} val PSNR {row['val_psnr']:.2f} dB "
            f"(bicubic {row['val_bicubic_psnr']:.2f} dB) at {row['seconds']:.0f} s"
        )
        if not row["val_psnr"] <= best["val_psnr"]:  # also true for the first epoch and for NaN-free improvements
            best = {"val_psnr": row["val_psnr"], "epoch": epoch}
            _save(folder / "best.pt", {"model": model.state_dict()})
        _save(
            checkpoint,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "elapsed_s": time.perf_counter() - start,
                "history": history,
                "best": best,
                "generator": generator.get_state(),
            },
        )
        _write_history(folder, history)

    weights = torch.load(folder / "best.pt", weights_only=False)["model"] if (folder / "best.pt").exists() else None
    _save(
        folder / "model.pt",
        {
            "model": weights or model.state_dict(),
            "model_config": dataclasses.asdict(cfg.model),
            "scale": cfg.source.scale,
            "n_frames": cfg.curate.n_frames,
            "lr_scale": lr_scale.to_json(),
            "hr_scale": hr_scale.to_json(),
            "best": best,
        },
    )
    state.write_text(folder / "config.toml", (cfg.run_path / "config.toml").read_text())
    return {
        "epochs": epoch,
        "steps": step,
        "best_val_psnr": best["val_psnr"],
        "seconds": round(time.perf_counter() - start, 1),
    }


@dataclasses.dataclass
class TrainedModel:
    """A trained model with the normalisation it was trained with."""

    net: HighResNet
    lr_scale: BandScale
    hr_scale: BandScale
    n_frames: int
    scale: int


def load_trained(cfg: Config) -> TrainedModel:
    """Load `models/<name>/model.pt` in eval mode."""
    path = model_dir(cfg) / "model.pt"
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe train` first")
    saved = torch.load(path, weights_only=False)
    torch.set_flush_denormal(True)  # as in training: denormals slow CPU convolutions many times over
    net = build_model(ModelConfig(**saved["model_config"]), saved["scale"])
    net.load_state_dict(saved["model"])
    net.eval()
    return TrainedModel(
        net,
        BandScale.from_json(saved["lr_scale"]),
        BandScale.from_json(saved["hr_scale"]),
        saved["n_frames"],
        saved["scale"],
    )
