"""LADTeacherConfig + LADTeacherTrainer: train a label-assisted teacher with dual-path consistency (paper Eq. 7).

    L_T = L_seg(T(x, ŷ₁), y) + L_seg(T(x, ŷ₂), y) + λ · D(T(x, ŷ₁), T(x, ŷ₂))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import LADError
from ..inference import segmentation_logits
from ..losses import LOSSES, build_loss
from ..metrics import mean_pairwise_kl
from ..models import is_label_assisted
from ..noising import LabelNoiseArguments
from .base import LADTrainerBase
from .segmentation import SegmentationConfig


@dataclass
class LADTeacherConfig(LabelNoiseArguments, SegmentationConfig):
    r"""
    Configuration for [`LADTeacherTrainer`]. All [`~transformers.TrainingArguments`] apply as well.

    Parameters that control the label noise (see [`LabelNoiseArguments`]; unset ones take the teacher's saved
    setting when evaluating a trained teacher, else the paper's):
        label_sigma (`float`, defaults to `0.01`): σ of the per-pixel noise β.
        class_noise (`bool`, defaults to `True`): per-image, per-class random codes α_k ~ N(0, 1).
        pixel_noise (`bool`, defaults to `True`): add σ·β.
        ignore_mode (`str`, defaults to `"zero"`): ignore pixels get 0 (`"zero"`) or their own code (`"class"`).

    Parameters that control the teacher:
        label_channel_init (`str`, defaults to `"zeros"`): init of the widened stem's label weights (`"zeros"` keeps
            the pretrained function, `"random"` as the reference code).
        label_channel_scale (`float`, defaults to `0.1`): with `"random"`, w_label ~ scale · N(0, std(W_rgb)).
        rgb_dropout (`float`, defaults to `0.0`): during training only, the image channels of a sample are set to 0
            with this probability (both paths), so the teacher must read the label. An extension beyond the paper.
        dual_path (`bool`, defaults to `True`): two noise draws in one forward over the 2N batch (Eq. 7).
        consistency_loss (`str`, defaults to `"cwd"`): distance D between the two paths' logits.
        consistency_weight (`float`, defaults to `1.0`): λ.
        consistency_tau (`float`, defaults to `4.0`): τ of D.
        consistency_symmetric (`bool`, defaults to `True`): D(a, sg(b)) + D(b, sg(a)); else D(a, sg(b)).

    Parameters that control evaluation:
        eval_stability_draws (`int`, defaults to `3`): noise draws per image for the teacher's mKL (0 disables).
        eval_label_gain (`bool`, defaults to `True`): also evaluate (a) with the label channel set to 0:
            `mean_iou_no_label`, `label_gain = mean_iou - mean_iou_no_label`; (b) with another image's label, noised
            the same way (an input like those seen in training): `mean_iou_shuffled_label`,
            `label_gain_shuffled = mean_iou - mean_iou_shuffled_label`. Both are 0 for a teacher ignoring its label.

    Defaults that differ from `TrainingArguments`: as [`SegmentationConfig`].
    """

    # teacher
    label_channel_init: str = field(default="zeros", metadata={"help": "Init of the label-channel weights.", "choices": ["zeros", "random"]})
    label_channel_scale: float = field(
        default=0.1, metadata={"help": "With label_channel_init random: label weights ~ scale * N(0, std of the RGB weights)."}
    )
    rgb_dropout: float = field(
        default=0.0, metadata={"help": "Training only: zero a sample's image channels with this probability (an "
                                       "extension beyond the paper that forces the teacher to read the label)."}
    )
    dual_path: bool = field(default=True, metadata={"help": "Dual-path consistency training (one forward over 2N)."})
    consistency_loss: str = field(default="cwd", metadata={"help": "Consistency distance.", "choices": sorted(LOSSES)})
    consistency_weight: float = field(default=1.0, metadata={"help": "λ, weight of the consistency loss."})
    consistency_tau: float = field(default=4.0, metadata={"help": "Temperature of the consistency loss."})
    consistency_symmetric: bool = field(default=True, metadata={"help": "Consistency in both directions."})
    # evaluation
    eval_stability_draws: int = field(default=3, metadata={"help": "Noise draws for the eval mKL; 0 disables."})
    eval_label_gain: bool = field(
        default=True, metadata={"help": "Also evaluate with the label channel set to 0 (mean_iou_no_label, label_gain) "
                                        "and with another image's noised label (mean_iou_shuffled_label, "
                                        "label_gain_shuffled)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.check_noise()
        if self.consistency_loss not in LOSSES:
            raise LADError(f"--consistency_loss must be one of {sorted(LOSSES)}, got {self.consistency_loss!r}")
        if not 0.0 <= self.rgb_dropout < 1.0:
            raise LADError(f"--rgb_dropout must be in [0, 1), got {self.rgb_dropout}")
        if self.label_channel_scale < 0:
            raise LADError(f"--label_channel_scale must be >= 0, got {self.label_channel_scale}")
        if self.consistency_tau <= 0 or self.consistency_weight < 0:
            raise LADError("--consistency_tau must be > 0 and --consistency_weight >= 0")


def other_labels(labels: torch.Tensor) -> torch.Tensor:
    """Each image gets another image's label: the batch rolled by one, y'_n = y_{n-1}; a batch of one image gets its
    own label rotated by 180° (another layout of the same classes). The control of `label_gain_shuffled`."""
    if labels.shape[0] > 1:
        return labels.roll(1, dims=0)
    return labels.flip(-2, -1)


class LADTeacherTrainer(LADTrainerBase):
    """Trains a label-assisted model (see `add_label_channel`) on `{"pixel_values": [N,3,H,W], "labels": [N,H,W]}`.

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
        # unset noise options: a trained teacher's own settings (evaluation), else the paper's; saved with the
        # teacher so that distillation and evaluation feed the noise it was trained with
        model.config.lad_label_noise = args.resolve_noise(getattr(model.config, "lad_label_noise", None))
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
        if a.rgb_dropout > 0 and model.training:  # x·m, m_n ~ Bernoulli(1 - p): some samples keep only the label
            gen = self.noiser.generator
            keep = torch.rand(x.shape[0], generator=gen, device=gen.device if gen is not None else x.device)
            x = x * (keep >= a.rgb_dropout).to(x.device, x.dtype)[:, None, None, None]
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
        if self.args.eval_label_gain:  # label-use controls: the label channel set to 0, another image's label
            no_label = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
            extra["@no_label"] = self.eval_logits(model, no_label)
            extra["@shuffled"] = self.teacher_logits(model, x, other_labels(y), self._eval_noiser)
        draws = self.args.eval_stability_draws
        if draws >= 2:
            more = [logits] + [self.teacher_logits(model, x, y, self._eval_noiser) for _ in range(draws - 1)]
            extra["mkl"] = 100 * mean_pairwise_kl(torch.stack(more), reduction="none")
        return None, logits, extra
