"""The evaluation's files: `reports/metrics.json`, `samples.csv`, `tile_cores.csv`, `report.md` and `index.html`."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from srpipe import state
from srpipe.config import CONSTRAINTS
from srpipe.data.augment import ensemble_views
from srpipe.evaluation import plots
from srpipe.evaluation.context import Context, Patches
from srpipe.evaluation.html import Figure, Section, Table, write_html
from srpipe.evaluation.intervals import interval_section
from srpipe.evaluation.summary import CONSTRAINT_PREFIX
from srpipe.evaluation.trust import trust_maps
from srpipe.metrics import METRICS

NAMES = {
    "sr": "SR (8-view ensemble)",
    "sr_one_pass": "SR one pass",
    "bicubic_latest": "bicubic, latest clear value",
    "bicubic_closest": "bicubic, closest to the label date",
    "bicubic_median": "bicubic, median of the stack",
    "bicubic_unsharp": "bicubic + unsharp mask (tuned on val)",
    "bicubic_frame": "bicubic of the frame compared with",
    **{CONSTRAINT_PREFIX + c: f"SR one pass, constraint {c} (same weights)" for c in CONSTRAINTS},
}


def _write_csv(path, rows: list[dict]) -> None:
    if not rows:
        return
    with state.atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _ci(values) -> str:
    return f"[{values[0]:+.2f}, {values[1]:+.2f}]" if values else ""


def _score_table(caption: str, scored: dict) -> Table:
    """Means of every method, SR's gain over the strongest baseline and win share with 95 % intervals."""
    rows = []
    for name in ("sr_one_pass", "sr"):
        e = scored[name]
        rows.append([NAMES.get(name, name), *(e[m] for m in METRICS), e["cpsnr_gain"], _ci(e["cpsnr_gain_ci"]),
                     100 * e["cpsnr_win_share"], e["kelvins"]])  # fmt: skip
    for name, e in scored["baselines"].items():
        mark = " (strongest)" if name == scored["strongest_baseline"] else ""
        rows.append([NAMES.get(name, name) + mark, *(e[m] for m in METRICS), None, "", None, None])
    header = ["method", "MSE", "PSNR (dB)", "SSIM", "cPSNR (dB)", "cPSNR gain (dB)", "95 % CI by tile",
              "wins (%)", "Kelvins"]  # fmt: skip
    return Table(caption, header, rows)


def headline(metrics: dict) -> str:
    """One sentence: SR one pass against the strongest baseline, on patches and tile cores."""
    one, base = metrics["sr_one_pass"], metrics["strongest_baseline"]
    text = (
        f"SR (one pass) scores {one['cpsnr']:.2f} dB cPSNR against {metrics['baselines'][base]['cpsnr']:.2f} dB for "
        f"the strongest baseline ({NAMES.get(base, base)}): {one['cpsnr_gain']:+.2f} dB "
        f"(95 % CI {_ci(one['cpsnr_gain_ci'])}), better on {100 * one['cpsnr_win_share']:.0f} % of "
        f"{metrics['n_samples']} test patches (inside the {metrics['border_crop_px']} px border crop of the loss)."
    )
    cores = metrics.get("tile_cores")
    if cores:
        c = cores["sr_one_pass"]
        text += (
            f" On the test tiles' cores (SR of whole tiles, {cores['n']} blocks): {c['cpsnr_gain']:+.2f} dB over "
            f"{NAMES.get(cores['strongest_baseline'], cores['strongest_baseline'])}, better on "
            f"{100 * c['cpsnr_win_share']:.0f} %."
        )
    return text


