"""Curation figures (matplotlib, PNG): SSIM vs PSNR, label blue histograms, tile statistics, cloud cover.

To choose `curate.vhr_cloud_threshold` before curating, plot the label's blue values of random tiles:
`python -m srpipe.curate.filter_plots RUN_DIR [--threshold X]` (or call `plot_blue_histograms`) -> RUN_DIR/curation/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from srpipe import BANDS, state
from srpipe.config import Config

COLOURS = plt.get_cmap("tab10").colors


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    with state.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path.name


def ssim_psnr_scatter(rows: list[dict], min_ssim: float, min_psnr_db: float, path: Path) -> str:
    """SSIM vs PSNR of every sample (rows of samples.csv), coloured by region; shadow-flagged grey; thresholds drawn."""
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    regions = sorted({r["region"] for r in rows})
    for i, region in enumerate(regions):
        for shadow, style in ((False, {"marker": "o", "alpha": 0.5}), (True, {"marker": "x", "alpha": 0.35})):
            picked = [r for r in rows if r["region"] == region and bool(r["shadow"]) == shadow]
            if not picked:
                continue
            colour = "0.55" if shadow else COLOURS[i % len(COLOURS)]
            label = f"{region}: shadow-flagged ({len(picked)})" if shadow else f"{region} ({len(picked)})"
            ax.scatter(
                [float(r["psnr"]) for r in picked],
                [float(r["ssim"]) for r in picked],
                s=9,
                c=[colour],
                label=label,
                **style,
            )
    ax.axhline(min_ssim, color="crimson", ls="--", lw=1)
    ax.axvline(min_psnr_db, color="crimson", ls="--", lw=1)
    ax.text(min_psnr_db, ax.get_ylim()[0], f" PSNR > {min_psnr_db:g} dB", color="crimson", va="bottom", fontsize=8)
    ax.text(ax.get_xlim()[0], min_ssim, f" SSIM > {min_ssim:g}", color="crimson", va="bottom", fontsize=8)
    ax.set_xlabel("PSNR (dB), label vs bicubic S2, brightness-corrected, best shift")
    ax.set_ylabel("SSIM")
    ax.set_title("Noise filter: samples keep to the upper right of the dashed lines")
    ax.legend(fontsize=8, markerscale=2)
    return _save(fig, path)


def blue_histograms(blue: dict[str, np.ndarray], dates: dict[str, list[str]], threshold: float, path: Path) -> str:
    """Histograms of label blue values per (tile, frame) from {tile: (T, M)} with the cloud threshold drawn."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    values = np.concatenate([b.ravel() for b in blue.values()])
    hi = max(float(np.percentile(values, 99.9)), threshold * 1.2)
    bins = np.linspace(float(values.min()), hi, 120)
    for i, (tile, frames) in enumerate(blue.items()):
        for j, frame in enumerate(frames):
            cloudy = (frame > threshold).mean()
            ax.hist(
                frame,
                bins=bins,
                histtype="step",
                color=COLOURS[i % len(COLOURS)],
                alpha=0.8,
                label=f"{tile} {dates[tile][j]} ({cloudy:.1%} above)" if cloudy > 0.01 else None,
            )
    ax.axvline(threshold, color="crimson", ls="--", label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("label blue (B02), label units")
    ax.set_ylabel("pixels")
    ax.set_title(f"Label blue of {len(blue)} random tiles, every frame: clouds are the bright tail")
    ax.legend(fontsize=7)
    return _save(fig, path)


def tile_statistics(per_tile: dict[str, dict], path: Path) -> str:
    """Per-band label medians of each tile: all pixels (before) vs cloud-free pixels of kept frames (after)."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for b, (ax, band) in enumerate(zip(axes, BANDS, strict=True)):
        before = np.array([s["vhr"]["medians_all"][b] for s in per_tile.values()])
        after = np.array([s["vhr"]["medians_cloud_free"][b] for s in per_tile.values()])
        moved = np.abs(before - after) > 0.02 * np.abs(after)
        ax.scatter(before[~moved], after[~moved], s=14, c=[COLOURS[0]], label="tiles")
        ax.scatter(before[moved], after[moved], s=18, c=[COLOURS[3]], label="changed > 2 % by cloud removal")
        lo, hi = float(min(before.min(), after.min())), float(max(before.max(), after.max()))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8)
        ax.set_title(band)
        ax.set_xlabel("median, all pixels")
    axes[0].set_ylabel("median, cloud-free")
    axes[0].legend(fontsize=7)
    fig.suptitle("Label normalisation: per-tile medians before vs after cloud removal")
    return _save(fig, path)


def cloud_cover_histogram(per_tile: dict[str, dict], vhr_max: float, s2_max: float, shadow: float, path: Path) -> str:
    """Histograms of cloud cover per frame (label and S2) with the keep and shadow-flag thresholds drawn."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind, limit in ((axes[0], "vhr", vhr_max), (axes[1], "s2", s2_max)):
        cover = np.concatenate([s[kind]["cloud_cover"] for s in per_tile.values()])
        ax.hist(cover, bins=np.linspace(0, 1, 41), color=COLOURS[0])
        ax.axvline(limit, color="crimson", ls="--", label=f"keep <= {limit:g}")
        if kind == "vhr":
            ax.axvline(shadow, color="darkorange", ls=":", label=f"flags neighbours > {shadow:g}")
        ax.set_yscale("log")
        ax.set_xlabel("cloud cover")
        ax.set_title(f"{'label' if kind == 'vhr' else 'S2'} frames ({cover.size})")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("frames")
    return _save(fig, path)


def curation_figures(cfg: Config, folder: Path, per_tile: dict, rows: list[dict], blue: dict) -> dict[str, str]:
    """Every figure of the reduce into `folder`; returns {figure: file name}."""
    c = cfg.curate
    return {
        "scatter": ssim_psnr_scatter(rows, c.noise_min_ssim, c.noise_min_psnr_db, folder / "ssim_psnr.png"),
        "blue_histograms": blue_histograms(
            blue, {t: per_tile[t]["vhr"]["dates"] for t in blue}, c.vhr_cloud_threshold, folder / "blue_histograms.png"
        ),
        "tile_statistics": tile_statistics(per_tile, folder / "tile_statistics.png"),
        "cloud_cover": cloud_cover_histogram(
            per_tile, c.vhr_max_cloud_cover, c.s2_max_cloud_cover, c.shadow_cloud_cover, folder / "cloud_cover.png"
        ),
    }


def plot_blue_histograms(run_dir: str | Path, threshold: float | None = None, n_tiles: int = 8, seed: int = 0) -> Path:
    """Blue histograms of the labels of `n_tiles` random downloaded tiles, to choose `curate.vhr_cloud_threshold`."""
    from srpipe import eopatch as ep
    from srpipe.config import load_config
    from srpipe.curate.tile import BLUE_SAMPLE_PX
    from srpipe.data.grid import read_grid

    cfg = load_config(run_dir)
    run = cfg.run_path
    tiles = [t.tile_id for t in read_grid(run) if cfg.layout.eopatch(t.tile_id).exists()]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(tiles, min(n_tiles, len(tiles)), replace=False))
    blue, dates = {}, {}
    for t in picked:
        patch = ep.load_patch(run, t, cfg.source.scale)
        values = patch[ep.VHR_BANDS][..., 0].reshape(len(patch[ep.VHR_BANDS]), -1)
        blue[t] = values[:, rng.choice(values.shape[1], min(BLUE_SAMPLE_PX, values.shape[1]), replace=False)]
        dates[t] = [d.date().isoformat() for d in ep.vhr_dates(patch)]
    path = cfg.layout.curation / "blue_histograms_eopatches.png"
    blue_histograms(blue, dates, cfg.curate.vhr_cloud_threshold if threshold is None else threshold, path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=plot_blue_histograms.__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--threshold", type=float, help="draw this threshold (default: the run's setting)")
    parser.add_argument("--tiles", type=int, default=8)
    args = parser.parse_args()
    print(plot_blue_histograms(args.run_dir, args.threshold, args.tiles))
