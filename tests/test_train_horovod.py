"""Real Horovod ranks (horovodrun --gloo, mpirun): parameters stay identical across ranks and the loss goes down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from srpipe.models.trained import model_dir
from tests.test_train import tiny_run

pytestmark = pytest.mark.mpi
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")  # the venv's, beside its python

RANK_SCRIPT = (
    "import json, sys; from srpipe.config import load_config; from srpipe.train import train; "
    "r = train(load_config(sys.argv[1])); open(f'{sys.argv[2]}/rank{r[\"rank\"]}.json', 'w').write(json.dumps(r))"
)


def _launch(launcher: list[str], tmp_path) -> tuple[list[dict], list[dict]]:
    # a cosine lr over a time budget: ranks must share rank 0's clock, or their learning rates (and weights) drift apart
    cfg = tiny_run(tmp_path / "run", epochs=3, lr_schedule="cosine", max_minutes=30.0, augment=True)
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    cmd = [*launcher, sys.executable, "-c", RANK_SCRIPT, str(cfg.run_path / "config.toml"), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(launcher)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    history = json.loads((model_dir(cfg) / "history.json").read_text())
    return ranks, history


def _check(ranks: list[dict], history: list[dict]) -> None:
    assert [r["ranks"] for r in ranks] == [2, 2]
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-6, abs=1e-6)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3 * 4  # 64 samples / 2 ranks / batch 8, 3 epochs
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.skipif(not os.path.exists(HOROVODRUN), reason="horovod is not installed (hpc/horovod/build.sh)")
def test_two_ranks_under_horovodrun_gloo(tmp_path):
    _check(*_launch([HOROVODRUN, "-np", "2", "--gloo"], tmp_path))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI not installed")
def test_two_ranks_under_mpirun(tmp_path):
    _check(*_launch(["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"], tmp_path))
