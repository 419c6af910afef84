"""SR where it never trained: a run's model on each held-out real scene of scenes/, as it is and adapted.

    python benchmarks/generalisation.py [RUN_DIR] [--weights NAME]   # default runs/demo (after `make demo`)

For each scene: `srpipe evaluate RUN --scene scenes/<name> --adapt` (S2 simulated from the scene at 4x coarser pixels
as the sample does, its own 10 m as the label; the adaptation fine-tunes the model on the scene's training tiles for
RUN's [adapt] budget, then scores it again on the scene's test tiles). `--weights sample-x4` first copies RUN into
`<RUN>-<NAME>` with the packaged weights as its model, to score them rather than RUN's own. Writes
benchmarks/results/generalisation[-NAME].json and .md: per scene, one-pass and 8-view cPSNR gain over the strongest
baseline with 95 % CIs, share of samples won, Kelvins score, consistency against bicubic of the frame; before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w
from provenance import REPO, provenance

SCENES = sorted(p for p in (REPO / "scenes").iterdir() if p.is_dir())


def _with_weights(run: Path, name: str) -> Path:
    """A run folder beside RUN (its config, run_dir moved there, and its delineation net) whose model is the packaged
    weights `name`, so that they are scored as they are shipped."""
    copy = run.with_name(f"{run.name}-{name}")
    config = tomllib.loads((run / "config.toml").read_text()) | {"run_dir": str(copy)}
    models = copy / "models"
    shutil.copytree(run / "models" / config["delineation"]["name"], models / config["delineation"]["name"],
                    dirs_exist_ok=True)  # fmt: skip
    (models / config["train"]["name"]).mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "srpipe" / "weights" / f"{name}.pt", models / config["train"]["name"] / "model.pt")
    (copy / "config.toml").write_text(tomli_w.dumps(config))
    return copy


def _row(metrics: dict) -> dict:
    """The figures of one scoring: gains with CIs, share won, Kelvins, consistency with the frame."""
    base = metrics["strongest_baseline"]
    out = {"strongest_baseline": base, "n_samples": metrics["n_samples"], "n_tiles": metrics["n_tiles"]}
    for name in ("sr_one_pass", "sr"):
        m = metrics[name]
        out[name] = {k: m[k] for k in ("cpsnr_gain", "cpsnr_gain_ci", "cpsnr_win_share", "kelvins")}
    consistency = metrics.get("consistency", {})
    out["consistency"] = {k: v.get("mae") for k, v in consistency.items() if isinstance(v, dict) and "mae" in v}
    return out


def _scene(run: Path, scene: Path, reuse: bool) -> dict:
    """Evaluate RUN on `scene` with adaptation (`reuse`: read a finished one instead); both scorings' rows and the
    adaptation's seconds."""
    start = time.perf_counter()
    folder = run / "scenes" / scene.name
    if not (reuse and (folder / "reports" / "adaptation.json").exists()):
        cmd = [sys.executable, "-m", "srpipe", "evaluate", str(run), "--scene", str(scene), "--adapt"]
        subprocess.run(cmd, check=True)
    before = json.loads((folder / "reports-unadapted" / "metrics.json").read_text())
    after = json.loads((folder / "reports" / "metrics.json").read_text())
    adaptation = json.loads((folder / "reports" / "adaptation.json").read_text())
    return {"unadapted": _row(before), "adapted": _row(after), "adapt_seconds": adaptation["seconds"],
            "adapt": adaptation["adapt"], "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def _table(results: dict) -> str:
    """Markdown: a row per scene and model state."""
    lines = ["| scene | model | strongest baseline | one pass vs it (95 % CI) | won | 8 views vs it | Kelvins | "
             "MAE to the S2 frame: SR / bicubic of it |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for scene, r in results.items():
        for state in ("unadapted", "adapted"):
            row, one, eight = r[state], r[state]["sr_one_pass"], r[state]["sr"]
            ci = "{:+.2f} to {:+.2f}".format(*one["cpsnr_gain_ci"])
            won = f"{100 * one['cpsnr_win_share']:.0f} % of {row['n_samples']}"
            mae = row["consistency"]
            frame = f"{mae.get('sr_one_pass', float('nan')):.4f} / {mae.get('bicubic_frame', float('nan')):.4f}"
            lines.append(f"| {scene} | {state} | {row['strongest_baseline']} | {one['cpsnr_gain']:+.2f} dB ({ci}) | "
                         f"{won} | {eight['cpsnr_gain']:+.2f} dB | {one['kelvins']:.3f} | {frame} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--weights", default="", help="score these packaged weights instead of RUN's model")
    parser.add_argument("--reuse", action="store_true", help="read scenes already evaluated and adapted in RUN")
    args = parser.parse_args()
    measured = provenance()
    run = _with_weights(args.run.resolve(), args.weights) if args.weights else args.run.resolve()
    results = {scene.name: _scene(run, scene, args.reuse) for scene in SCENES}
    stem = "generalisation" + (f"-{args.weights}" if args.weights else "")
    out = REPO / "benchmarks" / "results"
    (out / f"{stem}.json").write_text(json.dumps(measured | {"run": str(run), "scenes": results}, indent=1))
    (out / f"{stem}.md").write_text(_table(results))
    print(_table(results))


if __name__ == "__main__":
    main()
