"""TRL-style `Config(TrainingArguments)` + `Trainer` pairs.

* `SegmentationConfig` / `SegmentationTrainer`: plain supervised training (baselines, plain KD teachers).
* `LADTeacherConfig` / `LADTeacherTrainer`: the label-assisted teacher, dual-path consistency (Eq. 7).
* `LADDistillationConfig` / `LADDistillationTrainer`: a student distilled from a frozen teacher (Eq. 8).
"""

from .distillation import LADDistillationConfig, LADDistillationTrainer, load_teacher
from .segmentation import SegmentationConfig, SegmentationTrainer
from .teacher import LADTeacherConfig, LADTeacherTrainer

__all__ = ["LADDistillationConfig", "LADDistillationTrainer", "LADTeacherConfig", "LADTeacherTrainer",
           "SegmentationConfig", "SegmentationTrainer", "load_teacher"]
