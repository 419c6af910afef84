"""`reports/metrics.json` from the score rows: means per method, the strongest baseline, SR's gains and win shares with
cluster-bootstrap intervals by tile, the Kelvins score; then consistency, correctness, perceptual and downstream."""

from __future__ import annotations

import numpy as np
import torch

from srpipe.config import CONSTRAINTS
from srpipe.evaluation import stats
from srpipe.evaluation.context import Context, Patches
from srpipe.evaluation.s2_consistency import consistency_scores, correctness_shares
from srpipe.metrics import METRICS
from srpipe.models.highresnet import bicubic

SR_METHODS = ("sr", "sr_one_pass")
CONSTRAINT_PREFIX = "sr_one_pass_"  # "sr_one_pass_<setting>": the same weights under another model.consistency


def is_sr(name: str) -> bool:
    """Whether method `name` is SR (the run's, or the same weights under another constraint), not a baseline."""
    return name in SR_METHODS or name.startswith(CONSTRAINT_PREFIX)


def methods_in(rows: list[dict]) -> list[str]:
    """Method names of score rows ("<method>_cpsnr" keys), SR first."""
    names = [k[: -len("_cpsnr")] for k in rows[0] if k.endswith("_cpsnr")]
    return sorted(names, key=lambda n: (not is_sr(n), n))


def column(rows: list[dict], key: str) -> np.ndarray:
    """(N,) float64 of `key` over the rows."""
    return np.array([r[key] for r in rows], np.float64)


def _means(rows: list[dict], method: str) -> dict[str, float]:
    return {m: float(np.nanmean(column(rows, f"{method}_{m}"))) for m in METRICS}


def strongest(rows: list[dict]) -> str:
    """The baseline of highest mean cPSNR."""
    names = [n for n in methods_in(rows) if not is_sr(n)]
    return max(names, key=lambda n: np.nanmean(column(rows, f"{n}_cpsnr")))


def _sr_entry(rows: list[dict], method: str, base: str, groups: np.ndarray) -> dict:
    """Means of one SR method plus its cPSNR gain over `base` and win share, each with a 95 % interval by tile."""
    sr, ref = column(rows, f"{method}_cpsnr"), column(rows, f"{base}_cpsnr")
    gain = sr - ref
    return {
        **_means(rows, method),
        "cpsnr_gain": float(gain.mean()),
        "cpsnr_gain_ci": list(stats.bootstrap_ci(gain, groups)),
        "cpsnr_win_share": stats.win_share(sr, ref),
        "cpsnr_win_share_ci": list(stats.win_share_ci(sr, ref, groups)),
        "kelvins": stats.kelvins_score(ref, sr),
        "kelvins_ci": list(stats.bootstrap_ci(ref / sr, groups)),
    }


def scored(rows: list[dict]) -> dict:
    """Means of every method, the strongest baseline, and SR's entries against it (for patches or core blocks)."""
    base = strongest(rows)
    groups = np.array([r["tile_id"] for r in rows])
    names = methods_in(rows)
    return {
        "n": len(rows),
        "n_tiles": int(np.unique(groups).size),
        "baselines": {n: _means(rows, n) for n in names if not is_sr(n)},
        "strongest_baseline": base,
        **{m: _sr_entry(rows, m, base, groups) for m in SR_METHODS},
        "cpsnr_intervals": stats.summarise({n: column(rows, f"{n}_cpsnr") for n in names}, groups, base),
        "intervals": {  # every method's mean and difference to the strongest baseline, 95 % by tile, per metric
            m: stats.summarise({n: column(rows, f"{n}_{m}") for n in names}, groups, base, higher_is_better=m != "mse")
            for m in ("psnr", "ssim", "mse")
        },
    }


