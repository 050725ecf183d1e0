"""Models: building (`builder`), the label channel (`label_channel`), DINOv2 students (`dinov2`), LoRA (`lora`).

Importing this package registers the DINOv2 builder in `builder.BUILDERS`.
"""

from .builder import BUILDERS, ModelArguments, build_model, load_image_processor, register_builder
from .label_channel import add_label_channel, image_channels, is_label_assisted
from . import dinov2  # noqa: E402,F401  (registers the backbone-only builders)

__all__ = ["BUILDERS", "ModelArguments", "add_label_channel", "build_model", "image_channels", "is_label_assisted",
           "load_image_processor", "register_builder"]
