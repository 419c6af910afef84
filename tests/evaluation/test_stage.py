"""Evaluation: masked scores of SR and bicubic per test sample, metrics.json's keys, the report and its plots."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srpipe.config import Config, EvaluateConfig, InferConfig, ModelConfig
from srpipe.data.normalise import BandScale
from srpipe.evaluation import context, intervals
from srpipe.evaluation import stage as ev
from srpipe.models import build_model
from srpipe.models.calibration import LEVELS, Calibration
from srpipe.models.trained import TrainedModel
from tests import browser


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


class _Oracle(torch.nn.Module):
    """A 'model' that returns each batch's label: SR that no baseline can beat."""

    scale = 4

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels, self.seen = labels, 0

    def forward(self, lr: torch.Tensor, mask: torch.Tensor, constraint=None) -> torch.Tensor:
        out = self.labels[self.seen % len(self.labels) :][: len(lr)]
        self.seen += len(lr)
        return out


def _fake_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Config, list[dict], TrainedModel]:
    """A Config on `run_dir` whose test set is `shard()` and whose model is an untrained tiny HighRes-Net."""
    torch.manual_seed(0)
    unit = BandScale(np.zeros(4, np.float32), np.ones(4, np.float32))
    net = build_model(ModelConfig(channels=8, encoder_layers=1), scale=4).eval()
    model = TrainedModel(net, unit, unit, n_frames=3, scale=4)
    monkeypatch.setattr(context, "load_trained", lambda cfg: model)
    monkeypatch.setattr(ev, "shard_paths", lambda folder, split: ["test-000.h5"])
    samples = [shard()]
    monkeypatch.setattr(context, "iter_samples", lambda paths: iter(samples))
    cfg = Config(run_dir=str(run_dir), evaluate=EvaluateConfig(batch_size=4, max_tile_plots=1, downstream_budget_s=0))
    return cfg, samples, model


