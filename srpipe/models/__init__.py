"""Networks: HighRes-Net (multi-frame super-resolution)."""

from srpipe.models.highresnet import HighResNet, build_model

__all__ = ["HighResNet", "build_model"]
