"""Evaluation: masked scores of SR and bicubic per test sample, metrics.json's keys, the report and its plots."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srpipe import evaluate as ev
from srpipe.config import Config, EvaluateConfig, ModelConfig
from srpipe.curate.normalise import BandScale
from srpipe.models import build_model
from srpipe.models.trained import TrainedModel


def shard(n: int = 6, k: int = 3) -> dict[str, np.ndarray]:
    """A test shard of `n` smooth samples (16 px LR, 64 px labels) from two tiles, the labels' top rows cloudy."""
    g = torch.Generator().manual_seed(0)
    hr = 0.2 + 0.6 * F.interpolate(torch.rand(n, 4, 8, 8, generator=g), size=(64, 64), mode="bicubic").clamp(0, 1)
    lr = F.avg_pool2d(hr, 4)[:, None].expand(-1, k, -1, -1, -1)
    hr_mask = np.ones((n, 64, 64), bool)
    hr_mask[:, :12] = False
    return {
        "lr": lr.numpy().copy(),
        "lr_mask": np.ones((n, k, 16, 16), bool),
        "hr": hr.numpy(),
        "hr_mask": hr_mask,
        "tile_id": np.array([b"t1", b"t2"] * (n // 2)),
        "hr_date": np.array([b"2016-07-01"] * n),
    }


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A Config on tmp_path whose test set is `shard()` and whose model is an untrained tiny HighRes-Net."""
    torch.manual_seed(0)
    unit = BandScale(np.zeros(4, np.float32), np.ones(4, np.float32))
    net = build_model(ModelConfig(channels=8, encoder_layers=1), scale=4).eval()
    monkeypatch.setattr(ev, "load_trained", lambda cfg: TrainedModel(net, unit, unit, n_frames=3, scale=4))
    monkeypatch.setattr(ev, "shard_paths", lambda folder, split: ["test-000.h5"])
    samples = [shard()]
    monkeypatch.setattr(ev, "iter_samples", lambda paths: iter(samples))
    return Config(run_dir=str(tmp_path), evaluate=EvaluateConfig(batch_size=4, max_tile_plots=1)), samples


def test_metrics_json_keeps_its_keys_and_the_report_shows_the_plotted_tile(run):
    cfg, _ = run
    out = ev.evaluate(cfg)
    metrics = json.loads((cfg.layout.reports / "metrics.json").read_text())
    assert set(metrics) == {
        "sr", "bicubic", "cpsnr", "n_samples", "self_ensemble", "sr_beats_bicubic_share",
        "sr_beats_bicubic_cpsnr_share", "per_tile",
    }  # fmt: skip
    assert set(metrics["sr"]) == set(metrics["bicubic"]) == {"psnr", "ssim"} and set(metrics["cpsnr"]) == {
        "sr",
        "bicubic",
    }
    assert metrics["n_samples"] == out["samples"] == 6 and [t["tile_id"] for t in metrics["per_tile"]] == ["t1", "t2"]
    assert set(metrics["per_tile"][0]) == {
        "tile_id", "n_samples", "sr_psnr", "sr_ssim", "sr_cpsnr", "bicubic_psnr", "bicubic_ssim", "bicubic_cpsnr",
    }  # fmt: skip
    assert 20 < metrics["bicubic"]["psnr"] < 60 and 0 < metrics["bicubic"]["ssim"] <= 1
    assert sorted(p.name for p in cfg.layout.reports.iterdir()) == ["metrics.json", "report.md", "t1.png"]
    assert "![t1](t1.png)" in (cfg.layout.reports / "report.md").read_text()


def test_scores_ignore_the_cloudy_label_pixels(run):
    cfg, samples = run
    ev.evaluate(cfg)
    clean = json.loads((cfg.layout.reports / "metrics.json").read_text())
    samples[0]["hr"][:, :, :12] = 1.0  # clouds on the label, outside hr_mask
    ev.evaluate(cfg)
    cloudy = json.loads((cfg.layout.reports / "metrics.json").read_text())
    for method in ("sr", "bicubic"):
        for key in ("psnr", "ssim"):
            assert cloudy[method][key] == pytest.approx(clean[method][key], abs=1e-5), (method, key)