def _markdown(metrics: dict, scored_tables: list[Table]) -> str:
    lines = ["# Evaluation on the test tiles", "", headline(metrics), ""]
    for table in scored_tables:
        lines += [f"## {table.caption}", "", "| " + " | ".join(table.header) + " |"]
        lines += ["| " + " | ".join("---" for _ in table.header) + " |"]
        for row in table.rows:
            cells = [f"{v:.4f}" if isinstance(v, float) and abs(v) < 1 else f"{v:.2f}" if isinstance(v, float)
                     else "" if v is None else str(v) for v in row]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["The full report, with plots, is index.html beside this file (opens from disk)."]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def _trust_png(ctx: Context, patches: Patches) -> bytes | None:
    """The self-ensemble's 8 views of the first test sample, as a trust map (per-pixel spread)."""
    if not ctx.cfg.infer.self_ensemble or patches.first is None:
        return None
    lr, mask = patches.first
    views = torch.stack(ensemble_views(ctx.model.forward, lr, mask))[:, 0]
    return plots.trust_map(views.clamp(0, 1).numpy(), "self-ensemble of the first test sample")


def _spread_figure(ctx: Context, metrics: dict, patches: Patches) -> Figure | None:
    """The spread against the error (metrics.json's "trust"), when evaluate computed it (infer.self_ensemble)."""
    trust = metrics.get("trust")
    if trust is None:
        return None
    error, spread = trust_maps(patches, ctx.border)
    png = plots.spread_vs_error(
        patches.array("sr"), error, spread, trust["mean_spread"], trust["mean_abs_error"], trust["spearman"]
    )
    rho = "undefined (a constant)" if trust["spearman"] is None else f"{trust['spearman']:+.2f}"
    caption = (
        f"trust: where the 8 views disagree (spread, the .std.tif mosaics) against where SR is wrong; Spearman "
        f"{rho} over {trust['n_pixels']} test pixels (1: the spread ranks the errors perfectly, 0: no relation)"
    )
    return Figure(png, caption)


def _figures(ctx: Context, metrics: dict, patches: Patches) -> list[Figure]:
    base = metrics["strongest_baseline"]
    n = len(patches.array("hr"))
    rows = patches.rows[:n]
    col = {k: np.array([r[k] for r in rows]) for k in rows[0] if k not in ("tile_id", "hr_date")}
    tiles = [r["tile_id"] for r in rows]
    sr_scores = {m: col[f"sr_one_pass_{m}"] for m in ("cpsnr", "psnr", "ssim")}
    base_scores = {m: col[f"{base}_{m}"] for m in ("cpsnr", "psnr", "ssim")}
    figures = [
        Figure(plots.metric_histograms(sr_scores, base_scores, base), "per-sample scores, SR one pass vs " + base),
        Figure(plots.score_scatter(col[f"{base}_cpsnr"], col["sr_one_pass_cpsnr"], tiles, base), "cPSNR per sample"),
        Figure(
            plots.sample_grid(
                patches.array("lr_frame"),
                patches.array(base),
                patches.array("sr_one_pass"),
                patches.array("hr"),
                col["sr_one_pass_cpsnr"],
                col[f"{base}_cpsnr"],
                tiles,
                1,
                base,
            ),
            "best, median and worst samples by SR's cPSNR gain",
        ),
        Figure(
            plots.band_distributions(patches.array("sr"), patches.array("lr_frame"), patches.array("hr")),
            "band values: SR should follow S2 (its radiometry), not the label sensor",
        ),
    ]
    trust = _trust_png(ctx, patches)
    if trust is not None:
        figures.append(Figure(trust, "trust map: where the eight views of the self-ensemble disagree"))
    spread = _spread_figure(ctx, metrics, patches)
    return figures if spread is None else [*figures, spread]


def _model_section(ctx: Context) -> Section:
    folder = ctx.cfg.layout.model(ctx.cfg.train.name)
    history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").exists() else []
    figures = [Figure(plots.training_curves(history), "training curves (per epoch)")] if history else []
    best = history and max(history, key=lambda r: r.get("val_cpsnr", -1e9))
    text = [f"Model {ctx.cfg.train.name}: {len(history)} epochs"]
    if best:
        text[0] += f", best validation cPSNR {best['val_cpsnr']:.2f} dB (bicubic {best['val_bicubic_cpsnr']:.2f} dB)"
    if ctx.cfg.train.init_from:
        text.append(f"Fine-tuned from {ctx.cfg.train.init_from} (train.init_from).")
    return Section("Model and training", paragraphs=text, figures=figures)


def _consistency_table(cons: dict) -> Table:
    """Per method: MAE and bias per band, MAE, spectral angle; the verdict against bicubic of the same frame."""
    ref = cons[cons.get("claims", "bicubic_frame")] if cons.get("claims") in cons else None
    rows = []
    for name, c in cons.items():
        if not isinstance(c, dict):
            continue
        verdict = "" if ref is None or c is ref else ("closer" if c["mae"] <= ref["mae"] else "further")
        rows.append([NAMES.get(name, name), *c["mae_per_band"], *c["bias_per_band"], c["mae"], c["sam_deg"], verdict])
    caption = (
        f"Consistency with S2: degraded back to S2 (PSF sigma {cons['psf_sigma_label_px']} label px, area mean) "
        f"against {cons['reference']}, label units; claims are against bicubic of that same frame"
    )
    bands = ("B02", "B03", "B04", "B08")
    header = ["method", *(f"MAE {b}" for b in bands), *(f"bias {b}" for b in bands), "MAE", "spectral angle (deg)",
              "than bicubic of the frame"]  # fmt: skip
    return Table(caption, header, rows)


def _constraint_table(con: dict) -> Table:
    """SR one pass with and without the consistency constraint (the same weights), beside bicubic of the frame."""
    rows = []
    for setting, r in con["rows"].items():
        own = " (the run's)" if setting == con["run_setting"] else ""
        gain = f"{r['cpsnr_gain']:+.2f} {_ci(r['cpsnr_gain_ci'])}"
        shares = "/".join(f"{r[k]:.2f}" for k in ("improvement", "omission", "hallucination"))
        rows.append([f"SR one pass, {setting}{own}", gain, 100 * r["cpsnr_win_share"], r["kelvins"], shares,
                     r["mae"], *r["bias_per_band"], r["sam_deg"]])  # fmt: skip
    frame, base = con["bicubic_frame"], con["strongest_baseline"]
    rows.append([NAMES["bicubic_frame"], "", None, None, "", frame["mae"], *frame["bias_per_band"], frame["sam_deg"]])
    caption = (
        f"SR with and without the consistency constraint (model.consistency; the same weights, mu "
        f"{con['regularisation']}): cPSNR gain over the strongest baseline ({NAMES.get(base, base)}) "
        "with its 95 % interval by tile, and consistency with the latest clear S2 frame against bicubic of that frame"
    )
    header = ["method", "cPSNR gain dB [95 %]", "won %", "Kelvins", "impr./omis./halluc.", "MAE",
              *(f"bias {b}" for b in ("B02", "B03", "B04", "B08")), "spectral angle (deg)"]  # fmt: skip
    return Table(caption, header, rows)


def _extras_tables(metrics: dict) -> list[Table]:
    tables = [_constraint_table(metrics["constraint"])] if metrics.get("constraint") else []
    cons = metrics.get("consistency")
    if cons:
        tables.append(_consistency_table(cons))
    corr = metrics.get("correctness")
    if corr:
        rows = [[NAMES.get(n, n), *(corr[n][k]["mean"] for k in ("improvement", "omission", "hallucination"))]
                for n in corr if isinstance(corr[n], dict)]  # fmt: skip
        caption = f"Correctness ({corr['source']}): shares of the detail added over {corr['reference_lr_up']}"
        tables.append(Table(caption, ["method", "improvement", "omission", "hallucination"], rows))
    perc = metrics.get("perceptual")
    if perc:
        rows = [[NAMES.get(n, n), v["feature"], v["style"]] for n, v in perc.items()]
        tables.append(Table("Perceptual distances in the delineation net (lower is better)",
                            ["method", "feature", "style (Gram)"], rows))  # fmt: skip
    mcc = metrics.get("mcc")
    if mcc:
        keys = ("mcc_extent", "mcc_boundary", "mcc_distance", "over_segmentation", "under_segmentation",
                "border_error_px")  # fmt: skip
        rows = [[NAMES.get(n, n), *(m[k] for k in keys)] for n, m in mcc["methods"].items()]
        rows.append(["SR - baseline", *(mcc["delta"][k] for k in keys)])
        tables.append(Table(f"Downstream field delineation ({mcc['settings']['steps']} steps each; reference: "
                            f"{mcc['reference']})", ["method", *keys], rows))  # fmt: skip
    return tables


