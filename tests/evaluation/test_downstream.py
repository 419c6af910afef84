"""Downstream delineation: MCC, Persello-Bruzzone errors and border distance by known answers; the experiment is fair
(identical inputs score identically) and ranks sharp reference-consistent images above blurred ones on real parcels."""

import json

import geopandas as gpd
import numpy as np
import pytest
import torch
from rasterio.features import rasterize
from rasterio.transform import from_bounds
from scipy import ndimage

from srpipe.config import DelineationConfig
from srpipe.evaluation.downstream import (
    DownstreamConfig,
    Reference,
    border_errors,
    downstream_delineation,
    mcc,
    parcel_errors,
    parcel_instances,
    reference_from_labels,
    reference_from_parcels,
    vectorise_parcels,
)
from srpipe.training.train_delineation import segment_targets
from tests.conftest import DATA

SLOVENIA = DATA / "eolearn-slovenia"
# one torch thread: two on two cores that other work shares run several times slower
TINY = DownstreamConfig(
    channels=4, depth=2, batch_size=4, crop_px=0, max_steps=5, min_steps=2, predict_batch=8, threads=1
)


def slovenia_reference() -> Reference:
    """The fixture's 88 land-use polygons rasterised on its 10 m grid (101 x 100 px), EPSG:32633."""
    ring = np.asarray(json.loads((SLOVENIA / "bbox.geojson").read_text())["coordinates"][0])
    (x0, y0), (x1, y1) = ring.min(0), ring.max(0)
    transform = from_bounds(x0, y0, x1, y1, 100, 101)
    return reference_from_parcels(gpd.read_file(SLOVENIA / "LULC.gpkg").to_crs(32633), transform, (101, 100))


def two_fields(h: int = 16, w: int = 16, split: int = 8) -> np.ndarray:
    """(1, h, w) ids: parcel 1 left of column `split`, parcel 2 from it."""
    seg = np.ones((1, h, w), np.int32)
    seg[:, :, split:] = 2
    return seg


