"""The one `srpipe` command: `srpipe <stage> CONFIG` runs a stage in local mode, `srpipe run CONFIG` the whole chain."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from srpipe import __version__
from srpipe.config import Config, load_config
from srpipe.errors import SrpipeError, StageError
from srpipe.launch import StageSummary, launcher_rank, launcher_size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"srpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, tiles: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", type=Path, help="config TOML, or a run directory (uses its config.toml)")
        p.add_argument("--run-dir", help="override the config's run_dir")
        if tiles:
            p.add_argument("--workers", type=int, help="processes for per-tile work (default: the config's workers)")
            p.add_argument("--tiles", help="comma-separated tile ids (default: every tile of the grid)")
            p.add_argument("--chunk", help="INDEX:SIZE: only the INDEX-th group of SIZE grid tiles (sbatch arrays)")
        return p

    add("plan", "split the AOI into tiles: grid.gpkg, config.toml")
    download = add("download", "fetch each tile's EOPatch from the source", tiles=True)
    download.add_argument("--estimate", action="store_true", help="only print the requests and processing units")
    curate = add(
        "curate", "clean the data and write the HDF5 training shards (map over tiles, then reduce)", tiles=True
    )
    curate.add_argument("--map-only", action="store_true", help="only the per-tile map")
    curate.add_argument("--reduce-only", action="store_true", help="only the reduce over curated tiles")
    add("train-delineation", "train the field-delineation net (perceptual loss, evaluation) on labels and parcels")
    add("train", "train HighRes-Net on the shards (resumes from its checkpoint)")
    add("infer", "super-resolve each tile into a COG", tiles=True)
    add("mosaic", "merge the SR tiles into country COGs, VRT and STAC")
    add("evaluate", "score SR against bicubic on the test tiles")
    add("run", "the whole chain in local mode (plan, download, curate, train, infer, mosaic, evaluate)", tiles=True)
    submit = sub.add_parser("submit", help="submit a stage, or `all` chained afterok, per a profile; returns at once")
    submit.add_argument("stage", help="a stage of the chain, or `all` (plan here, then every stage)")
    submit.add_argument("config", type=Path, help="config TOML, or a run directory (uses its config.toml)")
    submit.add_argument("--run-dir", help="override the config's run_dir")
    submit.add_argument("--profile", default="local", help="hpc/profiles/<name>.toml or a TOML path (default: local)")
    submit.add_argument("--tiles", help="comma-separated tile ids (default: every tile of the grid)")
    add("status", "per-stage progress of a run: done / failed / pending units, Slurm jobs (markers + sacct)")
    resub = add("resubmit", "submit again the units of STAGE that failed or never finished (none twice)")
    resub.add_argument("stage", help="the stage to complete")
    resub.add_argument("--profile", help="default: the profile of the run's last submission")
    resub.add_argument("--downstream", action="store_true", help="also chain the later stages afterok")
    return parser


def _stage_config(args: argparse.Namespace) -> Config:
    """The run's resolved config (`<run_dir>/config.toml`, written by plan) that every stage reads."""
    cfg = load_config(args.config, args.run_dir)
    stored = cfg.run_path / "config.toml"
    if not stored.exists():
        raise StageError(f"run directory {cfg.run_path} is not planned yet; run `srpipe plan {args.config}` first")
    return load_config(stored)


def _report(summary: StageSummary) -> bool:
    print(summary.line(), flush=True)
    return not summary.failed


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when every unit finished, 1 when some failed, 2 on a configuration or stage error."""
    args = _parser().parse_args(argv)
    from srpipe.stages import CHAIN, run_plan, run_stage

    try:
        tiles = args.tiles.split(",") if getattr(args, "tiles", None) else None
        workers = getattr(args, "workers", None)
        if args.command in ("submit", "status", "resubmit"):
            from srpipe.slurm_cli import cluster_command

            return cluster_command(args, tiles)
        if getattr(args, "chunk", None):
            tiles = _chunk_tiles(_stage_config(args), args.chunk)
        if args.command == "plan":
            return 0 if _report(run_plan(load_config(args.config, args.run_dir))) else 1
        if args.command == "run":
            start = time.perf_counter()
            if not _report(run_plan(load_config(args.config, args.run_dir))):
                return 1
            cfg = _stage_config(args)
            if cfg.source.name == "sentinelhub":
                from srpipe.sources.shcost import estimate_line

                print(estimate_line(cfg, tiles), flush=True)  # the cost before any request that costs
            ok = True
            for name in CHAIN:
                summary = run_stage(cfg, name, tiles, workers)
                ok = _report(summary) and ok
                if summary.failed and summary.failed.keys() == {"all"}:
                    print(f"srpipe run: stopped at {name}; fix the error above and re-run (finished work is kept)")
                    return 1
            _final_words(cfg, time.perf_counter() - start)
            return 0 if ok else 1
        cfg = _stage_config(args)
        if args.command == "download" and (args.estimate or (cfg.source.name == "sentinelhub" and not args.chunk)):
            from srpipe.sources.shcost import estimate_line

            print(estimate_line(cfg, tiles), flush=True)  # the cost before any request that costs
            if args.estimate:
                return 0
        if args.command == "curate":
            names = (
                ["curate"] if args.map_only else ["curate-reduce"] if args.reduce_only else ["curate", "curate-reduce"]
            )
        else:
            names = [args.command]
        ok = True
        rank, size = launcher_rank(), launcher_size()
        if size > 1 and args.command in ("download", "curate", "infer"):  # e.g. one rank per GPU: tiles round-robin
            from srpipe.grid import read_grid

            tiles, workers = (tiles or [t.tile_id for t in read_grid(cfg.run_path)])[rank::size], 1
            names = [n for n in names if n != "curate-reduce"]  # the reduce needs every rank's map: run it after
        for name in names:
            ok = _report(run_stage(cfg, name, tiles, workers, rank=rank)) and ok
        return 0 if ok else 1
    except SrpipeError as exc:
        print(f"srpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _chunk_tiles(cfg: Config, chunk: str) -> list[str]:
    """The INDEX-th group of SIZE tiles of the grid, for `--chunk INDEX:SIZE` (an sbatch array task's share)."""
    from srpipe.grid import read_grid

    index, _, size = chunk.partition(":")
    if not (index.isdigit() and size.isdigit() and int(size) > 0):
        raise StageError(f"--chunk {chunk!r}: expected INDEX:SIZE, e.g. --chunk $SLURM_ARRAY_TASK_ID:16")
    tiles = [t.tile_id for t in read_grid(cfg.run_path)][int(index) * int(size) : (int(index) + 1) * int(size)]
    if not tiles:
        raise StageError(f"--chunk {chunk}: the grid has no tiles in this group; lower the array's upper index")
    return tiles


def _final_words(cfg: Config, seconds: float) -> None:
    """Tell the user where the results are."""
    run = cfg.run_path
    mosaics = sorted((run / "mosaics").glob("*.tif"))
    print(f"\nsrpipe run finished in {seconds:.0f} s. Results in {run}:")
    for m in mosaics:
        print(f"  mosaic: {m}  (+ {m.with_suffix('.vrt').name}, STAC in {run / 'mosaics' / 'stac'})")
    print(f"  report: {run / 'reports' / 'report.md'}  (metrics.json, one PNG per test tile)")
    print(f"  curation: {run / 'curation' / 'report.md'}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