def _per_tile(rows: list[dict]) -> list[dict]:
    by_tile: dict[str, list[dict]] = {}
    for r in rows:
        by_tile.setdefault(r["tile_id"], []).append(r)
    keys = [k for k in rows[0] if k.endswith(tuple(f"_{m}" for m in METRICS))]
    return [
        {"tile_id": t, "n_samples": len(rs), **{k: float(np.mean(column(rs, k))) for k in keys}}
        for t, rs in sorted(by_tile.items())
    ]


def metrics(ctx: Context, patches: Patches, cores: list[dict]) -> dict:
    """metrics.json's scores: the old keys (sr, bicubic = the strongest baseline, cpsnr, shares) and the new ones."""
    rows = patches.rows
    patch = scored(rows)
    base = patch["strongest_baseline"]
    sr, one, ref = patch["sr"], patch["sr_one_pass"], patch["baselines"][base]
    return {
        "sr": sr,
        "sr_one_pass": one,
        "bicubic": ref,
        "baselines": patch["baselines"],
        "strongest_baseline": base,
        "unsharp": None if ctx.unsharp is None else {**vars(ctx.unsharp), "val_cpsnr": ctx.unsharp_val_cpsnr},
        "cpsnr": {"sr": sr["cpsnr"], "sr_one_pass": one["cpsnr"], "bicubic": ref["cpsnr"], **patch["cpsnr_intervals"]},
        "kelvins": {"sr": sr["kelvins"], "sr_one_pass": one["kelvins"], "baseline": base, "ci": sr["kelvins_ci"]},
        "n_samples": len(rows),
        "n_tiles": patch["n_tiles"],
        "border_crop_px": ctx.border,
        "cpsnr_max_shift_px": ctx.max_shift,
        "self_ensemble": ctx.cfg.infer.self_ensemble,
        "sr_beats_bicubic_share": stats.win_share(column(rows, "sr_psnr"), column(rows, f"{base}_psnr")),
        "sr_beats_bicubic_cpsnr_share": sr["cpsnr_win_share"],
        "intervals": patch["intervals"],
        "tile_cores": scored(cores) if cores else None,
        "per_tile": _per_tile(rows),
    }


def _sr_names(patches: Patches) -> list[str]:
    """The SR methods whose images are kept: the run's, then the same weights under the other constraints."""
    return [*SR_METHODS, *sorted(n for n in patches.images if n.startswith(CONSTRAINT_PREFIX))]


FRAME_BICUBIC = "bicubic_frame"  # bicubic of the very S2 frame consistency is measured against: the honest reference


def _consistency(ctx: Context, patches: Patches, base: str) -> dict:
    """Per method: degraded SR (or baseline) against the latest clear S2 frame, per-band MAE, bias and angle; with
    bicubic of that frame (`FRAME_BICUBIC`), the reference every consistency claim is made against."""
    lr_frame, lr_mask = patches.array("lr_frame"), patches.array("lr_frame_mask").astype(bool)
    gain, offset = (v.numpy()[None, :, None, None] for v in ctx.lr_to_hr)
    frame_up = bicubic(torch.from_numpy(lr_frame * gain + offset), ctx.model.scale).numpy()
    psf = ctx.cfg.model.psf_sigma_lr_px * ctx.model.scale
    out = {"reference": "the latest clear S2 frame of each stack", "psf_sigma_label_px": psf, "claims": FRAME_BICUBIC}
    groups = np.array([r["tile_id"] for r in patches.rows[: len(lr_frame)]])
    for name in (*_sr_names(patches), base, FRAME_BICUBIC):
        image = frame_up if name == FRAME_BICUBIC else patches.array(name)
        c = consistency_scores(image, lr_frame, lr_mask, ctx.model.scale, psf, (gain.ravel(), offset.ravel()))
        mae = np.nanmean(c["mae"], 1)
        out[name] = {
            "mae_per_band": np.nanmean(c["mae"], 0).tolist(),
            "bias_per_band": np.nanmean(c["bias"], 0).tolist(),
            "mae": float(np.nanmean(mae)),
            "mae_ci": list(stats.bootstrap_ci(np.nan_to_num(mae), groups)),
            "sam_deg": float(np.nanmean(c["sam_deg"])),
        }
    return out


