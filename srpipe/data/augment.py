"""The eight flips and right-angle rotations (the dihedral group D4): training augmentation and self-ensembling."""

from __future__ import annotations

from collections.abc import Callable

import torch


def dihedral_view(x: torch.Tensor, element: int) -> torch.Tensor:
    """(..., H, W) seen through D4 element 0..7: rotations by 90 x (element % 4) degrees, transposed first from 4 on."""
    if element >= 4:
        x = x.transpose(-2, -1)
    return torch.rot90(x, element % 4, dims=(-2, -1))


def undo_dihedral_view(x: torch.Tensor, element: int) -> torch.Tensor:
    """The inverse of `dihedral_view(., element)`."""
    x = torch.rot90(x, -(element % 4), dims=(-2, -1))
    return x.transpose(-2, -1) if element >= 4 else x


def dihedral(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each sample seen through a random D4 element, alike in all its arrays.

    Every value is (B, ..., H, W) with its own square H = W (LR stack and masks, label and mask); the element is drawn
    per sample from `generator`, so a seeded generator repeats the same augmentation (exact resumes).
    """
    first = next(iter(batch.values()))
    element = torch.randint(0, 8, (first.shape[0],), generator=generator)
    out = {key: value.clone() for key, value in batch.items()}
    for g in element.unique().tolist():
        rows = (element == g).nonzero()[:, 0].to(first.device)
        for key, value in batch.items():
            out[key][rows] = dihedral_view(value[rows], g)
    return out


def self_ensemble(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lr: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean of `net`'s SR over the eight D4 views of (B, K, C, h, w) frames and (B, K, h, w) masks, each view undone.

    For a model trained with D4 augmentation this averages out its orientation-dependent errors (8x the compute).
    """
    return torch.stack(ensemble_views(net, lr, mask)).mean(0)


def ensemble_views(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lr: torch.Tensor, mask: torch.Tensor
) -> list[torch.Tensor]:
    """`net`'s SR of each of the eight D4 views of the input, each view undone (element 0 is the plain pass)."""
    return [undo_dihedral_view(net(dihedral_view(lr, g), dihedral_view(mask, g)), g) for g in range(8)]
