"""Models: label-assisted widening of any HF segmentation model, and model building from Hub ids or configs."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn as nn

from .errors import LADError

# model_type -> attribute holding the vision stem; the stem's first Conv2d with in_channels == C is widened.
# Backbone-based models (UperNet, DPT with a backbone) resolve through the backbone's own model_type.
STEM_ROOTS: Dict[str, str] = {
    "segformer": "segformer",
    "beit": "beit",
    "data2vec-vision": "data2vec_vision",
    "dpt": "dpt",
    "mobilenet_v2": "mobilenet_v2",
    "mobilevit": "mobilevit",
    "mobilevitv2": "mobilevitv2",
    # backbones (reached through model.backbone)
    "convnext": "backbone",
    "convnextv2": "backbone",
    "swin": "backbone",
    "dinov2": "backbone",
    "dinov2_with_registers": "backbone",
    "resnet": "backbone",
    "vit": "backbone",
    "beit_backbone": "backbone",
}
WRAPPERS_WITH_BACKBONE = ("upernet", "dpt")
LABEL_CHANNEL_INITS = ("zeros", "random")


def _stem_type(model: nn.Module) -> str:
    cfg = model.config
    mt = cfg.model_type
    if mt in WRAPPERS_WITH_BACKBONE and getattr(cfg, "backbone_config", None) is not None and hasattr(model, "backbone"):
        return cfg.backbone_config.model_type
    return mt


def _find_stem(model: nn.Module):
    mt = _stem_type(model)
    if mt not in STEM_ROOTS:
        raise LADError(
            f"add_label_channel does not know model type {mt!r} (model {type(model).__name__}); "
            f"supported: {sorted(STEM_ROOTS)}"
        )
    root = getattr(model, STEM_ROOTS[mt], None)
    if root is None:
        raise LADError(f"model {type(model).__name__} has no attribute {STEM_ROOTS[mt]!r} holding its {mt} stem")
    c = image_channels(model.config)
    for name, mod in root.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == c:
            return root, name, mod
    raise LADError(f"no Conv2d with {c} input channels found in the {mt} stem of {type(model).__name__}")


def image_channels(config) -> int:
    """Input channels the model currently expects (backbone config first, where there is one)."""
    bb = getattr(config, "backbone_config", None)
    if bb is not None and hasattr(bb, "num_channels"):
        return bb.num_channels
    return getattr(config, "num_channels", 3)


def _set_channels(config, c: int) -> None:
    if hasattr(config, "num_channels"):
        config.num_channels = c
    bb = getattr(config, "backbone_config", None)
    if bb is not None and hasattr(bb, "num_channels"):
        bb.num_channels = c


def is_label_assisted(model_or_config) -> bool:
    """True when the model (or config) takes the noised label as an extra input channel."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(cfg, "label_assisted", False))


@torch.no_grad()
def add_label_channel(model: nn.Module, init: str = "zeros", scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Widen the model's first input layer from C to C+1 channels (image first, label last).

    ``init="zeros"``: new weights W[:, C] = 0, so logits equal the original model's for any label channel
    (function preserving). ``init="random"``: W[:, C] ~ scale · N(0, std(W[:, :C])) (the reference code's widening).
    Sets ``config.num_channels = C+1`` and ``config.label_assisted = True`` so save/load round-trips.
    """
    if init not in LABEL_CHANNEL_INITS:
        raise LADError(f"label channel init must be one of {LABEL_CHANNEL_INITS}, got {init!r}")
    if is_label_assisted(model):
        raise LADError(f"{type(model).__name__} is already label-assisted (config.label_assisted=True)")
    root, name, conv = _find_stem(model)
    c = conv.in_channels
    new = nn.Conv2d(
        c + 1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.zero_()
    new.weight[:, :c] = conv.weight
    if init == "random":
        gen = torch.Generator().manual_seed(seed)
        std = conv.weight.float().std().item() * scale
        new.weight[:, c] = (torch.randn(new.weight[:, c].shape, generator=gen) * std).to(new.weight)
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
    setattr(parent, name.rsplit(".", 1)[-1], new)
    # modules that check the channel count at run time (ViT-style patch embeddings)
    for mod in root.modules():
        if getattr(mod, "num_channels", None) == c and not isinstance(mod, nn.GroupNorm):
            mod.num_channels = c + 1
    _set_channels(model.config, c + 1)
    model.config.label_assisted = True
    model.config.label_assisted_image_channels = c
    return model


def check_pixel_values(model: nn.Module, pixel_values: torch.Tensor) -> None:
    """Clear error when a batch has the wrong number of channels for the model."""
    want = image_channels(model.config)
    got = pixel_values.shape[1] if pixel_values.dim() == 4 else None
    if got != want:
        hint = " (a label-assisted teacher needs the image plus the noised label: use noiser.assist)" if is_label_assisted(model) else ""
        raise LADError(f"{type(model).__name__} expects {want} input channels, got pixel_values {tuple(pixel_values.shape)}{hint}")


def segmentation_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits [N, K, h, w] of a HF segmentation model (or PeftModel around one)."""
    out = model(pixel_values=pixel_values)
    return out.logits if hasattr(out, "logits") else out[0]


# ----------------------------------------------------------------------------------------------- building


def parse_overrides(text: Optional[str]) -> Dict[str, object]:
    """``"depths=[1,1,1,1],hidden_sizes=[16,32,64,128],backbone_config.hidden_size=32"`` -> dict.

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
    """Set (possibly dotted, e.g. ``backbone_config.hidden_size``) config attributes; unknown keys are an error."""
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
    """A segmentation model from ``--model_name_or_path`` (weights) or ``--config_name`` (+ overrides, no weights)."""
    from transformers import AutoModelForSemanticSegmentation

    label_kwargs = {}
    if id2label is not None:
        id2label = {int(k): v for k, v in id2label.items()}
        label_kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    head_overrides = {}
    if model_args.config_overrides and "head." in model_args.config_overrides:
        from .dinov2 import split_head_overrides

        model_args, head_overrides = split_head_overrides(model_args)
    config = load_config(model_args, **label_kwargs)
    from .dinov2 import BACKBONE_ONLY_TYPES, build_backbone_segmenter

    if config.model_type in BACKBONE_ONLY_TYPES:  # DINOv2: a stock UperNet/DPT segmenter around it (lad_hf/dinov2.py)
        return build_backbone_segmenter(model_args, config, head_overrides)
    if head_overrides:
        raise LADError(f"--config_overrides head.* keys apply to backbone-only models (DINOv2), not {config.model_type!r}")
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
