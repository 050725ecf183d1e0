"""LADTeacherConfig + LADTeacherTrainer: train a label-assisted teacher with dual-path consistency (paper Eq. 7).

    L_T = L_seg(T(x, ŷ₁), y) + L_seg(T(x, ŷ₂), y) + λ · D(T(x, ŷ₁), T(x, ŷ₂))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .errors import LADError
from .losses import LOSSES, build_loss
from .stability import mean_pairwise_kl
from .modeling import is_label_assisted, segmentation_logits
from .noising import IGNORE_MODES
from .segmentation_trainer import SegmentationConfig
from .trainer_base import LADTrainerBase


@dataclass
class LabelNoiseArguments:
    """Label noising options shared by both configs (paper Eq. 5)."""

    label_sigma: float = field(default=0.01, metadata={"help": "σ of the per-pixel noise added to the label channel."})
    class_noise: bool = field(default=True, metadata={"help": "Random per-class codes α_k ~ N(0,1); False feeds the clean label (shortcut ablation)."})
    pixel_noise: bool = field(default=True, metadata={"help": "Add σ·β per-pixel noise."})
    ignore_mode: str = field(default="zero", metadata={"help": "Label-channel value of ignore pixels.", "choices": list(IGNORE_MODES)})

    def _check_noise(self):
        if self.label_sigma < 0:
            raise LADError(f"--label_sigma must be >= 0, got {self.label_sigma}")
        if self.ignore_mode not in IGNORE_MODES:
            raise LADError(f"--ignore_mode must be one of {list(IGNORE_MODES)}, got {self.ignore_mode!r}")


@dataclass
class LADTeacherConfig(LabelNoiseArguments, SegmentationConfig):
    r"""
    Configuration for [`LADTeacherTrainer`]. All [`~transformers.TrainingArguments`] apply as well.

    Parameters that control the label noise:
        label_sigma (`float`, defaults to `0.01`): σ of the per-pixel noise β.
        class_noise (`bool`, defaults to `True`): per-image, per-class random codes α_k ~ N(0, 1).
        pixel_noise (`bool`, defaults to `True`): add σ·β.
        ignore_mode (`str`, defaults to `"zero"`): ignore pixels get 0 (`"zero"`) or their own code (`"class"`).
        ignore_index (`int`, defaults to `255`): label value of ignored pixels.

    Parameters that control the teacher:
        label_channel_init (`str`, defaults to `"zeros"`): init of the widened stem's label weights (`"zeros"` keeps
            the pretrained function, `"random"` as the reference code).
        dual_path (`bool`, defaults to `True`): two noise draws in one forward over the 2N batch (Eq. 7).
        consistency_loss (`str`, defaults to `"cwd"`): distance D between the two paths' logits.
        consistency_weight (`float`, defaults to `1.0`): λ.
        consistency_tau (`float`, defaults to `4.0`): τ of D.
        consistency_symmetric (`bool`, defaults to `True`): D(a, sg(b)) + D(b, sg(a)); else D(a, sg(b)).

    Parameters that control evaluation:
        eval_stability_draws (`int`, defaults to `3`): noise draws per image for the teacher's mKL (0 disables).

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False` (the transforms build
    `pixel_values`/`labels` lazily), `label_names=["labels"]`, `logging_steps=10`.
    """

    label_channel_init: str = field(default="zeros", metadata={"help": "Init of the label-channel weights.", "choices": ["zeros", "random"]})
    dual_path: bool = field(default=True, metadata={"help": "Dual-path consistency training (one forward over 2N)."})
    consistency_loss: str = field(default="cwd", metadata={"help": "Consistency distance.", "choices": sorted(LOSSES)})
    consistency_weight: float = field(default=1.0, metadata={"help": "λ, weight of the consistency loss."})
    consistency_tau: float = field(default=4.0, metadata={"help": "Temperature of the consistency loss."})
    consistency_symmetric: bool = field(default=True, metadata={"help": "Consistency in both directions."})
    eval_stability_draws: int = field(default=3, metadata={"help": "Noise draws for the eval mKL; 0 disables."})

    def __post_init__(self):
        super().__post_init__()
        self._check_noise()
        if self.consistency_loss not in LOSSES:
            raise LADError(f"--consistency_loss must be one of {sorted(LOSSES)}, got {self.consistency_loss!r}")
        if self.consistency_tau <= 0 or self.consistency_weight < 0:
            raise LADError("--consistency_tau must be > 0 and --consistency_weight >= 0")


class LADTeacherTrainer(LADTrainerBase):
    """Trains a label-assisted model (see ``add_label_channel``) on ``{"pixel_values": [N,3,H,W], "labels": [N,H,W]}``.

    Dual path (default): ŷ₁, ŷ₂ drawn independently, ONE forward over [x;ŷ₁] ⊕ [x;ŷ₂] (2N images), then
    L = CE(path 1) + CE(path 2) + λ·D(path 1, path 2). Evaluation feeds a seeded noise draw and reports mIoU and mKL.
    """

    def __init__(self, model=None, args: LADTeacherConfig = None, **kwargs):
        if args is None:
            raise LADError("LADTeacherTrainer needs args=LADTeacherConfig(...)")
        if not isinstance(args, LADTeacherConfig):
            raise LADError(f"LADTeacherTrainer needs a LADTeacherConfig, got {type(args).__name__}")
        if model is None or not is_label_assisted(model):
            raise LADError("the teacher must be label-assisted: call lad_hf.add_label_channel(model) first")
        super().__init__(model=model, args=args, **kwargs)
        # saved with the teacher, so distillation and evaluation can check they feed the same kind of noise
        model.config.lad_label_noise = {k: getattr(args, k) for k in ("label_sigma", "class_noise", "pixel_noise", "ignore_mode")}
        self.noiser = self.make_noiser()
        self.consistency = build_loss(args.consistency_loss, args.consistency_tau)
        self.image_channels = model.config.label_assisted_image_channels

    def teacher_logits(self, model, pixel_values, labels, noiser):
        x = noiser.assist(pixel_values, labels)
        return segmentation_logits(model, x) if model.training else self.eval_logits(model, x)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        self.check_batch(model, x, y, self.image_channels)
        a = self.args
        if not a.dual_path:
            logits = self.teacher_logits(model, x, y, self.noiser)
            loss = self.seg_loss(logits, y)
            self.record(seg_loss=loss)
            return (loss, {"logits": logits}) if return_outputs else loss
        n = x.shape[0]
        # one forward over both paths; the noiser draws α per image, so the two halves are independent draws
        logits = self.teacher_logits(model, torch.cat([x, x]), torch.cat([y, y]), self.noiser)
        l1, l2 = logits[:n], logits[n:]
        seg = self.seg_loss(l1, y) + self.seg_loss(l2, y)
        cons = self.consistency(l1, l2)
        if a.consistency_symmetric:
            cons = cons + self.consistency(l2, l1)
        loss = seg + a.consistency_weight * cons
        self.record(seg_loss=seg / 2, consistency_loss=cons)
        return (loss, {"logits": l1}) if return_outputs else loss

    def on_evaluation_start(self):
        self._eval_noiser = self.eval_noiser()

    def eval_forward(self, model, inputs):
        x, y = inputs["pixel_values"], inputs["labels"]
        self.check_batch(model, x, y, self.image_channels)
        logits = self.teacher_logits(model, x, y, self._eval_noiser)
        extra = {}
        draws = self.args.eval_stability_draws
        if draws >= 2:
            more = [logits] + [self.teacher_logits(model, x, y, self._eval_noiser) for _ in range(draws - 1)]
            extra["mkl"] = 100 * mean_pairwise_kl(torch.stack(more), reduction="none")
        return None, logits, extra
