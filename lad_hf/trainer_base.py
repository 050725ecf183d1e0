"""What both LAD trainers share: the segmentation loss, streaming evaluation, loss-part logging, noiser state."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from .errors import LADError
from .metrics import StreamingMeanIoU, confusion_matrix_per_sample
from .modeling import check_pixel_values, segmentation_logits
from .noising import LabelNoiser, check_labels

NOISER_STATE = "noiser_rng_state_{rank}.safetensors"


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of logits [N,K,h,w] to the label size (SegFormer predicts at 1/4 resolution)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy (float32) of logits upsampled to the label size, mean over non-ignored pixels.

    A batch with no valid pixel gives 0 rather than NaN.
    """
    logits = upsample(logits.float(), labels.shape[-2:])
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


class _NoiserStateCallback(TrainerCallback):
    """Saves the label noiser's generator state next to each checkpoint (safetensors, one file per process)."""

    def __init__(self, trainer: "LADTrainerBase"):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        self.trainer.save_noiser_state(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


class LADTrainerBase(Trainer):
    """Base for the LAD trainers: subclasses implement ``compute_loss`` and ``eval_forward``."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, num_labels: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.model.config if hasattr(self.model, "config") else None
        self.num_labels = num_labels or cfg.num_labels
        self.id2label = {int(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()} or None
        self.metric = StreamingMeanIoU(self.num_labels, ignore_index=self.args.ignore_index, id2label=self.id2label)
        self._parts: Dict[str, list] = defaultdict(list)
        self._eval_extra: Dict[str, list] = defaultdict(list)
        self.noiser: Optional[LabelNoiser] = None
        self.add_callback(_NoiserStateCallback(self))

    # -- noise ----------------------------------------------------------------------------------------------------
    def make_noiser(self, fixed_alpha=None) -> LabelNoiser:
        """A noiser with its own generator, seeded per process so each process draws independent noise."""
        a = self.args
        gen = torch.Generator(device=a.device).manual_seed(a.seed * 1_000_003 + a.process_index)
        return LabelNoiser(self.num_labels, sigma=a.label_sigma, class_noise=a.class_noise, pixel_noise=a.pixel_noise,
                           ignore_index=a.ignore_index, ignore_mode=a.ignore_mode, generator=gen,
                           fixed_alpha=fixed_alpha, validate=False)

    def eval_noiser(self) -> LabelNoiser:
        """Same options, seeded identically at every evaluation so eval numbers are comparable across runs."""
        n = self.make_noiser(fixed_alpha=self.noiser.fixed_alpha if self.noiser is not None else None)
        n.generator.manual_seed(self.args.seed + 7919 * (self.args.process_index + 1))
        return n

    def save_noiser_state(self, folder: str) -> None:
        if self.noiser is None or self.noiser.generator is None or not os.path.isdir(folder):
            return
        from safetensors.torch import save_file

        save_file({"state": self.noiser.get_state()}, os.path.join(folder, NOISER_STATE.format(rank=self.args.process_index)))

    def load_noiser_state(self, folder: str) -> None:
        path = os.path.join(folder, NOISER_STATE.format(rank=self.args.process_index))
        if self.noiser is not None and os.path.isfile(path):
            from safetensors.torch import load_file

            self.noiser.set_state(load_file(path)["state"])

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint is not None:
            from transformers.trainer_utils import get_last_checkpoint

            if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise LADError(f"--resume_from_checkpoint: no checkpoint-* folder in {self.args.output_dir}")
            if resume_from_checkpoint and not os.path.isdir(resume_from_checkpoint):
                raise LADError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a folder")
            if resume_from_checkpoint:
                self.load_noiser_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    # -- losses ---------------------------------------------------------------------------------------------------
    def check_batch(self, model, pixel_values: torch.Tensor, labels: torch.Tensor, channels: int) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            check_pixel_values(self.accelerator.unwrap_model(model), pixel_values)
        if labels.shape[0] != pixel_values.shape[0] or labels.shape[-2:] != pixel_values.shape[-2:]:
            raise LADError(
                f"image batch {tuple(pixel_values.shape)} and label batch {tuple(labels.shape)} differ in size; "
                "every mask must have its image's height and width"
            )
        if self.args.validate_labels:
            check_labels(labels, self.num_labels, self.args.ignore_index)

    def seg_loss(self, logits, labels):
        return segmentation_loss(logits, labels, self.args.ignore_index)

    def record(self, **parts: torch.Tensor) -> None:
        """Keep loss parts to log them separately (averaged over the logging interval)."""
        prefix = "" if self.model.training else "eval_"
        for k, v in parts.items():
            self._parts[prefix + k].append(v.detach().float())

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        is_eval = any(k.startswith("eval_") for k in logs)
        keys = [k for k in self._parts if k.startswith("eval_") == is_eval]
        if keys:
            vals = torch.stack([torch.stack(self._parts[k]).mean() for k in keys])
            if self.args.world_size > 1:
                vals = self.accelerator.reduce(vals.to(self.args.device), reduction="mean")
            for k, v in zip(keys, vals.tolist()):
                logs[k] = round(v, 6)
                del self._parts[k]
        super().log(logs, start_time)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def eval_forward(self, model, inputs):
        """Return (loss, logits, per-sample extra metrics dict) for one evaluation batch."""
        raise NotImplementedError

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, logits, extra = self.eval_forward(model, inputs)
        logits = upsample(logits.float(), labels.shape[-2:])
        cm = confusion_matrix_per_sample(logits.argmax(1), labels, self.num_labels, self.args.ignore_index)
        # gather per-sample matrices: duplicates padded in by distributed sampling are dropped, then summed
        cm = self.accelerator.gather_for_metrics(cm)
        self.metric.add_confusion(cm.sum(0))
        for k, v in extra.items():
            self._eval_extra[k].append(self.accelerator.gather_for_metrics(v.detach().float()).cpu())
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        self.metric.reset()
        self._eval_extra.clear()
        self.on_evaluation_start()
        out = super().evaluation_loop(dataloader, description, prediction_loss_only=True, ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix)
        metrics = self.metric.named_metrics(prefix=f"{metric_key_prefix}_")
        for k, vals in self._eval_extra.items():
            metrics[f"{metric_key_prefix}_{k}"] = torch.cat(vals).mean().item()
        out.metrics.update(metrics)
        return out

    def on_evaluation_start(self) -> None:
        """Hook: e.g. reseed the evaluation noise."""
