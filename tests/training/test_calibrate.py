"""Interval calibration at the end of training, and of weights on a run they never trained on."""

import json
import shutil

import torch

from srpipe.models.calibration import Calibration
from srpipe.models.trained import model_dir
from srpipe.training.calibrate import calibrate_weights
from srpipe.training.train import train


def test_weights_calibrated_on_another_run_carry_the_calibration_and_its_check_in_the_pt_and_json(
    tmp_path, make_synthetic_run
):
    source = make_synthetic_run(tmp_path / "source", epochs=1)
    train(source)
    payload = torch.load(model_dir(source) / "model.pt", weights_only=False)
    assert Calibration.from_json(payload.pop("calibration")).split == "val"  # train calibrated its own model
    weights = tmp_path / "w.pt"
    torch.save(payload, weights)  # weights without a calibration, as those made before srpipe calibrated
    other = make_synthetic_run(tmp_path / "other", epochs=1)
    datasets = other.layout.datasets
    shutil.copy(datasets / "val-000.h5", datasets / "test-000.h5")  # the check on the calibration's own pixels
    check = calibrate_weights(str(weights), other.run_path)
    calibration = Calibration.from_json(torch.load(weights, weights_only=False)["calibration"])
    assert calibration.split == "val" and calibration.pixels > 1000 and calibration.samples == 16
    record = json.loads(weights.with_suffix(".json").read_text())["calibration"]
    assert record["coverage_on_its_test_split"]["0.90"] == check["0.90"] and "other" in record["calibrated_on"]
    # conformal quantiles cover at least their level of the very pixels they were taken from
    assert all(c >= level for level in (0.8, 0.9, 0.95) for c in check[f"{level:.2f}"]), check
