"""LoRA students through PEFT: target detection across transformers versions, frozen backbone, merge on export.

Where the base model is named: the adapter (`adapter_config.json`'s `base_model_name_or_path`) and the model card
PEFT writes next to it (`base_model`) name the base model's **Hub id** (`--model_name_or_path` when it is one), never
a local path, so that an output_dir uploaded by `Trainer.push_to_hub` loads anywhere:
`PeftModel.from_pretrained(AutoModelForSemanticSegmentation.from_pretrained(<hub id>, id2label=...), <repo>)`. A
student built from a config (`--config_name`) or from a local folder has no Hub id: `base_model_name_or_path` is then
`null` and the card has no `base_model`. In every case the frozen base weights are also saved in `base_model/`
inside the output_dir (uploaded with it); resume and `lad-hf export` (merge) use that copy first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import torch.nn as nn

from ..errors import LADError
from .constants import ATTENTION_NAME_SETS, ENCODER_ROOTS

# attention projection names, newest first (transformers 5.2x: q_proj/v_proj; older releases: query/value)
BASE_MODEL_DIR = "base_model"


@dataclass
class LoraArguments:
    """LoRA fine-tuning of the student's backbone (PEFT)."""

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on a frozen backbone."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling α (update scaled by α/r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="auto", metadata={"help": "Comma-separated module names, or 'auto' (the attention q/v projections of this transformers version)."}
    )


def linear_module_names(model: nn.Module) -> List[str]:
    """Distinct last-name parts of every nn.Linear in the backbone (the valid LoRA targets)."""
    root = next((getattr(model, r) for r in ENCODER_ROOTS if hasattr(model, r)), model)
    return sorted({n.rsplit(".", 1)[-1] for n, m in root.named_modules() if isinstance(m, nn.Linear)})


def resolve_target_modules(model: nn.Module, spec: str = "auto") -> List[str]:
    """'auto' -> the q/v attention projection names present; explicit names are checked against the model."""
    names = linear_module_names(model)
    if spec in (None, "", "auto"):
        for group in ATTENTION_NAME_SETS:
            if all(g in names for g in group):
                return list(group)
        raise LADError(f"--lora_target_modules auto found no attention projections; linear modules are {names}")
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise LADError(f"--lora_target_modules {missing} not found in the backbone; its linear modules are {names}")
    return wanted


def head_modules(model: nn.Module) -> List[str]:
    """Top-level children outside the backbone (decode/auxiliary heads, necks) plus backbone modules that were newly
    initialised when the pretrained weights were loaded (`model.lad_new_modules`): trained fully and saved."""
    heads = [n for n, m in model.named_children() if n not in ENCODER_ROOTS and any(True for _ in m.parameters())]
    return heads + [n for n in getattr(model, "lad_new_modules", None) or [] if n not in heads]


def _unambiguous(model: nn.Module, names: List[str]) -> List[str]:
    """PEFT matches `modules_to_save` by string suffix: `head` also hits DPT's `head.head` (nested wrappers that
    then fail to load). An ambiguous name is replaced by its children's full paths until every name is unique."""
    keys = [k for k, _ in model.named_modules() if k]
    out: List[str] = []
    todo = list(names)
    while todo:
        name = todo.pop(0)
        clash = [k for k in keys if k != name and k.endswith(name)]
        module = model.get_submodule(name)
        children = [f"{name}.{c}" for c, m in module.named_children() if any(True for _ in m.parameters())]
        if clash and children and not any(True for _ in module.parameters(recurse=False)):
            todo = children + todo
        else:
            out.append(name)
    return out


def apply_lora(model, lora_args: LoraArguments):
    """Wrap `model` in a PeftModel: LoRA on the backbone's attention, heads fully trainable, the rest frozen."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(model, lora_args.lora_target_modules)
    root = next((r for r in ENCODER_ROOTS if hasattr(model, r)), None)
    cfg = LoraConfig(
        r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, lora_dropout=lora_args.lora_dropout,
        target_modules=rf"^{root}\..*\.({'|'.join(targets)})$" if root else targets,
        modules_to_save=_unambiguous(model, head_modules(model)), bias="none",
    )
    return get_peft_model(model, cfg)


def hub_repo_id(value, roots: Iterable[str] = (), allow_single: bool = True) -> Optional[str]:
    """`value` when it names a Hub repo (`user/name`), else None: local paths (absolute, relative, existing under
    the working directory or any of `roots`), empty values and invalid ids are not Hub ids.

    Called while training (the working directory is the one the paths were given in) this is exact. Later (export of an
    old record) a relative path may no longer resolve; `allow_single=False` then also rejects a bare `name`, which is
    as likely a local folder as a legacy Hub id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip()
    if os.path.isabs(v) or v.startswith(("~", ".")) or "\\" in v or v.count("/") > 1 or (not allow_single and "/" not in v):
        return None
    try:
        validate_repo_id(v)
    except HFValidationError:
        return None
    if any(os.path.exists(os.path.join(root, v)) for root in ("", *[r for r in roots if r])):
        return None
    return v


