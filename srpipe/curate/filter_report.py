"""`curation/report.md`: each filter's counts (in, removed, kept) with its figure, and the normalisation."""

from __future__ import annotations

from pathlib import Path

from srpipe import state

_FILTERS = (
    ("s2_clouds", "S2 clouds", "frames with source cloud cover above `s2_max_cloud_cover` or an incomplete data mask"),
    ("vhr_clouds", "label clouds", "label frames whose blue-threshold cloud cover is above `vhr_max_cloud_cover`"),
    ("shadows", "shadows", "samples of a tile at a label date when a neighbour is over `shadow_cloud_cover` cloudy"),
    ("noise", "noise", "remaining samples with SSIM, PSNR or MSE ratio against bicubic S2 outside the thresholds"),
)


def report_text(stats: dict) -> str:
    """Markdown of the curation decisions from `stats.json`'s dict."""
    s, fig, filters = stats["settings"], stats["figures"], stats["filters"]
    lines = [
        "# Curation report",
        "",
        f"- tiles curated: {len(stats['tiles_curated'])}; failed: {len(stats['tiles_failed'])}",
        "- samples written: " + ", ".join(f"{k} {v}" for k, v in stats["n_samples"].items()),
        "",
        "## Filters, in the order they apply",
        "",
        "| filter | what it removes | unit | in | removed | kept |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, name, what in _FILTERS:
        f = filters[key]
        lines.append(f"| {name} | {what} | {f['unit']} | {f['in']} | {f['removed']} | {f['kept']} |")
    lines += [
        "",
        f"Settings: label cloud = blue > {s['vhr_cloud_threshold']:g} (label units), blue >= "
        f"{s['vhr_cloud_whiteness']:g} x max(green, red), not on every label date; keep frames with cover <= "
        f"{s['vhr_max_cloud_cover']:g} (label) and <= {s['s2_max_cloud_cover']:g} (S2); shadow flag when a neighbour "
        f"is over {s['shadow_cloud_cover']:g} cloudy ({filters['shadows']['tile_dates']} (tile, date) pairs flagged); "
        f"noise: keep SSIM > {s['noise_min_ssim']:g}, PSNR > {s['noise_min_psnr_db']:g} dB, MSE ratio < "
        f"{s['noise_max_mse_ratio']:g} (shifts up to {s['noise_max_shift_px']} px). "
        "Per-sample decisions: `samples.csv`.",
        "",
        "### Clouds",
        "",
        f"![cloud cover]({fig['cloud_cover']})",
        "",
        "Label blue values of random tiles (choose `curate.vhr_cloud_threshold` from the bright tail; "
        "`python -m srpipe.curate.filter_plots RUN_DIR --threshold X` draws it from the EOPatches before curating):",
        "",
        f"![blue histograms]({fig['blue_histograms']})",
        "",
        "### Noise filter",
        "",
        f"![SSIM vs PSNR]({fig['scatter']})",
        "",
        "## Normalisation",
        "",
        "Labels: divided per tile by their per-band medians over cloud-free pixels (`label_medians`). S2 and the "
        "histogram-matched labels: divided by their region's cloud-free S2 medians (`regions.*.s2_factors`). "
        "Then per-band "
        f"percentiles {stats['percentiles'][0]:g} and {stats['percentiles'][1]:g} over the training tiles map them to "
        f"[0, 1], clipped. Histogram matching reference: `{s['histmatch_reference']}`.",
        "",
        f"![tile statistics]({fig['tile_statistics']})",
        "",
        "| region | band | S2 factor | S2 low | S2 high | label low | label high |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for region, r in stats["regions"].items():
        for i, band in enumerate(stats["bands"]):
            lr, hr = r["lr_scale"], r["hr_scale"]
            lines.append(
                f"| {region} | {band} | {r['s2_factors'][i]:.4f} | {lr['low'][i]:.4f} | {lr['high'][i]:.4f} "
                f"| {hr['low'][i]:.4f} | {hr['high'][i]:.4f} |"
            )
    lines += ["", "Scales above are on raw S2 values (what inference applies); labels are matched to S2 radiometry."]
    if stats["tiles_failed"]:
        lines += ["", "## Failed tiles (left out; re-run `srpipe curate` after fixing)", ""]
        lines += [f"- {t}: {e}" for t, e in stats["tiles_failed"].items()]
    return "\n".join(lines) + "\n"


def write_report(path: Path, stats: dict) -> None:
    """Write `report.md` atomically."""
    state.write_text(path, report_text(stats))
