"""The one `srpipe` command: `srpipe <stage> CONFIG` runs a stage in local mode, `srpipe run CONFIG` the whole chain."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from srpipe import __version__
from srpipe.chain import CHAIN, STAGES, StageSummary, check_stage, plan_run, run_chain, stage_units
from srpipe.config import Config, load_config
from srpipe.errors import ConfigError, SrpipeError, StageError


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
    add("train-delineation", "train the field-delineation net (the perceptual loss's frozen net) on labels or parcels")
    add("train", "train HighRes-Net on the shards (resumes from its checkpoint)")
    add("infer", "super-resolve each tile into a COG", tiles=True)
    mosaic_help = "merge the SR tiles into COGs per UTM zone and date, then VRTs, reprojected mosaics and STAC"
    add("mosaic", mosaic_help, tiles=True)
    add("catalog", "after the mosaics: a VRT per date over the zones, mosaics in mosaic.crs, the STAC collection")
    evaluate = add("evaluate", "score SR against every classical baseline on the test tiles; reports/index.html")
    scene_help = "score the run's model on this scene folder (B02, B03, B04, B08), simulated as the sample"
    evaluate.add_argument("--scene", type=Path, help=scene_help + ", in RUN/scenes/<name>/")
    adapt_help = "with --scene: then fine-tune the model on the scene's training tiles ([adapt]) and score it again"
    evaluate.add_argument("--adapt", action="store_true", help=adapt_help)
    adapt = add("adapt", "fine-tune the weights the run infers with on its region's own S2 (no labels): models/adapted")
    adapt.add_argument("--scene", type=Path, help="the region's S2 (B02, B03, B04, B08 at 10 m); default: the run's")
    add("run", "the whole chain in local mode (plan, download, curate, train, infer, mosaic, evaluate)", tiles=True)
    submit = sub.add_parser("submit", help="submit a stage, or `all` chained afterok, per a profile; returns at once")
    submit.add_argument("stage", help="a stage of the chain, or `all` (plan here, then every stage)")
    submit.add_argument("config", type=Path, help="config TOML, or a run directory (uses its config.toml)")
    submit.add_argument("--run-dir", help="override the config's run_dir")
    submit.add_argument("--profile", default="local", help="hpc/profiles/<name>.toml or a TOML path (default: local)")
    submit.add_argument("--tiles", help="comma-separated tile ids (default: every tile of the grid)")
    add("status", "per-stage progress of a run: done / stale (which input changed) / failed / pending, Slurm jobs")
    resub = add("resubmit", "submit again the units of STAGE that failed or never finished (none twice)")
    resub.add_argument("stage", help="the stage to complete")
    resub.add_argument("--profile", help="default: the profile of the run's last submission")
    resub.add_argument("--downstream", action="store_true", help="also chain the later stages afterok")
    return parser


def _stage_config(config: Path, run_dir: str | None) -> Config:
    """The run's resolved config (`<run_dir>/config.toml`, written by plan) that every stage reads."""
    cfg = load_config(config, run_dir)
    if not cfg.layout.config.exists():
        raise StageError(f"run directory {cfg.run_path} is not planned yet; run `srpipe plan {config}` first")
    return load_config(cfg.layout.config)


def _report(summary: StageSummary) -> None:
    print(summary.line(), flush=True)


def _stages_of(args: argparse.Namespace) -> list[str]:
    """The stages a command runs: `curate` is the map and the reduce; `run` and `submit all` the whole chain."""
    if args.command == "curate":
        return ["curate"] if args.map_only else ["curate-reduce"] if args.reduce_only else ["curate", "curate-reduce"]
    if args.command in ("run", "submit") and getattr(args, "stage", "all") == "all":
        return list(CHAIN)
    if args.command == "mosaic" and getattr(args, "chunk", None):
        return ["mosaic"]  # an array task's zone x date units; `srpipe catalog` after the array
    if args.command == "mosaic" or (args.command == "submit" and args.stage == "mosaic"):
        return ["mosaic", "catalog"]  # the zone x date COGs, then the VRTs, the reprojected mosaics and STAC
    name = args.stage if args.command == "submit" else args.command
    check_stage(name)
    return [name]


