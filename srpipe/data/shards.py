"""The samples' on-disk format (`TILE_FIELDS`, `SHARD_FIELDS`: the one spec), the shard writer and the torch Dataset.

The curate map writes a tile's raw samples to `curation/tiles/<tile>.h5` (TILE_FIELDS); the reduce filters, normalises
and cuts them into `datasets/<split>-NNN.h5` (SHARD_FIELDS), which train and evaluate read (KEYS; EXTRA_KEYS optional).
Shards are chunked per sample and LZF-compressed: fast to decode, so the loader keeps up with training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from srpipe.errors import StageError


@dataclass(frozen=True)
class Field:
    """One HDF5 dataset of a sample file: its dims (symbols of DIMS, or sizes), numpy dtype and meaning."""

    dims: tuple[str | int, ...]
    dtype: str
    meaning: str
    required: bool = True  # False: provenance that readers may ignore

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape, given the size of each symbolic dim."""
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)


DIMS = {
    "N": "samples in the file",
    "K": "S2 frames per stack (curate.n_frames)",
    "h": "S2 patch height = width, px (curate.lr_patch_px); `w` likewise",
    "H": "label patch height = width, px (h * source.scale); `W` likewise",
    "P": "label pixels drawn per sample (curate.pixels_per_sample)",
    "S": "noise scores (quality.SCORE_NAMES, also the file attribute `score_names`)",
    "M": "clear S2 pixels drawn per tile (at most curate.pixels_per_tile)",
    "L": "label frames of the tile",
    "B": "label blue pixels drawn per frame (at most tile.BLUE_SAMPLE_PX)",
}
_DATES = "ISO dates (YYYY-MM-DD)"

# `curation/tiles/<tile>.h5`, the curate map's raw samples (unnormalised) and the pixels the reduce's statistics need
TILE_FIELDS = {
    "lr": Field(("N", "K", 4, "h", "w"), "float32", "S2 stack in S2 units, chronological, zero after the last frame"),
    "lr_mask": Field(("N", "K", "h", "w"), "bool", "True = valid and cloud-free S2 pixel (False for padding)"),
    "hr": Field(("N", 4, "H", "W"), "float32", "the label histogram-matched to S2 (S2 units)"),
    "hr_unmatched": Field(("N", 4, "H", "W"), "float32", "the label in its own units"),
    "hr_mask": Field(("N", "H", "W"), "bool", "True = valid and cloud-free label pixel"),
    "scores": Field(("N", "S"), "float32", "noise filter scores of the label against its S2 reference"),
    "yx": Field(("N", 2), "int32", "S2-pixel (row, column) of the patch's top-left corner in the tile"),
    "hr_pixels": Field(("N", "P", 4), "float32", "random pixels of `hr`, for the reduce's label percentiles"),
    "lr_dates": Field(("N", "K"), "S10", f"{_DATES} of the stack's frames, '' = padding"),
    "hr_date": Field(("N",), "S10", f"{_DATES} of the label"),
    "ref_date": Field(("N",), "S10", f"{_DATES} of the S2 frame closest to the label (scores, histogram matching)"),
    "lr_pixels": Field(("M", 4), "float32", "random clear pixels of the kept S2 frames, for the region factors"),
    "vhr_blue": Field(("L", "B"), "float32", "random label blue values per frame, for the cloud-threshold plots"),
}
TILE_ATTRS = {"score_names": "comma-separated names of the `scores` columns"}

# `datasets/<split>-NNN.h5`, the reduce's shards: kept samples, normalised to [0, 1] (see reduce.py for the units)
SHARD_FIELDS = {
    "lr": Field(("N", "K", 4, "h", "w"), "float32", "S2 stack in [0, 1], zero after the last frame"),
    "lr_mask": Field(("N", "K", "h", "w"), "bool", "True = valid and cloud-free S2 pixel (False for padding)"),
    "hr": Field(("N", 4, "H", "W"), "float32", "the label matched to S2, in [0, 1]"),
    "hr_mask": Field(("N", "H", "W"), "bool", "True = valid and cloud-free label pixel"),
    "tile_id": Field(("N",), "S", "the tile the sample comes from"),
    "hr_date": Field(("N",), "S10", f"{_DATES} of the label"),
    "lr_dates": Field(("N", "K"), "S10", f"{_DATES} of the stack's frames, '' = padding"),
    "hr_unmatched": Field(("N", 4, "H", "W"), "float32", "the label before histogram matching, in [0, 1]", False),
    "ref_date": Field(("N",), "S10", f"{_DATES} of the S2 frame the label was matched to", False),
    "yx": Field(("N", 2), "int32", "S2-pixel (row, column) of the patch's top-left corner in the tile", False),
    "scores": Field(("N", "S"), "float32", "the noise filter's scores", False),
}
SHARD_ATTRS = {
    "bands": "comma-separated band names (B02, B03, B04, B08)",
    "scale": "label pixels per S2 pixel (source.scale)",
    "lr_resolution_m": "S2 pixel size, m",
    "score_names": "comma-separated names of the `scores` columns",
    "split": "train, val or test",
}

KEYS = tuple(k for k, f in SHARD_FIELDS.items() if f.required)  # the contract train/evaluate read
EXTRA_KEYS = tuple(k for k, f in SHARD_FIELDS.items() if not f.required)  # provenance; optional for readers


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
                    # fletcher32: a checksum per chunk, so a flipped bit fails the read instead of training on it
                    chunks = (1, *part.shape[1:])
                    f.create_dataset(key, data=part, chunks=chunks, compression="lzf", fletcher32=True)
            f.attrs.update(self.attrs)
        self.buffer = {k: [v[n:]] for k, v in joined.items()}
        self.pending -= n
        self.written += n
        self.shards += 1


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn h5py's errors on a truncated or corrupt shard (OSError, KeyError) into one naming it and the fix."""
    try:
        yield
    except (OSError, KeyError) as exc:
        raise StageError(
            f"HDF5 shard {path} is corrupt or truncated ({type(exc).__name__}: {exc}); rebuild the shards: delete "
            "_state/curate-reduce/all.done and re-run `srpipe curate --reduce-only`"
        ) from exc


def iter_samples(paths: Iterable[Path]) -> Iterable[dict[str, np.ndarray]]:
    """Whole shards as dicts of arrays (for evaluation and tests)."""
    for path in paths:
        with _reading(path), h5py.File(path, "r") as f:
            samples = {k: f[k][()] for k in KEYS}
        yield samples


def count_samples(paths: Iterable[Path]) -> int:
    """How many samples the shards hold (from their metadata, no data read)."""
    total = 0
    for path in paths:
        with _reading(path), h5py.File(path, "r") as f:
            total += len(f["lr"])
    return total


class ShardDataset(Dataset):
    """Samples of a list of shards as tensors; each worker opens the files itself (h5py handles do not fork)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.index: list[tuple[int, int]] = []
        for i, path in enumerate(self.paths):
            with _reading(path), h5py.File(path, "r") as f:
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
        with _reading(self.paths[i]):
            f = self._file(i)
            return {key: torch.from_numpy(f[key][j]) for key in ("lr", "lr_mask", "hr", "hr_mask")}

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "index": self.index, "_files": {}}
