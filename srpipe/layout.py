"""Every path under a run directory, named once: stages, the launch layer and tests ask here, never join literals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run directory (`root`), as in ARCHITECTURE.md's table."""

    root: Path

    # plan
    @property
    def config(self) -> Path:
        """`config.toml`: the resolved configuration every task reads."""
        return self.root / "config.toml"

    @property
    def grid(self) -> Path:
        """`grid.gpkg`: one row per tile."""
        return self.root / "grid.gpkg"

    # download
    def download_cache(self, source: str) -> Path:
        """`_cache/<source>/`: a network source's responses, so a re-run does not pay twice."""
        return self.root / "_cache" / source

    def eopatch(self, tile_id: str) -> Path:
        """`eopatches/<tile_id>/`: the tile's EOPatch."""
        return self.root / "eopatches" / tile_id

    # curate
    @property
    def curation(self) -> Path:
        """`curation/`: the curation's stats, samples table, plots and report."""
        return self.root / "curation"

    def curated_tile(self, tile_id: str) -> tuple[Path, Path]:
        """(`curation/tiles/<tile>.json` stats, `curation/tiles/<tile>.h5` raw samples) of the curate map."""
        folder = self.curation / "tiles"
        return folder / f"{tile_id}.json", folder / f"{tile_id}.h5"

    @property
    def curation_stats(self) -> Path:
        """`curation/stats.json`: normalisation, split and filter counts of the reduce."""
        return self.curation / "stats.json"

    @property
    def datasets(self) -> Path:
        """`datasets/`: the HDF5 shards `{train,val,test}-NNN.h5`."""
        return self.root / "datasets"

    # train
    def model(self, name: str) -> Path:
        """`models/<name>/`: a model's checkpoints, history and `model.pt`."""
        return self.root / "models" / name

    def model_aside(self, name: str) -> Path:
        """`models/<name>.previous/`: the last model whose inputs changed, kept aside (never mixed with a new one)."""
        return self.root / "models" / f"{name}.previous"

    # infer
    def prediction(self, model: str, tile_id: str, date: str) -> Path:
        """`predictions/<model>/<tile_id>/<date>.tif`: one SR tile (COG)."""
        return self.root / "predictions" / model / tile_id / f"{date}.tif"

    def prediction_std(self, model: str, tile_id: str, date: str) -> Path:
        """`predictions/<model>/<tile_id>/<date>.std.tif`: the self-ensemble's per-pixel std (`infer.uncertainty`)."""
        return self.root / "predictions" / model / tile_id / f"{date}.std.tif"

    # mosaic
    @property
    def mosaics(self) -> Path:
        """`mosaics/`: country COGs and VRTs."""
        return self.root / "mosaics"

    # each mosaic product has its spread twin (`spread=True`): the ensemble's std, `.std` before the suffix
    def zone_mosaic(self, region: str, date: str, epsg: int | str, spread: bool = False) -> Path:
        """`mosaics/<region>_<date>_<epsg>[.std].tif`: one UTM zone's mosaic of one date (COG, the zone's grid)."""
        return self.mosaics / f"{region}_{date}_{epsg}{_std(spread)}.tif"

    def date_vrt(self, region: str, date: str, spread: bool = False) -> Path:
        """`mosaics/<region>_<date>[.std].vrt`: one date over every zone's mosaic."""
        return self.mosaics / f"{region}_{date}{_std(spread)}.vrt"

    def warped_zone_vrt(self, region: str, date: str, epsg: int | str, crs: str, spread: bool = False) -> Path:
        """`mosaics/<region>_<date>_<epsg>.<crs>[.std].vrt`: one zone's mosaic warped into another CRS (GDAL's VRT)."""
        return self.mosaics / f"{region}_{date}_{epsg}.{crs.replace(':', '')}{_std(spread)}.vrt"

    def reprojected_mosaic(self, region: str, date: str, crs: str, spread: bool = False) -> Path:
        """`mosaics/<region>_<date>_<crs>[.std].tif` (e.g. `LTU_2016-10-31_EPSG3346.tif`): one date in `mosaic.crs`."""
        return self.mosaics / f"{region}_{date}_{crs.replace(':', '')}{_std(spread)}.tif"

    @property
    def stac(self) -> Path:
        """`mosaics/stac/`: the STAC collection of the mosaics."""
        return self.mosaics / "stac"

    # evaluate
    @property
    def reports(self) -> Path:
        """`reports/`: metrics, report and plots."""
        return self.root / "reports"

    # the launch layer's records
    def state(self, stage: str) -> Path:
        """`_state/<stage>/`: completion markers (`<unit>.done`, `.failed`, `.started`)."""
        return self.root / "_state" / stage

    @property
    def lock(self) -> Path:
        """`_state/run.lock`: the owner (host, pid) of the srpipe command running on this directory now."""
        return self.root / "_state" / "run.lock"

    def slurm(self, stage: str = "") -> Path:
        """`_slurm/[<stage>/]`: submitit folders and ledgers."""
        return self.root / "_slurm" / stage if stage else self.root / "_slurm"

    @property
    def submissions(self) -> Path:
        """`_slurm/submissions.jsonl`: one JSON line per Slurm submission."""
        return self.slurm() / "submissions.jsonl"


def _std(spread: bool) -> str:
    """The spread twin's infix: '.std' (as infer's `<date>.std.tif`), else ''."""
    return ".std" if spread else ""
