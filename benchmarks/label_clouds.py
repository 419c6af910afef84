"""The label cloud test against what it must tell apart: planted clouds found, bright land and lasting snow kept.

    python benchmarks/label_clouds.py [RUN_DIR]    # default runs/demo (after `make demo`)

(1) The sample's planted label clouds in RUN_DIR's EOPatches (truth: opacity > 0.1): pixel recall and precision, and
label frames dropped against frames truly cloudier than `curate.vhr_max_cloud_cover`. (2) Real clear bright land and
snow (tests/fixtures/bright-surfaces): the share of pixels called cloud. Each for the method's blue threshold alone and
for srpipe's test (blue threshold + whiteness + persistence), at the run's threshold and a lower one a user would set
to catch thinner cloud. Writes benchmarks/results/label_clouds.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from provenance import REPO, provenance

from srpipe import eopatch as ep
from srpipe.config import load_config
from srpipe.data.clouds import cloud_cover, vhr_cloud_mask

FIXTURES = REPO / "tests" / "fixtures" / "bright-surfaces"
TESTS = {"blue threshold (method)": (0.0, False), "srpipe (whiteness + persistence)": (0.8, True)}


def _labels(run: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every tile's (L, H, W, 4) label stack and (L, H, W) planted-cloud truth."""
    cfg = load_config(run)
    stacks, truths = [], []
    for tile in sorted(p.name for p in (run / "eopatches").iterdir() if p.is_dir()):
        patch = ep.load_patch(run, tile, cfg.source.scale)
        stacks.append(patch[ep.VHR_BANDS])
        truths.append(patch[ep.TRUTH_VHR_CLOUDS][..., 0])
    return stacks, truths


def _planted(stacks: list, truths: list, threshold: float, whiteness: float, persistent: bool, max_cover: float):
    """Pixel recall/precision and frame-level figures of one test on the planted clouds."""
    tp = fp = fn = 0
    frames = {"truly_cloudy": 0, "dropped_cloudy": 0, "clear": 0, "dropped_clear": 0}
    for vhr, truth in zip(stacks, truths, strict=True):
        mask = vhr_cloud_mask(vhr, threshold, whiteness, persistent)
        tp, fp, fn = tp + int((mask & truth).sum()), fp + int((mask & ~truth).sum()), fn + int((~mask & truth).sum())
        dropped, cloudy = cloud_cover(mask) > max_cover, truth.mean(axis=(1, 2)) > max_cover
        frames["truly_cloudy"] += int(cloudy.sum())
        frames["dropped_cloudy"] += int((dropped & cloudy).sum())
        frames["clear"] += int((~cloudy).sum())
        frames["dropped_clear"] += int((dropped & ~cloudy).sum())
    return {"pixel_recall": tp / max(tp + fn, 1), "pixel_precision": tp / max(tp + fp, 1), "frames": frames}


def _surface(name: str) -> np.ndarray:
    with rasterio.open(FIXTURES / name) as src:
        return (np.moveaxis(src.read(), 0, -1) / 10000.0)[None].astype(np.float32)


def main() -> None:
    measured = provenance()
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "runs" / "demo"
    cfg = load_config(run)
    stacks, truths = _labels(run)
    sand, snow = _surface("sahara-29RKH-20200219.tif"), _surface("snow-35VPK-20180204.tif")
    results = {}
    for threshold in (cfg.curate.vhr_cloud_threshold, 0.2):
        for name, (whiteness, persistent) in TESTS.items():
            key = f"{name} at blue > {threshold:g}"
            results[key] = {
                "planted": _planted(stacks, truths, threshold, whiteness, persistent, cfg.curate.vhr_max_cloud_cover),
                "sahara_sand_called_cloud": float(vhr_cloud_mask(sand, threshold, whiteness).mean()),
                "snow_one_date_called_cloud": float(vhr_cloud_mask(snow, threshold, whiteness).mean()),
                "snow_two_dates_called_cloud": float(
                    vhr_cloud_mask(np.concatenate([snow, snow]), threshold, whiteness, persistent).mean()
                ),
            }
            r = results[key]
            print(f"{key}: planted recall {r['planted']['pixel_recall']:.3f} precision "
                  f"{r['planted']['pixel_precision']:.3f} frames {r['planted']['frames']}; sand "
                  f"{r['sahara_sand_called_cloud']:.3f}, snow {r['snow_one_date_called_cloud']:.3f} one date, "
                  f"{r['snow_two_dates_called_cloud']:.3f} two dates")  # fmt: skip
    out = REPO / "benchmarks" / "results" / "label_clouds.json"
    record = measured | {"run": str(run), "tiles": len(stacks), "label_frames": sum(len(s) for s in stacks)}
    out.write_text(json.dumps(record | {"tests": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
