"""HighRes-Net (Deudon et al. 2020): shared (frame, reference) encoder, recursive pairwise fusion, 4x decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srpipe.config import ModelConfig
from srpipe.models.consistency import Constraint, constrain, latest_frame, match_means


def conv(c_in: int, c_out: int, kernel_size: int, padding: str) -> nn.Conv2d:
    """A 'same'-size convolution; `padding` "replicate" extends edge pixels (zeros would darken SR along edges)."""
    return nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode=padding)


class ResidualBlock(nn.Module):
    """x + conv(prelu(conv(x))): (B, C, h, w) -> (B, C, h, w)."""

    def __init__(self, channels: int, kernel_size: int, padding: str = "zeros") -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, kernel_size, padding),
            nn.PReLU(),
            conv(channels, channels, kernel_size, padding),
            nn.PReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """(B, 2*bands, h, w) frame+reference -> (B, C, h, w) features."""

    def __init__(self, bands: int, channels: int, layers: int, kernel_size: int, padding: str = "zeros") -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv(2 * bands, channels, kernel_size, padding),
            nn.PReLU(),
            *[ResidualBlock(channels, kernel_size, padding) for _ in range(layers)],
            conv(channels, channels, kernel_size, padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RecursiveFusion(nn.Module):
    """Fuse (B, K, C, h, w) frame features pairwise (k with k + K/2) until one remains; missing frames pass through."""

    def __init__(self, channels: int, kernel_size: int, padding: str = "zeros") -> None:
        super().__init__()
        self.fuse = nn.Sequential(
            conv(2 * channels, channels, kernel_size, padding),
            nn.PReLU(),
            ResidualBlock(channels, kernel_size, padding),
        )

    def forward(self, h: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """h (B, K, C, h, w), alive (B, K) float in {0, 1} -> (B, C, h, w)."""
        b, k, c, hh, ww = h.shape
        size = 1 << max(0, (k - 1).bit_length())  # pad K to a power of two with dead frames
        if size != k:
            h = torch.cat([h, h.new_zeros(b, size - k, c, hh, ww)], 1)
            alive = torch.cat([alive, alive.new_zeros(b, size - k)], 1)
        while h.shape[1] > 1:
            half = h.shape[1] // 2
            alice, bob = h[:, :half], h[:, half:]
            a, o = alive[:, :half, None, None, None], alive[:, half:, None, None, None]
            both = alice + self.fuse(torch.cat([alice, bob], 2).flatten(0, 1)).view_as(alice)
            h = a * o * both + a * (1 - o) * alice + (1 - a) * o * bob
            alive = torch.maximum(alive[:, :half], alive[:, half:])
        return h[:, 0]


class Decoder(nn.Module):
    """(B, C, h, w) -> (B, bands, scale*h, scale*w) by pixel shuffle or transposed convolution."""

    def __init__(
        self, channels: int, bands: int, scale: int, upscaler: str, kernel_size: int, padding: str = "zeros"
    ) -> None:
        super().__init__()
        if upscaler == "pixel_shuffle":
            up = [conv(channels, channels * scale * scale, kernel_size, padding), nn.PixelShuffle(scale)]
        else:
            up = [nn.ConvTranspose2d(channels, channels, kernel_size=scale, stride=scale)]
        self.net = nn.Sequential(*up, nn.PReLU(), conv(channels, bands, kernel_size, padding))
        last = self.net[-1]
        with torch.no_grad():  # start near zero: a residual decoder then begins at the bicubic baseline, not noise
            last.weight.mul_(0.01)
            last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def masked_median(lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, bands, h, w) frames and (B, K, h, w) bool clear-pixel mask -> (B, bands, h, w) per-pixel median.

    Pixels clear in no frame fall back to the median over all present frames, then to 0.
    """
    x = lr.masked_fill(~mask[:, :, None], float("nan"))
    med = torch.nanmedian(x, dim=1).values
    fallback = torch.nanmedian(lr.masked_fill((lr == 0).all(2, keepdim=True), float("nan")), dim=1).values
    return torch.nan_to_num(torch.where(torch.isnan(med), fallback, med), nan=0.0)


class HighResNet(nn.Module):
    """Multi-frame SR: (B, K, bands, h, w) frames in [0, 1] + (B, K, h, w) bool masks -> (B, bands, s*h, s*w)."""

    def __init__(self, cfg: ModelConfig, bands: int = 4, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.residual_bicubic = cfg.residual_bicubic
        self.encoder = Encoder(bands, cfg.channels, cfg.encoder_layers, cfg.kernel_size, cfg.padding)
        self.fusion = RecursiveFusion(cfg.channels, cfg.kernel_size, cfg.padding)
        self.decoder = Decoder(cfg.channels, bands, scale, cfg.upscaler, cfg.kernel_size, cfg.padding)
        self.constraint = Constraint.of(cfg, scale)  # the one it is built and trained with; a pass may name another
        if cfg.consistency == "mean":  # mean matching cancels the last bias: frozen, or Adam chases float noise in it
            self.decoder.net[-1].bias.requires_grad_(False)
        # LR-scaled -> label-scaled values per band (data.labelmap.lr_to_hr_map), set by whoever knows the data's scales
        self.register_buffer("lr_gain", torch.ones(bands), persistent=False)
        self.register_buffer("lr_offset", torch.zeros(bands), persistent=False)

    def set_lr_to_hr(self, gain: torch.Tensor, offset: torch.Tensor) -> HighResNet:
        """Use (gain, offset), each (bands,), to put S2 frames in the output's units (the consistency constraint)."""
        self.lr_gain.copy_(gain)
        self.lr_offset.copy_(offset)
        return self

    def forward(self, lr: torch.Tensor, mask: torch.Tensor, constraint: Constraint | None = None) -> torch.Tensor:
        """Frames beyond [0, 1] reach the network clipped (as it was trained) and the constraint as they are.

        `constraint`: the consistency constraint of this pass (default: the one the net was built with).
        """
        constraint = constraint or self.constraint
        b, k, _, h, w = lr.shape
        raw, lr = lr, lr.clamp(0, 1)
        reference = masked_median(lr, mask)
        alive = mask.flatten(2).any(2).to(lr.dtype)  # a frame with no clear pixel is left out of the fusion
        pairs = torch.cat([lr, reference[:, None].expand(-1, k, -1, -1, -1)], 2).flatten(0, 1)
        features = self.encoder(pairs).view(b, k, -1, h, w)
        out = self.decoder(self.fusion(features, alive))
        if self.residual_bicubic:
            out = out + bicubic(reference, self.scale)
        if constraint.mode != "off":
            frame, clear = latest_frame(raw, mask)
            frame = frame * self.lr_gain[:, None, None] + self.lr_offset[:, None, None]
            if constraint.mode == "mean":
                out = match_means(out, frame, clear, self.scale, constraint.psf_sigma_px)
            else:
                out = constrain(out, frame, clear, self.scale, constraint.psf_sigma_px, constraint.regularisation)
        return out


class Constrained(nn.Module):
    """`net` under one constraint: forward(lr, mask) = net(lr, mask, constraint); the shared net is not changed."""

    def __init__(self, net: nn.Module, constraint: Constraint | None) -> None:
        super().__init__()
        self.net, self.constraint = net, constraint

    def forward(self, lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(lr, mask, self.constraint)


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, bands, h, w) -> (B, bands, scale*h, scale*w) bicubic upsampling (the baseline)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def build_model(cfg: ModelConfig, scale: int) -> HighResNet:
    """HighRes-Net for 4 bands at `scale`."""
    return HighResNet(cfg, bands=4, scale=scale)
