"""Evaluate: SR (one pass and self-ensemble) against every classical baseline on the test tiles; `reports/`.

Scores per test sample (patches, inside the training loss's border crop) and per block of the test tiles' cores (SR of
whole tiles, as `srpipe infer` makes them); cluster-bootstrap intervals by tile; the PROBA-V Kelvins score;
consistency with S2, opensr-test's correctness shares, perceptual distances; the downstream delineation test; with
the self-ensemble, how well its spread ranks SR's errors (`evaluation/trust.py`). Writes
`reports/metrics.json`, `samples.csv`, `tile_cores.csv`, `report.md` and the self-contained `index.html`.
"""

from __future__ import annotations

import dataclasses

import torch

from srpipe.config import CONSTRAINTS, Config
from srpipe.data.augment import ensemble_views
from srpipe.data.grid import tiles_by_id
from srpipe.data.normalise import load_stats
from srpipe.data.shards import shard_paths
from srpipe.errors import StageError
from srpipe.evaluation import baselines as bl
from srpipe.evaluation import report, summary
from srpipe.evaluation.context import Context, Patches, baseline_images, batches, load_context
from srpipe.evaluation.intervals import interval_metrics
from srpipe.evaluation.tiles import core_blocks, score_tile, shadowed_dates, tile_images, trusted_blocks
from srpipe.evaluation.trust import trust_of
from srpipe.metrics import cpsnr_score
from srpipe.models.consistency import latest_frame

KEEP_IMAGES = 4096  # test samples whose images are kept for the plots, consistency and the downstream test


@torch.no_grad()
def _sr(ctx: Context, lr: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"sr_one_pass", "sr" (the 8-view mean when infer.self_ensemble, else the one pass), "sr_views_std"}."""
    if not ctx.cfg.infer.self_ensemble:
        one = ctx.model.forward(lr, mask).clamp(0, 1)
        return {"sr_one_pass": one, "sr": one}
    stack = torch.stack(ensemble_views(ctx.model.forward, lr, mask))
    return {"sr_one_pass": stack[0].clamp(0, 1), "sr": stack.mean(0).clamp(0, 1), "sr_views_std": stack.std(0).mean(1)}


@torch.no_grad()
def _constraint_variants(ctx: Context, lr: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"sr_one_pass_<setting>": (B, 4, H, W)}: one pass of the same weights under each other `model.consistency`
    setting; the constraint has no weights, so this is SR with and without it (the run's own is "sr_one_pass")."""
    if not hasattr(ctx.model.net, "constraint"):  # a net without the constraint
        return {}
    own = ctx.model.constraint or ctx.model.net.constraint
    return {
        summary.CONSTRAINT_PREFIX + mode: ctx.model.net(lr, mask, dataclasses.replace(own, mode=mode)).clamp(0, 1)
        for mode in CONSTRAINTS
        if mode != own.mode
    }


def _methods(ctx: Context, lr: torch.Tensor, mask: torch.Tensor, lr_dates: list, hr_dates: list) -> dict:
    """Every method's (B, 4, H, W) output in label units: SR one pass and ensemble, the baselines (SIMPLE, unsharp)."""
    return {**_sr(ctx, lr, mask), **baseline_images(ctx, lr, mask, lr_dates, hr_dates)}


def _tune(ctx: Context) -> None:
    """Tune the unsharp-masked baseline (base, sigma, amount) on the validation samples, by mean cPSNR."""
    paths = shard_paths(ctx.cfg.layout.datasets, "val")
    if not paths:
        return

    def simple_batches():
        for b in batches(paths, ctx.cfg.evaluate.batch_size):
            simple = bl.simple_baselines(
                b["lr"], b["lr_mask"], b["lr_dates"], b["hr_date"], ctx.model.scale, ctx.lr_to_hr
            )
            yield simple, b["hr"], b["hr_mask"]

    ctx.unsharp, ctx.unsharp_val_cpsnr = bl.tune_unsharp(simple_batches(), cpsnr_score(ctx.border, ctx.max_shift))


def _keep(patches: Patches, batch: dict, methods: dict) -> None:
    """Keep the batch's images (float16) while fewer than KEEP_IMAGES are kept."""
    kept = sum(len(x) for x in patches.images["hr"])
    if kept >= KEEP_IMAGES:
        return
    frame, frame_mask = latest_frame(batch["lr"], batch["lr_mask"])
    for name, image in {**methods, "hr": batch["hr"], "lr_frame": frame}.items():
        patches.images[name].append(image.half())
    for name, mask in {"hr_mask": batch["hr_mask"], "lr_frame_mask": frame_mask}.items():
        patches.images[name].append(mask)