def _correctness(patches: Patches, base: str) -> dict:
    """opensr-test's improvement / omission / hallucination shares of each SR method against bicubic of the closest."""
    hr, mask = patches.array("hr"), patches.array("hr_mask").astype(bool)
    lr_up = patches.array("bicubic_closest")
    groups = np.array([r["tile_id"] for r in patches.rows[: len(hr)]])
    out = {"reference_lr_up": "bicubic_closest", "source": "opensr-test v1.3.3 (Aybar et al. 2024)"}
    for name in (*_sr_names(patches), base):
        shares = correctness_shares(patches.array(name), lr_up, hr, mask)
        out[name] = {
            k: {"mean": float(np.nanmean(v)), "ci": list(stats.bootstrap_ci(np.nan_to_num(v), groups))}
            for k, v in shares.items()
            if k != "n_pixels"
        }
    return out


def _perceptual(ctx: Context, patches: Patches, base: str) -> dict | None:
    """Feature and style distances in the delineation net (None when it was not trained)."""
    from srpipe.evaluation.perceptual import perceptual_distances
    from srpipe.training.train_delineation import load_delineation

    net = load_delineation(ctx.cfg)
    if net is None:
        return None
    hr, mask = torch.from_numpy(patches.array("hr")), torch.from_numpy(patches.array("hr_mask").astype(bool))
    out = {}
    for name in (*SR_METHODS, base):
        image = torch.from_numpy(patches.array(name))
        parts = [
            perceptual_distances(net, image[i : i + 64], hr[i : i + 64], mask[i : i + 64])
            for i in range(0, len(hr), 64)
        ]
        out[name] = {k: float(np.nanmean(np.concatenate([p[k] for p in parts]))) for k in ("feature", "style")}
    return out


def extras(ctx: Context, patches: Patches) -> dict:
    """consistency, correctness, perceptual (on the kept test images) and the downstream delineation test."""
    from srpipe.evaluation.downstream_run import downstream

    base = strongest(patches.rows)
    return {
        "consistency": _consistency(ctx, patches, base),
        "correctness": _correctness(patches, base),
        "perceptual": _perceptual(ctx, patches, base),
        "mcc": downstream(ctx, patches, base),
    }


def constraint_table(ctx: Context, patches: Patches, metrics: dict) -> dict | None:
    """SR one pass under each `model.consistency` setting (the same weights) and bicubic of the frame: cPSNR gain over
    the strongest baseline [95 % CI by tile], share won, Kelvins, consistency (MAE, per-band bias, spectral angle
    against the latest clear frame, label units) and opensr-test's shares; None for a net without the constraint."""
    own, cons, corr = ctx.cfg.model.consistency, metrics["consistency"], metrics["correctness"]
    names = {c: "sr_one_pass" if c == own else CONSTRAINT_PREFIX + c for c in CONSTRAINTS}
    if not all(n in cons for n in names.values()):
        return None
    rows, base = patches.rows, metrics["strongest_baseline"]
    groups = np.array([r["tile_id"] for r in rows])
    table = {}
    for setting, name in names.items():
        entry = _sr_entry(rows, name, base, groups)
        table[setting] = {
            **{k: entry[k] for k in ("cpsnr_gain", "cpsnr_gain_ci", "cpsnr_win_share", "cpsnr_win_share_ci")},
            "kelvins": entry["kelvins"],
            **{k: cons[name][k] for k in ("mae", "bias_per_band", "sam_deg")},
            **{k: corr[name][k]["mean"] for k in ("improvement", "omission", "hallucination")},
        }
    frame = {k: cons[FRAME_BICUBIC][k] for k in ("mae", "bias_per_band", "sam_deg")}
    mu = ctx.cfg.model.consistency_regularisation
    return {"run_setting": own, "regularisation": mu, "strongest_baseline": base, "rows": table, FRAME_BICUBIC: frame}
