"""lad_hf: Label Assisted Distillation for semantic segmentation on the Hugging Face stack.

dataset → transforms → batch → trainer (noiser → teacher) → losses → metrics → export

Names are imported lazily, so `import lad_hf` does not pay for transformers.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LADError": "errors",
    "LabelNoiser": "noising", "LabelNoiseArguments": "noising",
    "LOSSES": "losses", "ChannelWiseDivergence": "losses", "PixelWiseKL": "losses", "LogitMSE": "losses",
    "build_loss": "losses", "segmentation_loss": "losses",
    "ModelArguments": "models", "add_label_channel": "models", "build_model": "models", "is_label_assisted": "models",
    "DataArguments": "data",
    "StreamingMeanIoU": "metrics", "mean_pairwise_kl": "metrics", "teacher_stability": "metrics",
    "SegmentationConfig": "trainers", "SegmentationTrainer": "trainers",
    "LADTeacherConfig": "trainers", "LADTeacherTrainer": "trainers",
    "LADDistillationConfig": "trainers", "LADDistillationTrainer": "trainers",
    "export_model": "export", "push_folder": "export",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lad_hf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
