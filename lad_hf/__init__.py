"""lad_hf: Label Assisted Distillation for semantic segmentation on the Hugging Face stack.

dataset → transforms → batch → trainer (noiser → teacher) → losses → metrics → export
"""

__version__ = "0.1.0"

from .errors import LADError
from .noising import LabelNoiser
from .losses import LOSSES, ChannelWiseDivergence, LogitMSE, PixelWiseKL, build_loss
from .modeling import ModelArguments, add_label_channel, build_model, is_label_assisted
from .metrics import StreamingMeanIoU
from .stability import mean_pairwise_kl, teacher_stability
from .segmentation_trainer import SegmentationConfig, SegmentationTrainer
from .teacher_trainer import LADTeacherConfig, LADTeacherTrainer
from .distillation_trainer import LADDistillationConfig, LADDistillationTrainer

__all__ = [
    "LADError", "LabelNoiser", "LOSSES", "ChannelWiseDivergence", "PixelWiseKL", "LogitMSE", "build_loss",
    "ModelArguments", "add_label_channel", "build_model", "is_label_assisted", "StreamingMeanIoU",
    "mean_pairwise_kl", "teacher_stability", "LADTeacherConfig", "LADTeacherTrainer",
    "LADDistillationConfig", "LADDistillationTrainer", "SegmentationConfig", "SegmentationTrainer",
]
