"""The reduce: split by tile, never by sample."""

from srpipe.curate.reduce import split_tiles


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
