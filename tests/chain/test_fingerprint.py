"""Re-runs are never stale: a changed setting redoes exactly the units it reaches and everything downstream of them."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
import torch

from srpipe import state
from srpipe.chain import STAGES, ChainState, Pending, Stage, fingerprint, run_shard
from srpipe.chain.fingerprint import stale_reason
from srpipe.config import Config, InferConfig, SourceConfig
from srpipe.infer.record import InferRecord
from tests.conftest import srpipe

pytestmark = pytest.mark.slow


def _copy_run(tiny_run: Path, target: Path, **changes: dict) -> Path:
    """A copy of the finished tiny run at `target`, its config.toml changed section by section."""
    shutil.copytree(tiny_run.parent / "run", target, ignore=shutil.ignore_patterns("_slurm"))
    config = tomllib.loads((target / "config.toml").read_text())
    config["run_dir"] = str(target)
    for section, values in changes.items():
        config[section].update(values)
    (target / "config.toml").write_text(tomli_w.dumps(config))
    return target


def _counts(stdout: str) -> dict[str, tuple[int, int, int]]:
    """{stage: (done, skipped, failed)} from the summary lines of `srpipe run`."""
    pattern = r"^([\w-]+): (\d+) done, (\d+) skipped \(done before\), (\d+) failed"
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in re.finditer(pattern, stdout, re.MULTILINE)}


def _status_rows(stdout: str) -> dict[str, tuple[int, ...]]:
    """{stage: (units, done, stale, failed, pending)} from the table of `srpipe status`."""
    rows = re.findall(r"^([\w-]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", stdout, re.MULTILINE)
    return {row[0]: tuple(map(int, row[1:])) for row in rows}


def _sha(path: Path) -> str:
    return state.file_sha256(path)


def test_a_changed_curate_threshold_redoes_the_reduce_and_everything_after_it_but_not_the_map(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run", curate={"noise_min_psnr_db": 18.0})
    mosaic = run / "mosaics" / "tiny_2016-10-31_32618.tif"
    before = {"mosaic": _sha(mosaic), "model": _sha(run / "models/highresnet/model.pt")}
    status = srpipe("status", str(run)).stdout
    assert "STALE curate-reduce all: curate.noise_min_psnr_db 10.0 -> 18.0" in status, status
    assert "STALE train all: curate-reduce is stale (curate.noise_min_psnr_db 10.0 -> 18.0)" in status, status
    assert "STALE mosaic 32618_2016-10-31: curate-reduce is stale" in status and "STALE infer 6 units" in status, status
    rows = _status_rows(status)
    assert rows["download"] == rows["curate"] == (6, 6, 0, 0, 0) and rows["curate-reduce"] == (1, 0, 1, 0, 0), status
    assert rows["infer"] == (6, 0, 6, 0, 0) and rows["evaluate"] == (1, 0, 1, 0, 0), status

    out = srpipe("run", str(run)).stdout
    counts = _counts(out)
    assert counts["download"] == (0, 6, 0) and counts["curate"] == (0, 6, 0)  # the map reads no noise threshold
    for stage in ("curate-reduce", "train-delineation", "train", "mosaic", "catalog", "evaluate"):
        assert counts[stage] == (1, 0, 0), (stage, out)
    assert counts["infer"] == (6, 0, 0)
    assert "resuming" not in out  # the finished model's weights and spent budget are not continued
    assert (run / "models/highresnet.previous/model.pt").exists()  # the old model kept aside, not mixed in
    assert _sha(run / "models/highresnet.previous/model.pt") == before["model"]
    assert _sha(run / "models/highresnet/model.pt") != before["model"] and _sha(mosaic) != before["mosaic"]
    samples = json.loads((run / "curation/stats.json").read_text())["n_samples"]["train"]
    original = json.loads((tiny_run.parent / "run/curation/stats.json").read_text())["n_samples"]["train"]
    assert samples < original  # the new threshold reached the shards
    status = srpipe("status", str(run)).stdout
    assert "STALE" not in status and all(row[1] == row[0] for row in _status_rows(status).values()), status


def test_an_evaluate_setting_redoes_only_evaluate(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run", evaluate={"max_tile_plots": 1})
    counts = _counts(srpipe("run", str(run)).stdout)
    assert counts.pop("evaluate") == (1, 0, 0) and counts.pop("plan") == (1, 0, 0)  # plan: re-checked each run
    assert all(done == 0 and failed == 0 for done, _, failed in counts.values()), sorted(counts.items())


def _train_checkpoint(run: Path) -> dict:
    path = run / "models/highresnet/checkpoint.pt"
    try:
        return torch.load(path, weights_only=False) if path.exists() else {}
    except (EOFError, RuntimeError):  # being replaced right now
        return {}


def test_a_retrain_killed_midway_resumes_and_ends_as_an_unbroken_retrain(tiny_run, tmp_path):
    change = {"lr": 5e-4, "epochs": 3, "checkpoint_every_steps": 1}
    broken = _copy_run(tiny_run, tmp_path / "broken", train=change)
    unbroken = _copy_run(tiny_run, tmp_path / "unbroken", train=change)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "srpipe", "train", str(broken)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline, saved = time.time() + 240, {}
    while time.time() < deadline and proc.poll() is None:
        saved = _train_checkpoint(broken)
        if saved.get("epoch") == 1 and saved.get("batch_done", 0) >= 1:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved.get("epoch") == 1 and saved["batch_done"] >= 1, "not killed in the retrain's second epoch"
    assert (broken / "models/highresnet.previous/model.pt").exists()  # set aside before the retrain began
    resumed = srpipe("train", str(broken)).stdout
    assert "train: resuming highresnet at epoch 2" in resumed, resumed
    srpipe("train", str(unbroken))
    a = json.loads((broken / "_state/train/all.done").read_text())
    b = json.loads((unbroken / "_state/train/all.done").read_text())
    assert a["inputs"] == b["inputs"] and a["steps"] == b["steps"] and a["epochs"] == b["epochs"] == 3
    assert a["param_checksum"] == pytest.approx(b["param_checksum"], rel=1e-4, abs=1e-3)


def test_fingerprints_name_what_changed(tmp_path):
    stage = Stage("demo", "x:y", reads=("curate.n_frames", "infer"))
    old = ChainState(Config(run_dir=str(tmp_path))).inputs(stage, "all")
    new = ChainState(Config(run_dir=str(tmp_path), infer=InferConfig(date="2016-09-01"))).inputs(stage, "all")
    assert fingerprint(old) != fingerprint(new)
    assert stale_reason(old, new) == "infer.date '' -> '2016-09-01'"
    assert fingerprint(old) == fingerprint(ChainState(Config(run_dir=str(tmp_path))).inputs(stage, "all"))


def test_a_key_a_newer_srpipe_added_at_its_default_leaves_finished_units_done(tmp_path):
    """An upgrade that adds `source.stac_sign` must not send a country's downloads back to the archive."""
    cfg = Config(run_dir=str(tmp_path))
    stage = STAGES["download"]
    now = ChainState(cfg).inputs(stage, "t1")
    older = json.loads(json.dumps(now, default=str))  # as a marker records it
    del older["config"]["source.stac_sign"], older["config"]["source.vhr_stac"]  # keys the older srpipe lacked
    state.mark_done(cfg.run_path, "download", "t1", {"inputs": fingerprint(older), "inputs_detail": older})
    assert ChainState(cfg).unit_state(stage, "t1").status == "done"
    set_away = Config(run_dir=str(tmp_path), source=dataclasses.replace(cfg.source, vhr_stac="labels/collection.json"))
    assert ChainState(set_away).unit_state(stage, "t1").status == "stale"  # the same key set away from its default
    assert "source.vhr_stac None -> " in ChainState(set_away).unit_state(stage, "t1").reason
    older["config"]["source.n_dates"] = 99  # and a key the record has, changed since
    state.mark_done(cfg.run_path, "download", "t1", {"inputs": fingerprint(older), "inputs_detail": older})
    assert ChainState(cfg).unit_state(stage, "t1").status == "stale"


