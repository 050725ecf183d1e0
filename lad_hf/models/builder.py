"""Model building: `ModelArguments`, config overrides, and a `{model_type: builder}` table.

A Hub id or folder gives weights (`--model_name_or_path`); a config or model type builds without weights
(`--config_name` + `--config_overrides`). Backbone-only configs (DINOv2) are built by the builder registered for
their model type (`lad_hf/models/dinov2.py`), so this module knows no model family by name.
"""

from __future__ import annotations

import ast
import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from ..errors import LADError

# model_type -> fn(model_args, config, head_overrides) -> model; for configs that are not a segmentation model
BUILDERS: Dict[str, Callable] = {}
HEAD_PREFIX = "head."


def register_builder(*model_types: str):
    """Decorator: `@register_builder("dinov2")` builds segmenters for configs of these model types."""

    def deco(fn):
        for t in model_types:
            BUILDERS[t] = fn
        return fn

    return deco


def split_head_overrides(model_args):
    """`head.*` keys of `--config_overrides` (a built head's config) apart from the model's own keys."""
    overrides = parse_overrides(model_args.config_overrides)
    head = {k[len(HEAD_PREFIX):]: v for k, v in overrides.items() if k.startswith(HEAD_PREFIX)}
    if not head:
        return model_args, {}
    rest = ",".join(f"{k}={v!r}" for k, v in overrides.items() if not k.startswith(HEAD_PREFIX))
    model_args = copy.copy(model_args)
    model_args.config_overrides = rest or None
    return model_args, head


def parse_overrides(text: Optional[str]) -> Dict[str, object]:
    """`"depths=[1,1,1,1],hidden_sizes=[16,32,64,128],backbone_config.hidden_size=32"` -> dict.

    Values are Python/JSON literals (lists, numbers, bools, strings); commas inside brackets are kept.
    """
    out: Dict[str, object] = {}
    if not text:
        return out
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in filter(None, (p.strip() for p in parts)):
        if "=" not in part:
            raise LADError(f"--config_overrides entry {part!r} is not key=value (example: depths=[1,1,1,1],hidden_sizes=[16,32,64,128])")
        key, raw = (s.strip() for s in part.split("=", 1))
        try:
            val = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            low = raw.lower()
            val = {"true": True, "false": False, "null": None, "none": None}.get(low, raw)
        out[key] = val
    return out


def apply_overrides(config, overrides: Dict[str, object]):
    """Set (possibly dotted, e.g. `backbone_config.hidden_size`) config attributes; unknown keys are an error."""
    for key, val in overrides.items():
        target, attr = config, key
        if "." in key:
            head, attr = key.rsplit(".", 1)
            for part in head.split("."):
                target = getattr(target, part, None)
                if target is None:
                    raise LADError(f"--config_overrides key {key!r}: {type(config).__name__} has no sub-config {part!r}")
        if not hasattr(target, attr):
            raise LADError(f"--config_overrides key {key!r} is not an attribute of {type(target).__name__}")
        setattr(target, attr, val)
    return config


@dataclass
class ModelArguments:
    """Which model to train, as in transformers' semantic-segmentation example."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local folder of a pretrained segmentation model (e.g. nvidia/mit-b0)."}
    )
    config_name: Optional[str] = field(
        default=None,
        metadata={"help": "Build without weights from this config: a Hub id, a local folder/config.json, or a model type (e.g. segformer)."},
    )
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": 'Config overrides, e.g. "depths=[1,1,1,1],hidden_sizes=[16,32,64,128]".'}
    )
    image_processor_name: Optional[str] = field(default=None, metadata={"help": "Image processor id/path (default: the model's)."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token (never logged or saved)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub. Off by default."})
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Re-initialise the head when the checkpoint's label count differs (usual for a new dataset)."}
    )
    attn_implementation: Optional[str] = field(default=None, metadata={"help": "Attention implementation, e.g. sdpa or eager."})
    dinov2_head: str = field(
        default="upernet",
        metadata={"help": "Head put on a backbone-only model (DINOv2): upernet (UperNetForSemanticSegmentation) or dpt "
                          "(DPTForSemanticSegmentation, square inputs).", "choices": ["upernet", "dpt"]},
    )


def _hub_call(fn, what: str, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (the Hub is offline: HF_HUB_OFFLINE=1; use a local folder or build with --config_name)" if offline else ""
        raise LADError(f"cannot load {what}{hint}: {str(e).splitlines()[0]}") from None


def load_config(model_args: ModelArguments, **label_kwargs):
    from transformers import AutoConfig

    common = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
                  trust_remote_code=model_args.trust_remote_code)
    name = model_args.config_name or model_args.model_name_or_path
    if name is None:
        raise LADError("no model given: pass --model_name_or_path (Hub id or folder) or --config_name (e.g. segformer)")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_args.config_name and not os.path.exists(name) and name in CONFIG_MAPPING:
        config = AutoConfig.for_model(name)
    else:
        config = _hub_call(AutoConfig.from_pretrained, f"config {name!r}", name, **common)
    apply_overrides(config, parse_overrides(model_args.config_overrides))
    for k, v in label_kwargs.items():
        setattr(config, k, v)
    return config


def build_model(model_args: ModelArguments, id2label: Optional[Dict[int, str]] = None):
    """A segmentation model from `--model_name_or_path` (weights) or `--config_name` (+ overrides, no weights)."""
    from transformers import AutoModelForSemanticSegmentation

    label_kwargs = {}
    if id2label is not None:
        id2label = {int(k): v for k, v in id2label.items()}
        label_kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model_args, head_overrides = split_head_overrides(model_args)
    config = load_config(model_args, **label_kwargs)
    if config.model_type in BUILDERS:  # e.g. DINOv2: a stock UperNet/DPT segmenter around the backbone
        return BUILDERS[config.model_type](model_args, config, head_overrides)
    if head_overrides:
        raise LADError(f"--config_overrides head.* keys apply to backbone-only models ({', '.join(sorted(BUILDERS))}), "
                       f"not {config.model_type!r}")
    if getattr(config, "use_auxiliary_head", False):
        # UperNet/DPT/BEiT auxiliary FCN heads: lad_hf trains and distils the main logits only, so the auxiliary
        # head would run every step, get no gradient, and break DDP without find_unused_parameters
        config.use_auxiliary_head = False
    extra = {}
    if model_args.attn_implementation:
        extra["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path and not model_args.config_name:
        return _hub_call(
            AutoModelForSemanticSegmentation.from_pretrained, f"model {model_args.model_name_or_path!r}",
            model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir,
            revision=model_args.model_revision, token=model_args.token, trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **extra,
        )
    try:
        return AutoModelForSemanticSegmentation.from_config(config, trust_remote_code=model_args.trust_remote_code, **extra)
    except (ValueError, TypeError, RuntimeError) as e:
        raise LADError(f"cannot build a segmentation model from config {model_args.config_name!r}: {str(e).splitlines()[0]}") from None


def load_image_processor(model_args: ModelArguments):
    """The model's image processor (mean/std, size), or None when the model folder has none."""
    from transformers import AutoImageProcessor

    name = model_args.image_processor_name or model_args.model_name_or_path
    if name is None:
        return None
    try:
        return AutoImageProcessor.from_pretrained(name, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                                                  token=model_args.token, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError):
        return None


def segformer_processor_class():
    """`SegformerImageProcessor` where torchvision is installed, else its PIL twin named directly (transformers'
    own fallback warns about it on every use); older transformers without the PIL twin get the plain class."""
    import transformers
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available() and hasattr(transformers, "SegformerImageProcessorPil"):
        return transformers.SegformerImageProcessorPil
    return transformers.SegformerImageProcessor
