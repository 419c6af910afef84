"""The training benchmarks run on the CPU: train_gpu.py's code path (it must run unchanged on a CUDA machine)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_train_gpu_benchmark_runs_the_method_model_in_both_precisions(tmp_path, make_synthetic_run):
    cfg = make_synthetic_run(tmp_path / "run")
    out = tmp_path / "train_gpu.json"
    cmd = [sys.executable, str(REPO / "benchmarks/train_gpu.py"), str(cfg.run_path), "--device", "cpu",
           "--steps", "1", "--batch", "4", "--results", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())
    assert results["model"]["channels"] == 64 and results["model"]["encoder_layers"] == 8
    assert [j["precision"] for j in results["jobs"]] == ["bf16", "fp32"]
    assert all(j["samples_per_s"] > 0 and j["method_epoch_minutes"] > 0 for j in results["jobs"])
