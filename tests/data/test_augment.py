"""Augmentation: every flip/rotation moves a sample's LR stack, masks and label together."""

import torch
import torch.nn.functional as F

from srpipe.data.augment import dihedral, dihedral_view, self_ensemble, undo_dihedral_view


def _batch(n: int = 64) -> dict[str, torch.Tensor]:
    lr = torch.rand(n, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return {
        "lr": lr,
        "lr_mask": lr[:, :, 0] > 0.5,
        "hr": F.interpolate(lr[:, 0], scale_factor=4, mode="nearest"),  # the label is frame 0, 4x
        "hr_mask": F.interpolate((lr[:, 0, :1] > 0.5).float(), scale_factor=4, mode="nearest")[:, 0] > 0.5,
    }


def test_label_masks_and_frames_stay_aligned_under_every_element():
    out = dihedral(_batch(), torch.Generator().manual_seed(1))
    assert torch.equal(out["hr"], F.interpolate(out["lr"][:, 0], scale_factor=4, mode="nearest"))
    assert torch.equal(out["lr_mask"], out["lr"][:, :, 0] > 0.5)
    assert torch.equal(out["hr_mask"], out["hr"][:, 0] > 0.5)


def test_all_eight_elements_occur_and_none_is_repeated_within_a_sample():
    batch = _batch()
    out = dihedral(batch, torch.Generator().manual_seed(1))
    seen = set()
    for i in range(64):
        frame = batch["lr"][i, 0]
        views = [torch.rot90(f, r, (-2, -1)) for f in (frame, frame.transpose(-2, -1)) for r in range(4)]
        seen.add(next(g for g, v in enumerate(views) if torch.equal(v, out["lr"][i, 0])))
    assert seen == set(range(8))


def test_the_same_seed_draws_the_same_augmentation():
    batch = _batch()
    a = dihedral(batch, torch.Generator().manual_seed(5))
    b = dihedral(batch, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in batch)
    assert torch.equal(batch["lr"], _batch()["lr"])  # the input is left as it was


def test_each_view_is_undone_by_its_inverse_on_non_square_arrays_too():
    x = torch.rand(2, 3, 5, 7)
    for g in range(8):
        assert torch.equal(undo_dihedral_view(dihedral_view(x, g), g), x)


def test_self_ensemble_of_an_equivariant_model_is_the_model_and_otherwise_an_average():
    lr, mask = torch.rand(2, 3, 4, 6, 9), torch.ones(2, 3, 6, 9, dtype=torch.bool)

    def upsample(frames: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # commutes with flips and rotations
        return F.interpolate(frames.mean(1), scale_factor=4, mode="nearest")

    torch.testing.assert_close(self_ensemble(upsample, lr, mask), upsample(lr, mask))

    def ramped(frames: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # brighter to the east: orientation-bound
        up = upsample(frames, m)
        return up * torch.linspace(0, 1, up.shape[-1])

    views = [ramped(lr, mask), ramped(lr.flip(-1), mask.flip(-1)).flip(-1)]  # two of the eight, undone
    averaged = self_ensemble(ramped, lr, mask)
    assert averaged.shape == (2, 4, 24, 36) and not torch.allclose(averaged, views[0])
    # the ramp averages out to a flat 0.5 along each axis: the ensemble equals the plain upsample at half brightness
    torch.testing.assert_close(averaged, 0.5 * upsample(lr, mask))
    assert not torch.allclose(views[0], views[1])