def test_a_per_tile_unit_reads_the_same_tile_upstream_and_a_whole_run_unit_every_tile(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    states = ChainState(cfg)
    for tile in ("a", "b"):
        state.mark_done(tmp_path, "download", tile, {"inputs": "x", "version": f"v-{tile}"})
    curate = states.inputs(STAGES["curate"], "a")
    assert curate["upstream"] == {"download": "v-a"}
    reduce_before = states.inputs(STAGES["curate-reduce"], "all")
    state.mark_done(tmp_path, "curate", "a", {"inputs": "x", "version": "c-a"})
    states.forget("curate")  # what a run of curate changed is read anew
    reduce_after = states.inputs(STAGES["curate-reduce"], "all")
    assert reduce_before["upstream"] != reduce_after["upstream"]  # one more curated tile: the reduce is stale
    record = {"inputs": fingerprint(reduce_before), "inputs_detail": reduce_before, "version": "r"}
    state.mark_done(tmp_path, "curate-reduce", "all", record)
    now = ChainState(cfg).unit_state(STAGES["curate-reduce"], "all")
    assert now.status == "stale" and now.reason == "curate was redone"


def test_a_mosaic_unit_reads_the_tiles_of_its_zone_and_date_only(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    records = {
        "a": InferRecord("a", 32634, ("2016-06-01", "2016-07-01")),
        "b": InferRecord("b", 32634, ("2016-07-01",)),
        "c": InferRecord("c", 32635, ("2016-06-01",)),
    }
    for tile, record in records.items():
        state.mark_done(tmp_path, "infer", tile, {"inputs": "x", **record.info(), "version": f"{tile}1"})
    mosaic = STAGES["mosaic"]
    assert mosaic.mapped and not mosaic.per_tile
    units = ChainState(cfg).units(mosaic)
    assert units == ["32634_2016-06-01", "32634_2016-07-01", "32635_2016-06-01"]
    before = {u: ChainState(cfg).inputs(mosaic, u)["upstream"] for u in units}
    state.mark_done(tmp_path, "infer", "b", {"inputs": "y", **records["b"].info(), "version": "b2"})  # b redone
    after = {u: ChainState(cfg).inputs(mosaic, u)["upstream"] for u in units}
    changed = sorted(u for u in before if before[u] != after[u])
    assert changed == ["32634_2016-07-01"]  # the one zone x date that b touches


def _shard(cfg: Config, units: list[str]):
    """A batch function for the shard test: unit 'bad' fails, the others succeed, in order."""
    for unit in units:
        yield unit, (ValueError(f"{unit} is bad") if unit == "bad" else {"n": len(unit)})


def test_a_shard_records_each_unit_and_a_failing_unit_fails_alone(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    stage = Stage("shardy", "x:y", per_tile=True, batch="tests.chain.test_fingerprint:_shard")
    todo = [Pending("a", {"config": {}}), Pending("bad", {"config": {}}), Pending("ccc", {"config": {}})]
    todo.append(Pending("stale", {"config": {}}, problem="upstream is stale"))
    results = dict(run_shard(cfg, stage, todo))
    assert results == {
        "a": None,
        "bad": "ValueError: bad is bad",
        "ccc": None,
        "stale": "StageError: upstream is stale",
    }
    assert state.done_info(tmp_path, "shardy", "ccc")["n"] == 3
    assert state.failure_record(tmp_path, "shardy", "bad")["error"] == "ValueError: bad is bad"


def test_a_scene_replaced_at_the_same_path_is_a_changed_download_input(tmp_path):
    scene = tmp_path / "scene"
    scene.mkdir()
    for band in ("B02", "B03"):
        (scene / f"{band}.tif").write_bytes(band.encode())
    cfg = Config(run_dir=str(tmp_path / "run"), source=SourceConfig(name="sample", scene=str(scene)))
    stage = STAGES["download"]
    old = ChainState(cfg).inputs(stage, "t1")
    (scene / "B03.tif").write_bytes(b"another acquisition")  # same folder, same names, other content
    new = ChainState(cfg).inputs(stage, "t1")
    assert fingerprint(old) != fingerprint(new)
    assert stale_reason(old, new) == f"file {scene / 'B03.tif'} changed"
