"""Shards: the training contract plus provenance keys, cut into shards and read back through the Dataset."""

import h5py
import numpy as np
import pytest

from srpipe.data.shards import KEYS, ShardDataset, ShardWriter, shard_paths
from srpipe.errors import StageError


def batch(n: int, start: int) -> dict:
    return {
        "lr": np.full((n, 2, 4, 4, 4), start, np.float32),
        "lr_mask": np.ones((n, 2, 4, 4), bool),
        "hr": np.zeros((n, 4, 16, 16), np.float32),
        "hr_unmatched": np.ones((n, 4, 16, 16), np.float32),
        "hr_mask": np.ones((n, 16, 16), bool),
        "tile_id": np.asarray(["t"] * n, dtype="S"),
        "hr_date": np.asarray(["2016-07-01"] * n, dtype="S10"),
        "lr_dates": np.asarray([["2016-06-01", ""]] * n, dtype="S10"),
        "scores": np.zeros((n, 5), np.float32),
    }


def test_shards_hold_the_contract_and_the_extra_keys_and_read_back_in_order(tmp_path):
    writer = ShardWriter(tmp_path, "train", 4, {"split": "train"})
    writer.add(batch(3, 0))
    writer.add(batch(3, 1))
    assert writer.close() == 6
    paths = shard_paths(tmp_path, "train")
    assert [p.name for p in paths] == ["train-000.h5", "train-001.h5"]
    with h5py.File(paths[0]) as f:
        assert set(f) == {*KEYS, "hr_unmatched", "scores"} and len(f["lr"]) == 4
    data = ShardDataset(paths)
    assert len(data) == 6 and data[5]["lr"][0, 0, 0, 0].item() == 1


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_corrupt_shard_names_the_file_and_the_command_that_rebuilds_it(tmp_path, damage):
    writer = ShardWriter(tmp_path, "train", 4, {"split": "train"})
    writer.add(batch(4, 7))
    writer.close()
    path = shard_paths(tmp_path, "train")[0]
    with h5py.File(path) as f:  # the byte offset of sample 2's lr chunk: a flip inside the data, not the header
        offset = f["lr"].id.get_chunk_info(2).byte_offset
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: offset + 8]
    else:
        data[offset + 8] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(StageError, match=rf"HDF5 shard {path} is corrupt.*`srpipe curate --reduce-only`"):
        [ShardDataset([path])[n] for n in range(4)]