def _hub_safe_model_card(peft_model, hub_id: Optional[str]):
    """PEFT's `create_or_update_model_card` (run by `save_pretrained` and `Trainer.push_to_hub`) writes
    `base_model: <config._name_or_path>` and a `base_model:adapter:<name>` tag: a local path or an empty string there
    makes the Hub refuse the upload. This wrapper keeps PEFT's card but names only the Hub id (or no base model)."""
    original = peft_model.create_or_update_model_card

    def create_or_update_model_card(output_dir: str):
        original(output_dir)
        from huggingface_hub import ModelCard

        path = os.path.join(output_dir, "README.md")
        if not os.path.isfile(path):
            return
        card = ModelCard.load(path)
        if hub_id:
            card.data.base_model = hub_id
        elif "base_model" in card.data:
            card.data.pop("base_model")
        tags = [t for t in (card.data.tags or []) if not str(t).startswith("base_model:")]
        card.data.tags = tags + ([f"base_model:adapter:{hub_id}"] if hub_id else []) or None
        card.save(path)

    return create_or_update_model_card


def _load_base_weights(model, base_dir: str) -> None:
    """On resume, the frozen base must be the one the adapter was trained on (a config-built backbone is random).

    Loaded through `from_pretrained`: transformers 5 may save legacy key names (`attention.attention.query`)
    that differ from the module names (`attention.q_proj`).
    """
    try:
        saved = type(model).from_pretrained(base_dir)
        model.load_state_dict(saved.state_dict(), strict=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise LADError(f"cannot resume on the saved LoRA base model {base_dir!r}: {str(e).splitlines()[0]}") from None


def maybe_apply_lora(model, lora_args: LoraArguments, training_args, base_model_id: Optional[str] = None):
    """Apply LoRA when `--use_lora`; the base weights are saved in `<output_dir>/base_model` so the adapter can be
    merged on export. When resuming (`--resume_from_checkpoint`) the base weights saved by the first run are loaded back.

    `base_model_id`: what the student was built from (`--model_name_or_path`; default: the model's own
    `name_or_path`). Only a Hub id is written into the adapter config and the model card (see the module docstring);
    a local folder or a config-built model gives `base_model_name_or_path: null`.
    """
    if not lora_args.use_lora:
        return model
    resolve_target_modules(model, lora_args.lora_target_modules)  # fail before writing anything
    base_dir = os.path.join(training_args.output_dir, BASE_MODEL_DIR)
    resuming = bool(getattr(training_args, "resume_from_checkpoint", None))
    if resuming and os.path.isdir(base_dir):
        _load_base_weights(model, base_dir)
    elif training_args.process_index == 0:
        model.save_pretrained(base_dir, safe_serialization=True)
    hub_id = hub_repo_id(base_model_id if base_model_id is not None else getattr(model, "name_or_path", None))
    # the Trainer's model card (finetuned_from) and PEFT's (base_model) read config._name_or_path: never a local path
    model.config.name_or_path = model.name_or_path = hub_id or ""
    peft_model = apply_lora(model, lora_args)
    peft_model.peft_config["default"].base_model_name_or_path = hub_id
    peft_model.create_or_update_model_card = _hub_safe_model_card(peft_model, hub_id)
    peft_model.print_trainable_parameters()  # "trainable params: ... || all params: ... || trainable%: ..."
    return peft_model


def load_merged(adapter_dir: str):
    """Base model + adapter from `adapter_dir` -> a plain transformers model with LoRA merged in.

    The base is the saved `adapter_dir/base_model` (always written by training); only without it is the adapter
    config's `base_model_name_or_path` (a Hub id) loaded.
    """
    import json

    from peft import PeftModel
    from transformers import AutoModelForSemanticSegmentation

    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        base = json.load(f).get("base_model_name_or_path")
    local_base = os.path.join(adapter_dir, BASE_MODEL_DIR)
    if os.path.isdir(local_base):
        base = local_base
    if not base:
        raise LADError(f"{adapter_dir!r}: adapter_config.json names no base model")
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise LADError(f"cannot load the LoRA base model {base!r}: {str(e).splitlines()[0]}") from None
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
