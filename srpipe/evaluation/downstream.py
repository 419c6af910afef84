"""Downstream test of the method: field delineation trained and scored on each method's images (SR vs bicubic).

One DelineationNet per method, same seed, same initialisation, same batch order and the SAME NUMBER OF STEPS: the
wall-clock budget only decides that number once (from a timed calibration), so a method is never favoured by
running while the machine is less loaded. Scores on the same test images against the same reference parcels:
pixel MCC of extent, boundary and the thresholded distance, then parcel instances (Sinergise's contour of the
combined extent and boundary map) scored by over-/under-segmentation and border distance. MCC: higher is better;
the parcel errors and border distances: lower is better.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import torch
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape as to_geometry
from skimage.segmentation import expand_labels, find_boundaries, watershed

from srpipe.config import DelineationConfig
from srpipe.models.delineation import DelineationNet
from srpipe.training.train_delineation import delineation_loss, proxy_segments, rasterise_parcels, segment_targets

_SPLITS = ("train", "test")
_TIMED_STEPS = 3  # calibration steps after one warm-up step
_POST_S_PER_SAMPLE = 0.004  # instances + scores per test sample and method (about 3 ms measured, 64 px)
_SCORES = (
    "mcc_extent",
    "mcc_boundary",
    "mcc_distance",
    "over_segmentation",
    "under_segmentation",
    "missed_parcels",
    "border_error_px",
    "border_miss_px",
)


class Reference(NamedTuple):
    """Reference parcels of one split: segments (N, H, W) int32 ids from 1 (0 = no parcel), valid (N, H, W) bool."""

    segments: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class DownstreamConfig:
    """Settings shared by every method's delineation model (small: the demo spends about a minute on all of it)."""

    channels: int = 8
    depth: int = 3
    batch_size: int = 16
    crop_px: int = 32  # train on random crops this size (0 = whole patches): 4x the steps of 64 px patches per second
    lr: float = 2e-3
    max_steps: int = 1000  # the step count when there is no wall-clock budget (then the result is reproducible)
    min_steps: int = 20  # floor when the budget is too small for more
    instances: str = "contour"  # "contour" (Sinergise field delineation) or "watershed" (Waldner & Diakogiannis 2020)
    contour_level: float = 0.6  # Sinergise's level on (1 + extent - boundary) / 2
    min_parcel_px: int = 9  # reference parcels with fewer valid pixels (slivers cut by the tile edge) are not scored
    predict_batch: int = 64
    threads: int = 0  # torch threads during the call, restored after (0 = as set); 1 where other work shares the cores


def reference_from_parcels(
    parcels: gpd.GeoDataFrame, transform: Affine, shape: tuple[int, int], valid: np.ndarray | None = None
) -> Reference:
    """Parcel polygons (in the grid's CRS) -> (H, W) Reference; `valid` (H, W) bool defaults to the whole grid."""
    segments = rasterise_parcels(parcels, transform, shape)
    return Reference(segments, np.ones(shape, bool) if valid is None else valid.astype(bool))


def reference_from_labels(hr: np.ndarray, dcfg: DelineationConfig, valid: np.ndarray | None = None) -> Reference:
    """(N, 4, H, W) labels in [0, 1] -> Reference of felzenszwalb proxy parcels; `valid` (N, H, W) defaults to all."""
    segments = np.stack([proxy_segments(label, dcfg) for label in hr]).astype(np.int32)
    return Reference(segments, np.ones(segments.shape, bool) if valid is None else valid.astype(bool))


