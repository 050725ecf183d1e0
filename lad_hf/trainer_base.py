"""What both LAD trainers share: the segmentation loss, streaming evaluation, loss-part logging, noiser state."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections import defaultdict
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from .errors import LADError
from .metrics import StreamingMeanIoU, confusion_matrix_per_sample
from .modeling import is_label_assisted, segmentation_logits
from .noising import LabelNoiser, check_labels

logger = logging.getLogger(__name__)

NOISER_STATE = "noiser_rng_state_{rank}.safetensors"
VALIDATE_FIRST_STEPS = 10
# ``--resume_from_checkpoint`` values meaning "the newest complete checkpoint in --output_dir"
RESUME_LAST = ("true", "last", "latest", "yes", "1")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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


def _safetensors_problem(path: str) -> Optional[str]:
    """Why a .safetensors file is unusable (None when its header and size are consistent); reads the header only."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{os.path.basename(path)} is truncated"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{os.path.basename(path)} is truncated"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            return f"{os.path.basename(path)} is truncated ({size} of {8 + n + end} bytes)"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{os.path.basename(path)} is unreadable ({type(e).__name__})"
    return None


def checkpoint_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be resumed from, or None when it is a complete checkpoint.

    transformers writes a checkpoint in place (weights, optimizer, scheduler, RNG states, then ``trainer_state.json``
    last), so a run killed while saving leaves a folder without ``trainer_state.json`` or with truncated weights.
    """
    if not os.path.isdir(folder):
        return "not a folder"
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state):
        return "no trainer_state.json: the run was stopped while saving it"
    try:
        with open(state) as f:
            json.load(f)
    except (OSError, ValueError):
        return "trainer_state.json is unreadable"
    names = os.listdir(folder)
    if any(n.startswith("pytorch_model_fsdp") for n in names):  # FSDP sharded state dict (torch.distributed.checkpoint)
        return None
    index = os.path.join(folder, "model.safetensors.index.json")
    files: List[str] = []
    if os.path.isfile(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            return "model.safetensors.index.json is unreadable"
    else:
        files = [n for n in ("model.safetensors", "adapter_model.safetensors") if n in names]
    if not files:
        return "no model.safetensors (or adapter_model.safetensors)"
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        problem = _safetensors_problem(path)
        if problem:
            return problem
    return None


def last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The newest ``checkpoint-<step>`` folder of ``output_dir`` that :func:`checkpoint_problem` accepts."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(((int(m.group(1)), n) for n in os.listdir(output_dir) if (m := _CHECKPOINT_RE.match(n))), reverse=True)
    for _, name in steps:
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if os.path.isdir(path):
            logger.warning("skipping incomplete checkpoint %s (%s)", path, problem)
    return None


class _NonFiniteGuard(TrainerCallback):
    """Before any log, save or evaluation, stop if a step produced a non-finite loss or gradient norm.

    Runs after the default flow callback, so ``control.should_save`` is already decided: a NaN never reaches disk.
    """

    def __init__(self, trainer: "LADTrainerBase"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop \
                or state.global_step >= state.max_steps:
            self.trainer.check_non_finite(what=" or ".join(self.trainer._bad_what) or "the training loss")


class LADTrainerBase(Trainer):
    """Base for the LAD trainers: subclasses implement ``compute_loss`` and ``eval_forward``."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, num_labels: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # compute_loss never uses num_items_in_batch: skip the Trainer's per-step label count (and its gather)
        self.model_accepts_loss_kwargs = False
        cfg = self.model.config if hasattr(self.model, "config") else None
        self.num_labels = num_labels or cfg.num_labels
        self.id2label = {int(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()} or None
        self.metric = StreamingMeanIoU(self.num_labels, ignore_index=self.args.ignore_index, id2label=self.id2label)
        self._parts: Dict[str, tuple] = {}
        self._eval_extra: Dict[str, list] = defaultdict(list)
        self.noiser: Optional[LabelNoiser] = None
        # non-finite loss/gradient guard: checked on the host only at log/save/eval steps on accelerators
        self._first_bad: Optional[torch.Tensor] = None
        self._bad_what: Dict[str, None] = {}
        self.add_callback(_NonFiniteGuard(self))

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

    def _save_rng_state(self, output_dir: str) -> None:
        # the noiser's generator is part of the RNG state: written (per process) before trainer_state.json, which
        # transformers writes last, so a checkpoint with trainer_state.json also has the noise state
        super()._save_rng_state(output_dir)
        self.save_noiser_state(output_dir)

    def resolve_checkpoint(self, resume_from_checkpoint):
        """``True``/"true"/"last" -> the newest complete checkpoint; a path -> itself if complete; else LADError."""
        value = resume_from_checkpoint
        if value is None or value is False:
            return None
        if isinstance(value, str) and value.strip().lower() in ("", "false", "none", "no", "0") and not os.path.isdir(value):
            return None
        out = self.args.output_dir
        if value is True or (isinstance(value, str) and value.strip().lower() in RESUME_LAST and not os.path.isdir(value)):
            path = last_complete_checkpoint(out)
            if path is None:
                raise LADError(f"--resume_from_checkpoint: no complete checkpoint-* folder in {out}; start without it")
            logger.info("resuming from %s", path)
            return path
        value = str(value)
        if not os.path.isdir(value):
            raise LADError(f"--resume_from_checkpoint {value!r} is not a folder; pass a checkpoint-* folder or 'last'")
        problem = checkpoint_problem(value)
        if problem:
            parent = os.path.dirname(os.path.abspath(value))
            good = last_complete_checkpoint(parent)
            hint = f"; resume from {good} (or pass 'last')" if good and os.path.abspath(good) != os.path.abspath(value) else ""
            raise LADError(f"checkpoint {value} is incomplete ({problem}){hint}")
        return value

    def _load_converted_weights(self, folder: str, model) -> bool:
        """Load a checkpoint's weights through ``from_pretrained``'s key conversion; False when not applicable.

        transformers' resume and best-model paths call ``model.load_state_dict(raw_file, strict=False)``. Models whose
        weights are renamed on load and reverted on save (SegFormer, DINOv2, ... in transformers 5) then restore
        *no* weight, with only a warning (huggingface/transformers#43701). Here the checkpoint is read by
        ``from_pretrained`` and copied in strictly.
        """
        from transformers import PreTrainedModel

        base = self.accelerator.unwrap_model(model)
        if (not isinstance(base, PreTrainedModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled
                or not any(os.path.isfile(os.path.join(folder, n)) for n in ("model.safetensors", "model.safetensors.index.json"))):
            return False
        dtype = next(base.parameters()).dtype
        loaded = type(base).from_pretrained(folder, config=base.config, dtype=dtype)
        try:
            base.load_state_dict(loaded.state_dict(), strict=True)
        except RuntimeError as e:
            raise LADError(f"checkpoint {folder} does not fit the model: {str(e).splitlines()[0]}") from None
        del loaded
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_converted_weights(resume_from_checkpoint, model if model is not None else self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._load_converted_weights(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def train(self, resume_from_checkpoint=None, **kwargs):
        resume_from_checkpoint = self.resolve_checkpoint(resume_from_checkpoint)
        if resume_from_checkpoint:
            self.load_noiser_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # -- NaN/inf guard --------------------------------------------------------------------------------------------
    def _flag_non_finite(self, value: torch.Tensor, what: str) -> None:
        """Remember (on the device, without a host sync) the first step whose ``value`` is not finite."""
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
        """Evaluation logits: whole image, or sliding windows when ``--eval_window_size`` is set."""
        size = getattr(self.args, "eval_window_size", None)
        if not size:
            return segmentation_logits(model, pixel_values)
        from .inference import sliding_window_logits

        stride = self.args.eval_window_stride or max(1, (2 * size) // 3)
        return sliding_window_logits(lambda crop: segmentation_logits(model, crop), pixel_values, size, stride,
                                     self.num_labels)

    def floating_point_ops(self, inputs) -> int:
        """Skip transformers' per-step FLOP count (a walk over every module; only used for ``total_flos``)."""
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
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            _, logits, extra = self.eval_forward(model, inputs)
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
