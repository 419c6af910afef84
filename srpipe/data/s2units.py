"""S2's own units for outputs users keep: uint16 digital numbers, quantification value 10000, the input's offset.

A value v of srpipe's float arrays (reflectance-like, as the source delivered it) is stored as DN = round(10000 v),
clipped to [1, 65535]; 0 is nodata. Reflectance = (DN + offset) / 10000, where offset is -1000 for inputs of
processing baseline 04.00 (from 2022-01-25) that Sentinel Hub did not harmonise, else 0 (ESA's BOA/RADIO_ADD_OFFSET):
each source says which (`Source.radiometric_offset`).
"""

from __future__ import annotations

import numpy as np

QUANTIFICATION_VALUE = 10000
NODATA_DN = 0


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