def _score_patches(ctx: Context, split: str = "test") -> Patches:
    """Score every sample of `split` with every method (inside the border crop)."""
    paths = shard_paths(ctx.cfg.layout.datasets, split)
    if not paths:
        raise StageError(f"no {split} shards in {ctx.cfg.layout.datasets}; run `srpipe curate` (with >= 3 tiles)")
    patches = Patches()
    for batch in batches(paths, ctx.cfg.evaluate.batch_size):
        patches.first = patches.first or (batch["lr"][:1], batch["lr_mask"][:1])
        methods = _methods(ctx, batch["lr"], batch["lr_mask"], batch["lr_dates"], batch["hr_date"])
        methods |= _constraint_variants(ctx, batch["lr"], batch["lr_mask"])
        views_std = methods.pop("sr_views_std", None)
        rows = [{"tile_id": t, "hr_date": d} for t, d in zip(batch["tile_id"], batch["hr_date"], strict=True)]
        for name, image in methods.items():
            for metric, values in ctx.score(image, batch["hr"], batch["hr_mask"]).items():
                for row, value in zip(rows, values, strict=True):
                    row[f"{name}_{metric}"] = float(value)
        patches.rows += rows
        _keep(patches, batch, methods if views_std is None else {**methods, "sr_views_std": views_std[:, None]})
    return patches


def _test_tiles(cfg: Config) -> tuple[list, set]:
    """The test split's tiles (the curation's split) and the shadow filter's (tile, date) flags; ([], set()) for a
    run without curation stats or grid."""
    try:
        stats = load_stats(cfg.run_path)
        grid = tiles_by_id(cfg.run_path)
    except (StageError, OSError, KeyError):
        return [], set()
    tiles = [grid[t] for t, s in sorted(stats["split"].items()) if s == "test" and t in grid]
    return tiles, shadowed_dates(stats.get("shadow_flags", {}))


def _score_cores(ctx: Context) -> tuple[list[dict], dict]:
    """Score rows of every trusted core block of every test tile and label date (SR of the whole tile), and counts."""
    rows, counts = [], {"images": 0, "blocks": 0, "blocks_noisy": 0}
    block = ctx.cfg.curate.lr_patch_px * ctx.model.scale
    tiles, shadowed = _test_tiles(ctx.cfg)
    for image in tile_images(ctx.cfg, ctx.model, tiles, shadowed):
        _, corners = core_blocks(image.hr, image.core, block, ctx.border)
        keep = trusted_blocks(image, corners, block, ctx.cfg)
        counts = {"images": counts["images"] + 1, "blocks": counts["blocks"] + len(keep),
                  "blocks_noisy": counts["blocks_noisy"] + int((~keep).sum())}  # fmt: skip
        if keep.any():
            methods = _methods(ctx, image.lr, image.lr_mask, [image.lr_dates], [image.hr_date])
            methods.pop("sr_views_std", None)
            rows += score_tile(image, methods, keep, block, ctx.border, ctx.score)
    return rows, counts


def patch_scores(cfg: Config, splits: tuple[str, ...] = ("test",)) -> dict[str, dict]:
    """Per split, `summary.scored` of its samples as `srpipe evaluate` scores them: every baseline (unsharp tuned on
    val, once for all splits), the strongest, and the model's one pass (and ensemble, when infer.self_ensemble)."""
    ctx = load_context(cfg)
    _tune(ctx)
    return {split: summary.scored(_score_patches(ctx, split).rows) for split in splits}


def evaluate(cfg: Config) -> dict:
    """Score SR and the baselines on the test samples and tile cores; write every report of `reports/`."""
    ctx = load_context(cfg)
    _tune(ctx)
    patches = _score_patches(ctx)
    cores, counts = _score_cores(ctx)
    metrics = summary.metrics(ctx, patches, cores)
    if metrics["tile_cores"]:
        metrics["tile_cores"]["filtered"] = counts
    metrics |= summary.extras(ctx, patches)
    metrics["constraint"] = summary.constraint_table(ctx, patches, metrics)
    if ctx.cfg.infer.self_ensemble:  # the views' spread is kept: does it point at SR's errors?
        metrics["trust"] = trust_of(patches, ctx.border).as_json()
    intervals = interval_metrics(ctx)
    if intervals is not None:  # a calibrated model: how well its intervals cover the test pixels
        metrics["calibrated_intervals"], patches.interval_maps = intervals
    report.write_all(ctx, metrics, patches, cores)
    main = metrics["sr_one_pass"]
    return {
        "sr_one_pass_cpsnr": round(main["cpsnr"], 3),
        "strongest_baseline": metrics["strongest_baseline"],
        "baseline_cpsnr": round(metrics["baselines"][metrics["strongest_baseline"]]["cpsnr"], 3),
        "cpsnr_win_share": round(main["cpsnr_win_share"], 3),
        "samples": metrics["n_samples"],
    }
