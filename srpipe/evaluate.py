"""Evaluate: SR against bicubic on the test tiles (PSNR, SSIM): `reports/metrics.json` and one PNG per tile."""

from __future__ import annotations

from collections import defaultdict

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
from srpipe.metrics import psnr, ssim
from srpipe.models.highresnet import bicubic, masked_median
from srpipe.train import load_trained


def rgb(image: np.ndarray) -> np.ndarray:
    """(4, H, W) B02, B03, B04, B08 in [0, 1] -> (H, W, 3) true colour for display, gamma-brightened."""
    return np.clip(image[[2, 1, 0]].transpose(1, 2, 0), 0, 1) ** 0.7


def plot_sample(path, lr_frame: np.ndarray, bic: np.ndarray, sr: np.ndarray, hr: np.ndarray, title: str) -> None:
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


def evaluate(cfg: Config) -> dict:
    """Score SR and bicubic on every test sample; write reports/metrics.json, per-tile PNGs and report.md."""
    paths = shard_paths(cfg.run_path / "datasets", "test")
    if not paths:
        raise StageError(f"no test shards in {cfg.run_path / 'datasets'}; run `srpipe curate` (with >= 3 tiles)")
    model = load_trained(cfg)
    reports = cfg.run_path / "reports"
    rows: dict[str, list[dict]] = defaultdict(list)
    plotted: set[str] = set()
    for shard in iter_samples(paths):
        for start in range(0, len(shard["lr"]), cfg.evaluate.batch_size):
            part = slice(start, start + cfg.evaluate.batch_size)
            lr, lr_mask = torch.from_numpy(shard["lr"][part]), torch.from_numpy(shard["lr_mask"][part])
            with torch.no_grad():
                sr = model.super_resolve(lr, lr_mask, cfg.infer.self_ensemble).numpy()
                bic = bicubic(masked_median(lr, lr_mask), model.scale).clamp(0, 1).numpy()
                hr_t, hm_t = torch.from_numpy(shard["hr"][part]), torch.from_numpy(shard["hr_mask"][part])
                shift = cfg.loss.cpsnr_max_shift_px  # registered scores: best integer shift, brightness-corrected
                sr_c = cpsnr(torch.from_numpy(sr), hr_t, hm_t, shift).tolist()
                bic_c = cpsnr(torch.from_numpy(bic), hr_t, hm_t, shift).tolist()
            for i, hr in enumerate(shard["hr"][part]):
                tile_id = shard["tile_id"][start + i].decode()
                rows[tile_id].append(
                    {
                        "sr_psnr": psnr(sr[i], hr),
                        "sr_ssim": ssim(sr[i], hr),
                        "bicubic_psnr": psnr(bic[i], hr),
                        "bicubic_ssim": ssim(bic[i], hr),
                        "sr_cpsnr": sr_c[i],
                        "bicubic_cpsnr": bic_c[i],
                    }
                )
                if tile_id not in plotted and len(plotted) < cfg.evaluate.max_tile_plots:
                    plotted.add(tile_id)
                    last = int(lr_mask[i].flatten(1).any(1).nonzero().max()) if lr_mask[i].any() else 0
                    frame = torch.nn.functional.interpolate(lr[i, last][None], scale_factor=model.scale)[0].numpy()
                    plot_sample(
                        reports / f"{tile_id}.png",
                        frame,
                        bic[i],
                        sr[i],
                        hr,
                        f"tile {tile_id}, label {shard['hr_date'][start + i].decode()}",
                    )
    every = [r for tile_rows in rows.values() for r in tile_rows]
    mean = {k: float(np.mean([r[k] for r in every])) for k in every[0]}
    per_tile = [
        {"tile_id": t, "n_samples": len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in rs[0]}}
        for t, rs in sorted(rows.items())
    ]
    metrics = {
        "sr": {"psnr": mean["sr_psnr"], "ssim": mean["sr_ssim"]},
        "bicubic": {"psnr": mean["bicubic_psnr"], "ssim": mean["bicubic_ssim"]},
        "cpsnr": {"sr": mean["sr_cpsnr"], "bicubic": mean["bicubic_cpsnr"]},  # registered: best shift, bias removed
        "n_samples": len(every),
        "self_ensemble": cfg.infer.self_ensemble,
        "sr_beats_bicubic_share": float(np.mean([r["sr_psnr"] > r["bicubic_psnr"] for r in every])),
        "sr_beats_bicubic_cpsnr_share": float(np.mean([r["sr_cpsnr"] > r["bicubic_cpsnr"] for r in every])),
        "per_tile": per_tile,
    }
    state.write_json(reports / "metrics.json", metrics)
    lines = [
        "# Evaluation on the test tiles",
        "",
        f"{len(every)} samples from {len(rows)} test tiles; values in [0, 1] after the curation's percentile scaling.",
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
        f"{cfg.loss.cpsnr_max_shift_px} px, brightness bias removed, as PROBA-V).",
        "",
        "SR is the mean over the eight flips/rotations of the input (infer.self_ensemble)."
        if cfg.infer.self_ensemble
        else "SR is one pass of the model (infer.self_ensemble is off).",
        "",
    ]
    lines += [f"![{t}]({t}.png)" for t in sorted(plotted)]
    state.write_text(reports / "report.md", "\n".join(lines) + "\n")
    return {"sr_psnr": round(mean["sr_psnr"], 3), "bicubic_psnr": round(mean["bicubic_psnr"], 3), "samples": len(every)}
