"""A full disk: the run directory on a small tmpfs; units that hit ENOSPC fail saying so, nothing half-written stays,
and after space is freed the re-run completes with the same outputs as on a roomy disk."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from srpipe import state
from tests.conftest import aoi_geojson, srpipe, tiny_settings, write_config

pytestmark = pytest.mark.faults


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs (room for two of the tiny run's six EOPatches), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _tree_sums(root: Path) -> dict[str, str]:
    """{relative path: SHA-256 of the content} of every file under `root` (a .gz's data: its header holds a time)."""
    sums = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        sums[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return sums


def _config(tmp_path: Path, run_dir: Path, name: str) -> Path:
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    return write_config(tmp_path / f"{name}.toml", tiny_settings(run_dir, aoi))


def test_a_full_disk_fails_units_saying_so_keeps_nothing_half_written_and_the_rerun_completes(tmp_path, small_disk):
    config = _config(tmp_path, small_disk / "run", "disk")
    run = small_disk / "run"
    srpipe("plan", str(config))
    full = srpipe("download", str(config), check=False)
    assert full.returncode == 1, full.stdout + full.stderr
    failed = state.failures(run, "download")
    assert failed and len(state.done_units(run, "download")) + len(failed) == 6
    for tile, error in failed.items():
        assert error.startswith(f"DiskFullError: the disk is full writing {run}"), error
        assert "free space there and re-run" in error and f"FAILED {tile}: DiskFullError" in full.stdout
        assert not (run / "eopatches" / tile).exists() and not state.is_done(run, "download", tile)
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name], "a temporary file was left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    srpipe("download", str(config))
    assert state.failures(run, "download") == {} and len(state.done_units(run, "download")) == 6
    reference = tmp_path / "roomy"
    srpipe("plan", str(_config(tmp_path, reference, "roomy")))
    srpipe("download", str(tmp_path / "roomy.toml"))
    assert _tree_sums(run / "eopatches") == _tree_sums(reference / "eopatches")
