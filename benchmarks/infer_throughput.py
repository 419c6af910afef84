"""Inference throughput benchmark: how close the infer stage and its model forward come to the machine's FLOP rate.

Plans a small run on the `synthetic` source (8 tiles of 2.4 km at 20 m: 120 x 120 S2 px) with a HighRes-Net of the
method's default shape (64 channels, 8 encoder layers, K = 8) at random init (speed does not depend on the weights),
then measures in one process, alternating:
- a large fp32 matmul (torch.mm 2048 x 2048, all threads, after warm-up): the machine's reference FLOP/s;
- the bare model forward (`infer._Forward`, as the stage runs it) over the shard's real windows, already in memory;
- the whole infer stage (`infer.infer_shard`: model load, DataLoader reading and normalising, batching, DN
  conversion and COG writing) over the same windows.
FLOPs per window come from torch.utils.flop_counter.FlopCounterMode. Also a sweep of the CPU levers (memory format,
batch size, bfloat16 autocast) on the bare forward. Writes benchmarks/results/infer_throughput.json.
The machine may be shared with other work, so each forward batch and each stage run is taken as a fraction of matmul
bursts measured a moment before (and after) it; the figures are medians, every one is in the JSON's "runs"; the
forward is also timed in this process's CPU time (what other processes take is then not counted), and the load
average is recorded.
Usage: python benchmarks/infer_throughput.py [--tiles 8] [--dates 1] [--batch-size 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from provenance import provenance
from pyproj import Transformer
from torch.utils.flop_counter import FlopCounterMode

from srpipe.config import Config, InferConfig, PlanConfig, SourceConfig
from srpipe.data.grid import read_grid
from srpipe.data.normalise import BandScale
from srpipe.infer import stage as infer
from srpipe.infer.windows import tile_windows
from srpipe.models import build_model
from srpipe.models.trained import MODEL_FILE, load_for_inference
from srpipe.plan.stage import plan

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "infer_throughput.json"
LR_RESOLUTION_M = 20.0  # 2.4 km tiles of 120 x 120 S2 px (the method's 10 m would be 240 px, 4x the time)
K = 8


def _aoi(path: Path, x0: float, y0: float, x1: float, y1: float, epsg: int = 32618) -> Path:
    """A GeoJSON (EPSG:4326) polygon of the UTM box."""
    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    ring = [list(to_wgs84.transform(x, y)) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def _run(base: Path, tiles: int, n_dates: int, batch_size: int) -> Config:
    """A planned synthetic run of about `tiles` tiles with a random-init method-default model.pt; `n_dates` outputs."""
    width_m = max(1000, 2000 * (tiles // 2) - 2100)  # the grid's 2 km cores, 2 rows: about `tiles` tiles
    aoi = _aoi(base / "aoi.geojson", 440100, 4164100, 440100 + width_m, 4168000)
    source = SourceConfig(name="synthetic", lr_resolution_m=LR_RESOLUTION_M)
    end = dt.date.fromisoformat(source.time_interval[1])
    dates = tuple((end - dt.timedelta(days=20 * i)).isoformat() for i in range(n_dates))
    cfg = Config(
        run_dir=str(base / "run"),
        plan=PlanConfig(aoi=str(aoi), region="bench"),
        source=source,
        curate=dataclasses.replace(Config().curate, n_frames=K),
        infer=InferConfig(n_frames=K, dates=dates, batch_size=batch_size, loader_workers=1),
    )
    plan(cfg)
    torch.manual_seed(0)
    scale = BandScale(np.zeros(4, np.float32), np.full(4, 0.4, np.float32))
    net = build_model(cfg.model, cfg.source.scale)
    saved = {"model": net.state_dict(), "model_config": dataclasses.asdict(cfg.model), "scale": cfg.source.scale,
             "n_frames": K, "lr_scale": scale.to_json(), "hr_scale": scale.to_json()}  # fmt: skip
    path = cfg.layout.model(cfg.train.name) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return cfg


def _matmul_flop_s(n: int = 2048, reps: int = 3, clock=time.perf_counter) -> float:
    """FLOP/s of an n x n fp32 torch.mm on all threads: the median of `reps` timed by `clock` after one warm-up."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = clock()
        torch.mm(a, b)
        times.append(clock() - t0)
    return 2 * n**3 / float(np.median(times))


