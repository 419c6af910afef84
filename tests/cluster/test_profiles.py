"""Profiles: typed, validated by key; stage tables override the defaults; containers wrap submitit's python."""

from __future__ import annotations

from pathlib import Path

import pytest

from srpipe.cluster.profiles import PROFILES_DIR, Container, container_command, load_profile
from srpipe.errors import ConfigError


def test_every_shipped_profile_loads():
    names = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
    assert {"local", "slurm-local", "slurm-2node", "example-gpu-cluster"} <= set(names)
    for name in names:
        assert load_profile(name).name == name


def test_stage_table_overrides_defaults_key_by_key_and_inherits_partition():
    profile = load_profile("example-gpu-cluster")
    train, download = profile.resources("train"), profile.resources("download")
    assert (train.partition, train.gpus_per_node, train.tasks_per_node, train.nodes) == ("gpu", 4, 4, 2)
    assert (download.partition, download.time_min, download.mem_gb) == ("cpu", 60, 8.0)
    assert profile.resources("mosaic").cpus_per_task == 1  # not in [stages.mosaic]: from [defaults]


def test_unknown_key_is_an_error_naming_it(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('executor = "slurm"\n[defaults]\nwalltime = 5\n')
    with pytest.raises(ConfigError, match="walltime"):
        load_profile(bad)
    bad.write_text('executor = "slurm"\n[stages.trian]\ntime_min = 5\n')
    with pytest.raises(ConfigError, match="stages.trian"):
        load_profile(bad)
    bad.write_text('executor = "pbs"\n')
    with pytest.raises(ConfigError, match="'local', 'slurm'"):
        load_profile(bad)


def test_missing_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="slurm-local"):
        load_profile("no-such-site")


def test_container_runtime_needs_an_image(tmp_path: Path):
    bad = tmp_path / "c.toml"
    bad.write_text('[container]\nruntime = "apptainer"\n')
    with pytest.raises(ConfigError, match="container.image"):
        load_profile(bad)


def test_apptainer_command_binds_the_run_dir_and_extra_paths():
    container = Container("apptainer", "/img/srpipe.sif", ("/scratch", "/runs/r1"))
    assert container_command(container, ["/runs/r1"]) == (
        "apptainer exec --nv --bind /runs/r1,/scratch /img/srpipe.sif python"
    )


def test_charliecloud_command_binds_at_the_same_path_and_keeps_the_environment():
    container = Container("charliecloud", "/var/tmp/srpipe", ("/data:/mnt/data",))
    assert (
        container_command(container, ["/runs/r1"])
        == "ch-run -b /runs/r1:/runs/r1 -b /data:/mnt/data /var/tmp/srpipe -- python"
    )


def test_no_container_keeps_the_plain_python():
    profile = load_profile("slurm-local")
    assert profile.python_command(Path("/runs/r1")).endswith("python")
    assert "apptainer" not in profile.python_command(Path("/runs/r1"))


def test_profiles_load_from_an_installed_package_without_the_checkout_or_torch(tmp_path: Path):
    """A wheel install (no hpc/ beside it) finds the shipped profiles; validating stage names imports no torch."""
    import subprocess
    import sys

    from tests.conftest import REPO

    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir)]
    subprocess.run([*build, str(REPO)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("srpipe-*.whl"))
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(target), str(wheel)]
    subprocess.run(install, check=True)
    probe = (
        "import sys, srpipe; from srpipe.cluster.profiles import load_profile; "
        "p = load_profile('example-gpu-cluster'); "
        "print(srpipe.__file__, p.resources('train').gpus_per_node, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    path, gpus, torch_loaded = out.stdout.split()
    assert path.startswith(str(target)) and gpus == "4" and torch_loaded == "False"
