"""Evaluation plots as PNG bytes: score histograms and scatter, band distributions, sample grids, curves, trust maps
and the spread against the error."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from srpipe import BANDS, state

_BAND_NAMES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "NIR"}
_METRIC_LABELS = {"cpsnr": "cPSNR (dB)", "psnr": "PSNR (dB)", "ssim": "SSIM"}
_SR, _BASELINE, _S2, _LABEL = "C1", "C0", "C2", "C3"  # one colour per source across every plot
_DPI = 90


def _png(fig: Figure) -> bytes:
    """Render `fig` (no pyplot state, so no global backend and no leaked figures) to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _finite(values: np.ndarray) -> np.ndarray:
    """1-D float array of the finite entries of `values`."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return flat[np.isfinite(flat)]


def _no_ticks(ax: Axes) -> None:
    """Hide the pixel ticks of an image panel (keeps its labels)."""
    ax.set_xticks([])
    ax.set_yticks([])


def save_png(path: str | Path, png: bytes) -> Path:
    """Write PNG bytes from this module to `path` atomically; return the path."""
    with state.atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return Path(path)


def true_colour(image: np.ndarray) -> np.ndarray:
    """(4, H, W) B02, B03, B04, B08 in [0, 1] -> (H, W, 3) float RGB of bands [2, 1, 0], clipped, gamma 0.7."""
    rgb = np.nan_to_num(np.asarray(image, dtype=np.float32)[[2, 1, 0]].transpose(1, 2, 0), nan=0.0)
    return np.clip(rgb, 0.0, 1.0) ** 0.7


def metric_histograms(
    sr: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray], baseline_name: str = "bicubic"
) -> bytes:
    """One panel per metric in both maps (e.g. cpsnr, psnr, ssim: (N,) per-sample scores), SR and baseline overlaid."""
    names = [name for name in sr if name in baseline]
    if not names:
        raise ValueError(f"metric_histograms: no metric in both SR {sorted(sr)} and baseline {sorted(baseline)}")
    fig = Figure(figsize=(4.2 * len(names), 3.4), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        ours, theirs = _finite(sr[name]), _finite(baseline[name])
        both = np.concatenate([ours, theirs])
        bins = np.histogram_bin_edges(both, bins=int(np.clip(np.sqrt(both.size), 5, 30))) if both.size else 10
        for values, label, colour in ((theirs, baseline_name, _BASELINE), (ours, "SR", _SR)):
            mean = f"mean {values.mean():.3g}" if values.size else "no finite value"
            ax.hist(values, bins=bins, alpha=0.55, color=colour, label=f"{label} ({mean})")
        ax.set_xlabel(_METRIC_LABELS.get(name.lower(), name))
        ax.set_ylabel("samples")
        ax.legend(fontsize="small")
    fig.suptitle(f"Per-sample scores: SR vs {baseline_name}")
    return _png(fig)


def score_scatter(
    baseline_cpsnr: np.ndarray, sr_cpsnr: np.ndarray, tile_ids: Sequence[str], baseline_name: str = "bicubic"
) -> bytes:
    """(N,) cPSNR in dB of the baseline (x) and SR (y), one colour per tile of `tile_ids` (N,), with the y = x line."""
    x, y = np.asarray(baseline_cpsnr, np.float64), np.asarray(sr_cpsnr, np.float64)
    tiles = np.asarray(tile_ids).astype(str)
    if not x.shape == y.shape == tiles.shape:
        raise ValueError(f"score_scatter: shapes differ: baseline {x.shape}, SR {y.shape}, tile ids {tiles.shape}")
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.subplots()
    names = sorted(set(tiles))
    for i, name in enumerate(names):
        colour = f"C{i}" if len(names) <= 10 else colormaps["turbo"](i / (len(names) - 1))  # beyond the cycle's 10
        ax.scatter(x[tiles == name], y[tiles == name], s=14, color=colour, label=name, alpha=0.8)
    finite = _finite(np.concatenate([x, y]))
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    pad = 0.05 * (high - low) or 1.0
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.4", lw=1, ls="--", label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{baseline_name} cPSNR (dB)")
    ax.set_ylabel("SR cPSNR (dB)")
    above = int(np.sum(y > x))
    ax.set_title(f"SR above the line on {above} of {x.size} samples")
    if len(names) <= 15:
        ax.legend(fontsize="small", title="tile", loc="upper left")
    return _png(fig)


def _band_values(images: np.ndarray, band: int, max_values: int) -> np.ndarray:
    """Finite values of `band` of (N, 4, H, W) or (4, H, W) `images`, evenly thinned to at most `max_values`."""
    array = np.asarray(images)
    array = array[None] if array.ndim == 3 else array
    if array.ndim != 4 or array.shape[1] != len(BANDS):
        raise ValueError(f"band_distributions: expected (N, 4, H, W) images in band order {BANDS}, got {array.shape}")
    values = _finite(array[:, band])
    return values[:: max(1, math.ceil(values.size / max_values))]


def band_distributions(
    sr: np.ndarray, s2_frame: np.ndarray, label: np.ndarray, max_values_per_band: int = 200_000
) -> bytes:
    """Value density per band (B02, B03, B04, B08) of SR, the S2 frame and the label: (N, 4, H, W) each, any H, W."""
    fig = Figure(figsize=(4.0 * len(BANDS), 3.3), layout="constrained")
    sources = (("S2 frame", s2_frame, _S2), ("SR", sr, _SR), ("label", label, _LABEL))
    for band, ax in enumerate(fig.subplots(1, len(BANDS), squeeze=False)[0]):
        values = [_band_values(images, band, max_values_per_band) for _, images, _ in sources]
        both = np.concatenate(values)
        low, high = np.percentile(both, [0.1, 99.9]) if both.size else (0.0, 1.0)  # the rarest outliers off-plot
        edges = np.linspace(low, high if high > low else low + 1e-3, 61)
        for (name, _, colour), vals in zip(sources, values, strict=True):
            if vals.size:
                density, _ = np.histogram(vals, bins=edges, density=True)
                ax.stairs(density, edges, color=colour, lw=1.6, label=f"{name} (median {np.median(vals):.3f})")
        ax.set_title(f"{BANDS[band]} ({_BAND_NAMES[BANDS[band]]})")
        ax.set_xlabel("value (curated units)")
        ax.set_ylabel("density")
        ax.legend(fontsize="x-small")
    fig.suptitle("Band values: SR should follow the S2 frame, not the label sensor")
    return _png(fig)


def ranked_indices(gain_db: np.ndarray, per_rank: int = 1) -> list[tuple[str, int]]:
    """[(rank, index)] of the best, median and worst `per_rank` samples of (N,) `gain_db`, NaN skipped, no repeats."""
    gain = np.asarray(gain_db, np.float64)
    finite = np.flatnonzero(np.isfinite(gain))
    if finite.size == 0:
        raise ValueError("ranked_indices: no sample has a finite gain; check the scores passed in")
    order = finite[np.argsort(-gain[finite], kind="stable")]  # best first
    k = min(per_rank, order.size)
    middle = max(0, order.size // 2 - k // 2)
    picks = {"best": order[:k], "worst": order[::-1][:k], "median": order[middle : middle + k]}
    taken: dict[int, str] = {}
    for rank in ("best", "worst", "median"):  # best and worst win a clash with the median on small sets
        for index in picks[rank]:
            taken.setdefault(int(index), rank)
    rank_order = {"best": 0, "median": 1, "worst": 2}
    return sorted(((rank, i) for i, rank in taken.items()), key=lambda p: (rank_order[p[0]], -gain[p[1]]))


def _nearest_upsample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) by repeating pixels when H, W are whole multiples of h, w (else unchanged)."""
    h, w = image.shape[-2:]
    if shape[0] % h or shape[1] % w:
        return image
    return np.repeat(np.repeat(image, shape[0] // h, axis=-2), shape[1] // w, axis=-1)


def sample_grid(
    s2_frame: np.ndarray,
    baseline: np.ndarray,
    sr: np.ndarray,
    label: np.ndarray,
    sr_cpsnr: np.ndarray,
    baseline_cpsnr: np.ndarray,
    tile_ids: Sequence[str] | None = None,
    per_rank: int = 1,
    baseline_name: str = "bicubic",
) -> bytes:
    """Best/median/worst rows by SR cPSNR gain (dB); cols S2 frame (N, 4, h, w), baseline, SR, label (N, 4, H, W)."""
    gain = np.asarray(sr_cpsnr, np.float64) - np.asarray(baseline_cpsnr, np.float64)
    rows = ranked_indices(gain, per_rank)
    titles = ("S2 frame (nearest)", baseline_name, "SR", "label")
    fig = Figure(figsize=(3.0 * len(titles), 3.1 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(titles), squeeze=False)
    for row, (rank, i) in zip(axes, rows, strict=True):
        hr = np.asarray(label[i])
        frame = _nearest_upsample(np.asarray(s2_frame[i]), hr.shape[-2:])
        images = (frame, np.asarray(baseline[i]), np.asarray(sr[i]), hr)
        scores = ("", f"{baseline_cpsnr[i]:.2f} dB", f"{sr_cpsnr[i]:.2f} dB", "")
        for ax, image, title, score in zip(row, images, titles, scores, strict=True):
            ax.imshow(true_colour(image), interpolation="nearest")
            _no_ticks(ax)
            ax.set_title(f"{title} {score}".strip(), fontsize="small")
        tile = f"tile {tile_ids[i]}\n" if tile_ids is not None else ""
        row[0].set_ylabel(f"{rank} (#{i})\n{tile}gain {gain[i]:+.2f} dB", fontsize="small")
    fig.suptitle(f"Samples ranked by SR cPSNR gain over {baseline_name} (true colour B04, B03, B02; gamma 0.7)")
    return _png(fig)


def training_curves(history: Sequence[Mapping[str, object]], x_key: str = "epoch") -> bytes:
    """One panel per numeric key of the per-epoch dicts in `history` against `x_key` (the row index when absent)."""

    def numeric(value: object) -> bool:
        return isinstance(value, Real) and not isinstance(value, bool)

    keys = [k for k in dict.fromkeys(k for row in history for k in row) if k != x_key]
    keys = [k for k in keys if any(numeric(row.get(k)) for row in history)]
    if not keys:
        raise ValueError(f"training_curves: no numeric key besides {x_key!r} in {len(history)} history rows")
    cols = min(3, len(keys))
    fig = Figure(figsize=(4.2 * cols, 3.2 * math.ceil(len(keys) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(len(keys) / cols), cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        points = [
            (float(row[x_key]) if numeric(row.get(x_key)) else float(n), float(row[key]))  # type: ignore[arg-type]
            for n, row in enumerate(history)
            if numeric(row.get(key))
        ]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", ms=3)
        if "loss" in key and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    return _png(fig)


def trust_map(views: np.ndarray, title: str = "") -> bytes:
    """(V, 4, H, W) self-ensemble outputs (V >= 2, de-augmented): their mean in true colour and per-pixel std."""
    stack = np.asarray(views, np.float32)
    if stack.ndim != 4 or stack.shape[0] < 2 or stack.shape[1] != len(BANDS):
        raise ValueError(f"trust_map: expected (V >= 2, 4, H, W) ensemble views, got {stack.shape}")
    spread = stack.std(axis=0).mean(axis=0)  # per pixel, averaged over the four bands
    fig = Figure(figsize=(8.4, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(true_colour(stack.mean(axis=0)), interpolation="nearest")
    left.set_title(f"SR (mean of {stack.shape[0]} views)")
    shown = right.imshow(spread, cmap="magma", interpolation="nearest")
    right.set_title("std over views (low = trusted)")
    fig.colorbar(shown, ax=right, label="std (curated units, band mean)")
    for ax in (left, right):
        _no_ticks(ax)
    if title:
        fig.suptitle(title)
    return _png(fig)


def _map_panel(fig: Figure, ax: Axes, image: np.ndarray, vmax: float, title: str) -> None:
    """One (H, W) map in magma from 0 to `vmax` (NaN grey), titled, with its colour bar."""
    cmap = colormaps["magma"].with_extremes(bad="0.6")
    shown = ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize="small")
    _no_ticks(ax)


def spread_vs_error(
    sr: np.ndarray,
    error: np.ndarray,
    spread: np.ndarray,
    decile_spread: Sequence[float],
    decile_error: Sequence[float],
    spearman: float | None,
) -> bytes:
    """Rows: the samples of highest, median and lowest mean spread; cols: SR (N, 4, H, W), |SR - label| and spread
    ((N, H, W), NaN off the scored pixels); right: mean |error| per spread decile with Spearman's rho on it."""
    if np.shape(error) != np.shape(spread) or np.shape(sr) != (len(error), len(BANDS), *np.shape(error)[1:]):
        raise ValueError(f"spread_vs_error: expected (N, 4, H, W) SR and (N, H, W) maps, got {np.shape(sr)}, "
                         f"{np.shape(error)}, {np.shape(spread)}")  # fmt: skip
    per_sample = np.nanmean(np.where(np.isfinite(error), spread, np.nan).reshape(len(spread), -1), axis=1)
    rows = ranked_indices(per_sample)
    names = {"best": "highest spread", "median": "median spread", "worst": "lowest spread"}
    fig = Figure(figsize=(13.0, 3.0 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(len(rows), 4)
    vmax = {"error": np.nanpercentile(error[[i for _, i in rows]], 99), "spread": np.nanpercentile(spread, 99)}
    for r, (rank, i) in enumerate(rows):
        left = fig.add_subplot(grid[r, 0])
        left.imshow(true_colour(sr[i]), interpolation="nearest")
        left.set_title("SR (8-view mean)", fontsize="small")
        left.set_ylabel(f"{names[rank]} (#{i})", fontsize="small")
        _no_ticks(left)
        _map_panel(fig, fig.add_subplot(grid[r, 1]), error[i], vmax["error"], "|SR - label|")
        _map_panel(fig, fig.add_subplot(grid[r, 2]), spread[i], vmax["spread"], "spread (std of 8 views)")
    ax = fig.add_subplot(grid[:, 3])
    ax.plot(decile_spread, decile_error, marker="o", color=_SR)
    ax.set_xlabel("mean spread in the decile (curated units)")
    ax.set_ylabel("mean |SR - label| (curated units)")
    rho = "undefined (constant)" if spearman is None else f"{spearman:.3f}"
    ax.set_title(f"error by spread decile\nSpearman rho = {rho}")
    ax.grid(alpha=0.3)
    fig.suptitle("Trust: where the self-ensemble's views disagree against where SR is wrong (band means)")
    return _png(fig)


def reliability_diagram(levels: Sequence[float], coverage: Sequence[Sequence[float]], title: str = "") -> bytes:
    """Nominal level against the empirical coverage of the calibrated intervals, one line per band (`coverage`:
    [band][level]), with the diagonal and a +-3 point band around it."""
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    nominal = np.asarray(levels) * 100
    ax.fill_between(nominal, nominal - 3, nominal + 3, color="0.85", label="+-3 points")
    ax.plot(nominal, nominal, color="0.4", linestyle="--", linewidth=1, label="calibrated")
    for band, row in zip(BANDS, coverage, strict=True):
        ax.plot(nominal, np.asarray(row) * 100, label=band, linewidth=1.5)
    ax.set_xlabel("nominal level (%)")
    ax.set_ylabel("empirical coverage on the test pixels (%)")
    ax.set_title(title or "reliability of the calibrated intervals", fontsize="small")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def departure_map(shown: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], level: float) -> bytes:
    """Per sample (rows): SR, bicubic of the latest frame, the interval's half-width (band mean) and the pixels where
    SR departs from bicubic by more than the half-width in any band (candidates for invented detail)."""
    fig = Figure(figsize=(12.0, 3.0 * len(shown)), layout="constrained")
    grid = fig.add_gridspec(len(shown), 4)
    for r, (sr, bicubic, width, keep) in enumerate(shown):
        departs = (np.abs(sr - bicubic) > width).any(0) & keep
        panels = [(true_colour(sr), "SR (8-view mean)"), (true_colour(bicubic), "bicubic, latest frame")]
        for c, (image, name) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(image, interpolation="nearest")
            ax.set_title(name, fontsize="small")
            _no_ticks(ax)
        _map_panel(fig, fig.add_subplot(grid[r, 2]), width.mean(0), float(np.percentile(width, 99)), "half-width")
        ax = fig.add_subplot(grid[r, 3])
        ax.imshow(true_colour(sr), interpolation="nearest")
        ax.imshow(np.ma.masked_where(~departs, departs), cmap="autumn", alpha=0.8, interpolation="nearest")
        ax.set_title(f"|SR - bicubic| > {level:.0%} half-width: {departs.mean():.1%}", fontsize="small")
        _no_ticks(ax)
    return _png(fig)