def _batches(cfg: Config, model, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The shard's windows as the stage batches them: (B, K, 4, h, w) frames and (B, K, h, w) masks."""
    items = []
    for tile in read_grid(cfg.run_path):
        w = tile_windows(cfg, tile.tile_id, model.lr_scale, model.n_frames)
        for row in w.index:
            rows = row[row >= 0]
            lr, mask = torch.zeros(K, 4, *w.frames.shape[-2:]), torch.zeros(K, *w.frames.shape[-2:], dtype=torch.bool)
            lr[: len(rows)], mask[: len(rows)] = w.frames[rows], w.clear[rows]
            items.append((lr, mask))
    return [
        (torch.stack([x for x, _ in items[i : i + size]]), torch.stack([m for _, m in items[i : i + size]]))
        for i in range(0, len(items), size)
    ]


def _flops_per_window(net: torch.nn.Module, lr: torch.Tensor, mask: torch.Tensor) -> int:
    """FLOPs of one window's forward (FlopCounterMode counts convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(lr[:1], mask[:1])
    return counter.get_total_flops()


def _forward_vs_matmul(fn, batches: list, flops: int, clock=time.perf_counter) -> tuple[list[float], list[float]]:
    """Per batch of `fn(lr, mask)`: its FLOP/s as a fraction of a matmul burst's just before it, and its windows/s,
    timed by `clock` (wall, or this process's CPU time: what other work on the machine takes is not counted).

    A pair a second apart sees the same share of a machine that other work may be using.
    """
    fn(*batches[0])  # warm-up
    fractions, rates = [], []
    for lr, mask in batches:
        mm = _matmul_flop_s(clock=clock)
        t0 = clock()
        fn(lr, mask)
        rate = len(lr) / (clock() - t0)
        fractions.append(rate * flops / mm)
        rates.append(rate)
    return fractions, rates


def _stage(cfg: Config, tile_ids: list[str], flops: int) -> tuple[float, float, dict]:
    """The whole infer stage over the shard (model load to last COG): its FLOP/s as a fraction of matmul bursts
    just before and after it, its windows/s, and its timing."""
    before = _matmul_flop_s()
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    results = dict(infer.infer_shard(cfg, tile_ids, timing))
    wall = time.perf_counter() - t0
    mm = (before + _matmul_flop_s()) / 2
    failed = {t: str(r) for t, r in results.items() if isinstance(r, Exception)}
    if failed:
        raise SystemExit(f"infer failed: {failed}")
    rate = timing["windows"] / wall
    return rate * flops / mm, rate, {**timing, "wall": wall, "matmul": mm}


def _levers(cfg: Config, model, flops: int) -> dict:
    """Bare-forward fraction of the matmul rate per CPU lever (median over 4 windows): memory format x batch size,
    and bfloat16 autocast."""
    out = {}
    windows = _batches(cfg, model, 1)[:4]
    lr_all, mask_all = torch.cat([x for x, _ in windows]), torch.cat([m for _, m in windows])
    for layout in ("contiguous", "channels_last"):
        net = copy.deepcopy(model.net).eval()
        net = net.to(memory_format=torch.channels_last) if layout == "channels_last" else net
        for size, bf16 in ((1, False), (4, False), (1, True)):
            batches = [(lr_all[i : i + size], mask_all[i : i + size]) for i in range(0, len(lr_all), size)]

            def run(lr: torch.Tensor, mask: torch.Tensor, net=net, bf16=bf16) -> torch.Tensor:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return net(lr, mask)  # autocast here only: the matmul reference stays fp32

            fractions, _ = _forward_vs_matmul(run, batches, flops)
            name = f"{layout}, batch {size}" + (", bfloat16 autocast (not used: ~3 significant digits)" if bf16 else "")
            out[name] = round(float(np.median(fractions)), 3)
            print(f"  lever {name:72s} {out[name]:6.1%} of the fp32 matmul rate", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--dates", type=int, default=1, help="output dates per tile (windows = tiles x dates)")
    parser.add_argument("--batch-size", type=int, default=1, help="infer.batch_size (1 is fastest on CPU here)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    measured = provenance()
    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(cpus)
    runs: dict[str, list] = {"forward": [], "forward_rate": [], "stage": [], "stage_rate": [], "timing": [], "cpu": []}
    runs["load_average"] = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _run(Path(tmp), args.tiles, args.dates, args.batch_size)
        tile_ids = [t.tile_id for t in read_grid(cfg.run_path)]
        model = load_for_inference(cfg)
        forward = infer._Forward(model, cfg.infer)  # the stage's own prepared forward
        batches = _batches(cfg, model, args.batch_size)
        flops = _flops_per_window(model.net, *batches[0])
        for _ in range(args.repeats):  # alternate: a machine shared with other work disturbs every part alike
            fractions, rates = _forward_vs_matmul(forward, batches, flops)
            runs["forward"] += fractions
            runs["forward_rate"] += rates
            runs["cpu"] += _forward_vs_matmul(forward, batches[:4], flops, time.process_time)[0]
            fraction, rate, timing = _stage(cfg, tile_ids, flops)
            runs["stage"].append(fraction)
            runs["stage_rate"].append(rate)
            runs["timing"].append(timing)
        levers = _levers(cfg, model, flops)
        runs["load_average"].append(os.getloadavg()[0])
    _write(args, cpus, cfg, flops, tuple(batches[0][0].shape[-2:]), runs, levers, measured)


def _write(args, cpus, cfg, flops, shape, runs, levers, measured: dict) -> None:
    """Print the figures and write benchmarks/results/infer_throughput.json (medians over batches and runs) after
    `measured` (provenance.provenance() at the start)."""
    fwd_fraction, stage_fraction = float(np.median(runs["forward"])), float(np.median(runs["stage"]))
    fwd_rate, stage_rate = float(np.median(runs["forward_rate"])), float(np.median(runs["stage_rate"]))
    timing = runs["timing"][int(np.argsort(runs["stage"])[len(runs["stage"]) // 2])]  # the median stage run's
    px_per_window, wall = shape[0] * shape[1], timing["wall"]
    results = measured | {
        "torch_threads": cpus,
        "model": dataclasses.asdict(cfg.model), "n_frames": K, "weights": "random init (speed only)",
        "tile_lr_px": list(shape), "lr_resolution_m": LR_RESOLUTION_M, "windows": int(timing["windows"]),
        "batch_size": args.batch_size, "repeats": args.repeats,
        "flops_per_lr_pixel": flops / px_per_window,
        "flops_per_output_pixel": flops / px_per_window / cfg.source.scale**2,
        "matmul_2048_gflop_s": round(timing["matmul"] / 1e9, 1),
        "forward_gflop_s": round(fwd_rate * flops / 1e9, 1),
        "stage_gflop_s": round(stage_rate * flops / 1e9, 1),
        "forward_fraction_of_matmul": round(fwd_fraction, 3),
        "forward_fraction_of_matmul_cpu_time": round(float(np.median(runs["cpu"])), 3),
        "stage_fraction_of_matmul": round(stage_fraction, 3),
        "stage_fraction_of_forward": round(stage_fraction / fwd_fraction, 3),
        "stage_to_forward_rate_ratio": round(stage_rate / fwd_rate, 3),  # raw, without the matmul pairing
        "non_model_share": round(1 - timing["model"] / wall, 3),
        "lr_pixels_per_s": round(stage_rate * px_per_window),
        "output_km2_per_s_per_core": round(stage_rate * px_per_window * LR_RESOLUTION_M**2 / 1e6 / cpus, 4),
        "stage_time_split_s": {**{k: round(timing[k], 3) for k in infer.STAGE_CLOCKS}, "wall": round(wall, 3)},
        "load_average_1min_start_end": [round(x, 2) for x in runs["load_average"]],
        "runs": {"forward_fraction_of_matmul_per_batch": [round(x, 3) for x in runs["forward"]],
                 "stage_fraction_of_matmul_per_run": [round(x, 3) for x in runs["stage"]],
                 "matmul_gflop_s_per_stage_run": [round(t["matmul"] / 1e9, 1) for t in runs["timing"]]},
        "levers_forward_fraction_of_matmul": levers,
    }  # fmt: skip
    if max(runs["load_average"]) > cpus:
        results["note"] = (
            f"the machine was shared (1-min load average up to {max(runs['load_average']):.1f} on {cpus} CPUs): the "
            "fractions are disturbed beyond what pairing with matmul bursts corrects (a stage fraction of the forward "
            "above 1 is such noise); non_model_share, from the stage's own clocks, is the robust figure"
        )
        print(results["note"])
    for key in ("matmul_2048_gflop_s", "forward_gflop_s", "stage_gflop_s", "forward_fraction_of_matmul",
                "forward_fraction_of_matmul_cpu_time", "load_average_1min_start_end",
                "stage_fraction_of_forward", "non_model_share", "lr_pixels_per_s", "output_km2_per_s_per_core",
                "flops_per_output_pixel"):  # fmt: skip
        print(f"{key:28s} {results[key]}")
    print("stage time split (s): " + ", ".join(f"{k} {v}" for k, v in results["stage_time_split_s"].items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
