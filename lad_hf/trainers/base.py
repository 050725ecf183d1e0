"""What every lad_hf trainer shares: batch checks, loss-part logging, the non-finite guard, streaming evaluation."""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ..data import check_labels
from ..errors import LADError
from ..inference import segmentation_logits
from ..losses import segmentation_loss, upsample
from ..metrics import StreamingMeanIoU, confusion_matrix_per_sample
from ..models import is_label_assisted
from ..noising import LabelNoiser
from .checkpoints import CheckpointMixin, last_complete_checkpoint
from .hub import HubMixin
from .predictions import ClassMapCollector, EvalImagesCallback, wants_eval_images
from .record import TrainingRecordMixin

logger = logging.getLogger(__name__)

VALIDATE_FIRST_STEPS = 10

# label-use controls: extra key of `eval_forward` -> (mIoU metric name, gain metric name); gain = mIoU − control mIoU
LABEL_CONTROLS = {
    "@no_label": ("mean_iou_no_label", "label_gain"),  # the label channel set to 0
    "@shuffled": ("mean_iou_shuffled_label", "label_gain_shuffled"),  # another image's label, noised the same way
}


class _NonFiniteGuard(TrainerCallback):
    """Before any log, save or evaluation, stop if a step produced a non-finite loss or gradient norm.

    Runs after the default flow callback, so `control.should_save` is already decided: a NaN never reaches disk.
    """

    def __init__(self, trainer: "LADTrainerBase"):
        # a weak reference: a strong one makes trainer <-> callback a cycle, so a dropped trainer waits for the cyclic
        # collector and its DataLoader workers time out (5 s each) instead of stopping at once
        self._trainer = weakref.ref(trainer)

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is None:
            return
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop \
                or state.global_step >= state.max_steps:
            trainer.check_non_finite(what=" or ".join(trainer._bad_what) or "the training loss")


