"""Cloud masks and cover on arrays with known answers."""

import numpy as np

from srpipe.data.clouds import clear_frames, cloud_cover, vhr_cloud_mask


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
