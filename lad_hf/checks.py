"""Checks before anything loads (output folder, model and teacher input channels) and I/O errors as one line."""

from __future__ import annotations

import errno
import logging
import os
from typing import Dict, Optional

from .errors import LADError

logger = logging.getLogger("lad_hf")

# what the current command writes, for I/O errors that name no file
_RUN: Dict[str, str] = {}




def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """The folder can be created and written (nothing is created here): else one line naming the path."""
    probe = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise LADError(f"{flag} {path!r} cannot be created: {probe!r} is a file, not a folder; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LADError(f"{flag} {path!r} is not writable ({probe!r} is read-only for this user); choose a folder you "
                       f"may write to")


RGB_CHANNELS = 3  # lad_hf's data pipeline decodes every image to RGB


def check_model_channels(config, what: str) -> None:
    """The model takes RGB images: 3 input channels, or 3 + 1 for a label-assisted model."""
    from .models import image_channels, is_label_assisted

    c = image_channels(config)
    if is_label_assisted(config):
        img = int(getattr(config, "label_assisted_image_channels", c - 1))
        if img != RGB_CHANNELS or c != img + 1:
            raise LADError(f"{what} is label-assisted with {c} input channels ({img} image + 1 label), but lad-hf "
                           f"feeds RGB images: it needs {RGB_CHANNELS} + 1 = {RGB_CHANNELS + 1}")
        return
    if c != RGB_CHANNELS:
        if c == RGB_CHANNELS + 1:
            raise LADError(f"{what} takes {c} input channels but its config has no `label_assisted: true`; a plain "
                           f"model takes {RGB_CHANNELS} (RGB) channels, a label-assisted teacher (trained with "
                           f"`lad-hf teacher`) {RGB_CHANNELS} + 1 and says label_assisted: true in its config.json")
        raise LADError(f"{what} takes {c} input channel{'s' if c != 1 else ''} (config num_channels={c}), but lad-hf "
                       f"feeds RGB images: use a model with num_channels={RGB_CHANNELS}")


def check_smallest_image(model, smallest, data_args, split: str = "validation") -> None:
    """The model runs on the split's smallest image as evaluation feeds it (whole, padded as the collator pads):
    else one line naming the row, before any training."""
    import torch

    from .models import image_channels
    from .models.dinov2 import patch_size

    if not smallest or getattr(data_args, "eval_resize", None):
        return
    h, w, row = smallest
    m = max(int(getattr(data_args, "pad_to_multiple_of", None) or 1), int(patch_size(model.config) or 1))
    ph, pw = -(-h // m) * m, -(-w // m) * m
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, image_channels(model.config), ph, pw))
    except (RuntimeError, ValueError, IndexError) as e:
        raise LADError(f"{split} row {row}: its {h}x{w} image is too small for the model ({str(e).splitlines()[0][:120]}); "
                       "evaluate at a fixed size with --eval_resize N, or remove such images") from None
    finally:
        model.train(was_training)


def _looks_like_local_path(path: str) -> bool:
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.endswith(("/", os.sep)) or "\\" in path
            or path.count("/") > 1)


def teacher_config(path: str, trust_remote_code: bool = False):
    """Read the teacher's config.json (no weights) and check it before anything loads: one line naming the path."""
    from transformers import AutoConfig

    flag = "--teacher_model_name_or_path"
    if os.path.isdir(path):
        has_config = os.path.isfile(os.path.join(path, "config.json"))
        if not has_config and os.path.isfile(os.path.join(path, "adapter_config.json")):
            return None  # a LoRA folder: its base model's config is resolved when the teacher loads
        if not has_config:
            raise LADError(f"{flag} {path!r} has no config.json; pass the --output_dir of `lad-hf teacher` (or of "
                           "`lad-hf train` for a plain teacher): a folder with config.json and model.safetensors")
    elif os.path.exists(path):
        raise LADError(f"{flag} {path!r} is a file; pass the folder that holds the teacher's config.json and weights")
    elif _looks_like_local_path(path):
        raise LADError(f"{flag} {path!r} does not exist; pass the --output_dir of `lad-hf teacher` or a Hub id "
                       "(user/name)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "" if os.path.isdir(path) else "no such folder here, and as a Hub id: "
        raise LADError(f"cannot read the config of teacher {path!r}: {where}{str(e).strip().splitlines()[0]}") from None
    check_model_channels(config, f"teacher {path!r}")
    return config


_IO_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose another --output_dir",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --output_dir",
    errno.EROFS: "the file system is read-only: choose another --output_dir",
    errno.EACCES: "permission denied: choose a path you may write to",
    errno.EPERM: "permission denied: choose a path you may write to",
    errno.EFBIG: "the file is too large for this file system or limit",
}


def _file_on_the_way(path) -> Optional[str]:
    """The first part of `path` that exists and is a file (why a folder cannot be made there), if any."""
    probe = os.path.abspath(path)
    parts = []
    while True:
        parts.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for p in reversed(parts):
        if os.path.exists(p) and not os.path.isdir(p):
            return p
    return None


def io_error_line(e: BaseException) -> str:
    """One line for an I/O failure: what failed, at which path, and what to do."""
    if isinstance(e, OSError):
        reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = f" ({_IO_HINTS[e.errno]})" if e.errno in _IO_HINTS else ""
        if e.filename is not None:
            where = f" at {os.fspath(e.filename)!r}"
            if getattr(e, "filename2", None) is not None:
                where += f" -> {os.fspath(e.filename2)!r}"
            if e.errno in (errno.ENOTDIR, errno.EEXIST):
                blocker = _file_on_the_way(os.fspath(e.filename))
                hint = f" ({blocker!r} is a file, not a folder)" if blocker else hint
        elif _RUN.get("output_dir"):
            where = f" while writing {_RUN['output_dir']!r}"
        else:
            where = ""
        return f"I/O error{where}: {reason}{hint}"
    # safetensors / torch.save report write failures as their own types; the output folder is what was being written
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    path = _RUN.get("output_dir")
    where = f" while writing {path!r}" if path else ""
    full = "StorageFull" in first or "No space" in first
    hint = " (the disk is full: free space or choose another --output_dir)" if full else ""
    return f"I/O error{where}: {first}{hint}"


def is_write_failure(e: BaseException) -> bool:
    text = str(e)
    return (type(e).__name__ == "SafetensorError" and "IoError" in text) or (
        isinstance(e, RuntimeError) and ("PytorchStreamWriter failed" in text or "file write failed" in text))
