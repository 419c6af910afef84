"""A stage reads no config key it does not declare: its fingerprint hashes `Stage.reads`, so an undeclared key would
escape it (a change to it would not redo the stage). A tiny chain runs on a config that records what each stage reads.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import srpipe
from srpipe.chain import CHAIN, STAGES, Pending, Stage, plan_run, run_chain, run_unit
from srpipe.cluster.local import LocalExecutor
from srpipe.config import Config, ModelConfig, SourceConfig, config_to_dict, load_config
from srpipe.infer.stage import _radiometric_offset
from tests.conftest import aoi_geojson, tiny_settings, write_config

_MACHINERY = str(Path(srpipe.__file__).parent / "chain")  # reads config for fingerprints and paths, not for outputs


class _Recorder:
    """{stage: config keys its code read}, noted while `stage` runs (a global, not a contextvar: threads read too)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.reads: dict[str, set[str]] = defaultdict(set)

    def note(self, key: str, frame: FrameType | None) -> None:
        if self.stage is not None and _stage_code(frame):
            self.reads[self.stage].add(key)


RECORDER = _Recorder()


def _stage_code(frame: FrameType | None) -> bool:
    """True when the read at `frame` is the stage's own: not the chain machinery's, not a dataclass method's (hash, eq,
    repr: "<string>") nor `dataclasses.replace` copying fields; `asdict`/`astuple` called by stage code count."""
    inside, whole = False, False
    while frame is not None and frame.f_code.co_filename == dataclasses.__file__:
        inside, whole = True, whole or frame.f_code.co_name in ("asdict", "astuple")
        frame = frame.f_back
    if frame is None or (inside and not whole):  # e.g. dataclasses.replace reading the fields it copies
        return False
    path = frame.f_code.co_filename
    return path != "<string>" and not path.startswith(_MACHINERY)


def _recording(cls: type, prefix: str, sections: frozenset[str] = frozenset()) -> type:
    """A subclass of config dataclass `cls` that notes `prefix + field` on each read of a field (`sections`: the
    fields holding a section, whose own fields are noted instead); picklable by name."""
    names = frozenset(f.name for f in dataclasses.fields(cls)) - sections

    def __getattribute__(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in names and RECORDER.stage is not None:
            RECORDER.note(prefix + name, sys._getframe(1))
        return value

    sub = type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": __getattribute__, "__module__": __name__})
    globals()[sub.__name__] = sub  # pickle finds it by module and name
    return sub


_SECTIONS = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}
_SECTIONS = {name: cls for name, cls in _SECTIONS.items() if dataclasses.is_dataclass(cls)}
_RECORDING = {name: _recording(cls, f"{name}.") for name, cls in _SECTIONS.items()}
_RECORDING_CONFIG = _recording(Config, "", frozenset(_SECTIONS))


def recording_config(cfg: Config) -> Config:
    """`cfg` as recording dataclasses: every field read inside a stage function is noted against that stage."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for name, section in values.items():
        if name in _RECORDING:
            values[name] = _RECORDING[name](**{f.name: getattr(section, f.name) for f in dataclasses.fields(section)})
    return _RECORDING_CONFIG(**values)


def _entered(name: str) -> None:
    if RECORDER.stage != name:
        _radiometric_offset.cache_clear()  # infer's per-process cache: the source reads its settings inside the stage
    RECORDER.stage = name


def _recorded(name: str, fn: Callable) -> Callable:
    def run(*args: Any) -> Any:
        _entered(name)
        try:
            return fn(*args)
        finally:
            RECORDER.stage = None

    return run


def _recorded_shard(name: str, fn: Callable) -> Callable:
    def run(cfg: Config, units: list[str]) -> Iterator:
        _entered(name)  # the whole shard, its writer thread too (run_shard's own records are the machinery's)
        try:
            yield from fn(cfg, units)
        finally:
            RECORDER.stage = None

    return run


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    """RECORDER, fresh, noting reads inside every stage's function and shard function."""
    function, batch_function = Stage.function, Stage.batch_function
    monkeypatch.setattr(Stage, "function", lambda self: _recorded(self.name, function(self)))
    monkeypatch.setattr(Stage, "batch_function", lambda self: _recorded_shard(self.name, batch_function(self)))
    RECORDER.stage, RECORDER.reads = None, defaultdict(set)
    yield RECORDER
    RECORDER.stage = None
    _radiometric_offset.cache_clear()


def undeclared(stage: Stage, keys: set[str]) -> list[str]:
    """The keys of `keys` that neither `stage.reads` (a section covers its keys) nor `stage.speed_only` name."""
    declared = set(stage.reads) | set(stage.speed_only)
    return sorted(k for k in keys if k not in declared and k.partition(".")[0] not in declared)


def _reads_run_dir(cfg: Config, unit: str) -> dict:
    return {"dir": str(cfg.run_path)}


def _reads_scale(cfg: Config, unit: str) -> dict:
    return {"scale": cfg.source.scale, "n": cfg.curate.n_frames, "dims": list(dataclasses.asdict(cfg.model))}


def test_the_recording_config_still_hashes_replaces_pickles_and_dumps():
    cfg = recording_config(Config(run_dir="/tmp/x"))
    assert cfg == recording_config(Config(run_dir="/tmp/x")) and hash(cfg) == hash(recording_config(cfg))
    assert config_to_dict(cfg) == config_to_dict(Config(run_dir="/tmp/x"))
    changed = dataclasses.replace(cfg.source, scale=2)
    assert type(changed) is type(cfg.source) and changed.scale == 2 and isinstance(changed, SourceConfig)
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_the_recorder_catches_a_key_a_stage_reads_but_does_not_declare(recorder, tmp_path):
    cfg = recording_config(Config(run_dir=str(tmp_path)))
    toy = Stage("toy", f"{__name__}:_reads_scale", per_tile=True, reads=("curate.n_frames",), speed_only=("model",))
    assert run_unit(cfg, toy, Pending("a", {"config": {}})) == ("a", None)
    model = {f"model.{f.name}" for f in dataclasses.fields(ModelConfig)}  # asdict reads every key
    assert recorder.reads["toy"] == {"source.scale", "curate.n_frames"} | model
    assert undeclared(toy, recorder.reads["toy"]) == ["source.scale"]
    config_to_dict(cfg), hash(cfg), dataclasses.replace(cfg, workers=3)  # outside a stage: nothing noted
    where = Stage("where", f"{__name__}:_reads_run_dir", per_tile=True)
    run_unit(cfg, where, Pending("b", {"config": {}}))
    assert undeclared(where, recorder.reads["where"]) == ["run_dir"]  # read through the run_path property
    assert set(recorder.reads) == {"toy", "where"}


def _sample_settings(tmp_path: Path) -> dict:
    """The tiny run (conftest), smaller: the whole chain on the sample source."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    settings = tiny_settings(tmp_path / "run", aoi)
    settings["train"] |= {"epochs": 2}
    settings["delineation"] |= {"epochs": 1, "max_samples": 64}
    settings["evaluate"] |= {"downstream_budget_s": 2.0, "max_tile_plots": 1}
    return settings


def _synthetic_settings(tmp_path: Path) -> dict:
    """The same AOI on the synthetic source (no labels: download, infer with the packaged weights, mosaic, catalog),
    whose stacks are generated where infer reads them."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    return {
        "run_dir": str(tmp_path / "run"),
        "plan": {"aoi": str(aoi), "region": "syn"},
        "source": {"name": "synthetic", "lr_resolution_m": 80.0, "n_dates": 8},
        "model": {"channels": 32, "encoder_layers": 2, "shiftnet_channels": 32, "shiftnet_pool": 2},
        "infer": {"model": "sample-x4", "n_frames": 8},
    }


@pytest.mark.slow
@pytest.mark.parametrize("settings_of", [_sample_settings, _synthetic_settings], ids=["sample", "synthetic"])
def test_every_stage_of_a_tiny_chain_reads_only_the_keys_it_declares(settings_of, recorder, tmp_path, capsys):
    settings = settings_of(tmp_path)
    settings["infer"] = settings.get("infer", {}) | {"loader_workers": 0}  # tiles read here, where the recorder is
    start = time.perf_counter()
    planned = plan_run(load_config(write_config(tmp_path / "tiny.toml", settings)))
    assert not planned.failed, planned.failed
    cfg = recording_config(load_config(tmp_path / "run" / "config.toml"))
    summaries = run_chain(cfg, CHAIN, None, LocalExecutor(workers=1))  # no pool: every unit runs in this process
    stages = [s.stage for s in summaries]
    unlabelled = ["download", "infer", "mosaic", "catalog"]  # the synthetic source has no labels
    assert stages == (list(CHAIN) if settings_of is _sample_settings else unlabelled)
    assert all(s.done and not s.failed for s in summaries), [(s.stage, s.failed) for s in summaries]
    missing = {name: undeclared(STAGES[name], recorder.reads[name]) for name in stages}
    with capsys.disabled():
        print(f"\n{len(stages)} stages in {time.perf_counter() - start:.0f} s; the keys each read:")
        for name in stages:
            print(f"  {name}: {sorted(recorder.reads[name])}")
    assert all(recorder.reads[name] for name in stages)  # the recorder saw every stage
    assert not any(missing.values()), f"keys read but neither in reads nor speed_only: {missing}"
