"""Evaluate: SR against bicubic on the test tiles (PSNR, SSIM): `reports/metrics.json` and one PNG per tile."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from srpipe import state
from srpipe.config import Config
from srpipe.curate.dataset import iter_samples, shard_paths
from srpipe.errors import StageError
from srpipe.losses import cpsnr
from srpipe.metrics import masked_psnr, masked_ssim
from srpipe.models.highresnet import bicubic, masked_median
from srpipe.models.trained import TrainedModel, load_trained


def rgb(image: np.ndarray) -> np.ndarray:
    """(4, H, W) B02, B03, B04, B08 in [0, 1] -> (H, W, 3) true colour for display, gamma-brightened."""
    return np.clip(image[[2, 1, 0]].transpose(1, 2, 0), 0, 1) ** 0.7


def plot_sample(path: Path, lr_frame: np.ndarray, bic: np.ndarray, sr: np.ndarray, hr: np.ndarray, title: str) -> None:
    """PNG of an LR frame, bicubic, SR and the label side by side (all (4, H, W) in [0, 1])."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, image, name in zip(
        axes, (lr_frame, bic, sr, hr), ("S2 frame (LR)", "bicubic", "SR (HighRes-Net)", "label"), strict=True
    ):
        ax.imshow(rgb(image), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with state.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def _batches(paths: list, size: int) -> Iterator[dict]:
    """Test samples in batches of `size`: lr, lr_mask, hr, hr_mask as tensors; tile_id, hr_date as lists of str."""
    for shard in iter_samples(paths):
        for start in range(0, len(shard["lr"]), size):
            part = {k: shard[k][start : start + size] for k in ("lr", "lr_mask", "hr", "hr_mask", "tile_id", "hr_date")}
            yield {
                **{k: torch.from_numpy(part[k]) for k in ("lr", "lr_mask", "hr", "hr_mask")},
                **{k: [v.decode() for v in part[k]] for k in ("tile_id", "hr_date")},
            }


@torch.no_grad()
def _score_batch(
    model: TrainedModel, cfg: Config, batch: dict
) -> tuple[dict[str, list[float]], torch.Tensor, torch.Tensor]:
    """SR and bicubic (B, 4, H, W) of a batch and their (B,) masked PSNR, SSIM (`srpipe.metrics`) and cPSNR."""
    lr, lr_mask, hr, hr_mask = batch["lr"], batch["lr_mask"], batch["hr"], batch["hr_mask"]
    sr = model.super_resolve(lr, lr_mask, cfg.infer.self_ensemble)
    bic = bicubic(masked_median(lr, lr_mask), model.scale).clamp(0, 1)
    scores = {}
    for name, image in (("sr", sr), ("bicubic", bic)):
        scores[f"{name}_psnr"] = masked_psnr(image, hr, hr_mask)
        scores[f"{name}_ssim"] = masked_ssim(image.clamp(0, 1), hr, hr_mask)
        # registered: best integer shift, brightness-corrected (PROBA-V)
        scores[f"{name}_cpsnr"] = cpsnr(image, hr, hr_mask, cfg.loss.cpsnr_max_shift_px)
    return {k: v.tolist() for k, v in scores.items()}, sr, bic


def _plot_tile(path: Path, batch: dict, i: int, sr: torch.Tensor, bic: torch.Tensor, scale: int) -> None:
    """PNG of sample `i` of `batch`: its latest clear LR frame (nearest-upsampled), bicubic, SR and the label."""
    lr, lr_mask = batch["lr"][i], batch["lr_mask"][i]
    last = int(lr_mask.flatten(1).any(1).nonzero().max()) if lr_mask.any() else 0
    frame = torch.nn.functional.interpolate(lr[last][None], scale_factor=scale)[0]
    title = f"tile {batch['tile_id'][i]}, label {batch['hr_date'][i]}"
    plot_sample(path, frame.numpy(), bic[i].numpy(), sr[i].numpy(), batch["hr"][i].numpy(), title)


def _aggregate(rows: dict[str, list[dict]], self_ensemble: bool) -> dict:
    """`reports/metrics.json` from each tile's per-sample score rows (keys of `_score_batch`)."""
    every = [r for tile_rows in rows.values() for r in tile_rows]
    mean = {k: float(np.mean([r[k] for r in every])) for k in every[0]}
    per_tile = [
        {"tile_id": t, "n_samples": len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in rs[0]}}
        for t, rs in sorted(rows.items())
    ]
    return {
        "sr": {"psnr": mean["sr_psnr"], "ssim": mean["sr_ssim"]},
        "bicubic": {"psnr": mean["bicubic_psnr"], "ssim": mean["bicubic_ssim"]},
        "cpsnr": {"sr": mean["sr_cpsnr"], "bicubic": mean["bicubic_cpsnr"]},  # registered: best shift, bias removed
        "n_samples": len(every),
        "self_ensemble": self_ensemble,
        "sr_beats_bicubic_share": float(np.mean([r["sr_psnr"] > r["bicubic_psnr"] for r in every])),
        "sr_beats_bicubic_cpsnr_share": float(np.mean([r["sr_cpsnr"] > r["bicubic_cpsnr"] for r in every])),
        "per_tile": per_tile,
    }


