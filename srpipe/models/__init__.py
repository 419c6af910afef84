"""Networks: HighRes-Net (multi-frame SR), ShiftNet (registration at the loss), the field-delineation net."""

from srpipe.models.delineation import DelineationNet
from srpipe.models.highresnet import HighResNet, build_model
from srpipe.models.shiftnet import ShiftNet

__all__ = ["DelineationNet", "HighResNet", "ShiftNet", "build_model"]
