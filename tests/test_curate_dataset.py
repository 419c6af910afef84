"""Shards: the training contract plus provenance keys, cut into shards and read back through the Dataset."""

import h5py
import numpy as np

from srpipe.curate.dataset import KEYS, ShardDataset, ShardWriter, shard_paths


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