class LADTrainerBase(TrainingRecordMixin, HubMixin, CheckpointMixin, Trainer):
    """Base for the LAD trainers: subclasses implement `compute_loss` and `eval_forward`. Each writes its training
    record and lad_hf's model card with the final model (`TrainingRecordMixin`) before a push uploads their public
    copies (`HubMixin`)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, num_labels: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # compute_loss never uses num_items_in_batch: skip the Trainer's per-step label count (and its gather)
        self.model_accepts_loss_kwargs = False
        cfg = self.model.config if hasattr(self.model, "config") else None
        self.num_labels = num_labels or cfg.num_labels
        self.id2label = {int(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()} or None
        self.metric = StreamingMeanIoU(self.num_labels, ignore_index=self.args.ignore_index, id2label=self.id2label)
        self.control_metrics = {k: StreamingMeanIoU(self.num_labels, ignore_index=self.args.ignore_index)
                                for k in LABEL_CONTROLS}
        self._parts: Dict[str, tuple] = {}
        self._eval_extra: Dict[str, list] = defaultdict(list)
        self.noiser: Optional[LabelNoiser] = None
        # non-finite loss/gradient guard: checked on the host only at log/save/eval steps on accelerators
        self._first_bad: Optional[torch.Tensor] = None
        self._bad_what: Dict[str, None] = {}
        self.add_callback(_NonFiniteGuard(self))
        # argmax class maps for predict() / compute_metrics; overlays for TensorBoard / W&B
        self._class_maps = ClassMapCollector()
        self._want_maps = False
        self._eval_images = EvalImagesCallback(self, self.args.eval_num_images) if wants_eval_images(self.args) else None
        if self._eval_images is not None:
            self.add_callback(self._eval_images)

    # -- noise ----------------------------------------------------------------------------------------------------
    def make_noiser(self, fixed_alpha=None) -> LabelNoiser:
        """A noiser from the config's label-noise options with its own generator, seeded per process."""
        a = self.args
        gen = torch.Generator(device=a.device).manual_seed(a.seed * 1_000_003 + a.process_index)
        return LabelNoiser.from_args(a, self.num_labels, generator=gen, fixed_alpha=fixed_alpha)

    def eval_noiser(self) -> LabelNoiser:
        """Same options, seeded identically at every evaluation so eval numbers are comparable across runs."""
        n = self.make_noiser(fixed_alpha=self.noiser.fixed_alpha if self.noiser is not None else None)
        n.generator.manual_seed(self.args.seed + 7919 * (self.args.process_index + 1))
        return n

    def _flag_non_finite(self, value: torch.Tensor, what: str) -> None:
        """Remember (on the device, without a host sync) the first step whose `value` is not finite."""
        bad = ~torch.isfinite(value.detach()).all()
        step = self.state.global_step + 1
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=value.device)
            self._bad_what = {}
        self._bad_what.setdefault(what, None)
        self._first_bad = torch.where(bad & (self._first_bad < 0), torch.full_like(self._first_bad, step), self._first_bad)
        if value.device.type == "cpu":  # no sync to avoid: stop before the optimizer step
            self.check_non_finite(what=what, before_update=True)

    def check_non_finite(self, what: str = "the training loss", before_update: bool = False) -> None:
        """Raise LADError naming the first step with a non-finite loss or gradient norm (all processes together)."""
        if self._first_bad is None:
            return
        first = self._first_bad.clone()
        if self.args.world_size > 1:
            first = self.accelerator.reduce(first.to(self.args.device), reduction="max")
        step = int(first.item())
        if step < 0:
            return
        good = last_complete_checkpoint(self.args.output_dir)
        keep = (f"the last good checkpoint is {good} (resume with --resume_from_checkpoint {good})" if good
                else "no checkpoint was saved before it")
        when = "stopped before updating the weights" if before_update else "stopped before saving"
        raise LADError(
            f"{what} is not finite (nan/inf) at step {step}; {when}, {keep}; lower --learning_rate, "
            "keep --max_grad_norm > 0, or check the data and labels"
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._flag_non_finite(loss, "the training loss")
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # with fp16 loss scaling, inf gradients are expected: the scaler skips that step itself
        if isinstance(grad_norm, torch.Tensor) and getattr(self.accelerator, "scaler", None) is None:
            self._flag_non_finite(grad_norm, "the gradient norm")
        return grad_norm

    # -- losses ---------------------------------------------------------------------------------------------------
    def check_batch(self, model, pixel_values: torch.Tensor, labels: torch.Tensor, channels: int) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            hint = "; the trainer adds the label channel itself" if is_label_assisted(self.accelerator.unwrap_model(model)) else ""
            raise LADError(f"expects {channels} input channels (pixel_values [N, {channels}, H, W]), got {tuple(pixel_values.shape)}{hint}")
        if labels.shape[0] != pixel_values.shape[0] or labels.shape[-2:] != pixel_values.shape[-2:]:
            raise LADError(
                f"image batch {tuple(pixel_values.shape)} and label batch {tuple(labels.shape)} differ in size; "
                "every mask must have its image's height and width"
            )
        # on an accelerator the check costs a host sync: run it for the first steps only (the dataset sample was
        # validated before training and the collator checks every batch in the DataLoader workers)
        if self.args.validate_labels and (labels.device.type == "cpu" or self.state.global_step < VALIDATE_FIRST_STEPS):
            check_labels(labels, self.num_labels, self.args.ignore_index)

    def eval_logits(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """Evaluation logits: whole image, or sliding windows when `--eval_window_size` is set."""
        size = getattr(self.args, "eval_window_size", None)
        if not size:
            return segmentation_logits(model, pixel_values)
        from ..inference import sliding_window_logits

        stride = self.args.eval_window_stride or max(1, (2 * size) // 3)
        return sliding_window_logits(lambda crop: segmentation_logits(model, crop), pixel_values, size, stride,
                                     self.num_labels)

    def floating_point_ops(self, inputs) -> int:
        """Skip transformers' per-step FLOP count (a walk over every module; only used for `total_flos`)."""
        return 0

    def seg_loss(self, logits, labels):
        return segmentation_loss(logits, labels, self.args.ignore_index)

    def record(self, **parts: torch.Tensor) -> None:
        """Keep loss parts to log them separately: a running sum and count per key (no host sync)."""
        prefix = "" if self.model.training else "eval_"
        for k, v in parts.items():
            total, count = self._parts.get(prefix + k, (0.0, 0))
            self._parts[prefix + k] = (total + v.detach().float(), count + 1)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        is_eval = any(k.startswith("eval_") for k in logs)
        keys = [k for k in self._parts if k.startswith("eval_") == is_eval]
        if keys:
            vals = torch.stack([torch.as_tensor(self._parts[k][0] / self._parts[k][1]).float() for k in keys])
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
        """Streaming metrics of one batch; returns only the loss (class maps are collected here, see
        `evaluation_loop`, so the Trainer never holds logits)."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            _, logits, extra = self.eval_forward(model, inputs)
        controls = {k: extra.pop(k) for k in LABEL_CONTROLS if k in extra}
        loss, cm, preds = self._confusion(logits, labels)
        self.metric.add_confusion(cm)
        for k, control_logits in controls.items():
            self.control_metrics[k].add_confusion(self._confusion(control_logits, labels)[1])
        for k, v in extra.items():
            self._eval_extra[k].append(self.accelerator.gather_for_metrics(v.detach().float()).cpu())
        if self._want_maps:
            self._add_class_maps(preds, labels)
        if self._eval_images is not None:
            self._eval_images.keep(inputs["pixel_values"], labels, preds)
        return loss.detach(), None, None

    def _add_class_maps(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        from transformers import EvalPrediction

        p, y = (ClassMapCollector.gather(self.accelerator, t) for t in (preds, labels))
        if self.args.batch_eval_metrics and self.compute_metrics is not None:  # per batch: nothing kept
            last = self.accelerator.gradient_state.end_of_dataloader
            self._batch_metrics = self.compute_metrics(EvalPrediction(predictions=p, label_ids=y), compute_result=last)
        else:
            self._class_maps.add(p, y)

    def _confusion(self, logits: torch.Tensor, labels: torch.Tensor):
        """(mean CE, confusion matrix summed over all processes, argmax class maps) of one batch's logits (refused
        when not finite: the argmax of NaN is class 0, which would score as a prediction)."""
        if not bool(torch.isfinite(logits).all()):
            raise LADError("the model's logits are NaN or infinite on an evaluation batch: its weights are damaged "
                           "(or overflow in this precision); evaluate a healthy checkpoint")
        # one sample at a time: full-resolution float32 logits of the whole batch are never held at once
        ignore = self.args.ignore_index
        preds = torch.empty_like(labels)
        total = logits.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            for i in range(logits.shape[0]):
                up = upsample(logits[i : i + 1].float(), labels.shape[-2:])
                total += F.cross_entropy(up, labels[i : i + 1].long(), ignore_index=ignore, reduction="sum")
                preds[i] = up[0].argmax(0)
        loss = total / (labels != ignore).sum().clamp_min(1)
        cm = confusion_matrix_per_sample(preds, labels, self.num_labels, ignore)
        # gather per-sample matrices: duplicates padded in by distributed sampling are dropped, then summed
        return loss, self.accelerator.gather_for_metrics(cm).sum(0), preds

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """The Trainer's loop for the loss; then the streaming metrics, `@`-prefixed extras, and argmax class maps as
        `predictions` (when `prediction_loss_only` is false) and for `compute_metrics` (`EvalPrediction` of class maps
        and labels, padded with -100; per batch with `batch_eval_metrics`)."""
        if prediction_loss_only is None:
            prediction_loss_only = self.args.prediction_loss_only
        self.metric.reset()
        for m in self.control_metrics.values():
            m.reset()
        self._eval_extra.clear()
        self._class_maps.reset()
        self._batch_metrics = None
        self._want_maps = not prediction_loss_only or self.compute_metrics is not None
        if self._eval_images is not None:
            self._eval_images.reset()
        self.on_evaluation_start()
        out = super().evaluation_loop(dataloader, description, prediction_loss_only=True, ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix)
        metrics = self.metric.named_metrics(prefix=f"{metric_key_prefix}_")
        for k, (miou_name, gain_name) in LABEL_CONTROLS.items():  # label use: gain = mIoU − mIoU of the control
            if self.control_metrics[k].confusion is not None:
                control = self.control_metrics[k].compute()["mean_iou"]
                metrics[f"{metric_key_prefix}_{miou_name}"] = control
                metrics[f"{metric_key_prefix}_{gain_name}"] = metrics[f"{metric_key_prefix}_mean_iou"] - control
        for k, vals in self._eval_extra.items():
            metrics[f"{metric_key_prefix}_{k}"] = torch.cat(vals).mean().item()
        preds, labels = self._class_maps.arrays()
        metrics.update(self._user_metrics(preds, labels, metric_key_prefix))
        self._class_maps.reset()
        out.metrics.update(metrics)
        if not prediction_loss_only:
            out = out._replace(predictions=preds, label_ids=labels)
        return out

    def _user_metrics(self, preds, labels, prefix: str) -> Dict[str, float]:
        """`compute_metrics(EvalPrediction(class maps, labels))`, keys prefixed as the Trainer does."""
        from transformers import EvalPrediction
        from transformers.trainer_utils import denumpify_detensorize

        if self.compute_metrics is None:
            return {}
        if self.args.batch_eval_metrics:
            result = self._batch_metrics or {}
        elif preds is None:
            return {}
        else:
            result = self.compute_metrics(EvalPrediction(predictions=preds, label_ids=labels))
        result = denumpify_detensorize(dict(result or {}))
        return {(k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): v for k, v in result.items()}

    def _evaluate(self, trial, ignore_keys_for_eval, skip_scheduler=False):
        """An evaluation during training that fails on a bad row (beyond the rows checked before training) first
        saves the step's checkpoint, so the training up to it is kept."""
        try:
            return super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler=skip_scheduler)
        except LADError as e:
            if self.state.global_step <= 0 or self.args.save_strategy == "no":
                raise
            self._save_checkpoint(self.model_wrapped, trial)
            folder = f"{self.args.output_dir}/checkpoint-{self.state.global_step}"
            raise LADError(f"{e}; the training up to step {self.state.global_step} is saved in {folder} (fix the data, "
                           f"then --resume_from_checkpoint {folder})") from None

    def on_evaluation_start(self) -> None:
        """Hook: e.g. reseed the evaluation noise."""
