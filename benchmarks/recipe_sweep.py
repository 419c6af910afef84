"""Recipe sweep: which training recipe gets the most cPSNR per CPU minute, each variant trained from scratch.

Every variant changes one thing of benchmarks/train_quality.py's `RECIPE` (learning rate, batch, width, depth, loss
terms, schedule) and trains HighRes-Net + ShiftNet from scratch for the same wall-clock minutes on the same curated
demo area (train_quality's, 140 patches per label date). Each is scored as `srpipe evaluate` scores (inside the border
crop, cPSNR against the strongest classical baseline, share of samples won) on the validation tiles, which choose the
recipe, and on the test tiles, reported beside. Each row records the recipe it varied (the committed sweep varied lr
7e-4 with augmentation; train_quality's RECIPE then took lr 1.5e-3, and kept augmentation: no augmentation won at 3
minutes but overfits after about 5 (validation peaked at epoch 8, 279 s), a horizon this sweep cannot see; judge it
at --minutes 30). Variants already scored with the same settings are read back, so a broken sweep resumes. Writes
benchmarks/results/recipe_sweep.json and recipe_sweep.md (the table).
Usage: python benchmarks/recipe_sweep.py [--minutes 3] [--only NAME ...] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from provenance import common, provenance
from train_quality import RECIPE, headline, prepare, recipe

from srpipe.config import Config, load_config
from srpipe.evaluation.stage import patch_scores
from srpipe.models.trained import model_dir
from srpipe.training.train import train
from srpipe.training.train_delineation import load_delineation, train_delineation

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict[str, dict]] = {  # name -> overrides of RECIPE per section
    "recipe": {},
    "lr 1.5e-3": {"train": {"lr": 1.5e-3}},
    "batch 8": {"train": {"batch_size": 8}},
    "batch 32": {"train": {"batch_size": 32}},
    "2 layers": {"model": {"encoder_layers": 2}},
    "48 channels": {"model": {"channels": 48}},
    "constant lr": {"train": {"lr_schedule": "constant"}},
    "pixel loss only": {"loss": {"perceptual_weight": 0.0, "ssim_weight": 0.0, "mean_match_weight": 0.0}},
    "no augmentation": {"train": {"augment": False}},
}


def _config(base: Config, name: str, minutes: float) -> Config:
    """The variant's config: RECIPE with its overrides, its own model folder, `minutes` of training, one-pass SR."""
    cfg = recipe(base, overrides=VARIANTS[name])
    slug = "sweep-" + "".join(c if c.isalnum() else "-" for c in name)
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, name=slug, max_minutes=minutes),
        infer=dataclasses.replace(cfg.infer, self_ensemble=False),
    )


def _run(cfg: Config, name: str, minutes: float) -> dict:
    """Train one variant from scratch (its folder cleared), then score it on the validation and the test tiles."""
    shutil.rmtree(model_dir(cfg), ignore_errors=True)
    summary = train(cfg)
    scored = patch_scores(cfg, ("val", "test"))
    return {
        "recipe": RECIPE,
        "overrides": VARIANTS[name],
        "minutes": minutes,
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "samples_per_min": round(summary["steps"] * cfg.train.batch_size / minutes),
        "val": headline(scored["val"]),
        "test": headline(scored["test"]),
    }


def _table(rows: dict[str, dict]) -> str:
    """Markdown table of the sweep: one-pass cPSNR gain over the strongest baseline and win share, val and test."""
    lines = [
        "| variant | steps | samples/min | val gain dB | val wins | test gain dB | test wins | strongest baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    best = max(rows, key=lambda n: rows[n]["val"]["sr_one_pass"]["cpsnr_gain"])
    for name, r in rows.items():
        v, t = r["val"]["sr_one_pass"], r["test"]["sr_one_pass"]
        label = f"**{name}**" if name == best else name
        lines.append(
            f"| {label} | {r['steps']} | {r['samples_per_min']} | {v['cpsnr_gain']:+.3f} | {v['cpsnr_win_share']:.1%} "
            f"| {t['cpsnr_gain']:+.3f} | {t['cpsnr_win_share']:.1%} | {r['test']['strongest_baseline']} |"
        )
    return "\n".join(lines) + f"\n\nChosen on the validation tiles: **{best}**.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/srpipe-train-quality"))
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-clock per variant")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run these variants (default: all)")
    args = parser.parse_args()
    prepare(args.run_dir)
    base = load_config(args.run_dir / "config.toml")
    if load_delineation(recipe(base)) is None:  # the perceptual loss's frozen net, shared by every variant
        train_delineation(recipe(base))
    out = RESULTS / "recipe_sweep.json"
    rows = json.loads(out.read_text())["variants"] if out.exists() else {}
    measured = provenance()
    for name in args.only or VARIANTS:
        done = rows.get(name, {})
        if (done.get("recipe"), done.get("overrides"), done.get("minutes")) == (RECIPE, VARIANTS[name], args.minutes):
            continue
        print(f"recipe_sweep: {name} ({args.minutes:g} min)", file=sys.stderr)
        rows[name] = measured | _run(_config(base, name, args.minutes), name, args.minutes)
        out.write_text(json.dumps(common(list(rows.values())) | {"variants": rows}, indent=1) + "\n")
    table = _table(rows)
    title = f"# Recipe sweep ({args.minutes:g} min per variant, from scratch)"
    (RESULTS / "recipe_sweep.md").write_text(f"{title}\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