def test_mcc_is_the_confusion_matrix_formula_zero_for_a_constant_guess_and_nan_for_a_constant_target():
    target = np.array([[[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]], bool)
    pred = np.array([[[1, 1, 1, 0, 0, 1, 0, 0, 0, 0]]], bool)  # TP 3, FN 2, FP 1, TN 4
    valid = np.ones_like(target)
    assert mcc(pred, target, valid)[0] == pytest.approx((3 * 4 - 1 * 2) / np.sqrt(4 * 5 * 5 * 6))
    assert mcc(np.ones_like(target), target, valid)[0] == 0
    assert np.isnan(mcc(pred, np.ones_like(target), valid)[0])
    valid[..., 5:] = False  # only the target's positives left: constant
    assert np.isnan(mcc(pred, target, valid)[0])


def test_persello_bruzzone_errors_of_a_split_a_merge_and_a_miss():
    ref = np.zeros((1, 8, 30), np.int32)
    ref[0, :, :8], ref[0, :, 10:18], ref[0, :, 20:28] = 1, 2, 3
    pred = np.zeros_like(ref)
    pred[0, :4, :8], pred[0, 4:, :8] = 1, 2  # parcel 1 split in halves
    pred[0, :, 10:26] = 3  # parcel 2, the gap and 6 of parcel 3's 8 columns: one predicted parcel of 128 px
    errors = parcel_errors(ref, pred, np.ones(ref.shape, bool))
    assert errors["over"] == pytest.approx([0.5, 0.0, 0.25])
    assert errors["under"] == pytest.approx([0.0, 0.5, 1 - 48 / 128])
    pred[0, :, 20:28] = 0  # now parcel 3 is missed
    missed = parcel_errors(ref, pred, np.ones(ref.shape, bool))
    assert missed["missed"].tolist() == [False, False, True] and missed["over"][2] == missed["under"][2] == 1


def test_border_error_of_a_boundary_one_pixel_off_is_half_a_pixel_both_ways():
    ref, pred = two_fields(split=8), two_fields(split=9)
    b = border_errors(ref, pred, np.ones(ref.shape, bool))
    # inner boundaries: reference columns 7, 8; prediction columns 8, 9: distances 0 and 1 each way
    assert b["to_reference"][0] / b["n_predicted"][0] == pytest.approx(0.5)
    assert b["to_predicted"][0] / b["n_reference"][0] == pytest.approx(0.5)
    same = border_errors(ref, ref, np.ones(ref.shape, bool))
    assert same["to_reference"][0] == 0 and same["n_predicted"][0] == 32


@pytest.mark.parametrize("method", ["contour", "watershed"])
def test_perfect_net_outputs_give_back_the_reference_parcels(method):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    seeds = rng.uniform(0, 48, (9, 2))
    ref = (((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1) + 1)[None]
    instances = parcel_instances(segment_targets(ref[0]), method)[None]
    valid = np.ones(ref.shape, bool)
    errors = parcel_errors(ref.astype(np.int32), instances, valid)
    assert len(errors["over"]) == 9 and errors["over"].mean() < 0.03 and errors["under"].mean() < 0.03
    b = border_errors(ref, instances, valid)
    assert b["to_reference"].sum() / b["n_predicted"].sum() < 0.1


def test_vectorised_parcels_rasterise_back_onto_their_ids():
    ids = np.zeros((20, 20), np.int32)
    ids[2:9, 2:15], ids[11:18, 4:19] = 5, 7
    transform = from_bounds(500000, 5000000, 500200, 5000200, 20, 20)
    frame = vectorise_parcels(ids, transform, "EPSG:32633")
    assert sorted(frame.parcel_id) == [5, 7] and frame.crs.to_epsg() == 32633
    back = rasterize(zip(frame.geometry, frame.parcel_id, strict=True), out_shape=ids.shape, transform=transform)
    assert (back == ids).all()


def test_slovenia_parcels_rasterise_into_many_distinct_parcels_of_plausible_size():
    ref = slovenia_reference()
    ids, sizes = np.unique(ref.segments[ref.segments > 0], return_counts=True)
    assert ref.segments.shape == ref.valid.shape == (101, 100) and ref.valid.all()
    assert len(ids) >= 20 and len(ids) == len(set(ids.tolist()))
    assert (ref.segments > 0).mean() > 0.5 and np.median(sizes) > 9  # most of the footprint, no one-pixel crumbs
    _, pieces = ndimage.label(ref.segments == ids[sizes.argmax()])
    assert pieces <= 3  # the largest parcel is (almost) one connected area, not noise


def test_reference_from_labels_holds_one_proxy_segmentation_per_label():
    hr = np.zeros((2, 4, 32, 32), np.float32)
    hr[:, :, :, 16:] = 0.8
    ref = reference_from_labels(hr, DelineationConfig(felzenszwalb_min_size=10))
    assert ref.segments.shape == ref.valid.shape == (2, 32, 32) and ref.segments.min() >= 1
    assert (ref.segments[:, :, :14].max((1, 2)) != ref.segments[:, :, 18:].min((1, 2))).all()


def _crops(ref: Reference, image: np.ndarray, n: int, size: int, seed: int) -> tuple[np.ndarray, Reference]:
    """n random (4, size, size) crops of a (4, H, W) image and the reference under them, randomly rotated."""
    rng = np.random.default_rng(seed)
    xs, segs = [], []
    for _ in range(n):
        r, c, k = (
            rng.integers(0, ref.segments.shape[0] - size),
            rng.integers(0, ref.segments.shape[1] - size),
            rng.integers(4),
        )
        xs.append(np.rot90(image[:, r : r + size, c : c + size], k, (1, 2)))
        segs.append(np.rot90(ref.segments[r : r + size, c : c + size], k))
    segments = np.ascontiguousarray(np.stack(segs))
    return np.ascontiguousarray(np.stack(xs), dtype=np.float32), Reference(segments, np.ones(segments.shape, bool))


def test_sharp_reference_consistent_images_beat_blurred_ones_in_extent_mcc_on_real_parcels():
    ref = slovenia_reference()
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.1, 0.8, (int(ref.segments.max()) + 1, 4)).astype(np.float32)
    colours[0] = 0.05  # outside every parcel
    sharp = colours[ref.segments].transpose(2, 0, 1) + rng.normal(0, 0.02, (4, *ref.segments.shape))
    blurred = ndimage.gaussian_filter(sharp, (0, 3, 3))
    train_x, train_ref = _crops(ref, sharp, 48, 32, seed=1)
    test_x, test_ref = _crops(ref, sharp, 12, 32, seed=2)
    train_b, _ = _crops(ref, blurred, 48, 32, seed=1)
    test_b, _ = _crops(ref, blurred, 12, 32, seed=2)
    inputs = {"bicubic": {"train": train_b, "test": test_b}, "sr": {"train": train_x, "test": test_x}}
    cfg = DownstreamConfig(channels=8, depth=2, batch_size=8, crop_px=0, max_steps=120, lr=5e-3, threads=1)
    result = downstream_delineation(inputs, {"train": train_ref, "test": test_ref}, None, seed=0, cfg=cfg)
    sr, bic = result["methods"]["sr"], result["methods"]["bicubic"]
    assert result["settings"]["steps"] == 120 and len(sr["per_sample"]["mcc_extent"]) == 12
    assert sr["mcc_extent"] > bic["mcc_extent"] + 0.1 and result["delta"]["sr-bicubic"]["mcc_extent"] > 0.1
    assert sr["border_error_px"] < bic["border_error_px"]


def test_identical_inputs_score_identically_so_the_methods_share_seed_init_batches_and_steps():
    rng = np.random.default_rng(0)
    seg = np.repeat(two_fields(12, 12, 6), 6, 0)
    ref = Reference(seg, np.ones(seg.shape, bool))
    x = rng.uniform(0, 1, (6, 4, 12, 12)).astype(np.float32)
    inputs = {"bicubic": {"train": x, "test": x}, "sr": {"train": x.copy(), "test": x.copy()}}
    result = downstream_delineation(inputs, {"train": ref, "test": ref}, None, seed=3, cfg=TINY)
    assert result["settings"]["steps"] == TINY.max_steps
    assert result["methods"]["sr"]["per_sample"] == result["methods"]["bicubic"]["per_sample"]
    assert all(v in (0, None) for v in result["delta"]["sr-bicubic"].values())
    json.dumps(result, allow_nan=False)  # JSON-safe: undefined scores are None


def test_a_tiny_budget_trains_the_floor_step_count_flags_it_and_restores_torch_threads():
    seg = np.repeat(two_fields(12, 12, 6), 4, 0)
    ref = Reference(seg, np.ones(seg.shape, bool))
    x = np.random.default_rng(0).uniform(0, 1, (4, 4, 12, 12)).astype(np.float32)
    threads = torch.get_num_threads()
    result = downstream_delineation({"a": {"train": x, "test": x}}, {"train": ref, "test": ref}, 0.001, 0, TINY)
    assert result["settings"]["steps"] == TINY.min_steps and result["settings"]["budget_short"]
    assert result["delta"] == {} and torch.get_num_threads() == threads


def test_images_off_the_reference_grid_are_refused_naming_the_method():
    seg = two_fields(12, 12, 6)
    ref = Reference(seg, np.ones(seg.shape, bool))
    x = np.zeros((1, 4, 12, 12), np.float32)
    with pytest.raises(ValueError, match=r"inputs\['sr'\]\['test'\]"):
        downstream_delineation({"sr": {"train": x, "test": x[:, :, :8]}}, {"train": ref, "test": ref}, None, 0, TINY)
