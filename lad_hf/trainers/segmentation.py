"""SegmentationConfig + SegmentationTrainer: plain supervised training (baselines, plain KD teachers, evaluation).

    L = CE(upsample(S(x)), y)   over pixels whose label is not the ignore index
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..errors import LADError
from ..inference import segmentation_logits
from ..models import image_channels, is_label_assisted
from .base import LADTrainerBase


@dataclass
class SegmentationConfig(TrainingArguments):
    r"""
    Configuration for [`SegmentationTrainer`], and the base of the LAD configs.

    Parameters that control the data:
        ignore_index (`int`, defaults to `255`): label value of ignored pixels.
        validate_labels (`bool`, defaults to `True`): check each batch's labels lie in [0, num_labels) or are ignored.

    Parameters that control evaluation:
        eval_window_size, eval_window_stride (`int` or `None`): sliding-window evaluation (None: whole images).
        eval_num_images (`int`, defaults to `4`): panels (image | ground truth | prediction) logged to TensorBoard /
            W&B at each evaluation, when they are in `report_to`; 0 disables.

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False` (the transforms build
    `pixel_values`/`labels` lazily from the raw columns), `label_names=["labels"]`, `logging_steps=10`, `logging_nan_inf_filter=False` (the trainers stop on a
    non-finite loss instead, checked without a per-step host sync on accelerators).
    """

    ignore_index: int = field(default=255, metadata={"help": "Label value of ignored pixels."})
    validate_labels: bool = field(default=True, metadata={"help": "Check every batch's labels are in [0, num_labels) or ignore."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw columns for the lazy transforms."})
    label_names: Optional[list[str]] = field(default_factory=lambda: ["labels"], metadata={"help": "Batch keys holding labels."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X steps (or ratio of total steps if < 1)."})
    eval_window_size: Optional[int] = field(
        default=None, metadata={"help": "Sliding-window evaluation: window side in pixels (None = whole image)."}
    )
    eval_window_stride: Optional[int] = field(
        default=None, metadata={"help": "Sliding-window stride (default: 2/3 of the window)."}
    )
    eval_num_images: int = field(
        default=4, metadata={"help": "Evaluation overlays (image | ground truth | prediction) logged to TensorBoard / "
                                     "W&B at each evaluation when they are in --report_to; 0 disables."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the run already in --output_dir (its checkpoints and final model are "
                                         "removed); without it, a used --output_dir is refused unless resuming."}
    )
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Off: lad_hf stops on a non-finite loss instead (and avoids a host sync per step)."}
    )

    def __post_init__(self):
        check_ranges(self)  # before the devices, the data and the models are set up
        super().__post_init__()

    def __getstate__(self):
        # Pickles of the arguments (transformers' training_args.bin, which push_to_hub uploads) never hold Hub tokens
        # nor local paths (--output_dir, a local teacher ...: "(local)"); the arguments in memory keep them.
        from ..export import LOCAL, is_local_path

        def public(k, v):
            if k.endswith("_token") and isinstance(v, str):
                return None
            # an absolute path anywhere; a relative one only where a path belongs (never an option value like "adamw")
            if is_local_path(v) and (v.startswith(("/", "~")) or k.endswith(_PATH_FIELDS)):
                return LOCAL
            return v

        return {k: public(k, v) for k, v in self.__dict__.items()}

    def __deepcopy__(self, memo):
        # deepcopy keeps the token (only pickles drop it)
        import copy

        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new


_PATH_FIELDS = ("_dir", "_path", "name_or_path", "resume_from_checkpoint", "deepspeed", "run_name", "fsdp_config")


def check_ranges(args) -> None:
    """Values the Trainer would refuse late (after the data loaded) or use silently wrong: one line each, now."""
    import math

    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if int(getattr(args, name)) < 1:
            raise LADError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise LADError(f"--learning_rate must be a finite number > 0, got {args.learning_rate}")
    if not 0 <= int(args.seed) < 2**32:
        raise LADError(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise LADError(f"--max_steps must be > 0 (or -1 to train --num_train_epochs), got {args.max_steps}")


class SegmentationTrainer(LADTrainerBase):
    """Plain segmentation training and streaming-mIoU evaluation of a 3-channel model."""

    def __init__(self, model=None, args: SegmentationConfig = None, **kwargs):
        if not isinstance(args, SegmentationConfig):
            raise LADError(f"{type(self).__name__} needs a SegmentationConfig, got {type(args).__name__}")
        if is_label_assisted(model):
            raise LADError("this model is label-assisted; train/evaluate it with LADTeacherTrainer (lad-hf teacher)")
        super().__init__(model=model, args=args, **kwargs)
        self.image_channels = image_channels(model.config)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        self.check_batch(model, x, y, self.image_channels)
        logits = segmentation_logits(model, x)
        loss = self.seg_loss(logits, y)
        return (loss, {"logits": logits}) if return_outputs else loss

    def eval_forward(self, model, inputs):
        x, y = inputs["pixel_values"], inputs["labels"]
        self.check_batch(model, x, y, self.image_channels)
        logits = self.eval_logits(model, x)
        return None, logits, {}
