"""Training on tiny synthetic shards: every loss on, history and curves, registered validation, kill and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from srpipe import state
from srpipe.config import LossConfig
from srpipe.models.trained import load_trained, model_dir
from srpipe.training.ranks import World
from srpipe.training.train import lr_factor, train, validate
from tests.helpers import synthetic_samples


def test_training_with_every_loss_lowers_the_loss_and_logs_each_term(tmp_path, make_synthetic_run):
    cfg = make_synthetic_run(tmp_path / "run", epochs=4)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, consistency="off"))  # else no mean term
    result = train(cfg)
    history = json.loads((model_dir(cfg) / "history.json").read_text())
    assert result["epochs"] == 4 and [r["epoch"] for r in history] == [1, 2, 3, 4]
    for term in ("loss_pixel", "loss_shift_reg", "loss_mean_match", "loss_perceptual", "loss_ssim", "val_cpsnr"):
        assert np.isfinite(history[-1][term]), term
    assert history[-1]["loss"] < history[0]["loss"]
    assert (model_dir(cfg) / "loss_curves.png").stat().st_size > 0 and (model_dir(cfg) / "model.pt").exists()


class _ShiftedLabel(torch.nn.Module):
    """A 'model' that returns the batch's label moved by 2 px and brightened: registration must see through it."""

    scale = 4

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels, self.seen = labels, 0

    def forward(self, lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.labels[self.seen : self.seen + len(lr)]
        self.seen += len(lr)
        return torch.roll(out, (2, -1), (2, 3)) + 0.05


def test_validation_scores_after_registration(tmp_path):
    rng = np.random.default_rng(0)
    s = synthetic_samples(8, 3, rng)
    batch = {k: torch.from_numpy(s[k]) for k in ("lr", "lr_mask", "hr", "hr_mask")}
    batch["hr"] = batch["hr"] * 0.8 + 0.1  # room for the brightening inside [0, 1]
    loader = [batch]
    scores = validate(_ShiftedLabel(batch["hr"]), loader, World(), torch.device("cpu"), LossConfig(crop_border_px=6))
    assert scores["val_cpsnr"] > 40 > scores["val_psnr"]  # near-perfect once registered, poor without


class _DarkBorderLabel(_ShiftedLabel):
    """A 'model' that returns the label with its outer 8 px black: what the loss (crop 8) never trains."""

    def forward(self, lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inner = self.labels[self.seen : self.seen + len(lr), ..., 8:-8, 8:-8]
        self.seen += len(lr)
        return torch.nn.functional.pad(inner, (8, 8, 8, 8))  # a new tensor: the labels stay as they are


def test_validation_scores_only_the_pixels_the_loss_trains():
    rng = np.random.default_rng(1)
    s = synthetic_samples(8, 3, rng)
    loader = [{k: torch.from_numpy(s[k]) for k in ("lr", "lr_mask", "hr", "hr_mask")}]
    labels = loader[0]["hr"]
    inside = validate(_DarkBorderLabel(labels), loader, World(), torch.device("cpu"), LossConfig(crop_border_px=8))
    whole = validate(_DarkBorderLabel(labels), loader, World(), torch.device("cpu"), LossConfig(crop_border_px=3))
    assert inside["val_cpsnr"] > 60 and inside["val_psnr"] > 60  # the checkpoint choice sees the trained pixels only
    assert whole["val_cpsnr"] < 20


def test_a_run_killed_mid_epoch_resumes_from_its_checkpoint_and_ends_as_an_unbroken_one(tmp_path, make_synthetic_run):
    settings = {"epochs": 3, "checkpoint_every_steps": 1, "augment": True, "lr_schedule": "cosine"}
    broken = make_synthetic_run(tmp_path / "broken", n_train=128, **settings)
    script = "import sys; from srpipe.config import load_config; from srpipe.training.train import train; "
    script += "train(load_config(sys.argv[1]))"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(broken.run_path / "config.toml")], env=env, start_new_session=True
    )
    checkpoint = model_dir(broken) / "checkpoint.pt"
    deadline, saved = time.time() + 120, {}
    while time.time() < deadline and proc.poll() is None:
        try:  # a checkpoint being replaced is briefly absent (the old one is renamed aside first)
            saved = torch.load(checkpoint, weights_only=False)
        except FileNotFoundError:
            pass
        else:
            if saved["epoch"] == 1 and saved["batch_done"] >= 1:
                break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved.get("epoch") == 1 and 0 < saved["batch_done"] < 16, "not killed mid-epoch 2"
    resumed = train(broken)
    unbroken = train(make_synthetic_run(tmp_path / "unbroken", n_train=128, **settings))
    assert resumed["epochs"] == unbroken["epochs"] == 3 and resumed["steps"] == unbroken["steps"]
    assert resumed["param_checksum"] == pytest.approx(unbroken["param_checksum"], rel=1e-4, abs=1e-3)


def test_cosine_schedule_runs_from_the_full_rate_to_one_percent():
    assert lr_factor("cosine", 0.0) == 1.0 and lr_factor("cosine", 0.5) == pytest.approx(0.505)
    assert lr_factor("cosine", 1.0) == lr_factor("cosine", 7.0) == pytest.approx(0.01)
    assert lr_factor("constant", 0.9) == 1.0


def test_a_retrained_model_is_reloaded_not_served_from_the_cache(tmp_path, make_synthetic_run):
    cfg = make_synthetic_run(tmp_path / "run", epochs=1)
    train(cfg)
    first = load_trained(cfg)
    assert load_trained(cfg) is first  # one load per process for a whole array task of tiles
    saved = torch.load(model_dir(cfg) / "model.pt", weights_only=False)
    saved["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in saved["model"].items()}
    with state.atomic_path(model_dir(cfg) / "model.pt") as tmp:
        torch.save(saved, tmp)
    second = load_trained(cfg)
    assert second is not first
    assert torch.equal(second.net.encoder.net[0].bias, first.net.encoder.net[0].bias + 1)
