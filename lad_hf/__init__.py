"""lad_hf: Label Assisted Distillation for semantic segmentation on the Hugging Face stack.

dataset → transforms → batch → trainer (noiser → teacher) → losses → metrics → export

Names are imported lazily, so ``python -m lad_hf.scenes`` does not pay for transformers.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LADError": "errors",
    "LabelNoiser": "noising",
    "LOSSES": "losses", "ChannelWiseDivergence": "losses", "PixelWiseKL": "losses", "LogitMSE": "losses",
    "build_loss": "losses",
    "ModelArguments": "modeling", "add_label_channel": "modeling", "build_model": "modeling",
    "is_label_assisted": "modeling",
    "StreamingMeanIoU": "metrics",
    "mean_pairwise_kl": "stability", "teacher_stability": "stability",
    "SegmentationConfig": "segmentation_trainer", "SegmentationTrainer": "segmentation_trainer",
    "LADTeacherConfig": "teacher_trainer", "LADTeacherTrainer": "teacher_trainer",
    "LADDistillationConfig": "distillation_trainer", "LADDistillationTrainer": "distillation_trainer",
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
