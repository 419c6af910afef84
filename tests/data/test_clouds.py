"""Cloud masks and cover on arrays with known answers."""

import numpy as np
import rasterio

from srpipe.data.clouds import clear_frames, cloud_cover, vhr_cloud_mask
from tests.conftest import DATA


def test_a_cloud_of_known_area_gives_that_cover():
    vhr = np.full((2, 100, 100, 4), 0.1, np.float32)
    vhr[1, :20, :50, 0] = 0.9  # 1000 of 10000 pixels: blue above the threshold
    vhr[1, 50:, :, 1] = 0.9  # bright green alone is not cloud
    mask = vhr_cloud_mask(vhr, 0.3)
    np.testing.assert_allclose(cloud_cover(mask), [0.0, 0.1])


def test_cover_counts_only_valid_pixels_and_a_frame_without_data_is_fully_cloudy():
    clouds = np.zeros((2, 10, 10), bool)
    clouds[0, :5] = True
    valid = np.ones((2, 10, 10), bool)
    valid[0, 5:] = False  # only the cloudy half is valid
    valid[1] = False
    np.testing.assert_allclose(cloud_cover(clouds, valid), [1.0, 1.0])


def test_clear_frames_need_low_cover_and_full_data():
    cover = np.array([0.0, 0.04, 0.06, 0.0])
    valid = np.ones((4, 3, 3), bool)
    valid[3, 0, 0] = False
    assert clear_frames(cover, valid, 0.05).tolist() == [True, True, False, False]


# reflectance spectra (B02, B03, B04, B08) of what the label cloud test must tell apart
CLOUD = (0.55, 0.50, 0.48, 0.50)  # the sample's planted cloud: white, highest in blue
SAND = (0.33, 0.42, 0.52, 0.58)  # bright desert soil: rises from blue to red and NIR
VEGETATION = (0.04, 0.07, 0.04, 0.35)


def _scene(*dates: tuple[tuple[float, ...], tuple[float, ...]]) -> np.ndarray:
    """(T, 10, 10, 4): per date, the left half one spectrum and the right half another."""
    vhr = np.zeros((len(dates), 10, 10, 4), np.float32)
    for t, (left, right) in enumerate(dates):
        vhr[t, :, :5], vhr[t, :, 5:] = left, right
    return vhr


def test_bright_sand_is_cloud_to_the_blue_threshold_but_not_to_the_whiteness_test():
    vhr = _scene((SAND, CLOUD))
    assert vhr_cloud_mask(vhr, 0.3).all()  # the method's blue threshold calls the sand cloud too
    mask = vhr_cloud_mask(vhr, 0.3, whiteness=0.8)
    assert not mask[0, :, :5].any() and mask[0, :, 5:].all()


def test_a_cloud_over_sand_is_found_where_it_is_thick_enough_to_whiten_it():
    opacity = np.linspace(0, 1, 11)
    vhr = ((1 - opacity)[:, None] * np.array(SAND) + opacity[:, None] * np.array(CLOUD))[:, None, None, :]
    found = vhr_cloud_mask(vhr.astype(np.float32), 0.3, whiteness=0.8)[:, 0, 0]
    first = int(np.argmax(found))
    assert found[first:].all() and 0.3 <= opacity[first] <= 0.6, found  # from half-opaque on, and never before


def test_bright_on_every_date_is_surface_but_a_cloud_that_moves_is_cloud():
    vhr = _scene((CLOUD, VEGETATION), (CLOUD, CLOUD), (CLOUD, VEGETATION))  # left: white roofs; right: a cloud
    mask = vhr_cloud_mask(vhr, 0.3, whiteness=0.8, persistent_is_surface=True)
    assert not mask[:, :, :5].any()
    assert mask[1, :, 5:].all() and not mask[[0, 2], :, 5:].any()
    assert vhr_cloud_mask(vhr, 0.3, whiteness=0.8)[:, :, :5].all()  # without persistence the roofs are cloud


def test_persistence_needs_two_valid_dates_at_the_pixel():
    vhr = _scene((CLOUD, CLOUD), (VEGETATION, CLOUD))
    valid = np.ones(vhr.shape[:3], bool)
    valid[1, :, :5] = False  # the left half is seen once: its cloud stays cloud
    mask = vhr_cloud_mask(vhr, 0.3, whiteness=0.8, persistent_is_surface=True, valid=valid)
    assert mask[0, :, :5].all() and not mask[:, :, 5:].any()
    assert vhr_cloud_mask(vhr[:1], 0.3, 0.8, persistent_is_surface=True).all()  # one date: nothing to compare


def _fixture(name: str) -> np.ndarray:
    """(1, H, W, 4) float32 reflectance of a tests/fixtures/bright-surfaces image."""
    with rasterio.open(DATA / "bright-surfaces" / name) as src:
        return (np.moveaxis(src.read(), 0, -1) / 10000.0)[None].astype(np.float32)


def test_real_clear_desert_is_cloud_to_a_low_blue_threshold_but_not_to_the_whiteness_test():
    """Clear Saharan sand (its scene classification says so): a threshold low enough for thin cloud calls most of
    it cloud, and a label frame of it would be dropped; the whiteness test calls none of it cloud."""
    sand = _fixture("sahara-29RKH-20200219.tif")
    assert (sand[..., 0] > 0.2).mean() > 0.5 and (sand[..., 0] > 0.15).mean() > 0.95
    for threshold in (0.15, 0.2, 0.3):
        assert vhr_cloud_mask(sand, threshold, whiteness=0.8).mean() == 0.0, threshold


def test_real_snow_is_white_so_only_its_persistence_tells_it_from_cloud():
    snow = _fixture("snow-35VPK-20180204.tif")
    assert vhr_cloud_mask(snow, 0.3, whiteness=0.8).mean() > 0.4  # one date: snow looks like cloud in 4 bands
    two_dates = np.concatenate([snow, snow])  # the same snow cover on a second label date
    assert vhr_cloud_mask(two_dates, 0.3, whiteness=0.8, persistent_is_surface=True).mean() == 0.0