def _write_report(path: Path, metrics: dict, plotted: list[str], max_shift_px: int) -> None:
    """`reports/report.md`: the table of `metrics` and the PNGs of the `plotted` tiles."""
    lines = [
        "# Evaluation on the test tiles",
        "",
        f"{metrics['n_samples']} samples from {len(metrics['per_tile'])} test tiles; values in [0, 1] after the "
        "curation's percentile scaling. PSNR and SSIM are on the label's clear pixels (`srpipe.metrics`).",
        "",
        "| method | PSNR (dB) | cPSNR (dB, registered) | SSIM |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {metrics[key]['psnr']:.2f} | {metrics['cpsnr'][key]:.2f} | {metrics[key]['ssim']:.4f} |"
            for name, key in (("bicubic", "bicubic"), ("SR", "sr"))
        ),
        "",
        f"SR beats bicubic on {100 * metrics['sr_beats_bicubic_share']:.0f} % of the samples (PSNR), "
        f"{100 * metrics['sr_beats_bicubic_cpsnr_share']:.0f} % (cPSNR: best shift up to "
        f"{max_shift_px} px, brightness bias removed, as PROBA-V).",
        "",
        "SR is the mean over the eight flips/rotations of the input (infer.self_ensemble)."
        if metrics["self_ensemble"]
        else "SR is one pass of the model (infer.self_ensemble is off).",
        "",
        *(f"![{t}]({t}.png)" for t in plotted),
    ]
    state.write_text(path, "\n".join(lines) + "\n")


def evaluate(cfg: Config) -> dict:
    """Score SR and bicubic on every test sample; write reports/metrics.json, per-tile PNGs and report.md."""
    paths = shard_paths(cfg.layout.datasets, "test")
    if not paths:
        raise StageError(f"no test shards in {cfg.layout.datasets}; run `srpipe curate` (with >= 3 tiles)")
    model = load_trained(cfg)
    rows: dict[str, list[dict]] = defaultdict(list)
    plotted: list[str] = []
    for batch in _batches(paths, cfg.evaluate.batch_size):
        scores, sr, bic = _score_batch(model, cfg, batch)
        for i, tile_id in enumerate(batch["tile_id"]):
            rows[tile_id].append({k: v[i] for k, v in scores.items()})
            if tile_id not in plotted and len(plotted) < cfg.evaluate.max_tile_plots:
                plotted.append(tile_id)
                _plot_tile(cfg.layout.reports / f"{tile_id}.png", batch, i, sr, bic, model.scale)
    metrics = _aggregate(rows, cfg.infer.self_ensemble)
    state.write_json(cfg.layout.reports / "metrics.json", metrics)
    _write_report(cfg.layout.reports / "report.md", metrics, sorted(plotted), cfg.loss.cpsnr_max_shift_px)
    return {
        "sr_psnr": round(metrics["sr"]["psnr"], 3),
        "bicubic_psnr": round(metrics["bicubic"]["psnr"], 3),
        "samples": metrics["n_samples"],
    }
