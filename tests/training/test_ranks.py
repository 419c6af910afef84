"""Real ranks of both backends (Horovod: horovodrun --gloo, mpirun; DDP: torchrun, mpirun) on one node: parameters
stay identical across ranks, the loss goes down, and two ranks reach what one process reaches on the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
import torch

from srpipe.models.trained import model_dir
from tests.helpers import checkpoint_gaps, synthetic_run

pytestmark = pytest.mark.mpi
BIN = Path(sys.executable).parent  # the venv's launchers, beside its python
HAS_HOROVOD = (BIN / "horovodrun").exists()
MPIRUN = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"]
LAUNCHERS = {
    "horovodrun": [str(BIN / "horovodrun"), "-np", "2", "--gloo"],
    "mpirun": MPIRUN,
    "torchrun": [str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python"],
}
RANK_SCRIPT = (
    "import json, sys; from srpipe.config import load_config; from srpipe.training.train import train; "
    "r = train(load_config(sys.argv[1])); open(f'{sys.argv[2]}/rank{r[\"rank\"]}.json', 'w').write(json.dumps(r))"
)
ENV = {"PYTHONWARNINGS": "ignore", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
needs_horovod = pytest.mark.skipif(not HAS_HOROVOD, reason="horovod is not installed (hpc/horovod/build.sh)")


def _launch(launcher: list[str], run: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Train `run` under `launcher` (no launcher: one process); each rank writes its result to out/rank<r>.json."""
    cmd = [*launcher, sys.executable, "-c", RANK_SCRIPT, str(run / "config.toml"), str(out)]
    result = subprocess.run(cmd, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _ranks(out: Path, n: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def _in_sync_run(tmp_path: Path, net: Path, launcher: str, backend: str, env: dict | None = None):
    """(each rank's result, the launcher's stdout) of a tiny run with the session's delineation net `net`."""
    # a cosine lr over a time budget: ranks must share rank 0's clock, or their learning rates (and weights) drift apart
    settings = dict(epochs=3, lr_schedule="cosine", max_minutes=30.0, augment=True, backend=backend)
    cfg = synthetic_run(tmp_path / "run", delineation=net, **settings)
    result = _launch(LAUNCHERS[launcher], cfg.run_path, tmp_path, env)
    ranks = _ranks(tmp_path)
    assert [r["ranks"] for r in ranks] == [2, 2]
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-6, abs=1e-6)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3 * 4  # 64 samples / 2 ranks / batch 8, 3 epochs
    history = json.loads((model_dir(cfg) / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    return ranks, result.stdout


@pytest.mark.parametrize(
    ("launcher", "backend"),
    [
        pytest.param("horovodrun", "horovod", marks=needs_horovod),
        pytest.param("mpirun", "horovod", marks=needs_horovod),
        ("mpirun", "ddp"),
        ("torchrun", "ddp"),
    ],
)
def test_two_ranks_stay_in_sync_and_the_loss_drops(tmp_path, trained_delineation, launcher, backend):
    ranks, _ = _in_sync_run(tmp_path, trained_delineation, launcher, backend)
    assert [r["backend"] for r in ranks] == [backend, backend]


def test_without_horovod_two_ranks_say_so_and_train_with_ddp(tmp_path, trained_delineation):
    shadow = tmp_path / "no-horovod" / "horovod"  # a horovod package that cannot be imported, ahead of the real one
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('horovod is not installed here (test)')\n")
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])
    ranks, stdout = _in_sync_run(tmp_path, trained_delineation, "torchrun", "horovod", {"PYTHONPATH": path})
    assert [r["backend"] for r in ranks] == ["ddp", "ddp"]
    assert "train.backend = 'horovod' falls back to torch DDP" in stdout


# Without ShiftNet, whose BatchNorm normalises over each rank's own half of the batch, every layer of the loss is a
# mean over samples with full masks: two ranks of 4 and one process of 8 then take the same steps, up to float32
# rounding amplified by Adam's division by tiny second moments (after 8 steps of lr 2e-3: 5e-8 for DDP, 2.8e-6 for
# Horovod, whose nets run contiguous while one process runs channels-last, another summation order). With ShiftNet
# they differ by ~5e-4 (its batch statistics), as they would with partial label masks (the masked mean weights each
# rank's pixels by its own count).
EQUAL_WEIGHTS_ATOL = 1e-5


def _same_batches_run(run: Path, net: Path, batch_size: int, backend: str) -> Path:
    """A tiny run training one epoch without ShiftNet, augmentation or lr scaling, so only the world size differs."""
    cfg = synthetic_run(
        run, delineation=net, epochs=1, batch_size=batch_size, backend=backend, augment=False, amp=False
    )
    config = tomllib.loads((run / "config.toml").read_text())
    config["train"].update(scale_lr_with_ranks=False, checkpoint_every_steps=0)
    config["loss"].update(register=False)
    (run / "config.toml").write_text(tomli_w.dumps(config))
    return model_dir(cfg) / "checkpoint.pt"


@pytest.fixture(scope="module")
def one_process_weights(tmp_path_factory, trained_delineation) -> dict[str, torch.Tensor]:
    """The weights one process reaches with batches of 8."""
    out = tmp_path_factory.mktemp("one")
    checkpoint = _same_batches_run(out / "run", trained_delineation, 8, "ddp")
    _launch([], out / "run", out)
    return torch.load(checkpoint, weights_only=False)["model"]


@pytest.mark.parametrize(
    ("launcher", "backend"), [("torchrun", "ddp"), pytest.param("mpirun", "horovod", marks=needs_horovod)]
)
def test_two_ranks_reach_the_parameters_of_one_process_on_the_same_global_batch(
    tmp_path, trained_delineation, one_process_weights, launcher, backend
):
    checkpoint = _same_batches_run(
        tmp_path / "run", trained_delineation, 4, backend
    )  # 2 ranks x 4 = the one process's 8
    _launch(LAUNCHERS[launcher], tmp_path / "run", tmp_path)
    two = torch.load(checkpoint, weights_only=False)["model"]
    gaps = {k: (two[k] - w).abs().max().item() for k, w in one_process_weights.items()}
    assert max(gaps.values()) < EQUAL_WEIGHTS_ATOL, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
    assert [r["steps"] for r in _ranks(tmp_path)] == [8, 8]  # 8 Adam steps of lr 2e-3: weights move by ~1e-2


def _set_epochs(run: Path, epochs: int) -> None:
    config = tomllib.loads((run / "config.toml").read_text())
    config["train"]["epochs"] = epochs
    (run / "config.toml").write_text(tomli_w.dumps(config))


@pytest.mark.parametrize(
    ("launcher", "backend"), [("torchrun", "ddp"), pytest.param("mpirun", "horovod", marks=needs_horovod)]
)
def test_two_ranks_resumed_at_an_epoch_end_end_as_an_unbroken_run(tmp_path, make_synthetic_run, launcher, backend):
    """Adam's moments and step counts survive a resume (Horovod's DistributedOptimizer once dropped them): every
    tensor of the final checkpoints (weights, buffers, Adam's moments) equal."""
    unbroken = make_synthetic_run(tmp_path / "unbroken", epochs=2, backend=backend, checkpoint_every_steps=0).run_path
    broken = make_synthetic_run(tmp_path / "broken", epochs=1, backend=backend, checkpoint_every_steps=0).run_path
    for run, out in ((unbroken, tmp_path / "a"), (broken, tmp_path / "b")):
        out.mkdir()
        _launch(LAUNCHERS[launcher], run, out)
    _set_epochs(broken, 2)
    assert "resuming highresnet at epoch 2, batch 0" in _launch(LAUNCHERS[launcher], broken, tmp_path / "b").stdout
    resumed, reference = _ranks(tmp_path / "b"), _ranks(tmp_path / "a")
    assert [r["steps"] for r in resumed] == [r["steps"] for r in reference] == [8, 8]
    gaps = checkpoint_gaps(broken, unbroken)
    assert max(gaps.values()) == 0.0, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