@pytest.fixture
def run(tmp_path, monkeypatch):
    """(cfg, samples, model) of `_fake_run` on tmp_path: a test may change the samples or the model."""
    return _fake_run(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(cfg, evaluate's result) of a `_fake_run` evaluated once with its defaults, for the tests that only read its
    reports (read-only); its fakes stay in place while the module's tests run."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        cfg, _, _ = _fake_run(tmp_path_factory.mktemp("evaluated"), monkeypatch)
        yield cfg, ev.evaluate(cfg)


OLD_KEYS = {"sr", "bicubic", "cpsnr", "n_samples", "self_ensemble", "sr_beats_bicubic_share",
            "sr_beats_bicubic_cpsnr_share", "per_tile"}  # fmt: skip
NEW_KEYS = {"baselines", "strongest_baseline", "sr_one_pass", "kelvins", "consistency", "correctness", "perceptual",
            "mcc", "tile_cores", "border_crop_px", "cpsnr_max_shift_px", "n_tiles", "unsharp", "intervals",
            "constraint"}  # fmt: skip


def test_metrics_json_keeps_its_keys_and_adds_every_baseline_and_both_sr_passes(evaluated):
    cfg, out = evaluated
    metrics = json.loads((cfg.layout.reports / "metrics.json").read_text())
    assert set(metrics) == OLD_KEYS | NEW_KEYS
    assert set(metrics["baselines"]) == {"bicubic_latest", "bicubic_closest", "bicubic_median", "bicubic_unsharp"}
    for entry in (*metrics["baselines"].values(), metrics["sr"], metrics["sr_one_pass"]):
        assert {"psnr", "cpsnr", "ssim", "mse"} <= set(entry)
    assert {"cpsnr_win_share", "cpsnr_win_share_ci", "cpsnr_gain", "cpsnr_gain_ci"} <= set(metrics["sr_one_pass"])
    assert metrics["bicubic"] == metrics["baselines"][metrics["strongest_baseline"]]
    assert metrics["border_crop_px"] == cfg.loss.crop_border_px and metrics["n_samples"] == out["samples"] == 6
    assert [t["tile_id"] for t in metrics["per_tile"]] == ["t1", "t2"]
    assert 20 < metrics["bicubic"]["psnr"] < 60 and 0 < metrics["bicubic"]["ssim"] <= 1
    assert metrics["tile_cores"] is None and metrics["mcc"] is None  # no tiles on disk; downstream test off
    names = sorted(p.name for p in cfg.layout.reports.iterdir())
    assert names == ["index.html", "metrics.json", "report.md", "samples.csv"]
    assert "strongest baseline" in (cfg.layout.reports / "report.md").read_text()


def test_scores_ignore_the_cloudy_label_pixels(evaluated, run):
    clean = json.loads((evaluated[0].layout.reports / "metrics.json").read_text())  # the same samples and model
    cfg, samples, _ = run
    samples[0]["hr"][:, :, :12] = 1.0  # clouds on the label, outside hr_mask
    ev.evaluate(cfg)
    cloudy = json.loads((cfg.layout.reports / "metrics.json").read_text())
    for method in ("sr", "bicubic"):
        for key in ("psnr", "ssim", "cpsnr"):
            assert cloudy[method][key] == pytest.approx(clean[method][key], abs=1e-5), (method, key)


def test_sr_equal_to_the_label_wins_every_sample_against_the_strongest_baseline(run):
    cfg, samples, model = run
    model.net = _Oracle(torch.from_numpy(samples[0]["hr"]))
    ev.evaluate(cfg)
    metrics = json.loads((cfg.layout.reports / "metrics.json").read_text())
    one = metrics["sr_one_pass"]
    assert one["cpsnr_win_share"] == 1.0 and one["cpsnr_gain"] > 5 and metrics["kelvins"]["sr_one_pass"] < 1
    assert one["cpsnr_gain_ci"][0] > 0 and metrics["correctness"]["sr_one_pass"]["improvement"]["mean"] > 0.5
    assert (
        metrics["consistency"]["sr_one_pass"]["mae"] < metrics["consistency"][metrics["strongest_baseline"]]["mae"] + 1
    )


def test_consistency_claims_are_against_bicubic_of_the_frame_compared_with(evaluated):
    cfg, _ = evaluated
    cons = json.loads((cfg.layout.reports / "metrics.json").read_text())["consistency"]
    assert cons["claims"] == "bicubic_frame" and {"sr", "sr_one_pass", "bicubic_frame"} <= set(cons)
    frame = cons["bicubic_frame"]  # bicubic preserves a band's mean: degraded back, no bias against its own frame
    assert max(abs(b) for b in frame["bias_per_band"]) < 2e-3 and frame["mae"] > 0
    html = (cfg.layout.reports / "index.html").read_text()
    assert "bicubic of the frame compared with" in html and "than bicubic of the frame" in html


def test_the_constraint_table_scores_the_same_weights_with_and_without_the_constraint(run):
    cfg, _, model = run
    with torch.no_grad():  # weights that add +0.05 to every band: far from the frame
        model.net.decoder.net[-1].bias += 0.05
    ev.evaluate(cfg)
    metrics = json.loads((cfg.layout.reports / "metrics.json").read_text())
    con = metrics["constraint"]
    assert con["run_setting"] == model.net.constraint.mode == "mean" and set(con["rows"]) == {"off", "mean", "full"}
    rows = con["rows"]
    assert rows["mean"]["cpsnr_gain"] == pytest.approx(metrics["sr_one_pass"]["cpsnr_gain"])  # the run's own pass
    assert rows["full"]["cpsnr_gain"] != rows["mean"]["cpsnr_gain"]  # another pass (cPSNR ignores a band's offset)
    # "mean" removes the weights' bias, "full" most of the rest
    assert max(map(abs, rows["mean"]["bias_per_band"])) < 1e-3 and min(rows["off"]["bias_per_band"]) > 0.04
    assert rows["full"]["mae"] < 0.5 * rows["off"]["mae"] and rows["full"]["sam_deg"] < rows["off"]["sam_deg"]
    assert con["bicubic_frame"]["mae"] == metrics["consistency"]["bicubic_frame"]["mae"]
    assert {"sr_one_pass_off", "sr_one_pass_full"} <= set(metrics["consistency"])  # the consistency table has them
    assert metrics["strongest_baseline"].startswith("bicubic")  # a variant is never taken for a baseline
    html = (cfg.layout.reports / "index.html").read_text()
    assert "SR with and without the consistency constraint" in html and "SR one pass, full" in html
    assert model.net.constraint.mode == "mean"  # the shared net is not changed


def test_patch_scores_give_evaluates_patch_figures_on_the_split_asked(evaluated, monkeypatch):
    cfg, _ = evaluated
    metrics = json.loads((cfg.layout.reports / "metrics.json").read_text())
    asked = []
    monkeypatch.setattr(ev, "shard_paths", lambda folder, split: asked.append(split) or [f"{split}-000.h5"])
    scored = ev.patch_scores(cfg, ("val",))["val"]
    assert asked == ["val", "val"]  # the unsharp mask's tuning, then the samples scored
    assert scored["strongest_baseline"] == metrics["strongest_baseline"] and scored["n"] == metrics["n_samples"]
    for method in ("sr", "sr_one_pass"):
        assert scored[method]["cpsnr"] == pytest.approx(metrics[method]["cpsnr"])
        assert scored[method]["cpsnr_win_share"] == metrics[method]["cpsnr_win_share"]


@pytest.mark.skipif(not browser.CHROMIUM.exists(), reason="needs Debian's chromium (apt install chromium)")
def test_the_html_report_renders_in_a_real_browser_with_every_image(evaluated):
    cfg, _ = evaluated
    page = browser.render(cfg.layout.reports / "index.html", timeout_s=120)  # a busy 2-core CI machine is slow
    assert page.images >= 4 and page.images_loaded == page.images and page.errors == []
    assert not browser.is_blank(page.screenshot_png)


def test_with_the_self_ensemble_metrics_json_has_the_trust_numbers_and_the_report_their_plot(run):
    cfg, samples, _ = run
    cfg = dataclasses.replace(cfg, infer=InferConfig(self_ensemble=True))
    ev.evaluate(cfg)
    trust = json.loads((cfg.layout.reports / "metrics.json").read_text())["trust"]
    b = cfg.loss.crop_border_px
    assert trust["n_pixels"] == samples[0]["hr_mask"][:, b : 64 - b, b : 64 - b].sum()  # clear, inside the crop
    assert sum(trust["pixels"]) == trust["n_pixels"]  # every pixel in one decile
    assert -1 <= trust["spearman"] <= 1 and len(trust["mean_abs_error"]) == len(trust["mean_spread"]) == 10
    assert trust["mean_spread"] == sorted(trust["mean_spread"])  # deciles ranked by spread
    html = (cfg.layout.reports / "index.html").read_text()
    assert f"Spearman {trust['spearman']:+.2f} over {trust['n_pixels']} test pixels" in html


def _flat_calibration(q: float) -> Calibration:
    """A calibration with the same quantile q at every level and band, floor 0.01."""
    return Calibration(LEVELS, tuple((q,) * len(LEVELS) for _ in range(4)), (0.01,) * 4, 1000, 10, "val", ("t0",))


def test_a_calibrated_model_gets_its_coverage_on_the_test_split_its_reliability_and_invented_detail_plots(
    run, monkeypatch
):
    cfg, samples, model = run
    monkeypatch.setattr(intervals, "shard_paths", lambda folder, split: ["test-000.h5"])
    monkeypatch.setattr(intervals, "count_samples", lambda paths: len(samples[0]["lr"]))
    monkeypatch.setattr(intervals, "load_stats", lambda run: {})  # the model's own curation: its scales
    monkeypatch.setattr(intervals, "scales", lambda stats: (model.lr_scale, model.hr_scale))
    cfg = dataclasses.replace(cfg, infer=InferConfig(self_ensemble=True))
    found = {}
    for q in (1e6, 0.0):  # every label pixel inside SR +- a huge width; none inside a zero width (errors are > 0)
        model.calibration = _flat_calibration(q)
        ev.evaluate(cfg)
        found[q] = json.loads((cfg.layout.reports / "metrics.json").read_text())["calibrated_intervals"]
    wide, none = found[1e6], found[0.0]
    b = cfg.loss.scored_border_px
    assert wide["pixels"] == samples[0]["hr_mask"][:, b : 64 - b, b : 64 - b].sum()  # clear, inside the crop
    assert np.array(wide["coverage"]).shape == (4, len(LEVELS)) and np.all(np.array(wide["coverage"]) == 1.0)
    assert np.all(np.array(none["coverage"]) < 0.01)
    assert none["table"]["0.90"] == [row[LEVELS.index(0.9)] for row in none["coverage"]]
    assert set(wide["groups"]) <= {"edges", "flat", "cloudy_frames", "clear_frames"} and "edges" in wide["groups"]
    assert list(wide["tiles"]) == ["t1", "t2"] and sum(t["pixels"] for t in wide["tiles"].values()) == wide["pixels"]
    assert all(t["0.90"] == [1.0] * 4 for t in wide["tiles"].values())
    assert wide["departs_share"]["0.90"] == [0.0] * 4 and none["departs_share"]["0.90"] != [0.0] * 4
    html = (cfg.layout.reports / "index.html").read_text()
    assert "Calibrated intervals" in html and "reliability of the intervals per band" in html
    assert "90 % coverage per test tile" in html
    assert "candidates for invented detail" in html and "calibrated on 1000 val pixels of 10 samples" in html
