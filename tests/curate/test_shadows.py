"""Shadow filter: a cloudy label date flags the neighbours at that date, and nothing else."""

from srpipe.curate.shadows import cloudy_timestamps, shadow_flags

NEIGHBOURS = {"a": ["b"], "b": ["a", "c"], "c": ["b"], "far": []}


def test_a_neighbour_of_a_cloudy_tile_at_the_same_date_is_flagged_at_another_date_it_is_not():
    covers = {
        "a": {"2016-07-01": 0.30, "2016-08-01": 0.0},
        "b": {"2016-07-01": 0.0, "2016-08-01": 0.0},
        "c": {"2016-07-01": 0.0},
        "far": {"2016-07-01": 0.0},
    }
    flags = shadow_flags(covers, NEIGHBOURS, min_cover=0.05)
    assert flags == {("b", "2016-07-01"): ["a"]}  # not b in August, not c (not a's neighbour), not a itself


def test_the_cover_limit_is_exclusive_and_a_tile_without_that_date_is_not_flagged():
    covers = {"a": {"d1": 0.05, "d2": 0.051}, "b": {"d1": 0.0}, "c": {"d2": 0.0}}
    assert cloudy_timestamps(covers, 0.05) == {"a": ["d2"], "b": [], "c": []}
    assert shadow_flags(covers, NEIGHBOURS, 0.05) == {}  # b has no d2 label; c is not a's neighbour


def test_two_cloudy_neighbours_are_both_named():
    covers = {"a": {"d": 0.5}, "b": {"d": 0.0}, "c": {"d": 0.5}}
    assert shadow_flags(covers, NEIGHBOURS, 0.1) == {("b", "d"): ["a", "c"]}
