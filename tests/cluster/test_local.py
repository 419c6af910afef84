"""Local mode: one failing unit is recorded and the others finish; done units are skipped; MPI ranks split tiles."""

from srpipe import state
from srpipe.chain import Stage
from srpipe.cluster.local import LocalExecutor, run_units
from srpipe.config import Config
from srpipe.errors import TileError

FLAKY = Stage("demo", "tests.cluster.test_local:flaky", per_tile=True, reads=("workers",))


def flaky(cfg: Config, unit: str) -> dict:
    """A per-tile stage that fails on the unit 'bad' and writes `<unit>.out` for the others."""
    if unit == "bad":
        raise TileError(unit, "broken on purpose; fix it")
    (cfg.run_path / f"{unit}.out").write_text(unit)
    return {"unit": unit}


def test_a_failing_unit_does_not_stop_the_others_and_is_named(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    summary = run_units(cfg, FLAKY, ["a", "bad", "c"], workers=2)
    assert summary.done == ["a", "c"]
    assert summary.failed == {"bad": "TileError: tile bad: broken on purpose; fix it"}
    assert "FAILED bad: TileError: tile bad" in summary.line()
    assert state.failures(tmp_path, "demo") == {"bad": "TileError: tile bad: broken on purpose; fix it"}
    again = run_units(cfg, FLAKY, ["a", "bad", "c"], workers=1)
    assert again.skipped == ["a", "c"] and list(again.failed) == ["bad"]


def test_a_unit_done_on_other_settings_is_redone(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    assert run_units(cfg, FLAKY, ["a", "c"]).done == ["a", "c"]
    (tmp_path / "a.out").unlink()
    changed = Config(run_dir=str(tmp_path), workers=3)  # the setting FLAKY reads
    summary = run_units(changed, FLAKY, ["a", "c"])
    assert summary.done == ["a", "c"] and not summary.skipped and (tmp_path / "a.out").exists()
    assert run_units(changed, FLAKY, ["a", "c"]).skipped == ["a", "c"]


def test_ranks_take_the_tiles_round_robin(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    second = LocalExecutor(workers=1, rank=1, size=2).run(cfg, FLAKY, ["a", "b", "c", "d"], None)
    assert second.done == ["b", "d"]
