"""Sharded HDF5 training sets: writing them (curate reduce) and reading them as a torch Dataset (train, evaluate).

A shard `datasets/<split>-NNN.h5` holds N samples: lr (N, K, 4, h, w) float32 in [0, 1], lr_mask (N, K, h, w) bool,
hr (N, 4, H, W) float32 in [0, 1], hr_mask (N, H, W) bool, tile_id (N,), hr_date (N,),
lr_dates (N, K) (ISO dates, "" = padding); provenance and curation: hr_unmatched (N, 4, H, W) the label before histogram
matching (same scale), ref_date (N,) the S2 frame it was matched to, yx (N, 2) S2-pixel corner in the tile,
scores (N, 5) the noise filter's scores (names in the attribute `score_names`).
Chunked per sample and LZF-compressed: fast to decode, so the loader keeps up with training.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

KEYS = ("lr", "lr_mask", "hr", "hr_mask", "tile_id", "hr_date", "lr_dates")  # the contract train/evaluate read
EXTRA_KEYS = ("hr_unmatched", "ref_date", "yx", "scores")  # provenance; optional for readers


def shard_paths(datasets_dir: str | Path, split: str) -> list[Path]:
    """Shards of `split` ('train', 'val', 'test'), in order."""
    return sorted(Path(datasets_dir).glob(f"{split}-*.h5"))


class ShardWriter:
    """Append samples (dicts of arrays with a leading N axis) and cut them into shards of `shard_size`."""

    def __init__(self, folder: Path, split: str, shard_size: int, attrs: dict) -> None:
        self.folder, self.split, self.shard_size, self.attrs = folder, split, shard_size, attrs
        self.buffer: dict[str, list[np.ndarray]] = {}
        self.pending = 0
        self.written = 0
        self.shards = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Queue a batch of samples (KEYS required, EXTRA_KEYS if given); write full shards as they fill."""
        for key in (*KEYS, *(k for k in EXTRA_KEYS if k in batch)):
            self.buffer.setdefault(key, []).append(batch[key])
        self.pending += len(batch["lr"])
        while self.pending >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> int:
        """Write what is left; return the number of samples written."""
        if self.pending:
            self._flush(self.pending)
        return self.written

    def _flush(self, n: int) -> None:
        joined = {k: np.concatenate(v) for k, v in self.buffer.items()}
        path = self.folder / f"{self.split}-{self.shards:03d}.h5"
        with h5py.File(path, "w") as f:
            for key, value in joined.items():
                part = value[:n]
                if part.dtype.kind in "US":
                    f.create_dataset(key, data=part.astype("S"))
                else:
                    f.create_dataset(key, data=part, chunks=(1, *part.shape[1:]), compression="lzf")
            f.attrs.update(self.attrs)
        self.buffer = {k: [v[n:]] for k, v in joined.items()}
        self.pending -= n
        self.written += n
        self.shards += 1


def iter_samples(paths: Iterable[Path]) -> Iterable[dict[str, np.ndarray]]:
    """Whole shards as dicts of arrays (for evaluation and tests)."""
    for path in paths:
        with h5py.File(path, "r") as f:
            yield {k: f[k][()] for k in KEYS}


class ShardDataset(Dataset):
    """Samples of a list of shards as tensors; each worker opens the files itself (h5py handles do not fork)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.index: list[tuple[int, int]] = []
        for i, path in enumerate(self.paths):
            with h5py.File(path, "r") as f:
                self.index += [(i, j) for j in range(len(f["lr"]))]
        self._files: dict[int, h5py.File] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, i: int) -> h5py.File:
        if i not in self._files:
            self._files[i] = h5py.File(self.paths[i], "r")
        return self._files[i]

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        i, j = self.index[n]
        f = self._file(i)
        return {
            "lr": torch.from_numpy(f["lr"][j]),
            "lr_mask": torch.from_numpy(f["lr_mask"][j]),
            "hr": torch.from_numpy(f["hr"][j]),
            "hr_mask": torch.from_numpy(f["hr_mask"][j]),
        }

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "index": self.index, "_files": {}}
