"""LADDistillationConfig + LADDistillationTrainer: distil a student from a (label-assisted) teacher (paper Eq. 8).

    L_S = L_seg(S(x), y) + μ · D(S(x), T(x, ŷ)),   ŷ drawn fresh every step; teacher frozen.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from transformers import PreTrainedModel

from ..errors import LADError
from ..inference import segmentation_logits
from ..losses import LOSSES, build_loss
from ..models import image_channels, is_label_assisted
from ..noising import LabelNoiseArguments, reference_fixed_alpha
from .base import LADTrainerBase
from .segmentation import SegmentationConfig


@dataclass
class LADDistillationConfig(LabelNoiseArguments, SegmentationConfig):
    r"""
    Configuration for [`LADDistillationTrainer`]. All [`~transformers.TrainingArguments`] apply as well.

    Parameters that control the model and the teacher model:
        teacher_model_name_or_path (`str` or `None`, defaults to `None`): Hub id or folder of the teacher, used when
            no `teacher_model` object is passed. A 3-channel teacher is used as a conventional KD teacher.
        trust_remote_code (`bool`, defaults to `False`): allow custom code when loading the teacher.

    Parameters that control the distillation:
        distill_loss (`str`, defaults to `"cwd"`): distance D (`"cwd"`, `"kl"`, `"mse"`).
        distill_tau (`float`, defaults to `4.0`): τ of D.
        distill_weight (`float`, defaults to `3.0`): μ.
        fixed_class_encoding (`bool`, defaults to `False`): α_k fixed at (k - c)/10 as the reference code (c the
            middle class, skipped so no class gets the ignore code 0); only the pixel noise is resampled.

    Parameters that control the label noise (see [`LabelNoiseArguments`]): unset options take the settings the
    teacher was trained with (its `config.lad_label_noise`), else the paper's (σ 0.01, class and pixel noise on).

    Defaults that differ from `TrainingArguments`: as [`SegmentationConfig`].
    """

    # model and teacher model
    teacher_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Teacher Hub id or folder."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code when loading the teacher."})
    # distillation
    distill_loss: str = field(default="cwd", metadata={"help": "Distillation distance.", "choices": sorted(LOSSES)})
    distill_tau: float = field(default=4.0, metadata={"help": "Temperature τ of the distillation loss."})
    distill_weight: float = field(default=3.0, metadata={"help": "μ, weight of the distillation loss."})
    fixed_class_encoding: bool = field(default=False, metadata={"help": "Fix α_k as the reference code does."})

    def __post_init__(self):
        super().__post_init__()
        self.check_noise()
        if self.distill_loss not in LOSSES:
            raise LADError(f"--distill_loss must be one of {sorted(LOSSES)}, got {self.distill_loss!r}")
        if self.distill_tau <= 0 or self.distill_weight < 0:
            raise LADError("--distill_tau must be > 0 and --distill_weight >= 0")


logger = logging.getLogger(__name__)


def load_teacher(path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    import os

    from transformers import AutoModelForSemanticSegmentation

    if os.path.isfile(os.path.join(path, "adapter_config.json")):  # a LoRA teacher: its saved base + the adapter
        from ..export import check_weights
        from ..models.lora import load_merged

        check_weights(path, "LoRA teacher")
        try:
            return load_merged(path)
        except LADError as e:
            raise LADError(f"cannot load LoRA teacher {path!r}: {e}") from None
    if os.path.isdir(path):
        from ..export import check_weights

        check_weights(path, "teacher")
    try:
        return AutoModelForSemanticSegmentation.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LADError(f"cannot load teacher {path!r}: {str(e).splitlines()[0]}") from None


class LADDistillationTrainer(LADTrainerBase):
    """`LADDistillationTrainer(model=student, teacher_model=teacher, args=LADDistillationConfig(...), ...)`.

    Loss = CE(S(x), y) + μ·D(S(x), T(x, ŷ)). The teacher is frozen, in eval mode, on the student's device in the
    training precision (a cast copy under bf16/fp16; in fp32 the caller's teacher itself is moved to the device,
    frozen and put in eval mode), never wrapped by DDP and never saved. A label-assisted teacher gets a fresh ŷ every step;
    a 3-channel teacher is a conventional KD teacher T(x).
    """

    def __init__(self, model=None, teacher_model: Union[PreTrainedModel, str, None] = None,
                 args: LADDistillationConfig = None, **kwargs):
        if not isinstance(args, LADDistillationConfig):
            raise LADError(f"LADDistillationTrainer needs args=LADDistillationConfig(...), got {type(args).__name__}")
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher_model is None:
            raise LADError("no teacher: pass teacher_model=... or --teacher_model_name_or_path")
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, args.trust_remote_code)
        student_cfg = model.config
        if is_label_assisted(student_cfg):
            raise LADError("the student must take plain images; it is label-assisted (config.label_assisted=True)")
        if teacher_model.config.num_labels != student_cfg.num_labels:
            raise LADError(
                f"teacher has {teacher_model.config.num_labels} labels, student {student_cfg.num_labels}; "
                "they must share one label set (same id2label)"
            )
        t_names = {int(k): v for k, v in teacher_model.config.id2label.items()}
        s_names = {int(k): v for k, v in student_cfg.id2label.items()}
        if t_names != s_names and not all(v.startswith("LABEL_") for v in list(t_names.values()) + list(s_names.values())):
            diff = [k for k in s_names if t_names.get(k) != s_names[k]][:5]
            raise LADError(f"teacher and student id2label differ (e.g. ids {diff}); distil between models with one label set")
        super().__init__(model=model, args=args, **kwargs)
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        if dtype is not None and next(teacher_model.parameters()).dtype != dtype:
            teacher_model = copy.deepcopy(teacher_model)  # cast a copy: the caller's teacher keeps its precision
        teacher_model.requires_grad_(False)
        self.teacher = teacher_model.to(device=args.device, dtype=dtype).eval()
        self.label_assisted = is_label_assisted(teacher_model)
        if self.label_assisted:  # unset noise options: the teacher's training noise
            trained = getattr(teacher_model.config, "lad_label_noise", None) or {}
            used = args.resolve_noise(trained)
            diff = {k: (trained[k], used[k]) for k in used if k in trained and trained[k] != used[k]}
            if diff:
                logger.warning("distilling with label noise set to differ from the teacher's (teacher, now): %s", diff)
        self.distill = build_loss(args.distill_loss, args.distill_tau)
        if self.label_assisted:
            fixed = reference_fixed_alpha(self.num_labels) if args.fixed_class_encoding else None
            self.noiser = self.make_noiser(fixed_alpha=fixed)
        self.student_channels = image_channels(student_cfg)

    @torch.no_grad()
    def teacher_logits(self, pixel_values, labels) -> torch.Tensor:
        if self.teacher.training:  # a module walk: only when something switched it back (0.45 ms/step saved)
            self.teacher.eval()
        x = self.noiser.assist(pixel_values, labels) if self.label_assisted else pixel_values
        dtype = next(self.teacher.parameters()).dtype
        return segmentation_logits(self.teacher, x.to(dtype))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        self.check_batch(model, x, y, self.student_channels)
        s = segmentation_logits(model, x)
        t = self.teacher_logits(x, y)
        task = self.seg_loss(s, y)
        dist = self.distill(s, t)
        loss = task + self.args.distill_weight * dist
        self.record(task_loss=task, distill_loss=dist)
        return (loss, {"logits": s}) if return_outputs else loss

    def eval_forward(self, model, inputs):
        x, y = inputs["pixel_values"], inputs["labels"]
        self.check_batch(model, x, y, self.student_channels)
        return None, self.eval_logits(model, x), {}
