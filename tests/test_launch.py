"""Local mode: one failing unit is recorded and the others finish; done units are skipped."""

from srpipe import state
from srpipe.config import Config
from srpipe.errors import TileError
from srpipe.launch import run_units


def _flaky(cfg: Config, unit: str) -> dict:
    if unit == "bad":
        raise TileError(unit, "broken on purpose; fix it")
    (cfg.run_path / f"{unit}.out").write_text(unit)
    return {"unit": unit}


def test_a_failing_unit_does_not_stop_the_others_and_is_named(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    summary = run_units(cfg, "demo", _flaky, ["a", "bad", "c"], workers=2)
    assert summary.done == ["a", "c"]
    assert summary.failed == {"bad": "TileError: tile bad: broken on purpose; fix it"}
    assert "FAILED bad: TileError: tile bad" in summary.line()
    assert state.failures(tmp_path, "demo") == {"bad": "TileError: tile bad: broken on purpose; fix it"}
    again = run_units(cfg, "demo", _flaky, ["a", "bad", "c"], workers=1)
    assert again.skipped == ["a", "c"] and list(again.failed) == ["bad"]
