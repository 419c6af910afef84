"""The downstream test on a run: delineation trained on SR and on the strongest baseline's images of the training
split, scored on the test samples against the reference parcels (the labels' felzenszwalb proxy, or real parcels)."""

from __future__ import annotations

import numpy as np
import torch

from srpipe.data.shards import shard_paths
from srpipe.evaluation import stats
from srpipe.evaluation.context import Context, Patches, baseline_images, batches
from srpipe.evaluation.downstream import downstream_delineation, reference_from_labels

MAX_SAMPLES = 1024  # training and test samples per method (the demo spends about a minute on the whole test)
MCC_KEYS = ("mcc_extent", "mcc_boundary", "mcc_distance")


def _train_images(ctx: Context, base: str) -> dict[str, np.ndarray]:
    """(N, 4, H, W) "sr" (one pass) and `base` images, label and mask of up to MAX_SAMPLES training samples."""
    parts: dict[str, list[torch.Tensor]] = {"sr": [], base: [], "hr": [], "hr_mask": []}
    n = 0
    for batch in batches(shard_paths(ctx.cfg.layout.datasets, "train"), ctx.cfg.evaluate.batch_size):
        with torch.no_grad():
            sr = ctx.model.forward(batch["lr"], batch["lr_mask"])
        baseline = baseline_images(ctx, batch["lr"], batch["lr_mask"], batch["lr_dates"], batch["hr_date"])[base]
        for key, value in (("sr", sr), (base, baseline), ("hr", batch["hr"])):
            parts[key].append(value.clamp(0, 1))
        parts["hr_mask"].append(batch["hr_mask"])
        n += len(batch["hr"])
        if n >= MAX_SAMPLES:
            break
    return {k: torch.cat(v)[:MAX_SAMPLES].numpy() for k, v in parts.items()}


def downstream(ctx: Context, patches: Patches, base: str) -> dict | None:
    """metrics.json's "mcc": pooled MCCs and parcel scores per method, deltas SR - baseline with intervals by tile."""
    if ctx.cfg.evaluate.downstream_budget_s <= 0:
        return None
    train = _train_images(ctx, base)
    n_test = min(MAX_SAMPLES, len(patches.array("hr")))
    test = {"sr": patches.array("sr_one_pass")[:n_test], base: patches.array(base)[:n_test].clip(0, 1)}
    hr, mask = patches.array("hr")[:n_test], patches.array("hr_mask")[:n_test].astype(bool)
    dcfg = ctx.cfg.delineation
    reference = {
        "train": reference_from_labels(train["hr"], dcfg, train["hr_mask"]),
        "test": reference_from_labels(hr, dcfg, mask),
    }
    inputs = {name: {"train": train[name], "test": test[name]} for name in ("sr", base)}
    result = downstream_delineation(inputs, reference, ctx.cfg.evaluate.downstream_budget_s, dcfg.seed, baseline=base)
    groups = np.array([r["tile_id"] for r in patches.rows[:n_test]])
    per_sample = {name: scores.pop("per_sample") for name, scores in result["methods"].items()}
    delta_ci = {}
    for key in MCC_KEYS:  # samples where both MCCs are defined (a constant reference has none)
        diff = np.array(per_sample["sr"][key], np.float64) - np.array(per_sample[base][key], np.float64)
        ok = np.isfinite(diff)
        delta_ci[key] = list(stats.bootstrap_ci(diff[ok], groups[ok])) if ok.any() else None
    return {
        "reference": "felzenszwalb segments of the labels (a proxy for parcels, not real fields)",
        "baseline": base,
        "sr": "sr_one_pass",
        "n_train": len(train["hr"]),
        "n_test": n_test,
        "settings": result["settings"],
        "methods": result["methods"],
        "delta": result["delta"][f"sr-{base}"],
        "delta_ci": delta_ci,
        "seconds": result["seconds"],
    }