def _adaptation_section(ctx: Context, metrics: dict) -> Section | None:
    """`evaluate --scene --adapt`'s adapted report: RUN's model as it was (`reports-unadapted/`) beside the adapted."""
    before_path = ctx.cfg.layout.reports.with_name("reports-unadapted") / "metrics.json"
    if not (ctx.cfg.train.init_from and before_path.exists()):
        return None
    before = json.loads(before_path.read_text())
    rows = []
    for name, m in (("as it came (reports-unadapted/)", before), ("adapted to this scene", metrics)):
        one, eight = m["sr_one_pass"], m["sr"]
        rows.append([name, m["strongest_baseline"], one["cpsnr_gain"], _ci(one["cpsnr_gain_ci"]),
                     100 * one["cpsnr_win_share"], eight["cpsnr_gain"], one["kelvins"]])  # fmt: skip
    header = ["model", "strongest baseline", "one-pass gain (dB)", "95 % CI", "won (%)", "8-view gain (dB)", "Kelvins"]
    text = [f"The model fine-tuned on this scene's training tiles from {ctx.cfg.train.init_from} for up to "
            f"{ctx.cfg.train.max_minutes:g} min (Wald protocol: the scene's own 10 m is the label), scored on the same "
            "test samples as before."]  # fmt: skip
    return Section("Before and after adaptation", paragraphs=text, tables=[Table("cPSNR", header, rows)])


def write_all(ctx: Context, metrics: dict, patches: Patches, cores: list[dict]) -> None:
    """Every file of `reports/` (atomically)."""
    reports = ctx.cfg.layout.reports
    state.write_json(reports / "metrics.json", metrics)
    _write_csv(reports / "samples.csv", patches.rows)
    _write_csv(reports / "tile_cores.csv", cores)
    tables = [_score_table(f"Test patches ({metrics['n_samples']} samples, {metrics['n_tiles']} tiles)", metrics)]
    if metrics.get("tile_cores"):
        c = metrics["tile_cores"]
        tables.append(_score_table(f"Test tile cores ({c['n']} blocks of whole-tile SR, {c['n_tiles']} tiles)", c))
    state.write_text(reports / "report.md", _markdown(metrics, tables))
    curation = ctx.cfg.layout.curation / "report.md"
    sections = [
        Section("Summary", paragraphs=[headline(metrics), _method_note(metrics)], tables=tables),
        *filter(None, [_adaptation_section(ctx, metrics)]),
        Section("Plots", figures=_figures(ctx, metrics, patches)),
        *filter(None, [interval_section(metrics, patches.interval_maps)]),
        Section("Consistency, correctness, perception and the downstream test", tables=_extras_tables(metrics)),
        _model_section(ctx),
        Section("Curation", preformatted=curation.read_text() if curation.exists() else "no curation report"),
        Section(
            "Run configuration",
            preformatted=ctx.cfg.layout.config.read_text() if ctx.cfg.layout.config.exists() else "",
        ),
    ]
    write_html(reports / "index.html", f"srpipe evaluation: {ctx.cfg.plan.region or ctx.cfg.run_dir}", sections)


def _method_note(metrics: dict) -> str:
    return (
        "Scores are in [0, 1] label units after the curation's scaling, on the label's clear pixels inside the "
        f"training loss's {metrics['border_crop_px']} px border crop. cPSNR (PROBA-V): best integer shift up to "
        f"{metrics['cpsnr_max_shift_px']} px, per-band brightness bias removed. Baselines map S2 onto the label's "
        "scale first. The Kelvins score is the mean of baseline cPSNR / SR cPSNR (below 1: SR wins). Intervals: 95 % "
        "cluster bootstrap over test tiles (samples of one tile are not independent)."
    )
