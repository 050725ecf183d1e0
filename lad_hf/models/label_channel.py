"""Label-assisted models: widen the stem of any HF segmentation model from C to C+1 input channels.

    [x ; ŷ] -> stem conv W' = [W, w_label],   w_label = 0 ("zeros": the old function exactly) or scale·N(0, std(W))
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..errors import LADError
from .constants import STEM_ROOTS, WRAPPERS_WITH_BACKBONE

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


def _own_config(model: nn.Module) -> None:
    """Give `model` a private copy of its config (and of its backbone config), in every submodule that holds it: a
    config shared with another model (e.g. a student built with `from_config` from the same object) stays as it was."""
    old = model.config
    new = copy.deepcopy(old)
    # the widened model is no longer the one it was loaded from: no Hub id or folder names it (a student distilled from
    # it would otherwise name e.g. nvidia/mit-b0 as its teacher)
    new._name_or_path = ""
    old_bb, new_bb = getattr(old, "backbone_config", None), getattr(new, "backbone_config", None)
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is old:
            mod.config = new
        elif old_bb is not None and cfg is old_bb:
            mod.config = new_bb


def is_label_assisted(model_or_config) -> bool:
    """True when the model (or config) takes the noised label as an extra input channel."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(cfg, "label_assisted", False))


@torch.no_grad()
def add_label_channel(model: nn.Module, init: str = "zeros", scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Widen the model's first input layer from C to C+1 channels (image first, label last).

    `init="zeros"`: new weights W[:, C] = 0, so logits equal the original model's for any label channel
    (function preserving). `init="random"`: W[:, C] ~ scale · N(0, std(W[:, :C])) (the reference code's widening).
    Sets `config.num_channels = C+1` and `config.label_assisted = True` so save/load round-trips; the model gets its
    own copy of the config first (a config object shared with other models is left unchanged), whose `name_or_path`
    is cleared: the widened model is no longer the checkpoint it was loaded from.
    """
    if init not in LABEL_CHANNEL_INITS:
        raise LADError(f"label channel init must be one of {LABEL_CHANNEL_INITS}, got {init!r}")
    if is_label_assisted(model):
        raise LADError(f"{type(model).__name__} is already label-assisted (config.label_assisted=True)")
    root, name, conv = _find_stem(model)
    _own_config(model)
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
