"""S2 DN: uint16 with quantification 10000 and nodata 0; the radiometric offset of processing baseline 04.00."""

import dataclasses
import datetime as dt

import numpy as np

from srpipe.config import SourceConfig
from srpipe.data.s2units import from_dn, to_dn
from srpipe.sources.sample.source import SampleSource
from srpipe.sources.sentinelhub.source import SentinelHubSource


def test_dn_round_trips_within_half_a_dn_and_nan_is_nodata():
    values = np.array([0.0, 0.00004, 0.1234, 0.5, 6.5535, 7.0, np.nan, -0.01], np.float32)
    dn = to_dn(values)
    assert dn.dtype == np.uint16
    np.testing.assert_array_equal(dn, [1, 1, 1234, 5000, 65535, 65535, 0, 1])  # valid values never become nodata
    back = from_dn(dn)
    assert np.isnan(back[6]) and np.abs(back[2:5] - values[2:5]).max() <= 0.5 / 10000 + 1e-7


def test_only_unharmonised_baseline_04_inputs_carry_the_minus_1000_offset():
    sh = SourceConfig(name="sentinelhub", harmonize_values=False)
    assert SentinelHubSource(sh).radiometric_offset(dt.date(2022, 1, 25))[0] == -1000
    assert SentinelHubSource(sh).radiometric_offset(dt.date(2022, 1, 24))[0] == 0
    harmonised = dataclasses.replace(sh, harmonize_values=True)
    assert SentinelHubSource(harmonised).radiometric_offset(dt.date(2023, 6, 1))[0] == 0
    assert SampleSource(SourceConfig()).radiometric_offset(dt.date(2023, 6, 1))[0] == 0  # reflectance
