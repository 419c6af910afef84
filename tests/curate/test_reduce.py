"""The reduce: split by tile, never by sample; a corrupt curated tile file is named with the command rebuilding it."""

import shutil
import tomllib

import h5py
import pytest
import tomli_w

from srpipe import state
from srpipe.curate.reduce import split_tiles
from tests.conftest import srpipe


def test_split_is_by_tile_seeded_and_covers_every_tile():
    tiles = [f"t{i:02d}" for i in range(20)]
    split = split_tiles(tiles, (0.6, 0.2, 0.2), seed=0)
    assert sorted(split) == tiles
    assert [list(split.values()).count(s) for s in ("train", "val", "test")] == [12, 4, 4]
    assert split == split_tiles(tiles, (0.6, 0.2, 0.2), seed=0)
    assert split != split_tiles(tiles, (0.6, 0.2, 0.2), seed=1)


def test_small_runs_still_get_a_validation_and_a_test_tile():
    split = split_tiles(["a", "b", "c", "d"], (0.6, 0.2, 0.2), seed=0)
    assert sorted(split.values()) == ["test", "train", "train", "val"]


@pytest.mark.faults
@pytest.mark.parametrize("name", ["h5", "json", "h5 bit-flipped"])
def test_a_corrupt_curated_tile_file_names_it_and_the_command_that_rebuilds_it(tiny_run, tmp_path, name):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.parent / "run", run, ignore=shutil.ignore_patterns("_slurm"))
    config = tomllib.loads((run / "config.toml").read_text())
    (run / "config.toml").write_text(tomli_w.dumps({**config, "run_dir": str(run)}))
    tile = state.done_units(run, "curate")[0]
    path = run / "curation" / "tiles" / f"{tile}.{name.split()[0]}"
    if name == "h5 bit-flipped":  # inside the first sample's label chunk: numpy alone would read it as data
        with h5py.File(path) as f:
            offset = f["hr"].id.get_chunk_info(0).byte_offset
        data = bytearray(path.read_bytes())
        data[offset + 64] ^= 0x04
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated on a shared file system
    (run / "_state" / "curate-reduce" / "all.done").unlink()
    result = srpipe("curate", str(run), "--reduce-only", check=False)
    assert result.returncode == 1
    assert (
        f"curated tile file {path} is corrupt" in result.stdout
        and f"{tile}.done and re-run `srpipe curate`" in (state.failure_record(run, "curate-reduce", "all")["error"])
    )
