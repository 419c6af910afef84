"""`srpipe evaluate RUN --scene DIR`: a trained model scored on a scene a user brings, in a run of its own."""

from __future__ import annotations

import json
import tomllib

import pytest
import tomli_w

from tests.conftest import srpipe
from tests.helpers import copy_run, crop_scene

ADAPT_MINUTES = 0.25


@pytest.mark.slow
def test_a_trained_model_is_scored_on_a_scene_the_user_brings_then_adapted_to_it(tiny_run, tmp_path):
    """The scene's test tiles score RUN's model as it is, then (--adapt) after fine-tuning it on the scene's own
    training tiles for [adapt] max_minutes: the adapted model scores higher and the fine-tuning kept to its budget."""
    scene = crop_scene(tmp_path / "my_scene", (440000, 4170000, 450000, 4178000))  # 6 whole tiles (3 x 2)
    copy = copy_run(tiny_run.parent / "run", tmp_path / "run")  # the session's run is read-only
    config = tomllib.loads((copy / "config.toml").read_text())
    config["adapt"] = {"max_minutes": ADAPT_MINUTES, "lr": 1e-3}
    (copy / "config.toml").write_text(tomli_w.dumps(config))
    result = srpipe("evaluate", str(copy), "--scene", str(scene), "--adapt")
    run = copy / "scenes" / "my_scene"
    assert "report: " in result.stdout and (run / "reports" / "index.html").exists()
    before = json.loads((run / "reports-unadapted" / "metrics.json").read_text())
    assert before["n_samples"] > 0 and before["strongest_baseline"] in before["baselines"]
    assert before["tile_cores"]["n"] > 0
    record = json.loads((run / "reports" / "adaptation.json").read_text())
    assert record["seconds"] <= ADAPT_MINUTES * 60 + 30, record["seconds"]  # the budget, plus setup and validation
    one_pass = {k: record[k]["sr_one_pass"]["cpsnr"] for k in ("unadapted", "adapted")}
    assert one_pass["adapted"] > one_pass["unadapted"], record
    assert (run / "models" / "highresnet.unadapted" / "model.pt").exists()  # RUN's model, kept aside
    assert "Before and after adaptation" in (run / "reports" / "index.html").read_text()
    assert "unadapted: one pass" in result.stdout and "adapted: one pass" in result.stdout
    config = (run / "config.toml").read_text()
    assert str(scene) in config and "my_scene" in config
    bad = srpipe("evaluate", str(copy), "--scene", str(tmp_path / "nowhere"), check=False)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr
