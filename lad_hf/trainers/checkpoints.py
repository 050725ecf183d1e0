"""Checkpoints: which folders are complete, `--resume_from_checkpoint last`, and the noiser's RNG state.

transformers writes a checkpoint in place (weights, optimizer, scheduler, RNG states, then `trainer_state.json`
last), so a run killed while saving leaves a folder that must not be resumed from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import zipfile
import zlib
from typing import List, Optional

from ..errors import LADError

logger = logging.getLogger(__name__)

NOISER_STATE = "noiser_rng_state_{rank}.safetensors"
# `--resume_from_checkpoint` values meaning "the newest complete checkpoint in --output_dir"
RESUME_LAST = ("true", "last", "latest", "yes", "1")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# the training state transformers writes next to the weights (torch.save zip files) and ours (safetensors)
_TRAINING_STATE_RE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
_RNG_STATE_RE = re.compile(r"^rng_state(_\d+)?\.pth$")
_NOISER_STATE_RE = re.compile(r"^noiser_rng_state_\d+\.safetensors$")


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


def _torch_file_problem(path: str) -> Optional[str]:
    """Why a `torch.save` file is unusable (None when whole), checked without unpickling anything.

    `torch.save` writes a zip archive: a truncated file has no end-of-archive record, a damaged one fails the CRC
    of a member. `testzip` reads the members' bytes only (no `pickle`), as much reading as loading the file.
    """
    name = os.path.basename(path)
    try:
        if not zipfile.is_zipfile(path):
            return f"{name} is truncated (not a complete torch.save archive)"
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return f"{name} is not a torch.save archive"
            bad = z.testzip()
            if bad is None:
                unsafe = _unsafe_globals(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
        if bad is not None:
            return f"{name} is corrupt ({bad} fails its CRC check)"
        if unsafe:
            return (f"{name} holds objects a safe load refuses ({unsafe[0]}): it was not written by this training run; "
                    "never load it with weights_only=False unless you trust its source")
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, RuntimeError) as e:
        return f"{name} is unreadable ({type(e).__name__})"
    return None


def _unsafe_globals(pickled: bytes) -> List[str]:
    """The classes/functions a pickle names that `torch.load(weights_only=True)` would refuse (read from its opcodes,
    nothing executed)."""
    import pickletools

    import torch
    from torch._weights_only_unpickler import _get_allowed_globals

    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():  # the numpy objects of transformers' RNG state, allow-listed as transformers loads it
        extra = torch.serialization.get_safe_globals()
    allowed = set(_get_allowed_globals())
    allowed |= {f"{g.__module__}.{g.__qualname__}" for g in extra if hasattr(g, "__qualname__")}
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(pickled):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError) as e:
        return [f"an unreadable pickle ({type(e).__name__})"]
    return [g for g in found if g not in allowed and not g.startswith("torch._utils._rebuild")]


def _training_state_problem(folder: str, names: List[str], sharded: bool) -> Optional[str]:
    """Why the optimizer, scheduler, scaler, RNG or noiser state of a checkpoint is missing or unusable."""
    deepspeed = any(n.startswith("global_step") and os.path.isdir(os.path.join(folder, n)) for n in names)
    # DeepSpeed and FSDP keep the optimizer (and scheduler) in their own layout
    required = [] if deepspeed or sharded else ["optimizer.pt", "scheduler.pt"]
    missing = [n for n in required if n not in names] + ([] if any(map(_RNG_STATE_RE.match, names)) else ["rng_state.pth"])
    if missing:
        return (f"no {missing[0]}: saved with --save_only_model (such checkpoints cannot resume training) or copied "
                "incompletely")
    for name in sorted(names):
        path = os.path.join(folder, name)
        if _TRAINING_STATE_RE.match(name):
            problem = _torch_file_problem(path)
        elif _NOISER_STATE_RE.match(name):
            problem = _safetensors_problem(path)
        else:
            continue
        if problem:
            return problem
    return None


def weights_problem(folder: str) -> Optional[str]:
    """Why the safetensors weights of a model folder (final model or checkpoint) are missing or unusable, else None."""
    names = os.listdir(folder)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
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


def checkpoint_problem(folder: str) -> Optional[str]:
    """Why `folder` cannot be resumed from, or None when it is a complete checkpoint.

    transformers writes a checkpoint in place (weights, optimizer, scheduler, RNG states, then `trainer_state.json`
    last), so a run killed while saving leaves a folder without `trainer_state.json` or with truncated weights; a
    disk that filled up or a copy cut short leaves truncated files. Every file a resume reads is checked: the
    weights (safetensors header against the file size), `optimizer.pt`, `scheduler.pt`, `scaler.pt` and
    `rng_state*.pth` (zip structure and CRCs, nothing unpickled) and the noiser state.
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
        return _training_state_problem(folder, names, sharded=True)
    problem = weights_problem(folder)
    if problem:
        return problem
    return _training_state_problem(folder, names, sharded=False)


