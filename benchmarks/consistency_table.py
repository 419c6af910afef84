"""The consistency table of docs/evaluation.md: SR per `model.consistency` setting, on the demo and the native run.

Reads finished demo runs (the same curated data, fine-tuned once per setting; their reports/metrics.json) and
native-resolution results (benchmarks/native_resolution.py per setting), and writes benchmarks/results/consistency.json
(the rows under "rows", beside provenance.py's commit, dirty state and machine) and consistency.md: per setting,
one-pass cPSNR gain over the strongest baseline [95 % CI] and share of samples won, the Kelvins score, opensr-test's
shares, and consistency with S2 (MAE, per-band bias, spectral angle) next to bicubic of the very frame it is measured
against.
With --same-weights RUN, the rows of that run's own table (evaluate scores its weights under every setting: the
constraint has no weights), which one `make demo` gives.
Usage: python benchmarks/consistency_table.py --demo mean=RUN --demo off=RUN ... --native full=JSON --native off=JSON
       python benchmarks/consistency_table.py --same-weights runs/demo --native full=JSON --native off=JSON
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance

BANDS = ("B02", "B03", "B04", "B08")
OUT = Path(__file__).parent / "results"


def _consistency(entry: dict) -> dict:
    """MAE, per-band bias and spectral angle of one metrics.json consistency entry."""
    return {"mae": entry["mae"], "bias": dict(zip(BANDS, entry["bias_per_band"], strict=True)), "sam": entry["sam_deg"]}


def demo_rows(run: Path, setting: str) -> list[dict]:
    """The SR (one pass) row and its bicubic-of-the-frame row of one demo run's metrics.json."""
    m = json.loads((run / "reports" / "metrics.json").read_text())
    one, cons, corr = m["sr_one_pass"], m["consistency"], m.get("correctness", {})
    shares = corr.get("sr_one_pass", {})
    sr = {
        "run": "demo",
        "method": f"SR one pass, consistency {setting}",
        "cpsnr_gain_db": one["cpsnr_gain"],
        "cpsnr_gain_ci": one["cpsnr_gain_ci"],
        "won": one["cpsnr_win_share"],
        "kelvins": one["kelvins"],
        "strongest_baseline": m["strongest_baseline"],
        **{k: shares[k]["mean"] for k in ("improvement", "omission", "hallucination") if k in shares},
        **_consistency(cons["sr_one_pass"]),
    }
    frame = {"run": "demo", "method": "bicubic of the frame", **_consistency(cons["bicubic_frame"])}
    return [sr, frame]


def same_weight_rows(run: Path) -> list[dict]:
    """One run's metrics.json 'constraint' table: SR one pass under each setting on the same weights, then bicubic of
    the frame."""
    con = json.loads((run / "reports" / "metrics.json").read_text())["constraint"]
    rows = []
    for setting, r in con["rows"].items():
        own = ", the run's" if setting == con["run_setting"] else ""
        rows.append({
            "run": "demo",
            "method": f"SR one pass, consistency {setting} (same weights{own})",
            "cpsnr_gain_db": r["cpsnr_gain"],
            "cpsnr_gain_ci": r["cpsnr_gain_ci"],
            "won": r["cpsnr_win_share"],
            "kelvins": r["kelvins"],
            "strongest_baseline": con["strongest_baseline"],
            **{k: r[k] for k in ("improvement", "omission", "hallucination")},
            **_consistency(r),
        })  # fmt: skip
    return [*rows, {"run": "demo", "method": "bicubic of the frame", **_consistency(con["bicubic_frame"])}]


def native_rows(path: Path, setting: str) -> list[dict]:
    """SR's and bicubic's consistency rows of one native_resolution.json."""
    c = json.loads(path.read_text())["figures"]["consistency"]

    def row(name: str, entry: dict) -> dict:
        mae = sum(entry["mae"].values()) / len(BANDS)
        return {"run": "native 10 m", "method": name, "mae": mae, "bias": entry["bias"], "sam": entry["sam_deg"]}

    return [row(f"SR, consistency {setting}", c["sr"]), row("bicubic of the frame", c["bicubic"])]


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    head = ["run", "method", "cPSNR gain dB [95 % CI]", "won", "Kelvins", "impr. / omis. / halluc.", "MAE"]
    head += [f"bias {b}" for b in BANDS] + ["angle (deg)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        gain = "" if "cpsnr_gain_db" not in r else f"{r['cpsnr_gain_db']:+.2f} [{r['cpsnr_gain_ci'][0]:+.2f}, "
        gain += "" if "cpsnr_gain_db" not in r else f"{r['cpsnr_gain_ci'][1]:+.2f}]"
        shares = (
            ""
            if "improvement" not in r
            else "/".join(f"{r[k]:.2f}" for k in ("improvement", "omission", "hallucination"))
        )
        cells = [
            r["run"],
            r["method"],
            gain,
            _cell(r.get("won") and 100 * r["won"], ".1f"),
            _cell(r.get("kelvins"), ".3f"),
        ]
        cells += [shares, f"{r['mae']:.4f}", *(f"{r['bias'][b]:+.4f}" for b in BANDS), f"{r['sam']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pairs(values: list[str]) -> list[tuple[str, Path]]:
    """["LABEL=PATH", ...] -> [(label, path), ...]."""
    return [(v.split("=", 1)[0], Path(v.split("=", 1)[1])) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="append", default=[], help="SETTING=RUN_DIR, e.g. mean=runs/demo")
    parser.add_argument("--native", action="append", default=[], help="SETTING=native_resolution JSON")
    parser.add_argument("--same-weights", type=Path, help="a run whose report scored its weights under every setting")
    parser.add_argument("--out", default="consistency", help="results/<OUT>.json and .md (default: consistency)")
    args = parser.parse_args()
    measured = provenance()  # the table's code; the runs and JSONs it reads record their own
    rows = same_weight_rows(args.same_weights) if args.same_weights else []
    for i, (setting, run) in enumerate(_pairs(args.demo)):
        rows += demo_rows(run, setting)[: 2 if i == 0 else 1]
    for i, (setting, path) in enumerate(_pairs(args.native)):
        rows += native_rows(path, setting)[: 2 if i == 0 else 1]
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps({"rows": rows, **measured}, indent=1) + "\n")
    (OUT / f"{args.out}.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