def _executor(args: argparse.Namespace, cfg: Config):
    """Where the stages run: a Slurm profile submits; `local` and every plain command run here (MPI ranks split)."""
    from srpipe.cluster.local import LocalExecutor

    if args.command == "submit":
        from srpipe.cluster.profiles import load_profile

        profile = load_profile(args.profile)
        if profile.executor == "slurm":
            from srpipe.cluster.slurm import SlurmExecutor

            return SlurmExecutor(profile)
    return LocalExecutor.from_launcher(getattr(args, "workers", None) or cfg.workers)


def _chain_command(args: argparse.Namespace) -> int:
    """plan, a stage, curate, run, or submit: plan first where the chain starts there, then `run_chain`."""
    start = time.perf_counter()
    if args.command in ("plan", "run") or (args.command == "submit" and args.stage == "all"):
        planned = plan_run(load_config(args.config, args.run_dir))
        _report(planned)
        if planned.failed or args.command == "plan":
            return 1 if planned.failed else 0
    cfg = _stage_config(args.config, args.run_dir)
    tiles = args.tiles.split(",") if getattr(args, "tiles", None) else None
    if getattr(args, "chunk", None):
        tiles = _chunk_tiles(cfg, args.chunk, "mosaic" if args.command == "mosaic" else "download")
    estimate = getattr(args, "estimate", False)
    stages = _stages_of(args)
    from srpipe.sources import make_source

    source = make_source(cfg.source, cfg.run_path)
    if "download" in stages and not getattr(args, "chunk", None) and (source.paid or source.remote or estimate):
        from srpipe.sources.estimate import estimate_line

        print(estimate_line(cfg, tiles), flush=True)  # the cost before any request that costs
    if estimate:
        return 0
    summaries = run_chain(cfg, stages, tiles, _executor(args, cfg), _report)
    if summaries and summaries[-1].stopped:
        print(f"srpipe: stopped at {summaries[-1].stage}; fix the error above and re-run (finished work is kept)")
    elif args.command == "run":
        _final_words(cfg, time.perf_counter() - start)
    elif any(s.jobs is not None for s in summaries):
        print(f"follow it with: srpipe status {cfg.run_path}")
    return _exit_status(summaries)


def _exit_status(summaries: list[StageSummary]) -> int:
    """0 when every unit finished, 2 when a unit failed on a configuration error, else 1 when some failed."""
    errors = [e for s in summaries for e in s.failed.values()]
    return 2 if any(e.startswith("ConfigError:") for e in errors) else 1 if errors else 0


def _scene_command(args: argparse.Namespace) -> int:
    """evaluate --scene: plan, download and curate the scene in RUN/scenes/<name>/, then evaluate RUN's model there."""
    from srpipe.evaluation.scene import SCENE_CHAIN, copy_models, scene_config
    from srpipe.evaluation.stage import evaluate

    cfg = _stage_config(args.config, args.run_dir)
    scene = scene_config(cfg, args.scene)
    planned = plan_run(scene)
    _report(planned)
    if planned.failed:
        return 1
    sub = load_config(scene.layout.config)
    summaries = run_chain(sub, list(SCENE_CHAIN), None, _executor(args, sub), _report)
    if any(s.failed or s.stopped for s in summaries):
        print(f"srpipe evaluate --scene: the scene run {sub.run_path} stopped before evaluation; fix the error above")
        return 1
    copy_models(cfg, sub)
    result = evaluate(sub)
    print(f"evaluate --scene: {result}\n  report: {sub.layout.reports / 'index.html'}")
    if args.adapt:
        _adapt_scene(sub)
    return 0


