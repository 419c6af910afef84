"""`srpipe submit | status | resubmit`: the command-line edge of the Slurm launch layer."""

from __future__ import annotations

import argparse
from pathlib import Path

from srpipe.config import Config, load_config
from srpipe.errors import ConfigError, StageError
from srpipe.profiles import load_profile


def _planned(config: Path, run_dir: str | None) -> Config:
    cfg = load_config(config, run_dir)
    stored = cfg.run_path / "config.toml"
    if not stored.exists():
        raise StageError(f"run directory {cfg.run_path} is not planned yet; run `srpipe plan {config}` first")
    return load_config(stored)


def cluster_command(args: argparse.Namespace, tiles: list[str] | None) -> int:
    """Run `submit`, `status` or `resubmit`; return the exit status."""
    from srpipe.slurm import submissions, submit_chain
    from srpipe.slurm_status import resubmit, run_progress, status_text
    from srpipe.stages import CHAIN, run_plan, run_stage

    if args.command == "status":
        cfg = _planned(args.config, args.run_dir)
        print(status_text(cfg))
        return 1 if any(row.failed for row in run_progress(cfg)) else 0
    if args.command == "resubmit":
        cfg = _planned(args.config, args.run_dir)
        _check_stage(args.stage, CHAIN)
        subs = submissions(cfg.run_path)
        name = args.profile or (subs[-1].get("profile") if subs else None)
        if not name:
            raise ConfigError("this run has no Slurm submission yet; give --profile NAME")
        submitted = resubmit(cfg, load_profile(name), args.stage, args.downstream)
        _print_jobs(cfg, submitted or {args.stage: []})
        return 0
    profile = load_profile(args.profile)
    stages = list(CHAIN) if args.stage == "all" else [args.stage]
    if args.stage == "all":
        summary = run_plan(load_config(args.config, args.run_dir))  # cheap, and the arrays need the grid's tiles
        print(summary.line(), flush=True)
        if summary.failed:
            return 1
    else:
        _check_stage(args.stage, CHAIN)
    cfg = _planned(args.config, args.run_dir)
    if profile.executor == "local":  # the same stages, in-process, one after the other
        ok = True
        for name in stages:
            summary = run_stage(cfg, name, tiles)
            print(summary.line(), flush=True)
            ok = ok and not summary.failed
        return 0 if ok else 1
    units = {name: tiles for name in stages if tiles is not None}
    _print_jobs(cfg, submit_chain(cfg, profile, stages, units))
    return 0


def _check_stage(stage: str, chain: tuple[str, ...]) -> None:
    if stage not in chain:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(chain)} (or `all` for submit)")


def _print_jobs(cfg: Config, submitted: dict[str, list[str]]) -> None:
    for stage, ids in submitted.items():
        print(f"{stage}: {', '.join(ids) if ids else 'nothing to submit (done, or queued already)'}")
    print(f"follow it with: srpipe status {cfg.run_path}")
