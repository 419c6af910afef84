"""S2's own units for outputs users keep: uint16 digital numbers, quantification value 10000, the input's offset.

A value v of srpipe's float arrays (reflectance-like, as the source delivered it) is stored as DN = round(10000 v),
clipped to [1, 65535]; 0 is nodata. Reflectance = (DN + offset) / 10000, where offset is -1000 for inputs of
processing baseline 04.00 (from 2022-01-25) that Sentinel Hub did not harmonise, else 0 (ESA's BOA/RADIO_ADD_OFFSET).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from srpipe.config import SourceConfig

QUANTIFICATION_VALUE = 10000
NODATA_DN = 0
BASELINE_04_START = dt.date(2022, 1, 25)  # processing baseline 04.00: DNs carry a +1000 offset


def radiometric_offset(source: SourceConfig, date: dt.date) -> int:
    """The DN offset of `source`'s S2 values on `date`: -1000 for un-harmonised baseline 04.00 data, else 0."""
    if source.name == "sentinelhub" and not source.harmonize_values and date >= BASELINE_04_START:
        return -1000
    return 0


def offset_origin(source: SourceConfig, date: dt.date) -> str:
    """Why the offset is what it is, in words (a tag beside it)."""
    if source.name != "sentinelhub":
        return f"{source.name} source: reflectance without offset"
    if source.harmonize_values:
        return "sentinelhub harmonizeValues=true: Sentinel Hub removed baseline 04.00's offset"
    if date >= BASELINE_04_START:
        return "processing baseline 04.00 (from 2022-01-25), not harmonised: DN = 10000 reflectance + 1000"
    return "processing baseline before 04.00: no offset"


def to_dn(values: np.ndarray) -> np.ndarray:
    """Float values (any shape; NaN = nodata) -> uint16 DN with nodata 0 (valid values clipped to [1, 65535])."""
    finite = np.isfinite(values)
    dn = np.clip(np.rint(np.where(finite, values, 0) * QUANTIFICATION_VALUE), 1, 65535).astype(np.uint16)
    dn[~finite] = NODATA_DN
    return dn


def from_dn(dn: np.ndarray) -> np.ndarray:
    """uint16 DN -> float32 values (DN / 10000), NaN where DN is nodata (the inverse of `to_dn` within 0.5 DN)."""
    values = dn.astype(np.float32) / QUANTIFICATION_VALUE
    values[dn == NODATA_DN] = np.nan
    return values