def _adapt_scene(sub: Config) -> None:
    """evaluate --scene --adapt: fine-tune RUN's model on the scene's training tiles, score it again, and write
    `reports/adaptation.json` (before and after); RUN's model and its scores stay aside as `*.unadapted`."""
    import json

    from srpipe import state
    from srpipe.evaluation.scene import adaptation_record, set_aside_unadapted
    from srpipe.evaluation.stage import evaluate
    from srpipe.training.adapt import train_adapted

    before = json.loads((sub.layout.reports / "metrics.json").read_text())
    weights = set_aside_unadapted(sub)
    print(f"evaluate --scene --adapt: fine-tuning up to {sub.adapt.max_minutes:g} min on the scene's training tiles")
    adapted, seconds = train_adapted(sub, weights)
    result = evaluate(adapted)
    after = json.loads((adapted.layout.reports / "metrics.json").read_text())
    record = adaptation_record(before, after, seconds, dataclasses.asdict(sub.adapt))
    state.write_json(adapted.layout.reports / "adaptation.json", record)
    for name in ("unadapted", "adapted"):
        r = record[name]["sr_one_pass"]
        print(f"  {name}: one pass {r['cpsnr_gain']:+.2f} dB vs {record[name]['strongest_baseline']}, "
              f"{100 * r['cpsnr_win_share']:.0f} % of {record['n_samples']} won")  # fmt: skip
    print(f"evaluate --scene --adapt: {result}\n  report: {adapted.layout.reports / 'adaptation.json'}")


def _adapt_command(args: argparse.Namespace) -> int:
    """adapt: a Wald run on the region's S2 in RUN/scenes/<name>/, the weights fine-tuned there, RUN/models/adapted."""
    from srpipe.evaluation.scene import SCENE_CHAIN, scene_config
    from srpipe.sources import make_source
    from srpipe.training.adapt import install_adapted, recipe_overrides, region_scene, train_adapted
    from srpipe.weights import inference_weights

    cfg = _stage_config(args.config, args.run_dir)
    weights = inference_weights(cfg)
    if not weights.exists():
        raise StageError(f"{weights} does not exist: train the run first, or set infer.model to packaged weights")
    has_labels = make_source(cfg.source, cfg.run_path).has_labels
    scene = scene_config(cfg, region_scene(cfg, args.scene), recipe_overrides(cfg, weights, has_labels))
    planned = plan_run(scene)
    _report(planned)
    if planned.failed:
        return 1
    sub = load_config(scene.layout.config)
    summaries = run_chain(sub, [*SCENE_CHAIN, "train-delineation"], None, _executor(args, sub), _report)
    if any(s.stopped for s in summaries):
        print(f"srpipe adapt: the adaptation run {sub.run_path} stopped; fix the error above and run adapt again")
        return 1
    print(f"adapt: fine-tuning {weights} for up to {cfg.adapt.max_minutes:g} min on {sub.source.scene}")
    _, seconds = train_adapted(sub, weights)
    path = install_adapted(cfg, sub, weights, seconds)
    print(f'adapt: {path} ({seconds:.0f} s); infer with it: infer.model = "{path}" in {cfg.layout.config}')
    return 0


def _cluster_command(args: argparse.Namespace) -> int:
    """status or resubmit."""
    from srpipe.cluster.profiles import load_profile
    from srpipe.cluster.slurm import submissions
    from srpipe.cluster.status import resubmit, run_progress, status_text

    cfg = _stage_config(args.config, args.run_dir)
    if args.command == "status":
        print(status_text(cfg))
        return 1 if any(row.failed for row in run_progress(cfg)) else 0
    check_stage(args.stage)
    subs = submissions(cfg.run_path)
    name = args.profile or (subs[-1].get("profile") if subs else None)
    if not name:
        raise ConfigError("this run has no Slurm submission yet; give --profile NAME")
    submitted = resubmit(cfg, load_profile(name), args.stage, args.downstream) or {args.stage: []}
    for stage, ids in submitted.items():
        print(f"{stage}: {', '.join(ids) if ids else 'nothing to submit (done, or queued already)'}")
    print(f"follow it with: srpipe status {cfg.run_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when every unit finished, 1 when some failed, 2 on a configuration or stage error."""
    args = _parser().parse_args(argv)
    try:
        if not _takes_lock(args):
            return _command(args)
        from srpipe.runlock import run_lock

        command = "srpipe " + " ".join(sys.argv[1:] if argv is None else argv)
        layout = load_config(args.config, args.run_dir).layout
        with run_lock(layout.lock, command):
            _sweep(layout.root)
            if args.command != "resubmit":
                _refuse_while_queued(layout.root)
            return _command(args)
    except SrpipeError as exc:
        print(f"srpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _sweep(root: Path) -> None:
    """Remove the temporaries that killed srpipe writers on this host left in the run directory, saying which."""
    from srpipe.state import sweep_temporaries

    for path in sweep_temporaries(root) if root.exists() else []:
        print(f"removed {path.relative_to(root)}: a temporary left by a killed writer", file=sys.stderr)


def _refuse_while_queued(root: Path) -> None:
    """RunLockedError when Slurm tasks of the run are queued or running: a second start would do their units twice."""
    from srpipe.cluster.status import active_tasks
    from srpipe.runlock import RunLockedError

    active = active_tasks(root) if root.exists() else {}
    if active:
        jobs = ", ".join(f"{t} {s}" for t, s in sorted(active.items())[:6]) + (", ..." if len(active) > 6 else "")
        raise RunLockedError(
            f"run directory {root} has Slurm tasks queued or running ({jobs}); a second start would run their units "
            f"twice. Follow them with `srpipe status {root}`, then `srpipe resubmit` what failed; or scancel them first"
        )


def _command(args: argparse.Namespace) -> int:
    """Run the parsed command."""
    if args.command in ("status", "resubmit"):
        return _cluster_command(args)
    if args.command == "evaluate" and args.scene:
        return _scene_command(args)
    if args.command == "adapt":
        return _adapt_command(args)
    return _chain_command(args)


def _takes_lock(args: argparse.Namespace) -> bool:
    """Whether the command holds the run directory's lock: all but `status`, an sbatch array task's `--chunk` share
    and the ranks of one launch (`mpirun`, `srun`), which share a run directory on purpose."""
    from srpipe.training.launch import launcher_size

    return args.command != "status" and not getattr(args, "chunk", None) and launcher_size() == 1


def _chunk_tiles(cfg: Config, chunk: str, stage: str = "download") -> list[str]:
    """The INDEX-th group of SIZE units, for `--chunk INDEX:SIZE` (an sbatch array task's share): grid tiles, or
    the zone x date units of `mosaic`."""
    index, _, size = chunk.partition(":")
    if not (index.isdigit() and size.isdigit() and int(size) > 0):
        raise StageError(f"--chunk {chunk!r}: expected INDEX:SIZE, e.g. --chunk $SLURM_ARRAY_TASK_ID:16")
    units = stage_units(cfg, STAGES[stage])  # the grid's tiles (or mosaic's units), in order: the one list
    tiles = units[int(index) * int(size) : (int(index) + 1) * int(size)]
    if not tiles:
        raise StageError(f"--chunk {chunk}: {stage} has no units in this group; lower the array's upper index")
    return tiles


def _final_words(cfg: Config, seconds: float) -> None:
    """Tell the user where the results are."""
    layout = cfg.layout
    print(f"\nsrpipe run finished in {seconds:.0f} s. Results in {cfg.run_path}:")
    for m in sorted(layout.mosaics.glob("*.tif")):
        print(f"  {'spread (ensemble std)' if m.name.endswith('.std.tif') else 'mosaic'}: {m}")
    for v in sorted(p for p in layout.mosaics.glob("*.vrt") if p.suffixes == [".vrt"]):
        print(f"  per date over the zones: {v}")
    if layout.stac.exists():
        print(f"  STAC: {layout.stac / 'collection.json'}")
    if (layout.reports / "index.html").exists():
        print(f"  report: {layout.reports / 'index.html'}  (open it in a browser; metrics.json, samples.csv)")
    if (layout.curation / "report.md").exists():
        print(f"  curation: {layout.curation / 'report.md'}")
    print(f"  status: srpipe status {cfg.run_path}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
