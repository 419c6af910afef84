"""Evaluation only (tests, benchmarks): precision and recall of the curation filters against what the sample planted.

Curation never calls this module; it reads the EOPatches' TRUTH_* masks, which only the `sample` source writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from srpipe import eopatch as ep
from srpipe.config import Config


def _precision_recall(predicted: np.ndarray, actual: np.ndarray) -> dict:
    tp = int((predicted & actual).sum())
    return {
        "flagged": int(predicted.sum()),
        "true": int(actual.sum()),
        "true_flagged": tp,
        "precision": tp / max(int(predicted.sum()), 1),
        "recall": tp / max(int(actual.sum()), 1),
    }


def filter_truth(cfg: Config, rows: list[dict], per_tile: dict[str, dict], min_share: float = 0.01) -> dict:
    """Precision/recall of the label-cloud (frames), shadow and noise (samples) filters against the planted truth.

    A label frame is truly cloudy when TRUTH_VHR_CLOUDS covers more than `vhr_max_cloud_cover` of it. A sample is truly
    shadowed when TRUTH_VHR_SHADOWS covers more than `min_share` of its label; truly noisy (among samples that the
    shadow filter left) when planted clouds or shadows cover more than `min_share` of its label or of its S2 reference.
    """
    s, run = cfg.source.scale, Path(cfg.run_path)
    p = cfg.curate.lr_patch_px
    frames_pred, frames_true, shadow_pred, shadow_true, noise_pred, noise_true = [], [], [], [], [], []
    for tile, stats in per_tile.items():
        patch = ep.load_patch(run, tile, s)
        vhr_c, vhr_s = patch[ep.TRUTH_VHR_CLOUDS][..., 0], patch[ep.TRUTH_VHR_SHADOWS][..., 0]
        s2_c, s2_s = patch[ep.TRUTH_S2_CLOUDS][..., 0], patch[ep.TRUTH_S2_SHADOWS][..., 0]
        frames_pred += [not k for k in stats["vhr"]["kept"]]
        frames_true += (vhr_c.mean(axis=(1, 2)) > cfg.curate.vhr_max_cloud_cover).tolist()
        vhr_index = {d: i for i, d in enumerate(stats["vhr"]["dates"])}
        s2_index = {d: i for i, d in enumerate(stats["s2"]["dates"])}
        for r in (r for r in rows if r["tile_id"] == tile):
            t, f, y, x = vhr_index[r["hr_date"]], s2_index[r["ref_date"]], int(r["y"]), int(r["x"])
            hr_win = (t, slice(y * s, (y + p) * s), slice(x * s, (x + p) * s))
            lr_win = (f, slice(y, y + p), slice(x, x + p))
            shadowed = vhr_s[hr_win].mean() > min_share
            shadow_pred.append(_flag(r["shadow"]))
            shadow_true.append(shadowed)
            if not _flag(r["shadow"]):
                noise_pred.append(_flag(r["noisy"]))
                noise_true.append(
                    max(vhr_c[hr_win].mean(), vhr_s[hr_win].mean(), s2_c[lr_win].mean(), s2_s[lr_win].mean())
                    > min_share
                )
    return {
        "vhr_clouds": _precision_recall(np.array(frames_pred), np.array(frames_true)),
        "shadows": _precision_recall(np.array(shadow_pred), np.array(shadow_true)),
        "noise": _precision_recall(np.array(noise_pred, bool), np.array(noise_true, bool)),
        "min_share": min_share,
    }


def _flag(value: bool | str) -> bool:
    return value is True or value == "True"