def mcc(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Matthews correlation per sample of (N, H, W) bool pred vs target on valid pixels: (N,) float64.

    MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN)) (Matthews 1975; Chicco & Jurman 2020,
    BMC Genomics 21, 6), from the confusion counts (sklearn is not a dependency). Where the denominator is 0: a
    constant prediction of a varying target scores 0 (no skill, as sklearn), a constant target NaN (nothing to
    find; sklearn's 0 there would pull a mean over samples towards 0).
    """
    return _mcc(*_confusion(pred, target, valid))


def parcel_instances(outputs: np.ndarray, method: str = "contour", level: float = 0.6) -> np.ndarray:
    """(3, H, W) extent prob, boundary prob, distance -> (H, W) int32 parcel ids from 1, 0 = no parcel.

    "contour": Sinergise's field delineation (sentinel-hub/field-delineation, fd/post_processing.py CombineUpsample
    and fd/vectorisation.py): the combined map (1 + extent - boundary) / 2 cut at 0.6 (their gdal_contour level);
    each connected region above it is a parcel. Their 4x upsampling, smoothing and min-max rescaling are left out
    (they smooth polygons on the 10 m grid; scores here are on the pixel grid). The regions lack the 1-px inner
    boundary ring the targets carve out of every parcel (segment_targets), so they are grown back by it
    (expand_labels, 1.5 px: the ring's corners are diagonal).
    "watershed": marker-controlled watershed of the boundary probability from the cores (distance > 0.5 inside the
    extent) within extent or boundary > 0.5, the simple form of the hierarchical watershed of Waldner &
    Diakogiannis 2020 (RSE 245, 111741) and DECODE (Waldner et al. 2021, Remote Sens. 13, 2197).
    """
    extent, boundary, distance = outputs
    if method == "contour":
        cores, _ = ndimage.label((1 + extent - boundary) / 2 > level)
        return expand_labels(cores, distance=1.5).astype(np.int32)
    if method == "watershed":
        markers, _ = ndimage.label((distance > 0.5) & (extent > 0.5))
        return watershed(boundary, markers, mask=(extent > 0.5) | (boundary > 0.5)).astype(np.int32)
    raise ValueError(f"unknown instance method {method!r}; use 'contour' or 'watershed'")


def vectorise_parcels(instances: np.ndarray, transform: Affine, crs: object) -> gpd.GeoDataFrame:
    """(H, W) int parcel ids (0 = none) -> one polygon per id (rasterio.features.shapes), column parcel_id."""
    labels = instances.astype(np.int32)
    pieces = [(int(v), to_geometry(g)) for g, v in shapes(labels, mask=labels > 0, transform=transform)]
    frame = gpd.GeoDataFrame({"parcel_id": [v for v, _ in pieces]}, geometry=[g for _, g in pieces], crs=crs)
    return frame.dissolve("parcel_id", as_index=False) if pieces else frame


def parcel_errors(
    reference: np.ndarray, predicted: np.ndarray, valid: np.ndarray, min_parcel_px: int = 9
) -> dict[str, np.ndarray]:
    """Per reference parcel of (N, H, W) int ids: sample index, over, under (in [0, 1]), missed (bool); (K,) each.

    Persello & Bruzzone 2010 (IEEE TGRS 48(3), 1232-1244): for reference parcel R and its best-matching predicted
    parcel S (largest overlap), OS = 1 - |R & S| / |R| and US = 1 - |R & S| / |S|, areas counted on valid pixels.
    A parcel no prediction overlaps is missed and scores OS = US = 1. Parcels under `min_parcel_px` are skipped.
    """
    s = np.arange(len(reference), dtype=np.int64)[:, None, None]
    ref_keys_all = s * (int(reference.max()) + 1) + reference
    pred_keys_all = s * (int(predicted.max()) + 1) + predicted
    inside = valid & (reference > 0)
    ref_keys, ref_of, ref_area = np.unique(ref_keys_all[inside], return_inverse=True, return_counts=True)
    pred_keys, pred_area = np.unique(pred_keys_all[valid & (predicted > 0)], return_counts=True)
    hit = predicted[inside] > 0
    pair = ref_of[hit] * len(pred_keys) + np.searchsorted(pred_keys, pred_keys_all[inside][hit])
    pairs, overlap = np.unique(pair, return_counts=True)
    r, p = np.divmod(pairs, max(len(pred_keys), 1))
    best = np.lexsort((-overlap, r))  # largest overlap first within each reference parcel
    first = best[np.r_[True, r[best][1:] != r[best][:-1]]] if len(best) else best
    best_overlap, best_area = np.zeros(len(ref_keys)), np.ones(len(ref_keys))
    best_overlap[r[first]], best_area[r[first]] = overlap[first], pred_area[p[first]]
    keep = ref_area >= min_parcel_px
    return {
        "sample": (ref_keys // (int(reference.max()) + 1))[keep],
        "over": (1 - best_overlap / ref_area)[keep],
        "under": (1 - best_overlap / best_area)[keep],
        "missed": (best_overlap == 0)[keep],
    }


def border_errors(reference: np.ndarray, predicted: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample of (N, H, W) int ids: summed px distances and counts of boundary pixels, (N,) each, both ways.

    Boundaries are the parcels' inner boundary pixels (find_boundaries, mode "inner"; tile edges are none) on valid
    pixels. "to_reference": each predicted boundary pixel's Euclidean distance to the nearest reference boundary
    pixel (mean = border error, how far drawn borders are from true ones); "to_predicted": the reverse (mean = how
    far true borders are from any drawn one). The two directed means are those of the modified Hausdorff distance
    (Dubuisson & Jain 1994, ICPR, 566-568). A sample without boundaries on either side counts 0 both ways.
    """
    out = {k: np.zeros(len(reference)) for k in ("to_reference", "n_predicted", "to_predicted", "n_reference")}
    for i, (ref, pred, ok) in enumerate(zip(reference, predicted, valid, strict=True)):
        rb, pb = find_boundaries(ref, mode="inner") & ok, find_boundaries(pred, mode="inner") & ok
        if rb.any() and pb.any():
            out["to_reference"][i] = ndimage.distance_transform_edt(~rb)[pb].sum()
            out["to_predicted"][i] = ndimage.distance_transform_edt(~pb)[rb].sum()
            out["n_predicted"][i], out["n_reference"][i] = pb.sum(), rb.sum()
    return out


def downstream_delineation(
    inputs: dict[str, dict[str, np.ndarray]],
    reference: dict[str, Reference],
    budget_s: float | None,
    seed: int,
    cfg: DownstreamConfig | None = None,
    baseline: str = "bicubic",
) -> dict:
    """Train one delineation net per method on its (N, 4, H, W) train images, score on its test images.

    `inputs[method][split]` float32 in [0, 1], B02, B03, B04, B08; `reference[split]` the shared parcels.
    `budget_s` (wall-clock for the whole call; None = cfg.max_steps steps) only sets the one step count every
    method trains for (settings["budget_short"]: the budget fit fewer than cfg.min_steps, the scores are of nets
    barely trained). Returns settings, per-method pooled scores and per-sample lists (test order, None where
    undefined) and `delta["<method>-<baseline>"]`: each pooled score of a method minus the baseline's.
    """
    start, cfg = time.perf_counter(), cfg or DownstreamConfig()
    _check(inputs, reference)
    with _torch_threads(cfg.threads):
        targets = {split: _targets(reference[split]) for split in _SPLITS}
        steps, fit = _plan_steps(inputs, targets, budget_s, time.perf_counter() - start, cfg)
        order = _batch_order(reference["train"].valid.shape, steps, cfg, seed)
        methods = {}
        for name, splits in inputs.items():
            t0 = time.perf_counter()
            net, loss = _train(splits["train"], targets["train"], reference["train"].valid, order, seed, cfg)
            train_s = time.perf_counter() - t0
            outputs = _predict(net, splits["test"], cfg.predict_batch)
            methods[name] = {**_score(outputs, targets["test"], reference["test"], cfg), "final_loss": loss}
            methods[name] |= {"train_s": round(train_s, 2), "seconds": round(time.perf_counter() - t0, 2)}
        delta = {
            f"{name}-{baseline}": {k: _diff(methods[name][k], methods[baseline][k]) for k in _SCORES}
            for name in methods
            if name != baseline and baseline in methods
        }
        settings = {
            **asdict(cfg),
            "steps": steps,
            "budget_short": fit < cfg.min_steps,
            "seed": seed,
            "budget_s": budget_s,
            "baseline": baseline,
        }
    return {"settings": settings, "methods": methods, "delta": delta, "seconds": round(time.perf_counter() - start, 2)}


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch on `n` threads (0 = unchanged), restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check(inputs: dict[str, dict[str, np.ndarray]], reference: dict[str, Reference]) -> None:
    """Raise ValueError naming the method and split whose images do not match the reference grid."""
    for split in _SPLITS:
        if split not in reference:
            raise ValueError(f"reference lacks split {split!r}; pass Reference(segments, valid) for train and test")
        ref = reference[split]
        if ref.segments.shape != ref.valid.shape or ref.segments.ndim != 3:
            raise ValueError(f"reference[{split!r}]: segments {ref.segments.shape} and valid {ref.valid.shape} differ")
        for name, splits in inputs.items():
            x = splits.get(split)
            if x is None or x.ndim != 4 or x.shape[:1] + x.shape[2:] != ref.segments.shape:
                got = None if x is None else x.shape
                raise ValueError(f"inputs[{name!r}][{split!r}] is {got}; expected (N, bands, H, W) on the reference")


def _targets(ref: Reference) -> np.ndarray:
    """Reference -> (N, 3, H, W) float32 extent, boundary, distance targets (segment_targets per sample)."""
    return np.stack([segment_targets(seg) for seg in ref.segments])


def _plan_steps(
    inputs: dict, targets: dict, budget_s: float | None, spent_s: float, cfg: DownstreamConfig
) -> tuple[int, int]:
    """(steps every method trains, steps the budget fits before clipping to [min_steps, max_steps])."""
    if budget_s is None or not math.isfinite(budget_s):
        return cfg.max_steps, cfg.max_steps
    ch, cw = _crop(targets["train"][:, 0].shape, cfg)
    x = torch.from_numpy(next(iter(inputs.values()))["train"][: cfg.batch_size, :, :ch, :cw])
    y = torch.from_numpy(targets["train"][: cfg.batch_size, :, :ch, :cw])
    x_test = torch.from_numpy(next(iter(inputs.values()))["test"][: cfg.predict_batch])
    net = DelineationNet(bands=x.shape[1], channels=cfg.channels, depth=cfg.depth)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    for i in range(_TIMED_STEPS + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = delineation_loss(net(x), y, torch.ones(y[:, 0].shape, dtype=torch.bool))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step_s = (time.perf_counter() - t0) / _TIMED_STEPS
    n_test, n_methods = len(targets["test"]), len(inputs)
    with torch.no_grad():
        t0 = time.perf_counter()
        net.eval()(x_test)
        forward_s = (time.perf_counter() - t0) / len(x_test)
    spent_s += (_TIMED_STEPS + 1) * step_s + forward_s * len(x_test)
    eval_s = n_methods * n_test * (forward_s + _POST_S_PER_SAMPLE)
    fit = int((budget_s - spent_s - eval_s) / (n_methods * step_s))
    return int(np.clip(fit, cfg.min_steps, cfg.max_steps)), fit


def _batch_order(shape: tuple[int, int, int], steps: int, cfg: DownstreamConfig, seed: int) -> np.ndarray:
    """(steps, batch + 2) seeded sample indices (epochs of permutations) then the crop's row and column offset."""
    n, h, w = shape
    rng = np.random.default_rng(seed)
    size = min(cfg.batch_size, n)
    epochs = math.ceil(steps * size / n) + 1
    flat = np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * size].reshape(steps, size)
    crop_h, crop_w = _crop(shape, cfg)
    offsets = np.stack([rng.integers(0, h - crop_h + 1, steps), rng.integers(0, w - crop_w + 1, steps)], 1)
    return np.concatenate([flat, offsets], 1)


def _crop(shape: tuple[int, int, int], cfg: DownstreamConfig) -> tuple[int, int]:
    """Training crop (rows, cols): cfg.crop_px clipped to the patch, the whole patch when 0."""
    _, h, w = shape
    return (min(cfg.crop_px, h), min(cfg.crop_px, w)) if cfg.crop_px > 0 else (h, w)


def _train(
    x: np.ndarray, y: np.ndarray, valid: np.ndarray, order: np.ndarray, seed: int, cfg: DownstreamConfig
) -> tuple[DelineationNet, float]:
    """A DelineationNet trained for len(order) steps from the seeded initialisation; also its mean last-50 loss."""
    torch.manual_seed(seed)
    net = DelineationNet(bands=x.shape[1], channels=cfg.channels, depth=cfg.depth)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(valid)
    ch, cw = _crop(valid.shape, cfg)
    losses = []
    for row in torch.from_numpy(order):
        idx, r, c = row[:-2], int(row[-2]), int(row[-1])
        window = (slice(None), slice(None), slice(r, r + ch), slice(c, c + cw))
        loss = delineation_loss(net(xt[idx][window]), yt[idx][window], mt[idx][window[1:]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return net.eval(), round(float(np.mean(losses[-50:])), 5) if losses else math.nan


@torch.no_grad()
def _predict(net: DelineationNet, x: np.ndarray, batch: int) -> np.ndarray:
    """(M, bands, H, W) -> (M, 3, H, W) float32 extent probability, boundary probability, distance in [0, 1]."""
    parts = []
    for i in range(0, len(x), batch):
        out = net(torch.from_numpy(x[i : i + batch]))
        parts.append(torch.cat([torch.sigmoid(out[:, :2]), out[:, 2:]], 1).numpy())
    return np.concatenate(parts)


def _confusion(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """(N, H, W) bool -> per-sample TP, FP, FN, TN on valid pixels, (N,) float64 each."""
    p, t = pred & valid, target & valid
    tp = (p & t).sum((1, 2))
    fp = (p & ~t).sum((1, 2))
    fn = (~pred & t).sum((1, 2))
    tn = valid.sum((1, 2)) - tp - fp - fn
    return tuple(v.astype(np.float64) for v in (tp, fp, fn, tn))


def _mcc(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """MCC from confusion counts (any equal shapes); 0 for a constant prediction, NaN for a constant target."""
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    varying = (tp + fn > 0) & (tn + fp > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), np.where(varying, 0.0, np.nan))


def _score(outputs: np.ndarray, targets: np.ndarray, ref: Reference, cfg: DownstreamConfig) -> dict:
    """Pooled scores and per-sample lists of one method's (M, 3, H, W) test outputs against the reference."""
    pooled, per_sample = {}, {}
    pred = (outputs[:, 0] > 0.5, outputs[:, 1] > 0.5, outputs[:, 2] > 0.5)
    truth = (targets[:, 0] > 0.5, targets[:, 1] > 0.5, targets[:, 2] > 0.5)
    for key, p, t in zip(("mcc_extent", "mcc_boundary", "mcc_distance"), pred, truth, strict=True):
        counts = _confusion(p, t, ref.valid)
        pooled[key] = float(_mcc(*(c.sum() for c in counts)))
        per_sample[key] = _mcc(*counts)
    instances = np.stack([parcel_instances(o, cfg.instances, cfg.contour_level) for o in outputs])
    parcels = parcel_errors(ref.segments, instances, ref.valid, cfg.min_parcel_px)
    n = np.bincount(parcels["sample"], minlength=len(outputs))
    for key, name in (("over", "over_segmentation"), ("under", "under_segmentation"), ("missed", "missed_parcels")):
        values = parcels[key].astype(np.float64)
        pooled[name] = float(values.mean()) if len(values) else math.nan
        per_sample[name] = _ratio(np.bincount(parcels["sample"], values, len(outputs)), n)
    borders = border_errors(ref.segments, instances, ref.valid)
    for name, total, count in (
        ("border_error_px", "to_reference", "n_predicted"),
        ("border_miss_px", "to_predicted", "n_reference"),
    ):
        pooled[name] = float(_ratio(borders[total].sum(), borders[count].sum()))
        per_sample[name] = _ratio(borders[total], borders[count])
    pooled = {k: _round(v) for k, v in pooled.items()}
    pooled["parcels_reference"], pooled["parcels_predicted"] = len(parcels["over"]), _count(instances)
    pooled["per_sample"] = {k: [_round(v) for v in np.asarray(vals, np.float64)] for k, vals in per_sample.items()}
    return pooled


def _ratio(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count, NaN where count is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def _count(instances: np.ndarray) -> int:
    """Number of predicted parcels over all (M, H, W) samples (ids restart in each sample)."""
    return int(sum(len(np.unique(inst[inst > 0])) for inst in instances))


def _round(value: float) -> float | None:
    """JSON-safe score: rounded to 5 decimals, None for NaN (np.array(..., float) reads None back as NaN)."""
    return None if value is None or not math.isfinite(value) else round(float(value), 5)


def _diff(a: float | None, b: float | None) -> float | None:
    """a - b, None when either is undefined."""
    return None if a is None or b is None else round(a - b, 5)
