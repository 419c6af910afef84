"""`srpipe submit download` as a Slurm job array against the local Sentinel Hub server (hpc/slurm-local/up.sh)."""

from __future__ import annotations

import pytest

from srpipe import state
from srpipe.config import load_config
from srpipe.data.grid import read_grid
from srpipe.plan.stage import plan
from tests import shfixtures
from tests.conftest import srpipe
from tests.helpers import job_ids, slurm_profile, wait_jobs
from tests.shfixtures import SECRET, sh_config_file

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
sh_server, sh = shfixtures.sh_server, shfixtures.sh  # the fixtures


def test_a_download_array_fills_every_tile_and_neither_run_dir_nor_slurm_logs_hold_the_secret(sh, tmp_path):
    cfg = load_config(sh_config_file(tmp_path))
    plan(cfg)
    ids = job_ids(srpipe("submit", "download", str(cfg.run_path), "--profile", str(slurm_profile(tmp_path))).stdout)
    wait_jobs(ids, timeout_s=600)
    tiles = [t.tile_id for t in read_grid(cfg.run_path)]
    assert state.done_units(cfg.run_path, "download") == sorted(tiles), state.failures(cfg.run_path, "download")
    assert len({e["auth"] for e in sh.state.requests_to("/api/v1/process")}) >= 2  # one token per array task
    logs = list((cfg.run_path / "_slurm").rglob("*"))
    assert any(p.suffix in (".out", ".err") for p in logs) and any(p.suffix == ".pkl" for p in logs)
    assert [p for p in cfg.run_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []
