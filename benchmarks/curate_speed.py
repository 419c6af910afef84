"""Curation speed: map tiles/s per worker, and shard read rate through the DataLoader next to the training step rate.

Also records each filter's counts and its precision/recall against what the sample source planted.

`python benchmarks/curate_speed.py [RUN_DIR]`: RUN_DIR is a downloaded run (default: the demo, planned and downloaded
into a temporary folder). Writes benchmarks/results/curate_speed.json. The loader must out-run the training step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from provenance import provenance
from torch.utils.data import DataLoader

from srpipe.config import load_config
from srpipe.curate.reduce import curate_reduce, read_samples
from srpipe.curate.tile import curate_tile
from srpipe.curate.truth import filter_truth
from srpipe.data.grid import read_grid
from srpipe.data.normalise import load_stats
from srpipe.data.shards import ShardDataset, shard_paths
from srpipe.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _demo_run(folder: Path) -> Path:
    run = folder / "run"
    for args in (["plan", str(REPO / "configs" / "demo.toml"), "--run-dir", str(run)], ["download", str(run)]):
        subprocess.run([sys.executable, "-m", "srpipe", *args], check=True, capture_output=True)
    return run


def map_rate(cfg) -> dict:
    """Tiles/s of the curation map on one worker (in-process, one thread), over every tile of the run."""
    torch.set_num_threads(1)
    tiles = [t.tile_id for t in read_grid(cfg.run_path)]
    start = time.perf_counter()
    samples = sum(curate_tile(cfg, t)["samples"] for t in tiles)
    seconds = time.perf_counter() - start
    return {"tiles": len(tiles), "samples": samples, "seconds": seconds, "tiles_per_s_per_worker": len(tiles) / seconds}


def loader_rate(paths: list[Path], batch_size: int, workers: int, batches: int = 40) -> float:
    """Samples/s read from the shards through a shuffling DataLoader."""
    loader = DataLoader(
        ShardDataset(paths), batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    n, start = 0, None
    while n < batches * batch_size:
        for batch in loader:
            if start is None:  # the first batch pays for the workers' start-up
                start, n = time.perf_counter(), 0
                continue
            n += len(batch["lr"])
            if n >= batches * batch_size:
                break
    return n / (time.perf_counter() - start)


def train_step_rate(cfg, paths: list[Path], steps: int = 10) -> float:
    """Samples/s of forward + backward + Adam step of the configured model (the loader excluded: batches in memory)."""
    torch.set_num_threads(2)
    model = build_model(cfg.model, cfg.source.scale)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    data = ShardDataset(paths)
    batch = next(iter(DataLoader(data, batch_size=cfg.train.batch_size)))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        sr = model(batch["lr"], batch["lr_mask"]).float()
        loss = (((sr - batch["hr"]) ** 2) * batch["hr_mask"][:, None]).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    measured = provenance()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(sys.argv[1]) if len(sys.argv) > 1 else _demo_run(Path(tmp))
        cfg = load_config(run)
        result = measured | {"map": map_rate(cfg)}
        start = time.perf_counter()
        curate_reduce(cfg)
        result["reduce_seconds"] = time.perf_counter() - start
        rows = read_samples(cfg.layout.curation / "samples.csv")
        tiles = sorted({r["tile_id"] for r in rows})
        per_tile = {t: json.loads(cfg.layout.curated_tile(t)[0].read_text()) for t in tiles}
        result["filters"] = load_stats(run)["filters"]
        result["filters_vs_planted_truth"] = filter_truth(cfg, rows, per_tile, min_share=0.01)
        paths = shard_paths(cfg.layout.datasets, "train")
        bs = cfg.train.batch_size
        result["loader_samples_per_s"] = {f"workers_{w}": loader_rate(paths, bs, w) for w in (0, 2)}
        result["train_step_samples_per_s"] = train_step_rate(cfg, paths)
        result["batch_size"], result["patch_px"] = bs, cfg.curate.lr_patch_px
        result["loader_keeps_up"] = min(result["loader_samples_per_s"].values()) > result["train_step_samples_per_s"]
    out = REPO / "benchmarks" / "results" / "curate_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    m = result["map"]
    print(f"map: {m['tiles_per_s_per_worker']:.2f} tiles/s per worker ({m['tiles']} tiles, {m['samples']} samples)")
    print(f"reduce: {result['reduce_seconds']:.1f} s")
    for name, f in result["filters"].items():
        print(f"filter {name}: {f['in']} {f['unit']} in, {f['removed']} removed, {f['kept']} kept")
    for name, t in result["filters_vs_planted_truth"].items():
        if isinstance(t, dict):
            print(f"{name} vs planted truth: precision {t['precision']:.2f}, recall {t['recall']:.2f} ({t})")
    for k, v in result["loader_samples_per_s"].items():
        print(f"shard read ({k}): {v:.0f} samples/s")
    print(f"training step: {result['train_step_samples_per_s']:.0f} samples/s (batch {bs})")
    print(f"loader keeps up: {result['loader_keeps_up']}  -> {out}")


if __name__ == "__main__":
    main()
