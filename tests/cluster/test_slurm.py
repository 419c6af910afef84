"""Slurm submission and status without a cluster: array planning under limits, job states, resubmission."""

from __future__ import annotations

from srpipe.cluster.slurm import ClusterLimits, parse_limits, plan_arrays
from srpipe.cluster.status import parse_job_states

SCONTROL = """Configuration data as of 2024-01-01T00:00:00
MaxArraySize            = 1001
MaxJobCount             = 10000
MinJobAge               = 300 sec
"""


def _check(arrays: list[list[list[str]]], units: list[str], limits: ClusterLimits, budget: int) -> None:
    flat = [u for array in arrays for task in array for u in task]
    assert flat == units  # every unit once, in order: nothing lost, nothing duplicated
    assert all(1 <= len(array) <= limits.max_array_size for array in arrays)
    assert sum(len(array) for array in arrays) <= budget


def test_country_of_11000_tiles_fits_maxarraysize_by_splitting_arrays():
    units = [f"t{i:05d}" for i in range(11_000)]
    limits = parse_limits(SCONTROL)
    assert limits == ClusterLimits(1001, 10000)
    arrays = plan_arrays(units, tiles_per_task=1, limits=limits)
    _check(arrays, units, limits, budget=5000)
    assert max(len(t) for a in arrays for t in a) == 3  # 11,000 tasks > half of MaxJobCount: 3 tiles per task
    assert len(arrays) == 4


def test_tiles_per_task_chunks_into_one_array_when_it_fits():
    units = [f"t{i}" for i in range(11_000)]
    arrays = plan_arrays(units, tiles_per_task=20, limits=ClusterLimits())
    _check(arrays, units, ClusterLimits(), budget=550)
    assert len(arrays) == 1 and len(arrays[0]) == 550


def test_account_maxsubmit_raises_tiles_per_task():
    limits = parse_limits(SCONTROL, max_submit=200)
    assert limits.max_jobs == 200
    units = [f"t{i}" for i in range(11_000)]
    arrays = plan_arrays(units, tiles_per_task=1, limits=limits)
    _check(arrays, units, limits, budget=100)


def test_small_maxarraysize_and_explicit_job_budget():
    limits = ClusterLimits(max_array_size=7, max_jobs=10000)
    units = [f"t{i}" for i in range(100)]
    arrays = plan_arrays(units, tiles_per_task=2, limits=limits, max_jobs=30)
    _check(arrays, units, limits, budget=30)
    assert plan_arrays([], 4, limits) == []


def test_job_states_expand_pending_array_ranges_and_strip_cancelled_by():
    text = "17_[3-5%2]|PENDING\n17_0|COMPLETED\n17_1|CANCELLED by 0\n18|RUNNING\n19_[0,2]|PENDING\n"
    states = parse_job_states(text)
    assert states == {
        "17_3": "PENDING",
        "17_4": "PENDING",
        "17_5": "PENDING",
        "17_0": "COMPLETED",
        "17_1": "CANCELLED",
        "18": "RUNNING",
        "19_0": "PENDING",
        "19_2": "PENDING",
    }


def test_status_and_resubmit_never_resubmit_a_queued_or_done_unit(tiny_config, monkeypatch):
    import json

    from srpipe import state
    from srpipe.chain import STAGES, plan_run, stage_units
    from srpipe.cluster import slurm, status
    from srpipe.cluster.profiles import load_profile
    from srpipe.config import load_config

    planned = plan_run(load_config(tiny_config))
    assert not planned.failed
    cfg = load_config(load_config(tiny_config).run_path / "config.toml")
    tiles = stage_units(cfg, STAGES["download"])
    record = {"stage": "download", "tasks": {"5_0": tiles[:2], "5_1": tiles[2:4], "5_2": tiles[4:5]}, "logs": {}}
    (cfg.run_path / "_slurm").mkdir()
    (cfg.run_path / "_slurm/submissions.jsonl").write_text(json.dumps(record) + "\n")
    state.mark_done(cfg.run_path, "download", tiles[0], {"inputs": "an older source"})  # stale: redone too
    state.mark_failed(cfg.run_path, "download", tiles[1], "TileError: boom", log_path="/logs/5_0_0_log.out")
    states = {"5_0": "COMPLETED", "5_1": "CANCELLED", "5_2": "RUNNING"}
    progress = status.stage_progress(cfg, "download", states)
    assert list(progress.stale) == tiles[:1] and progress.queued == tiles[4:5] and progress.pending == tiles[5:]
    assert "boom" in progress.failed[tiles[1]] and "/logs/5_0_0_log.out" in progress.failed[tiles[1]]
    assert "5_1 CANCELLED" in progress.failed[tiles[2]] and set(progress.failed) == set(tiles[1:4])

    calls = []
    monkeypatch.setattr(status, "job_states", lambda ids: states)
    monkeypatch.setattr(slurm, "cluster_limits", lambda: slurm.ClusterLimits())
    monkeypatch.setattr(slurm, "submit_stage", lambda *a: calls.append(a) or ["6"])
    status.resubmit(cfg, load_profile("slurm-local"), "download")
    (_, _, stage, units, after, _) = calls[0]
    assert len(calls) == 1 and stage == "download" and units == tiles[:4] + tiles[5:] and after == ["5"]


def test_executor_carries_profile_resources_dependencies_and_mpi(tmp_path):
    from srpipe.cluster.profiles import load_profile
    from srpipe.cluster.slurm import _executor
    from srpipe.config import Config

    cfg, profile = Config(run_dir=str(tmp_path)), load_profile("slurm-local")
    train = _executor(cfg, profile, "train", "job", ["12", "13"]).parameters
    assert train["srun_args"] == ["--mpi=pmix"] and train["ntasks_per_node"] == 2
    assert train["dependency"] == "afterok:12:13" and train["partition"] == "debug"
    assert train["additional_parameters"]["kill_on_invalid_dep"] == "yes"
    download = _executor(cfg, profile, "download", "array0", []).parameters
    assert "srun_args" not in download and "dependency" not in download
    assert (download["array_parallelism"], download["cpus_per_task"], download["mem"]) == (2, 1, "2560M")