def last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The newest `checkpoint-<step>` folder of `output_dir` that `checkpoint_problem` accepts."""
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


def apply_run_settings(optimizer, scheduler, fresh) -> dict:
    """After a resume restored the checkpoint's optimizer/scheduler state: put back this run's hyper-parameters
    (`fresh`: the param groups as this run built them) and, for LambdaLR schedules (all of transformers' step
    schedules), its base rate; the current rate becomes this run's schedule at the restored step. Returns
    {setting: (checkpoint's, applied)} for what changed."""
    from torch.optim.lr_scheduler import LambdaLR

    changed = {}
    for group, new in zip(optimizer.param_groups, fresh):
        for key, value in new.items():
            same = list(group[key]) == list(value) if isinstance(value, (tuple, list)) and key in group else None
            if key != "lr" and key in group and not (same if same is not None else group[key] == value):
                changed.setdefault("learning_rate" if key == "initial_lr" else key, (group[key], value))
                group[key] = value
    if isinstance(scheduler, LambdaLR):
        step, before = scheduler.last_epoch, [g["lr"] for g in optimizer.param_groups]
        scheduler.base_lrs = [g.get("initial_lr", b) for g, b in zip(optimizer.param_groups, scheduler.base_lrs)]
        for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(step)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) for a, b in zip(before, scheduler._last_lr)):
            changed[f"learning rate at step {step}"] = (before[0], scheduler._last_lr[0])
    elif "learning_rate" in changed:
        raise LADError(f"--lr_scheduler_type {type(scheduler).__name__} keeps its own rate on resume: resume with the "
                       "run's --learning_rate, or start a new run")
    return {k: (float(a) if isinstance(a, float) else a, float(b) if isinstance(b, float) else b)
            for k, (a, b) in changed.items()}


class CheckpointMixin:
    """Trainer overrides for complete-checkpoint resume, weight loading through `from_pretrained`, noiser state."""

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
        """`True`/"true"/"last" -> the newest complete checkpoint; a path -> itself if complete; else LADError."""
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
        """Load a checkpoint's weights through `from_pretrained`'s key conversion; False when not applicable.

        transformers' resume and best-model paths call `model.load_state_dict(raw_file, strict=False)`. Models whose
        weights are renamed on load and reverted on save (SegFormer, DINOv2, ... in transformers 5) then restore
        *no* weight, with only a warning (huggingface/transformers#43701). Here the checkpoint is read by
        `from_pretrained` and copied in strictly.
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

    def planned_max_steps(self) -> Optional[int]:
        """The optimizer steps this run trains for (`--max_steps`, else from `--num_train_epochs`); None if unknown."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        if self.train_dataset is None:
            return None
        try:
            return self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]
        except (ValueError, TypeError):  # a dataset without a length
            return None

    def finished_run(self, checkpoint: str):
        """A checkpoint at (or past) the run's last step: nothing to train. Loads its state and returns the TrainOutput.

        transformers would go on training past `max_steps` and, through the final save, overwrite the finished model.
        Here the model gets the checkpoint's weights (the best checkpoint's with `--load_best_model_at_end`) and
        `self.state` its trainer state, so that a following `save_model`/`save_state` rewrites the same model.
        Returns None when the checkpoint is not finished.
        """
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        max_steps = self.planned_max_steps()
        if max_steps is None or state.global_step < max_steps:
            return None
        where = "the last step" if state.global_step == max_steps else f"past the last step {max_steps}"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise LADError(f"{checkpoint} is at step {state.global_step}, {where}: nothing to train; raise --max_steps "
                           "(or --num_train_epochs) to train further")
        logger.warning("%s is at step %d, %s of this run (--max_steps/--num_train_epochs): nothing to train, the model "
                       "is the checkpoint's; raise --max_steps (or --num_train_epochs) to train further",
                       checkpoint, state.global_step, where)
        self._load_from_checkpoint(checkpoint)
        self.state = state
        best = state.best_model_checkpoint
        if self.args.load_best_model_at_end and best and os.path.isdir(best):
            self._load_best_model()
        self.load_noiser_state(checkpoint)
        losses = [h["loss"] for h in state.log_history if isinstance(h.get("loss"), (int, float))]
        loss = float(losses[-1]) if losses else math.nan
        return TrainOutput(state.global_step, loss, {"train_runtime": 0.0, "epoch": state.epoch or 0.0})

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Load the checkpoint's optimizer and scheduler state, then apply this run's settings (`--learning_rate`,
        `--lr_scheduler_type`, `--max_steps`, warmup, weight decay, betas ...) from the restored step, and say so."""
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups] \
            if checkpoint and self.optimizer is not None else None
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except (ValueError, KeyError) as e:
            raise LADError(f"the optimizer state of {checkpoint} does not fit this run's optimizer (--optim "
                           f"{self.args.optim}): {str(e).splitlines()[0]}; resume with the run's own --optim") from None
        if fresh:
            self.resume_changes = apply_run_settings(self.optimizer, self.lr_scheduler, fresh)
            if self.resume_changes:
                shown = "; ".join(f"{k} {old} -> {new}" for k, (old, new) in self.resume_changes.items())
                logger.warning("resuming from %s with changed settings, applied from its step on: %s", checkpoint, shown)

    def train(self, resume_from_checkpoint=None, **kwargs):
        self.resume_changes = {}
        resume_from_checkpoint = self.resolve_checkpoint(resume_from_checkpoint)
        if resume_from_checkpoint:
            done = self.finished_run(resume_from_checkpoint)
            if done is not None:
                return done
            self.load_noiser_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # -- NaN/inf guard --------------------------------------------------------------------------------------------
