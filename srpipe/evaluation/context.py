"""What evaluate and `evaluation/` share: the scoring context (config, model, LR -> label map, crop, tuned baseline),
the test samples' scores and kept images, the samples in batches, and the baselines' images."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch

from srpipe.config import Config
from srpipe.data.labelmap import lr_to_hr_map
from srpipe.data.shards import iter_samples
from srpipe.evaluation import baselines as bl
from srpipe.metrics import score
from srpipe.models.trained import TrainedModel, load_trained


@dataclasses.dataclass
class Context:
    """What every scoring step reads: the config, the model, the LR -> label map, the crop and the tuned baseline."""

    cfg: Config
    model: TrainedModel
    lr_to_hr: tuple[torch.Tensor, torch.Tensor]
    border: int
    max_shift: int
    unsharp: bl.Unsharp | None = None
    unsharp_val_cpsnr: float = float("nan")

    def score(self, image: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        """(B,) MSE, PSNR, SSIM, cPSNR inside the border crop."""
        return score(image, hr, mask, self.border, self.max_shift)


@dataclasses.dataclass
class Patches:
    """The test samples' score rows, and the images of the first KEEP_IMAGES of them (per method, plus S2 and label)."""

    rows: list[dict] = dataclasses.field(default_factory=list)
    images: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    first: tuple[torch.Tensor, torch.Tensor] | None = None  # the first sample's (1, K, 4, h, w) stack and masks
    interval_maps: list = dataclasses.field(default_factory=list)  # evaluation/intervals.py's samples for its map

    def array(self, name: str) -> np.ndarray:
        """(N, ...) float32 of the kept images of `name`."""
        return torch.cat(self.images[name]).float().numpy()


def batches(paths: list, size: int) -> Iterator[dict]:
    """Samples in batches of `size`: lr, lr_mask, hr, hr_mask as tensors; tile_id, hr_date, lr_dates as str lists."""
    for shard in iter_samples(paths):
        n = len(shard["lr"])
        dates = shard["lr_dates"] if "lr_dates" in shard else np.full(shard["lr_mask"].shape[:2], b"")
        for start in range(0, n, size):
            part = slice(start, start + size)
            yield {
                **{k: torch.from_numpy(np.asarray(shard[k][part])) for k in ("lr", "lr_mask", "hr", "hr_mask")},
                **{k: [v.decode() for v in shard[k][part]] for k in ("tile_id", "hr_date")},
                "lr_dates": [[d.decode() for d in row] for row in dates[part]],
            }


def baseline_images(ctx: Context, lr: torch.Tensor, mask: torch.Tensor, lr_dates: list, hr_dates: list) -> dict:
    """The baselines' (B, 4, H, W) images in label units: `bl.SIMPLE` and the tuned unsharp mask."""
    out = bl.simple_baselines(lr, mask, lr_dates, hr_dates, ctx.model.scale, ctx.lr_to_hr)
    if ctx.unsharp is not None:
        out[bl.UNSHARP] = bl.unsharp(out, ctx.unsharp)
    return out


def load_context(cfg: Config) -> Context:
    """The model, its LR -> label map and the border crop (the training loss's, at least the cPSNR shift)."""
    model = load_trained(cfg)
    gain, offset = lr_to_hr_map(model.lr_scale, model.hr_scale, torch.device("cpu"))
    return Context(cfg, model, (gain, offset), cfg.loss.scored_border_px, cfg.loss.cpsnr_max_shift_px)
