"""Requests per second of the `sentinelhub` source against the local test server, from 1 and 2 worker processes.

`python benchmarks/sh_requests.py`: plans the tests' tiny run (6 tiles), then fetches every tile (catalog searches,
S2 and label Process API requests, no cache) from a pool of 1 and of 2 processes, unthrottled and at the default
`source.requests_per_s` of 5 per process. Writes benchmarks/results/sh_requests.json. The server runs in this process
on 127.0.0.1, so the figures measure the client and the GeoTIFF decoding, not a network.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from srpipe.config import load_config  # noqa: E402
from srpipe.data.grid import read_grid  # noqa: E402
from srpipe.plan.stage import plan  # noqa: E402
from srpipe.sources.sentinelhub.source import SentinelHubSource  # noqa: E402
from tests.shfixtures import CLIENT_ID, PROFILE, SECRET, server_dataset, sh_config_file  # noqa: E402
from tests.shserver import SentinelHubTestServer  # noqa: E402


def _fetch(args: tuple[str, list[str], float]) -> int:
    """Fetch `tile_ids` of the run at `run_dir` at `per_s` requests/s in this process; return the S2 frames."""
    import dataclasses

    run_dir, tile_ids, per_s = args
    cfg = load_config(run_dir)
    source = SentinelHubSource(dataclasses.replace(cfg.source, requests_per_s=per_s))
    tiles = {t.tile_id: t for t in read_grid(run_dir)}
    return sum(source.fetch(tiles[t]).data["S2_BANDS"].shape[0] for t in tile_ids)


def _measure(server: SentinelHubTestServer, run_dir: Path, workers: int, per_s: float, n_tiles: int) -> dict:
    """Wall time and request rates of fetching `n_tiles` tiles on `workers` processes."""
    tile_ids = [t.tile_id for t in read_grid(run_dir)][:n_tiles]
    shares = [(str(run_dir), tile_ids[i::workers], per_s) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_fetch, [(str(run_dir), [], per_s)] * workers)  # start-up and imports out of the timing
        server.state.log.clear()
        start = time.perf_counter()
        pool.map(_fetch, shares)
        seconds = time.perf_counter() - start
    process = len(server.state.requests_to("/api/v1/process"))
    total = len(server.state.log)
    return {
        "workers": workers,
        "requests_per_s_setting": per_s,
        "tiles": n_tiles,
        "seconds": round(seconds, 2),
        "process_requests": process,
        "all_requests": total,
        "process_requests_per_s": round(process / seconds, 1),
        "all_requests_per_s": round(total / seconds, 1),
    }


def main() -> None:
    measured = provenance()
    base = Path(tempfile.mkdtemp(prefix="sh-bench-"))
    server = SentinelHubTestServer(server_dataset(), CLIENT_ID, SECRET)
    try:
        home = base / "xdg"
        (home / "sentinelhub").mkdir(parents=True)
        profile = {"sh_client_id": CLIENT_ID, "sh_client_secret": SECRET, "sh_base_url": server.url}
        profile["sh_token_url"] = server.token_url
        (home / "sentinelhub" / "config.toml").write_text(tomli_w.dumps({PROFILE: profile}))
        os.environ.update(XDG_CONFIG_HOME=str(home), OAUTHLIB_INSECURE_TRANSPORT="1")  # inherited by the pool
        cfg = load_config(sh_config_file(base))
        plan(cfg)
        runs = [_measure(server, cfg.run_path, w, 1000.0, 6) for w in (1, 2)]
        runs += [_measure(server, cfg.run_path, w, 5.0, 2 * w) for w in (1, 2)]
    finally:
        server.stop()
    result = measured | {
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "server": "tests/shserver.py on 127.0.0.1 (in the benchmark's process, one thread per request)",
        "per_tile": "2 catalog searches, 17 S2 requests (60 x 60 px), 2 label requests (240 x 240 px)",
        "runs": runs,
    }
    out = REPO / "benchmarks" / "results" / "sh_requests.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(
            f"{run['workers']} worker(s), limit {run['requests_per_s_setting']:g}/s per process: "
            f"{run['process_requests_per_s']} Process API requests/s ({run['all_requests_per_s']} all) "
            f"over {run['tiles']} tiles in {run['seconds']} s"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
