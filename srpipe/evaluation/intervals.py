"""The calibrated intervals on the test tiles: empirical coverage against nominal per band (a reliability diagram),
coverage where SR is hard (edges and texture, cloudy frames) and easy (flat, clear), the mean width against
bicubic's error, and the pixels where SR departs from bicubic of the latest frame by more than the interval
supports (candidates for invented detail). The test tiles were not used to calibrate (that is the validation split).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from srpipe import BANDS
from srpipe.data.normalise import load_stats, scales
from srpipe.data.shards import count_samples, shard_paths
from srpipe.evaluation import baselines as bl
from srpipe.evaluation import plots
from srpipe.evaluation.context import Context, batches
from srpipe.evaluation.html import Figure, Section, Table
from srpipe.models.calibration import LEVELS, Calibration, coverage, scored_pixels
from srpipe.models.intervals import ensemble_sr, every_kth, picked, pixel_step

TABLE_LEVELS = (0.8, 0.9, 0.95)  # the levels of the coverage tables (the report's, the README's)
MAP_LEVEL = 0.9  # the level of the invented-detail map and shares
MAP_SAMPLES = 3  # test samples shown in the invented-detail map
BICUBIC = "bicubic_latest"  # bicubic of the very frame SR's latest view is: what "departs" is measured against


@dataclasses.dataclass
class _Pixels:
    """Per band (rows) and kept pixel: |SR - label|, spread, |SR - bicubic|, |bicubic - label|; per pixel whether it
    is on an edge (top quartile of bicubic's gradient in its sample) and whether its sample has a partly cloudy frame
    (1-99 % of it masked)."""

    error: list = dataclasses.field(default_factory=list)
    spread: list = dataclasses.field(default_factory=list)
    departure: list = dataclasses.field(default_factory=list)
    bicubic_error: list = dataclasses.field(default_factory=list)
    edge: list = dataclasses.field(default_factory=list)
    cloudy: list = dataclasses.field(default_factory=list)
    tile: list = dataclasses.field(default_factory=list)  # each pixel's test tile
    shown: list = dataclasses.field(default_factory=list)  # (sr, bicubic, half-width, label mask) of MAP_SAMPLES

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("error", "spread", "departure", "bicubic_error", "edge", "cloudy", "tile")
        return {k: np.concatenate(getattr(self, k), axis=-1) for k in names}


def _edges(image: torch.Tensor) -> np.ndarray:
    """(B, H, W) bool: the top quartile of each sample's gradient magnitude (band mean) of (B, 4, H, W) `image`."""
    x = image.float().mean(1)
    gy, gx = torch.gradient(x, dim=(1, 2))
    magnitude = torch.hypot(gx, gy).numpy()
    return magnitude >= np.quantile(magnitude.reshape(len(x), -1), 0.75, axis=1)[:, None, None]


def _collect(ctx: Context, batch: dict, pixels: _Pixels, run_scales: tuple) -> None:
    """Add one test batch's kept pixels (clear label, inside the border crop) to `pixels`, in the model's units."""
    mask, calibration = batch["lr_mask"], ctx.model.calibration
    lr, sr, spread, hr = ensemble_sr(ctx.model, run_scales, batch["lr"].numpy(), batch["hr"].numpy(), mask)
    bic = bl.simple_baselines(lr, mask, batch["lr_dates"], batch["hr_date"], ctx.model.scale, ctx.lr_to_hr)[BICUBIC]
    keep = scored_pixels(batch["hr_mask"].numpy(), ctx.border)
    masked = (~mask.bool()).float().mean((2, 3))  # (B, K): each frame's masked share
    partly = ((masked > 0.01) & (masked < 0.99)).any(1).numpy()  # a frame partly cloudy, not a whole-frame pad
    cloudy = np.broadcast_to(partly[:, None, None], keep.shape)
    step = pixel_step(int(keep.sum()), len(lr))
    bands = {
        "error": np.abs(sr - hr),
        "spread": spread,
        "departure": np.abs(sr - bic.numpy()),
        "bicubic_error": np.abs(bic.numpy() - hr),
    }
    for name, value in bands.items():
        getattr(pixels, name).append(value.transpose(1, 0, 2, 3)[:, keep][:, ::step])
    pixels.edge.append(_edges(bic)[keep][::step])
    pixels.cloudy.append(cloudy[keep][::step])
    tiles = np.broadcast_to(np.array(batch["tile_id"], dtype=object)[:, None, None], keep.shape)
    pixels.tile.append(tiles[keep][::step])
    for i in range(min(len(lr), MAP_SAMPLES - len(pixels.shown))):
        width = calibration.half_width(spread[i : i + 1], MAP_LEVEL)[0]
        pixels.shown.append((sr[i], bic[i].numpy(), width, keep[i]))


def _subset(batch: dict, picked: np.ndarray) -> dict:
    """The samples `picked` of a `batches` batch (tensors and lists alike)."""
    return {k: v[torch.from_numpy(picked)] if torch.is_tensor(v) else [v[i] for i in picked] for k, v in batch.items()}


def _group_coverage(a: dict[str, np.ndarray], calibration: Calibration, where: np.ndarray) -> dict:
    """{level: [coverage per band]} and the pixel count of the pixels `where` is True."""
    cov = coverage(a["error"][:, where], a["spread"][:, where], calibration, TABLE_LEVELS)
    return {"pixels": int(where.sum()), **{f"{level:.2f}": cov[:, j].tolist() for j, level in enumerate(TABLE_LEVELS)}}


def interval_metrics(ctx: Context) -> tuple[dict, list] | None:
    """metrics.json's "calibrated_intervals" (None without a calibrated model or the self-ensemble) and the samples
    of the invented-detail map."""
    calibration = ctx.model.calibration
    paths = shard_paths(ctx.cfg.layout.datasets, "test")
    if calibration is None or not ctx.cfg.infer.self_ensemble or not paths:
        return None
    pixels, stride, seen = _Pixels(), every_kth(count_samples(paths)), 0
    run_scales = scales(load_stats(ctx.cfg.run_path))  # a scene run's own curation: its samples in the model's units
    with torch.no_grad():
        for batch in batches(paths, ctx.cfg.evaluate.batch_size):
            chosen = picked(seen, len(batch["lr"]), stride)
            seen += len(batch["lr"])
            if len(chosen):
                _collect(ctx, _subset(batch, chosen), pixels, run_scales)
    a = pixels.arrays()
    curve = coverage(a["error"], a["spread"], calibration, LEVELS)
    width = calibration.half_width(a["spread"][None, :, :, None], MAP_LEVEL)[0, :, :, 0]
    groups = {"edges": a["edge"], "flat": ~a["edge"], "cloudy_frames": a["cloudy"], "clear_frames": ~a["cloudy"]}
    metrics = {
        "bands": list(BANDS),
        "levels": list(LEVELS),
        "coverage": curve.tolist(),  # [band][level]
        "table": {f"{level:.2f}": curve[:, LEVELS.index(level)].tolist() for level in TABLE_LEVELS},
        "groups": {name: _group_coverage(a, calibration, where) for name, where in groups.items() if where.any()},
        "tiles": {t: _group_coverage(a, calibration, a["tile"] == t) for t in sorted(set(a["tile"]))},
        "mean_half_width": {f"{MAP_LEVEL:.2f}": width.mean(axis=1).tolist()},
        "mean_bicubic_error": a["bicubic_error"].mean(axis=1).tolist(),
        "departs_share": {f"{MAP_LEVEL:.2f}": (a["departure"] > width).mean(axis=1).tolist()},
        "pixels": int(a["error"].shape[1]),
        "samples": (seen + stride - 1) // stride,
        "calibration": {k: v for k, v in calibration.to_json().items() if k not in ("quantiles", "levels", "tiles")},
        "calibration_tiles": len(calibration.tiles),
        "units": "curated label units ([0, 1] per band), as the calibration",
    }
    return metrics, pixels.shown


def interval_section(metrics: dict, shown: list) -> Section | None:
    """The report's "Calibrated intervals" section (None when evaluate computed none)."""
    m = metrics.get("calibrated_intervals")
    if m is None:
        return None
    cal = m["calibration"]
    header = ["band", *(f"{float(level):.0%} nominal" for level in m["table"])]
    coverage_rows = [[b, *(f"{m['table'][level][i]:.1%}" for level in m["table"])] for i, b in enumerate(m["bands"])]
    level = next(iter(m["mean_half_width"]))
    width_rows = [
        [b, m["mean_half_width"][level][i], m["mean_bicubic_error"][i], f"{m['departs_share'][level][i]:.2%}"]
        for i, b in enumerate(m["bands"])
    ]
    group_rows = [
        [name, g["pixels"], *(f"{np.mean(g[lv]):.1%}" for lv in m["table"])] for name, g in m["groups"].items()
    ]
    text = (
        f"Split-conformal intervals (|SR - label| scaled by the 8 views' spread) calibrated on {cal['pixels']} "
        f"{cal['split']} pixels of {cal['samples']} samples from {m['calibration_tiles']} tiles, checked here on "
        f"{m['pixels']} pixels of {m['samples']} test samples (every k-th of the split) the calibration never saw. "
        "Coverage is the share of test label pixels inside SR +- half-width; calibrated means equal to the nominal "
        "level (within +-3 points)."
    )
    tile_rows = [[t, g["pixels"], *(f"{x:.1%}" for x in g["0.90"])] for t, g in m.get("tiles", {}).items()]
    tables = [
        Table("Empirical coverage of the calibrated intervals per band (test pixels)", header, coverage_rows),
        Table(
            "90 % coverage per test tile (a tile unlike every calibration tile shows here)",
            ["tile", "pixels", *m["bands"]],
            tile_rows,
        ),
        Table("Coverage (band mean) where SR is hard and where it is easy", ["pixels", "n", *header[1:]], group_rows),
        Table(
            f"Mean {float(level):.0%} half-width against bicubic's error; share of pixels where SR departs from "
            "bicubic of the latest frame by more than the half-width (candidates for invented detail)",
            ["band", "mean half-width", "mean |bicubic - label|", "departs"],
            width_rows,
        ),
    ]
    figures = [Figure(plots.reliability_diagram(m["levels"], m["coverage"]), "reliability of the intervals per band")]
    if shown:
        caption = "candidates for invented detail: where SR leaves bicubic by more than the interval supports"
        figures.append(Figure(plots.departure_map(shown, MAP_LEVEL), caption))
    return Section("Calibrated intervals", paragraphs=[text], tables=tables, figures=figures)
