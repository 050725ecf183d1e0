"""DINOv2 segmentation students built from stock transformers classes (no remote code, no lad_hf needed to load).

* `upernet` (default): `UperNetForSemanticSegmentation` whose backbone is a `Dinov2Backbone` returning
  several layers (`out_indices` spread over the depth, `reshape_hidden_states=True`).
* `dpt`: `DPTForSemanticSegmentation`. Stock DPT *segmentation* ignores `backbone_config` (only
  `DPTForDepthEstimation` loads a backbone), so the DPT student is a DPT-ViT shaped like the DINOv2 encoder
  (patch 14, same widths) whose weights are converted from DINOv2 (LayerScale folded into the output
  projections: exact at the checkpoint's native grid). The DPT neck reshapes tokens to a square grid, so inputs
  are padded to a square (`SquarePadCollator`).

`--model_name_or_path facebook/dinov2-small` builds the student around the pretrained backbone;
`--config_name dinov2 --config_overrides hidden_size=32,...` builds one without weights. Head settings go in
`--config_overrides` with a `head.` prefix (`head.hidden_size=256`, `head.fusion_hidden_size=64`).

Inputs of any size are padded to a multiple of the patch size (14) by the collator (labels with `ignore_index`);
`segment` pads, predicts and crops the logits back for inference outside the trainers.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LADError
from ..inference import pad_to_multiple, segmentation_logits
from .builder import register_builder
from .constants import BACKBONE_ONLY_TYPES

logger = logging.getLogger("lad_hf")

HEADS = ("upernet", "dpt")


# ----------------------------------------------------------------------------------------------- config helpers



def default_out_indices(num_layers: int, n: int = 4) -> List[int]:
    """`n` stage indices spread evenly over the depth, last layer included (12 layers -> [3, 6, 9, 12])."""
    if num_layers <= n:
        return list(range(1, num_layers + 1))
    return sorted({max(1, round(num_layers * (k + 1) / n)) for k in range(n)})


def _prepare_backbone_config(config, user_out: bool):
    """Stage names follow the (possibly overridden) depth; several layers out, reshaped to feature maps."""
    n = config.num_hidden_layers
    config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, n + 1)]
    out = list(config.out_indices) if user_out else default_out_indices(n)
    if any(not 1 <= i <= n for i in out):
        raise LADError(f"out_indices {out} must lie in 1..{n} (the backbone has {n} layers)")
    config.set_output_features_output_indices(out_features=None, out_indices=out)
    config.reshape_hidden_states = True
    return config


def _label_config(config) -> Dict:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})


def _apply_head_overrides(config, head: Dict) -> None:
    for key, val in head.items():
        if not hasattr(config, key):
            raise LADError(f"--config_overrides key 'head.{key}' is not an attribute of {type(config).__name__}")
        setattr(config, key, val)


# ----------------------------------------------------------------------------------------------- building


@register_builder(*BACKBONE_ONLY_TYPES)
def build_backbone_segmenter(model_args, config, head_overrides: Optional[Dict] = None):
    """A stock segmentation model around a backbone-only config (DINOv2): UperNet (default) or DPT."""
    head = (getattr(model_args, "dinov2_head", None) or "upernet").lower()
    if head not in HEADS:
        raise LADError(f"--dinov2_head must be one of {list(HEADS)}, got {head!r}")
    user_out = "out_indices" in (model_args.config_overrides or "") or "out_features" in (model_args.config_overrides or "")
    labels = _label_config(config)
    bb = copy.deepcopy(config)
    for k in ("id2label", "label2id"):  # the backbone keeps no label set of its own
        setattr(bb, k, {0: "LABEL_0", 1: "LABEL_1"} if k == "id2label" else {"LABEL_0": 0, "LABEL_1": 1})
    pretrained = model_args.model_name_or_path if (model_args.model_name_or_path and not model_args.config_name) else None
    if head == "dpt":
        return _build_dpt(model_args, bb, labels, head_overrides or {}, pretrained)
    return _build_upernet(model_args, _prepare_backbone_config(bb, user_out), labels, head_overrides or {}, pretrained)


def _load_pretrained_backbone(model_args, bb_config):
    """`Dinov2Backbone.from_pretrained` (the config's backbone class) -> (state_dict, missing keys); one-line errors.

    The concrete class is used: `AutoBackbone.from_pretrained` asks the Hub whether the id exists (for timm) even
    for a local folder, which fails offline.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    from .builder import _hub_call

    try:
        backbone_cls = MODEL_FOR_BACKBONE_MAPPING[type(bb_config)]
    except KeyError:
        raise LADError(f"transformers has no backbone class for {type(bb_config).__name__}") from None

    kwargs = dict(config=bb_config, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                  token=model_args.token, trust_remote_code=model_args.trust_remote_code, output_loading_info=True)
    backbone, info = _hub_call(backbone_cls.from_pretrained, f"backbone {model_args.model_name_or_path!r}",
                               model_args.model_name_or_path, **kwargs)
    return backbone.state_dict(), list(info.get("missing_keys", []))


def _set_attn(module, impl: Optional[str]) -> None:
    """`--attn_implementation` (eager, sdpa, ...) on the attention-bearing part; unsupported -> one line."""
    if not impl:
        return
    try:
        module.set_attn_implementation(impl)
    except (ValueError, ImportError) as e:
        raise LADError(f"--attn_implementation {impl!r} is not available for {type(module).__name__}: {str(e).splitlines()[0]}") from None


def _build_upernet(model_args, bb, labels, head, pretrained):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    cfg = UperNetConfig(backbone_config=bb, hidden_size=min(512, max(32, bb.hidden_size // 2)), use_auxiliary_head=False,
                        auxiliary_in_channels=bb.hidden_size, **labels)
    _apply_head_overrides(cfg, head)
    try:
        model = UperNetForSemanticSegmentation(cfg)
    except (ValueError, TypeError, RuntimeError) as e:
        raise LADError(f"cannot build a UperNet-{bb.model_type} model: {str(e).splitlines()[0]}") from None
    _set_attn(model.backbone, model_args.attn_implementation)
    new = []
    if pretrained:
        state, missing = _load_pretrained_backbone(model_args, copy.deepcopy(bb))
        result = model.backbone.load_state_dict(state, strict=False)
        new = sorted({k.rsplit(".", 1)[0] for k in list(missing) + list(result.missing_keys)})
        new = [f"backbone.{k}" for k in new if k]
        if new:
            logger.warning("backbone weights newly initialised (trained fully under LoRA): %s", new)
    model.lad_new_modules = new
    mask_token = getattr(getattr(model.backbone, "embeddings", None), "mask_token", None)
    if isinstance(mask_token, nn.Parameter):  # used only for masked-image pretraining: never gets a gradient here,
        mask_token.requires_grad_(False)     # which DDP would report as an unused parameter in full fine-tuning
    return model


# -- DPT ---------------------------------------------------------------------------------------------------------

_DINOV2_TO_DPT = {  # DINOv2 layer sub-keys (new and old transformers names) -> DPT-ViT layer sub-keys
    "norm1": "layernorm_before", "norm2": "layernorm_after",
    "attention.q_proj": "attention.attention.query", "attention.attention.query": "attention.attention.query",
    "attention.k_proj": "attention.attention.key", "attention.attention.key": "attention.attention.key",
    "attention.v_proj": "attention.attention.value", "attention.attention.value": "attention.attention.value",
    "attention.o_proj": "attention.output.dense", "attention.output.dense": "attention.output.dense",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}
_LAYER_SCALE = {"layer_scale1": "attention.output.dense", "layer_scale2": "output.dense"}


def dpt_config_from_dinov2(bb, labels: Dict, head: Dict):
    from transformers import DPTConfig

    if getattr(bb, "use_swiglu_ffn", False):
        raise LADError("--dinov2_head dpt needs a DINOv2 with a GELU MLP; this one uses SwiGLU (giant): use --dinov2_head upernet")
    if getattr(bb, "num_register_tokens", 0):
        raise LADError("--dinov2_head dpt does not support DINOv2 with registers; use --dinov2_head upernet")
    h, n = bb.hidden_size, bb.num_hidden_layers
    if n < 4:
        raise LADError(f"--dinov2_head dpt needs at least 4 layers (its neck fuses 4), got num_hidden_layers={n}")
    cfg = DPTConfig(
        hidden_size=h, num_hidden_layers=n, num_attention_heads=bb.num_attention_heads,
        intermediate_size=int(h * bb.mlp_ratio), hidden_act=bb.hidden_act, layer_norm_eps=bb.layer_norm_eps,
        hidden_dropout_prob=bb.hidden_dropout_prob, attention_probs_dropout_prob=bb.attention_probs_dropout_prob,
        image_size=bb.image_size, patch_size=bb.patch_size, num_channels=bb.num_channels, qkv_bias=bb.qkv_bias,
        backbone_out_indices=[i - 1 for i in default_out_indices(n)],
        neck_hidden_sizes=[max(8, h // 8), max(8, h // 4), max(8, h // 2), h], fusion_hidden_size=min(256, max(16, h // 2)),
        readout_type="project", use_auxiliary_head=False, **labels,
    )
    _apply_head_overrides(cfg, head)
    if len(cfg.backbone_out_indices) != 4:
        raise LADError(f"DPT needs 4 backbone_out_indices, got {cfg.backbone_out_indices}")
    return cfg


@torch.no_grad()
def dinov2_state_to_dpt(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """DINOv2 (Model or Backbone) weights -> `DPTForSemanticSegmentation.dpt` weights, LayerScale folded in."""
    out, scales = {}, {}
    for key, val in state.items():
        if key.startswith("embeddings."):
            if "mask_token" not in key:
                out[f"dpt.{key}"] = val
        elif key.startswith("layernorm."):
            out[f"dpt.{key}"] = val
        elif key.startswith("encoder.layer."):
            _, _, idx, rest = key.split(".", 3)
            sub, param = rest.rsplit(".", 1)
            if sub in _LAYER_SCALE:
                scales[(idx, _LAYER_SCALE[sub])] = val
            elif sub in _DINOV2_TO_DPT:
                out[f"dpt.encoder.layer.{idx}.{_DINOV2_TO_DPT[sub]}.{param}"] = val
            else:
                raise LADError(f"cannot convert DINOv2 weight {key!r} to DPT")
    for (idx, target), lam in scales.items():  # λ ⊙ (W x + b) = (λ W) x + λ b
        w, b = f"dpt.encoder.layer.{idx}.{target}.weight", f"dpt.encoder.layer.{idx}.{target}.bias"
        out[w] = out[w] * lam[:, None]
        out[b] = out[b] * lam
    return out


def _build_dpt(model_args, bb, labels, head, pretrained):
    from transformers import DPTForSemanticSegmentation

    cfg = dpt_config_from_dinov2(bb, labels, head)
    try:
        model = DPTForSemanticSegmentation(cfg)
    except (ValueError, TypeError, RuntimeError) as e:
        raise LADError(f"cannot build a DPT-DINOv2 model: {str(e).splitlines()[0]}") from None
    _set_attn(model, model_args.attn_implementation)
    model.lad_new_modules = []
    if pretrained:
        bb_load = _prepare_backbone_config(copy.deepcopy(bb), user_out=False)
        state, _ = _load_pretrained_backbone(model_args, bb_load)
        converted = dinov2_state_to_dpt(state)
        result = model.load_state_dict(converted, strict=False)
        missing = [k for k in result.missing_keys if k.startswith("dpt.") and "pooler" not in k]
        if missing or result.unexpected_keys:
            raise LADError(f"DINOv2 -> DPT conversion left weights unset {missing[:4]} / unused {result.unexpected_keys[:4]}")
    return model


# ----------------------------------------------------------------------------------------------- patch models


def patch_size(config) -> Optional[int]:
    """The ViT patch size inputs should be a multiple of (DINOv2 backbones, plain-ViT DPT), else None."""
    bb = getattr(config, "backbone_config", None)
    if bb is not None and getattr(bb, "model_type", None) in BACKBONE_ONLY_TYPES + ("vit",):
        p = bb.patch_size
    elif config.model_type in BACKBONE_ONLY_TYPES or (config.model_type == "dpt" and not getattr(config, "is_hybrid", False)):
        p = config.patch_size
    else:
        return None
    return int(p[0] if isinstance(p, (list, tuple)) else p)


def needs_square_input(config) -> bool:
    """Stock DPTForSemanticSegmentation reshapes the token grid to sqrt(tokens)^2: square inputs only."""
    return config.model_type == "dpt" and not getattr(config, "is_hybrid", False)



@torch.no_grad()
def segment(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits [N,K,H,W] at the input size for any H, W: pad to the patch multiple (square for DPT), crop back."""
    cfg = model.config
    p = patch_size(cfg) or 1
    x, (h, w) = pad_to_multiple(pixel_values, p, square=needs_square_input(cfg))
    logits = segmentation_logits(model, x)
    logits = F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :h, :w]


class SquarePadCollator:
    """Wraps a collator: pads `pixel_values` (0) and `labels` (ignore_index) bottom/right to a square batch."""

    def __init__(self, collator, ignore_index: int = 255):
        self.collator = collator
        self.ignore_index = ignore_index
        self.pad_to_multiple_of = getattr(collator, "pad_to_multiple_of", None)

    def __call__(self, features):
        batch = self.collator(features)
        h, w = batch["pixel_values"].shape[-2:]
        s = max(h, w)
        if h != w:
            batch["pixel_values"] = F.pad(batch["pixel_values"], (0, s - w, 0, s - h), value=0.0)
            if batch.get("labels") is not None:
                batch["labels"] = F.pad(batch["labels"], (0, s - w, 0, s - h), value=self.ignore_index)
        return batch


def fit_collator(model, collator, ignore_index: int = 255):
    """Patch-14 models: pad batches to a multiple of the patch size (unless set) and, for DPT, to a square."""
    cfg = getattr(model, "config", None)
    p = patch_size(cfg) if cfg is not None else None
    if p is None:
        return collator
    current = getattr(collator, "pad_to_multiple_of", None)
    if current is None and hasattr(collator, "pad_to_multiple_of"):
        collator.pad_to_multiple_of = p
        logger.info("padding batches to a multiple of the patch size %d (labels padded with %d)", p, ignore_index)
    elif current is not None and current % p:
        logger.warning("--pad_to_multiple_of %d is not a multiple of the patch size %d: border pixels are dropped", current, p)
    if needs_square_input(cfg) and not isinstance(collator, SquarePadCollator):
        collator = SquarePadCollator(collator, ignore_index)
    return collator


def fit_image_processor(model, processor, crop_size: int):
    """A processor that a stock pipeline can use on a patch-14 student: square resize to a multiple of 14.

    DINOv2's own processor (`BitImageProcessor`) centre-crops 224 px and has no segmentation post-processing; it
    is replaced by a `SegformerImageProcessor` with the same mean/std. A processor resizing to a fixed
    height/width that is not a multiple of the patch size gets its size rounded up. Others are kept.
    """
    from .builder import segformer_processor_class

    cfg = getattr(model, "config", None)
    p = patch_size(cfg) if cfg is not None else None
    if p is None:
        return processor
    if processor is not None and hasattr(processor, "post_process_semantic_segmentation") \
            and not getattr(processor, "do_center_crop", False):
        size = getattr(processor, "size", None)  # a dict or transformers' SizeDict
        h, w = (getattr(size, "height", None), getattr(size, "width", None)) if not isinstance(size, dict) \
            else (size.get("height"), size.get("width"))
        if isinstance(h, int) and isinstance(w, int) and (h % p or w % p):
            processor = copy.deepcopy(processor)
            processor.size = {"height": math.ceil(h / p) * p, "width": math.ceil(w / p) * p}
        return processor
    side = math.ceil(crop_size / p) * p
    mean = list(getattr(processor, "image_mean", None) or (0.485, 0.456, 0.406))
    std = list(getattr(processor, "image_std", None) or (0.229, 0.224, 0.225))
    return segformer_processor_class()(size={"height": side, "width": side}, image_mean=mean, image_std=std,
                                   do_reduce_labels=False)


def _find_backbone(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base, getattr(base, "backbone", None)


def enable_backbone_checkpointing(model, training_args) -> bool:
    """Gradient checkpointing for models whose wrapper does not support it (UperNet): enabled on the backbone.

    Returns True when it did so; the Trainer's own flag is then cleared (it would call the wrapper and fail).
    Non-reentrant checkpointing is used, so a frozen (LoRA) backbone needs no input gradients; with
    `use_reentrant=True` the inputs are made to require grad.
    """
    on = bool(getattr(training_args, "activation_checkpointing", None) or getattr(training_args, "gradient_checkpointing", None))
    if not on:
        return False
    base, backbone = _find_backbone(model)
    if getattr(base, "supports_gradient_checkpointing", False) or backbone is None:
        return False  # the Trainer handles it
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise LADError(f"--gradient_checkpointing: neither {type(base).__name__} nor its {type(backbone).__name__} supports it")
    kwargs = dict(getattr(training_args, "activation_checkpointing_kwargs", None)
                  or getattr(training_args, "gradient_checkpointing_kwargs", None) or {})
    kwargs = {k: v for k, v in kwargs.items() if k not in ("every_n_layers", "offload")}
    kwargs.setdefault("use_reentrant", False)
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.2x
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"]:
        backbone.enable_input_require_grads()
    for name in ("activation_checkpointing", "gradient_checkpointing"):
        if hasattr(training_args, name):
            setattr(training_args, name, False)
    logger.info("gradient checkpointing enabled on the %s backbone", type(backbone).__name__)
    return True


def prepare_patch_student(model, collator, processor, data_args, training_args):
    """What cmd_train/cmd_distill do for a patch-14 student: pad batches, fix the processor, checkpointing."""
    collator = fit_collator(model, collator, training_args.ignore_index if hasattr(training_args, "ignore_index") else 255)
    processor = fit_image_processor(model, processor, data_args.crop_size)
    enable_backbone_checkpointing(model, training_args)
    return collator, processor
