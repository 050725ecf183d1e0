"""Semantic-segmentation data: loading, column mapping, mask decoding, transforms and collation.

Data flows one way::

    load_segmentation_dataset  ->  apply_transforms  ->  SegmentationCollator  ->  {pixel_values, labels}

* :class:`DataArguments` keeps the flag names of transformers'
  ``examples/pytorch/semantic-segmentation/run_semantic_segmentation.py``.
* :func:`load_segmentation_dataset` reads a Hub dataset, a local folder of parquet files, a
  ``save_to_disk`` folder or an image folder with ``metadata.csv``/``metadata.jsonl`` pairing images with
  masks, and returns a ``DatasetDict`` with ``train`` and/or ``validation`` plus ``id2label``.
* :func:`decode_mask` turns a mask (``L``/``I``/``P`` image, RGB image with a colour table, array) into
  class indices; :class:`TrainTransform` / :class:`EvalTransform` turn rows into tensors lazily
  (``dataset.with_transform``); :class:`SegmentationCollator` pads and stacks.
* :func:`validate_dataset_sample` checks the first rows before a long run starts.

Only torch, numpy and PIL are used for the image work (no torchvision).

Every loaded split gets a small integer column :data:`ROW_INDEX_COLUMN` holding the row's position in
the source split, so that errors raised inside the lazy transforms (e.g. a mask whose size differs
from its image) can name the row, even after shuffling or carving a validation split.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image as PILImage

from .errors import LADError

logger = logging.getLogger(__name__)

__all__ = [
    "DataArguments",
    "EvalTransform",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "ROW_INDEX_COLUMN",
    "SegmentationCollator",
    "TrainTransform",
    "apply_transforms",
    "build_collator",
    "build_transforms",
    "decode_mask",
    "load_image",
    "load_segmentation_dataset",
    "parse_id2label",
    "parse_label_colors",
    "reduce_id2label",
    "resolve_columns",
    "validate_dataset_sample",
    "drop_bad_samples",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

#: Column added by :func:`load_segmentation_dataset`: the row's index in its source split.
ROW_INDEX_COLUMN = "__lad_row__"

IMAGE_COLUMN_CANDIDATES = ("image", "pixel_values", "img", "images", "rgb")
LABEL_COLUMN_CANDIDATES = (
    "label",
    "labels",
    "annotation",
    "annotations",
    "mask",
    "masks",
    "semantic_map",
    "segmentation",
    "semantic_segmentation",
    "sem_seg",
    "gt",
)
# Metadata columns (image-folder layout) that hold the path of the mask, in order of preference.
MASK_PATH_COLUMN_CANDIDATES = tuple(f"{c}_file_name" for c in LABEL_COLUMN_CANDIDATES) + tuple(
    f"{c}_path" for c in LABEL_COLUMN_CANDIDATES
) + LABEL_COLUMN_CANDIDATES
IMAGE_PATH_COLUMN_CANDIDATES = ("file_name", "image_file_name", "image_path", "image", "img", "path")

# Names of class 0 that --do_reduce_labels removes from id2label (see reduce_id2label).
BACKGROUND_NAMES = frozenset(
    {"background", "__background__", "bg", "other", "others", "unlabeled", "unlabelled", "void", "ignore", "none", "clutter"}
)

# Split names as written in files/folders -> canonical name.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}

# Hub datasets whose label names live elsewhere (as in transformers' example script).
_KNOWN_LABEL_FILES = {"scene_parse_150": ("huggingface/label-files", "ade20k-id2label.json")}

METADATA_FILES = ("metadata.csv", "metadata.jsonl")


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    r"""
    Arguments for the data, named as in transformers' ``run_semantic_segmentation.py`` where they overlap.

    Parameters that control which data is loaded:

        dataset_name (`str` or `None`, defaults to `None`):
            Hub dataset id, or a local path: a folder of parquet files (``train-*.parquet``,
            ``validation.parquet``, or ``train/`` and ``validation/`` sub-folders), a ``save_to_disk`` folder, an
            image folder with ``metadata.csv``/``metadata.jsonl`` pairing ``file_name`` with a mask path column,
            or a single ``.parquet`` file.
        dataset_config_name (`str` or `None`, defaults to `None`): Hub dataset configuration.
        dataset_revision (`str`, defaults to `"main"`): Hub dataset revision.
        data_dir (`str` or `None`, defaults to `None`): Sub-folder of the dataset to read.
        image_column (`str` or `None`, defaults to `None`):
            Column of the images; `None` picks the first of ``image``, ``pixel_values``, ``img``, ...
        label_column (`str` or `None`, defaults to `None`):
            Column of the masks; `None` picks the first of ``label``, ``annotation``, ``mask``, ``semantic_map``,
            ``segmentation``, ...
        id2label (`str` or `None`, defaults to `None`):
            JSON file or inline JSON (``{"0": "road", ...}`` or ``["road", ...]``). Without it the names come from
            a ``ClassLabel`` feature of the label column, then an ``id2label.json`` next to the data.
        label_colors (`str` or `None`, defaults to `None`):
            JSON file or inline JSON mapping mask colours to class ids for RGB masks; a colour is ``"r,g,b"``,
            ``"#rrggbb"`` or ``"[r,g,b]"``. The inverse (id -> colour) is accepted too.
        do_reduce_labels (`bool`, defaults to `False`):
            Map mask value 0 (background) to ``ignore_index`` and every other value k to k-1, as the HF
            image processors do for ADE20k; ``ignore_index`` stays ``ignore_index``.
        ignore_index (`int`, defaults to `255`): Label value excluded from the loss and the metrics.
        train_split (`str`, defaults to `"train"`), eval_split (`str`, defaults to `"validation"`):
            Split names; ``val``/``valid``/``dev`` are accepted for ``validation`` and vice versa.
        train_val_split (`float` or `None`, defaults to `None`):
            When the eval split is missing, carve this fraction of the train split (seeded) as validation.
        max_train_samples (`int` or `None`), max_eval_samples (`int` or `None`): Keep the first n rows.

    Parameters that control the preprocessing:

        crop_size (`int`, defaults to `512`): Side of the square training crop.
        min_scale (`float`, defaults to `0.5`), max_scale (`float`, defaults to `2.0`):
            Random resize ratio range for training, relative to the image size.
        eval_resize (`int` or `None`, defaults to `None`):
            `None` evaluates whole images (the collator pads them); an int resizes eval images to that square
            size (labels with nearest neighbour).
        hflip_prob (`float`, defaults to `0.5`): Horizontal flip probability for training.
        image_mean (`list[float]` or `None`), image_std (`list[float]` or `None`):
            Normalisation; `None` takes them from the model's image processor, else ImageNet's.
        pad_to_multiple_of (`int` or `None`, defaults to `None`): The collator pads H and W to a multiple of it.
        skip_bad_samples (`bool`, defaults to `False`):
            Instead of stopping: the CLI decodes every row once and drops unreadable rows and rows whose mask
            does not fit the image (:func:`drop_bad_samples`; the count is logged again at the end of the run
            and stored in ``lad_training_info.json``); image-folder rows whose files are missing are dropped; a
            row that still fails inside the lazy transforms becomes an all-ignore sample (with a warning).

    Note: Hub options shared with the model (``cache_dir``, ``token``, ``trust_remote_code``) live in
    ``ModelArguments`` and are passed to :func:`load_segmentation_dataset` as keyword arguments (a second
    ``--trust_remote_code`` field would clash in ``HfArgumentParser``; datasets>=4 ignores it anyway).
    """

    # -- which data --------------------------------------------------------------------------------------------------
    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub dataset id or local path: parquet folder, save_to_disk folder, image folder with "
            "metadata.csv/metadata.jsonl, or a .parquet file."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str = field(default="main", metadata={"help": "Hub dataset revision (branch, tag or commit)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Sub-folder of the dataset to read."})
    image_column: Optional[str] = field(
        default=None, metadata={"help": "Image column (default: first of image, pixel_values, img, ...)."}
    )
    label_column: Optional[str] = field(
        default=None,
        metadata={"help": "Mask column (default: first of label, annotation, mask, semantic_map, segmentation, ...)."},
    )
    id2label: Optional[str] = field(
        default=None,
        metadata={
            "help": 'Class names: JSON file or inline JSON, {"0": "road", ...} or ["road", ...]. Default: the '
            "label column's ClassLabel names, else id2label.json next to the data."
        },
    )
    label_colors: Optional[str] = field(
        default=None,
        metadata={
            "help": 'For RGB masks: JSON file or inline JSON mapping colours to ids, e.g. {"128,64,128": 0, '
            '"#f423e8": 1, "[0,0,0]": 255}.'
        },
    )
    do_reduce_labels: bool = field(
        default=False,
        metadata={"help": "Map mask value 0 (background) to ignore_index and k to k-1 (ADE20k style)."},
    )
    ignore_index: int = field(default=255, metadata={"help": "Label value ignored by the loss and the metrics."})
    train_split: str = field(default="train", metadata={"help": "Name of the training split."})
    eval_split: str = field(
        default="validation", metadata={"help": "Name of the evaluation split (val/valid/dev also match)."}
    )
    train_val_split: Optional[float] = field(
        default=None,
        metadata={"help": "If the eval split is missing, carve this fraction of train as validation (seeded)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first n training rows (debugging, quick runs)."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first n evaluation rows."})
    # -- preprocessing -----------------------------------------------------------------------------------------------
    crop_size: int = field(default=512, metadata={"help": "Side of the square random training crop."})
    min_scale: float = field(default=0.5, metadata={"help": "Smallest random resize ratio (training)."})
    max_scale: float = field(default=2.0, metadata={"help": "Largest random resize ratio (training)."})
    eval_resize: Optional[int] = field(
        default=None,
        metadata={"help": "Resize eval images to this square size (labels nearest). Default: whole images."},
    )
    hflip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability (training)."})
    image_mean: Optional[List[float]] = field(
        default=None, metadata={"help": "Normalisation mean (default: the image processor's, else ImageNet's)."}
    )
    image_std: Optional[List[float]] = field(
        default=None, metadata={"help": "Normalisation std (default: the image processor's, else ImageNet's)."}
    )
    pad_to_multiple_of: Optional[int] = field(
        default=None, metadata={"help": "Collator pads height and width to a multiple of this (e.g. 14 or 32)."}
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={"help": "Drop unreadable rows and rows whose mask does not fit the image (counted at the end) instead of failing."},
    )

    def __post_init__(self):
        if self.crop_size is None or int(self.crop_size) < 1:
            raise LADError(f"--crop_size must be a positive int, got {self.crop_size}")
        if not (0 < self.min_scale <= self.max_scale):
            raise LADError(
                f"--min_scale/--max_scale must satisfy 0 < min_scale <= max_scale, got {self.min_scale} and {self.max_scale}"
            )
        if not (0.0 <= self.hflip_prob <= 1.0):
            raise LADError(f"--hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if self.train_val_split is not None and not (0.0 < self.train_val_split < 1.0):
            raise LADError(f"--train_val_split must be a fraction in (0, 1), got {self.train_val_split}")
        for name in ("max_train_samples", "max_eval_samples", "eval_resize", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise LADError(f"--{name} must be a positive int or unset, got {value}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, 3):
                raise LADError(f"--{name} needs 3 values (R G B) or 1, got {list(value)}")
        if self.image_std is not None and any(s <= 0 for s in self.image_std):
            raise LADError(f"--image_std values must be > 0, got {list(self.image_std)}")


# ---------------------------------------------------------------------------------------------------------------------
# JSON options: id2label and label colours
# ---------------------------------------------------------------------------------------------------------------------


def _read_json_option(value: Union[str, Mapping, Sequence], flag: str) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if os.path.isfile(os.path.expanduser(text)):
        path = os.path.expanduser(text)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise LADError(f"{flag}: cannot read JSON file {path}: {str(e).splitlines()[0]}") from None
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LADError(f"{flag}: invalid inline JSON ({e.msg} at char {e.pos}): {text[:80]}") from None
    raise LADError(f"{flag} must be an existing JSON file or inline JSON ({{...}} or [...]); got {text[:80]!r}")


def parse_id2label(value: Union[str, Mapping, Sequence]) -> Dict[int, str]:
    """``{"0": "road"}`` / ``["road", ...]`` / a JSON file holding either -> ``{0: "road", ...}`` (ids 0..K-1)."""
    data = _read_json_option(value, "--id2label")
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            try:
                out[int(k)] = str(v)
            except (TypeError, ValueError):
                raise LADError(f"--id2label keys must be class ids (integers), got {k!r}") from None
    elif isinstance(data, (list, tuple)):
        out = {i: str(v) for i, v in enumerate(data)}
    else:
        raise LADError(f"--id2label must be a JSON object or list, got {type(data).__name__}")
    if not out:
        raise LADError("--id2label is empty; give one name per class")
    if sorted(out) != list(range(len(out))):
        missing = sorted(set(range(max(out) + 1)) - set(out))[:5]
        raise LADError(f"--id2label ids must be 0..K-1 without gaps; missing {missing}, ids given {sorted(out)[:10]}")
    return dict(sorted(out.items()))


def _parse_color(key: Any) -> Optional[Tuple[int, int, int]]:
    """``"r,g,b"``, ``"#rrggbb"``, ``"[r,g,b]"``, ``"(r, g, b)"`` or a list -> (r, g, b); None if not a colour."""
    if isinstance(key, (list, tuple)):
        parts = list(key)
    elif isinstance(key, str):
        s = key.strip()
        if s.startswith("#"):
            h = s[1:]
            if len(h) == 3:
                h = "".join(c * 2 for c in h)
            if len(h) != 6 or not re.fullmatch(r"[0-9a-fA-F]{6}", h):
                return None
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
        parts = [p for p in re.split(r"[,\s]+", s.strip("[]() ")) if p]
    else:
        return None
    if len(parts) not in (3, 4):  # RGBA colour: alpha ignored
        return None
    try:
        rgb = tuple(int(p) for p in parts[:3])
    except (TypeError, ValueError):
        return None
    if any(not 0 <= c <= 255 for c in rgb):
        return None
    return rgb  # type: ignore[return-value]


def parse_label_colors(value: Union[str, Mapping, None]) -> Optional[Dict[Tuple[int, int, int], int]]:
    """Colour table for RGB masks -> ``{(r, g, b): class_id}``. Accepts colour -> id and id -> colour."""
    if value is None:
        return None
    data = _read_json_option(value, "--label_colors") if isinstance(value, str) else value
    if isinstance(data, (list, tuple)):  # a palette: position = class id
        data = {i: c for i, c in enumerate(data)}
    if not isinstance(data, Mapping) or not data:
        raise LADError('--label_colors must be a non-empty JSON object like {"128,64,128": 0, "#000000": 255}')
    out: Dict[Tuple[int, int, int], int] = {}
    for k, v in data.items():
        color, cid = _parse_color(k), v
        if color is None or isinstance(v, (list, tuple)) or (isinstance(v, str) and _parse_color(v) is not None):
            # id -> colour form
            color, cid = _parse_color(v), k
        if color is None:
            raise LADError(
                f'--label_colors entry {k!r}: {v!r} is not colour -> id; write colours as "r,g,b", "#rrggbb" or "[r,g,b]"'
            )
        try:
            cid = int(cid)
        except (TypeError, ValueError):
            raise LADError(f"--label_colors: class id for colour {color} must be an int, got {cid!r}") from None
        if color in out and out[color] != cid:
            raise LADError(f"--label_colors maps colour {color} to two ids ({out[color]} and {cid})")
        out[color] = cid
    return out


def reduce_id2label(id2label: Mapping[int, str]) -> Dict[int, str]:
    """id2label after ``--do_reduce_labels``.

    If class 0 is named like background (``background``, ``other``, ``unlabeled``, ``void``, ...), it is dropped
    and the other ids shift down by one. Otherwise the names are assumed to already describe the reduced labels
    (as ``ade20k-id2label.json`` does for ADE20k, whose 150 names start with ``wall``) and are kept unchanged.
    """
    id2label = {int(k): v for k, v in id2label.items()}
    if id2label and str(id2label.get(0, "")).strip().lower() in BACKGROUND_NAMES:
        return {k - 1: v for k, v in sorted(id2label.items()) if k != 0}
    return dict(sorted(id2label.items()))


# ---------------------------------------------------------------------------------------------------------------------
# Decoding images and masks
# ---------------------------------------------------------------------------------------------------------------------


def _open_any(value: Any) -> Union[PILImage.Image, np.ndarray]:
    """A dataset cell -> PIL image or numpy array (no conversion)."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return PILImage.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return PILImage.open(value["path"])
        raise LADError("image cell has neither bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        return PILImage.open(value)
    if isinstance(value, (bytes, bytearray)):
        return PILImage.open(io.BytesIO(value))
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    if value is None:
        raise LADError("image/mask cell is empty (None)")
    raise LADError(f"cannot read an image/mask from a {type(value).__name__}")


def load_image(value: Any) -> PILImage.Image:
    """A dataset cell (PIL image, ``{"bytes", "path"}`` dict, path, array HWC/CHW) -> RGB PIL image."""
    img = _open_any(value)
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            if arr.size and arr.max() <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        if arr.ndim not in (2, 3):
            raise LADError(f"image array must be HxW, HxWxC or CxHxW, got shape {tuple(img.shape)}")
        img = PILImage.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
    img.load()  # decode now (PIL is lazy): a truncated file fails here, where the caller names the row
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _size_of(value: Any) -> Tuple[int, int]:
    """(H, W) of an image or mask cell, reading only the header of encoded images."""
    obj = _open_any(value)
    if isinstance(obj, PILImage.Image):
        return obj.size[1], obj.size[0]
    arr = obj
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        return int(arr.shape[1]), int(arr.shape[2])
    return int(arr.shape[0]), int(arr.shape[1])


def _rgb_to_ids(rgb: np.ndarray, label_colors: Mapping[Tuple[int, int, int], int]) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    keys = np.array([(r << 16) | (g << 8) | b for (r, g, b) in label_colors], dtype=np.int64)
    vals = np.array(list(label_colors.values()), dtype=np.int64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[pos] == codes
    if not known.all():
        unseen = np.unique(codes[~known])
        shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in unseen[:5].tolist())
        more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
        raise LADError(
            f"mask has colours not in --label_colors: {shown}{more}; add them (map to 255 to ignore them)"
        )
    return vals[pos]


def decode_mask(
    mask: Any,
    label_colors: Optional[Union[str, Mapping]] = None,
    do_reduce_labels: bool = False,
    ignore_index: int = 255,
) -> np.ndarray:
    """A mask cell -> class indices, ``int64`` [H, W].

    * ``L``/``I``/``I;16``/``1``/``F`` images and 2-D arrays hold class indices directly.
    * ``P`` (palette) images give their palette *indices* (VOC style), never the palette colours.
    * RGB/RGBA masks need ``label_colors`` (colour -> id); unknown colours raise :class:`LADError` listing up
      to 5 of them. Without ``label_colors``, an RGB mask whose three channels are equal is read as grayscale
      indices; otherwise it raises.
    * ``do_reduce_labels``: 0 -> ``ignore_index``, k -> k-1, ``ignore_index`` stays ``ignore_index``.
    """
    if isinstance(label_colors, str):
        label_colors = parse_label_colors(label_colors)
    obj = _open_any(mask)
    if isinstance(obj, PILImage.Image):
        mode = obj.mode
        if mode in ("LA", "PA"):
            arr = np.asarray(obj)[..., 0]
        elif mode in ("RGB", "RGBA", "RGBX"):
            arr = np.asarray(obj)[..., :3]
        elif mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"):
            arr = np.asarray(obj)
        else:
            raise LADError(f"unsupported mask image mode {mode!r}; masks must be L, P, I or RGB images")
    else:
        arr = np.asarray(obj)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        elif arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise LADError(f"mask array must be HxW (class ids) or HxWx3 (colours), got shape {tuple(arr.shape)}")

    if arr.ndim == 3:  # RGB
        if label_colors:
            out = _rgb_to_ids(arr, label_colors)
        elif np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            out = arr[..., 0].astype(np.int64)
        else:
            raise LADError(
                "mask is RGB with coloured pixels; pass --label_colors (JSON mapping \"r,g,b\" -> class id) "
                "or convert the masks to L/P images of class ids"
            )
    else:
        if arr.dtype.kind == "f":
            arr = np.rint(arr)
        out = arr.astype(np.int64)

    if do_reduce_labels:
        keep = out == ignore_index
        zero = out == 0
        out = out - 1
        out[zero | keep] = ignore_index
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------------------------------


def _visible_columns(columns: Iterable[str]) -> List[str]:
    return [c for c in columns if c != ROW_INDEX_COLUMN]


def _pick_column(
    columns: Sequence[str],
    explicit: Optional[str],
    candidates: Sequence[str],
    kind: str,
    flag: str,
    listed: Optional[Sequence[str]] = None,
) -> str:
    """``explicit`` if it is a column, else the first candidate present; ``listed`` is what errors show."""
    columns = list(columns)
    shown = _visible_columns(listed if listed is not None else columns)
    if explicit:
        if explicit in columns:
            return explicit
        for suffix in ("_file_name", "_path"):  # metadata name of a mask/image column loaded as an image
            if explicit.endswith(suffix) and explicit[: -len(suffix)] in columns:
                return explicit[: -len(suffix)]
        if explicit == "file_name" and "image" in columns:
            return "image"
        raise LADError(f"{flag} {explicit!r} is not a column; columns are {shown}")
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise LADError(
        f"cannot find the {kind} column among {shown}; pass {flag} "
        f"(looked for {', '.join(candidates[:6])}, ...)"
    )


def resolve_columns(
    dataset, image_column: Optional[str] = None, label_column: Optional[str] = None, require_label: bool = True
) -> Tuple[str, Optional[str]]:
    """(image column, label column) of a ``Dataset``/``DatasetDict`` (first split), auto-detected when `None`.

    Raises :class:`LADError` listing the existing columns when a given name is not a column or nothing matches.
    """
    columns = _column_names(dataset)
    image = _pick_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
    rest = [c for c in columns if c != image]
    try:
        label = _pick_column(rest, label_column, LABEL_COLUMN_CANDIDATES, "label (mask)", "--label_column", columns)
    except LADError:
        if require_label or label_column:
            if label_column == image:
                raise LADError(f"--label_column and --image_column are both {image!r}; columns are {_visible_columns(columns)}") from None
            raise
        label = None
    return image, label


def _column_names(dataset) -> List[str]:
    names = dataset.column_names
    if isinstance(names, dict):  # DatasetDict
        if not names:
            raise LADError("the dataset has no splits")
        names = next(iter(names.values()))
    return list(names)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def _is_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _canonical_split(name: str) -> str:
    return _SPLIT_ALIASES.get(name.lower(), name)


def _find_split(names: Iterable[str], wanted: str) -> Optional[str]:
    names = list(names)
    if wanted in names:
        return wanted
    canon = _canonical_split(wanted)
    for n in names:
        if _canonical_split(n) == canon:
            return n
    return None


def _split_of_file(rel_path: str, known: Iterable[str]) -> Optional[str]:
    """Split name of a data file from its folders (deepest match wins) or its file-name prefix."""
    known = {k.lower() for k in known} | set(_SPLIT_ALIASES)
    parts = rel_path.replace("\\", "/").split("/")
    for d in reversed(parts[:-1]):
        if d.lower() in known:
            return _canonical_split(d)
    stem = os.path.basename(parts[-1])
    token = re.split(r"[-_.]", stem, maxsplit=1)[0]
    if token.lower() in known:
        return _canonical_split(token)
    # e.g. "val2017-0000.parquet" when --eval_split val2017
    for k in sorted(known, key=len, reverse=True):
        if stem.lower().startswith(k + "-") or stem.lower().startswith(k + "_") or stem.lower().startswith(k + "."):
            return _canonical_split(k)
    return None


def _group_by_split(root: str, files: Sequence[str], known: Iterable[str]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    unknown: List[str] = []
    for f in sorted(files):
        split = _split_of_file(os.path.relpath(f, root), known)
        (groups.setdefault(split, []) if split else unknown).append(f)
    if not groups:
        return {"train": unknown}
    if unknown:
        logger.warning(
            "ignoring %d file(s) in %s whose split is not recognisable from their folder or name (e.g. %s)",
            len(unknown), root, os.path.relpath(unknown[0], root),
        )
    return groups


def _load_parquet(root: str, files: Sequence[str], known: Iterable[str], cache_dir: Optional[str]):
    import datasets

    data_files = _group_by_split(root, files, known)
    try:
        return datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - one readable line for the user
        empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(e))
        if empty:  # datasets' words for a split whose parquet files hold no rows
            raise LADError(f"{empty.group(1)} is empty: its parquet files in {root} hold no rows") from None
        raise LADError(f"cannot read the parquet files in {root}: {str(e).splitlines()[0]}") from None


def _read_metadata(path: str):
    import pandas as pd

    try:
        if path.endswith(".csv"):
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_json(path, lines=True, dtype=False)
    except Exception as e:  # noqa: BLE001
        raise LADError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def _load_image_folder(root: str, metadata_files: Sequence[str], data_args: DataArguments, known: Iterable[str]):
    """Image folder whose metadata.csv/.jsonl pairs ``file_name`` (image) with a mask-path column."""
    import datasets

    per_split: Dict[str, List[Dict[str, list]]] = {}
    image_name = label_name = None
    for meta_path in sorted(metadata_files):
        df = _read_metadata(meta_path)
        base = os.path.dirname(meta_path)
        cols = list(df.columns)
        if image_name is None:
            explicit_image = data_args.image_column if data_args.image_column in cols else None
            try:
                img_col = _pick_column(cols, explicit_image, IMAGE_PATH_COLUMN_CANDIDATES, "image path", "--image_column")
            except LADError:
                raise LADError(
                    f"{meta_path} needs a file_name column with the image paths; its columns are {cols}"
                ) from None
            rest = [c for c in cols if c != img_col and c != "split"]
            wanted = data_args.label_column
            if wanted and wanted not in rest:
                for suffix in ("_file_name", "_path"):
                    if wanted + suffix in rest:
                        wanted = wanted + suffix
                        break
            try:
                lbl_col = _pick_column(rest, wanted, MASK_PATH_COLUMN_CANDIDATES, "mask path", "--label_column", cols)
            except LADError:
                generic = [c for c in rest if c.endswith("_file_name")]
                if data_args.label_column or not generic:
                    raise LADError(
                        f"{meta_path}: no mask-path column (e.g. label_file_name) among {cols}; pass --label_column"
                    ) from None
                lbl_col = generic[0]
            image_name, label_name = img_col, lbl_col
        else:
            img_col, lbl_col = image_name, label_name
            if img_col not in df.columns or lbl_col not in df.columns:
                raise LADError(f"{meta_path} lacks column {img_col!r} or {lbl_col!r}; its columns are {cols}")

        rel_dir = os.path.relpath(base, root)
        folder_split = None if rel_dir == "." else _split_of_file(rel_dir + "/x", known)
        if "split" in df.columns:
            splits = [_canonical_split(str(s)) for s in df["split"]]
        else:
            splits = [folder_split or "train"] * len(df)

        images = [os.path.normpath(os.path.join(base, str(p))) for p in df[img_col]]
        masks = [os.path.normpath(os.path.join(base, str(p))) for p in df[lbl_col]]
        missing = [p for pair in zip(images, masks) for p in pair if not os.path.isfile(p)]
        keep = [True] * len(df)
        if missing:
            if not data_args.skip_bad_samples:
                raise LADError(
                    f"{meta_path}: {len(missing)} listed file(s) do not exist, e.g. {missing[:3]}; "
                    "fix the paths (relative to the metadata file) or pass --skip_bad_samples"
                )
            missing_set = set(missing)
            keep = [a not in missing_set and b not in missing_set for a, b in zip(images, masks)]
            logger.warning("%s: skipping %d row(s) with missing files, e.g. %s", meta_path, keep.count(False), missing[:3])

        extra = [c for c in cols if c not in (img_col, lbl_col, "split", "image", "label")]
        records = df[extra].to_dict("records") if extra else [{} for _ in range(len(df))]
        for i in range(len(df)):
            if keep[i]:
                per_split.setdefault(splits[i], []).append({**records[i], "image": images[i], "label": masks[i]})

    mask_out = label_name
    for suffix in ("_file_name", "_path"):
        if mask_out.endswith(suffix):
            mask_out = mask_out[: -len(suffix)]
    if mask_out in ("", "image", "file_name"):
        mask_out = "label"

    out = {}
    for split, rows in per_split.items():
        columns = {"image": [r["image"] for r in rows], mask_out: [r["label"] for r in rows]}
        for c in rows[0]:
            if c not in ("image", "label") and c not in columns:
                columns[c] = [r[c] for r in rows]
        ds = datasets.Dataset.from_dict(columns)
        ds = ds.cast_column("image", datasets.Image()).cast_column(mask_out, datasets.Image())
        out[split] = ds
    if not out:
        raise LADError(f"the metadata files in {root} list no rows")
    return datasets.DatasetDict(out)


def _load_local(path: str, data_args: DataArguments, cache_dir: Optional[str]):
    import datasets

    known = {data_args.train_split, data_args.eval_split}
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            return _load_parquet(os.path.dirname(path), [path], {"train"}, cache_dir)
        raise LADError(f"--dataset_name {path} is a file; give a .parquet file or a folder (parquet, save_to_disk, metadata.csv)")

    if os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json")):
        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:  # noqa: BLE001
            raise LADError(f"cannot load the save_to_disk folder {path}: {str(e).splitlines()[0]}") from None
        return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})

    meta = [
        f
        for name in METADATA_FILES
        for f in glob.glob(os.path.join(glob.escape(path), "**", name), recursive=True)
    ]
    if meta:
        return _load_image_folder(path, meta, data_args, known)

    parquet = glob.glob(os.path.join(glob.escape(path), "**", "*.parquet"), recursive=True)
    if parquet:
        return _load_parquet(path, parquet, known, cache_dir)

    # One save_to_disk Dataset per split sub-folder.
    subs = {}
    for entry in sorted(os.listdir(path)):
        sub = os.path.join(path, entry)
        if os.path.isfile(os.path.join(sub, "state.json")):
            subs[_canonical_split(entry)] = datasets.load_from_disk(sub)
    if subs:
        return datasets.DatasetDict(subs)
    raise LADError(
        f"folder {path} holds no parquet files, no metadata.csv/metadata.jsonl and is not a save_to_disk folder; "
        "see --dataset_name for the supported layouts"
    )


def _load_hub(data_args: DataArguments, cache_dir, token, trust_remote_code):
    import datasets

    name = data_args.dataset_name
    kwargs = dict(revision=data_args.dataset_revision, data_dir=data_args.data_dir, cache_dir=cache_dir, token=token)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        ds = datasets.load_dataset(name, data_args.dataset_config_name, **kwargs)
    except ConnectionError as e:
        if _is_offline():
            raise LADError(
                f"dataset {name!r} not found locally and the Hub is offline (HF_HUB_OFFLINE=1); "
                "download it once online, or pass a local folder (parquet, save_to_disk, metadata.csv)"
            ) from None
        raise LADError(f"cannot reach the Hub for dataset {name!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError, bad config name, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ in ("DatasetNotFoundError", "FileNotFoundError", "FileNotFoundDatasetsError"):
            raise LADError(
                f"dataset {name!r} is neither a local path nor a Hub dataset ({msg}); check --dataset_name"
            ) from None
        raise LADError(f"cannot load dataset {name!r}: {msg}") from None
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    return ds


def _hub_id2label(data_args: DataArguments, cache_dir, token) -> Optional[Dict[int, str]]:
    try:
        from huggingface_hub import hf_hub_download

        repo, filename = _KNOWN_LABEL_FILES.get(data_args.dataset_name, (data_args.dataset_name, "id2label.json"))
        revision = None if repo != data_args.dataset_name else data_args.dataset_revision
        path = hf_hub_download(repo, filename, repo_type="dataset", revision=revision, cache_dir=cache_dir, token=token)
        return parse_id2label(path)
    except Exception:  # noqa: BLE001 - optional file
        return None


def _classlabel_names(feature) -> Optional[List[str]]:
    import datasets

    while feature is not None:
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        feature = getattr(feature, "feature", None)
    return None


def _local_id2label(path: str, data_dir: Optional[str]) -> Optional[Dict[int, str]]:
    roots = [os.path.join(path, data_dir)] if data_dir else []
    roots += [path if os.path.isdir(path) else os.path.dirname(path)]
    for root in roots:
        f = os.path.join(root, "id2label.json")
        if os.path.isfile(f):
            return parse_id2label(f)
    return None


def _add_row_index(ds):
    if ROW_INDEX_COLUMN in ds.column_names:
        return ds
    return ds.add_column(ROW_INDEX_COLUMN, np.arange(len(ds), dtype=np.int64))


def load_segmentation_dataset(
    data_args: DataArguments,
    seed: int = 42,
    *,
    cache_dir: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    trust_remote_code: bool = False,
    require_train: bool = False,
):
    """Load the data named by ``data_args`` -> ``(DatasetDict, id2label)``.

    The returned ``DatasetDict`` holds ``"train"`` and/or ``"validation"`` (whichever exist, the latter possibly
    carved from train with ``--train_val_split``), each truncated by ``--max_*_samples`` and carrying
    :data:`ROW_INDEX_COLUMN`. Rows are raw (no transform); call :func:`apply_transforms` next.

    ``id2label`` (``{int: str}``, ids 0..K-1) comes from ``--id2label``, else the label column's ``ClassLabel``
    names, else ``id2label.json`` next to the data (local folder) or in the Hub dataset repo; with
    ``--do_reduce_labels`` it goes through :func:`reduce_id2label`. Without any source it raises
    :class:`LADError` asking for ``--id2label``.
    """
    import datasets

    name = data_args.dataset_name
    if not name:
        raise LADError("no dataset given: pass --dataset_name (Hub id, or a local parquet/save_to_disk/image folder)")
    local = os.path.expanduser(name)
    if data_args.data_dir and os.path.isdir(local):
        local = os.path.join(local, data_args.data_dir)
    looks_local = local.startswith((".", "/", "~")) or os.path.isabs(local) or name.count("/") > 1 or name.endswith(".parquet")
    if os.path.exists(local):
        raw = _load_local(local, data_args, cache_dir)
        is_local = True
    elif looks_local:
        raise LADError(f"dataset path {local} does not exist; check --dataset_name (a folder, .parquet file or Hub id)")
    else:
        raw = _load_hub(data_args, cache_dir, token, trust_remote_code)
        is_local = False

    available = list(raw.keys())
    train_key = _find_split(available, data_args.train_split)
    eval_key = _find_split(available, data_args.eval_split)
    for flag, wanted, found, default in (
        ("--train_split", data_args.train_split, train_key, "train"),
        ("--eval_split", data_args.eval_split, eval_key, "validation"),
    ):
        if found is None and wanted != default:
            raise LADError(f"{flag} {wanted!r} is not a split of {name}; splits are {available}")
    if train_key is None and eval_key is None:
        raise LADError(
            f"{name} has neither a {data_args.train_split!r} nor a {data_args.eval_split!r} split; splits are "
            f"{available}; pass --train_split/--eval_split"
        )
    if require_train and train_key is None:
        raise LADError(f"{name} has no {data_args.train_split!r} split to train on; splits are {available}; pass --train_split")

    out: Dict[str, Any] = {}
    if train_key is not None:
        out["train"] = _add_row_index(raw[train_key])
    if eval_key is not None:
        out["validation"] = _add_row_index(raw[eval_key])
    elif data_args.train_val_split and "train" in out:
        # As Dataset.train_test_split (same permutation for a seed), with indices kept in memory: no cache files
        # are written next to a user's save_to_disk folder.
        n = len(out["train"])
        n_test = int(math.ceil(data_args.train_val_split * n))
        if n_test < 1 or n - n_test < 1:
            raise LADError(f"--train_val_split {data_args.train_val_split} cannot split {n} training row(s) in two")
        perm = np.random.default_rng(seed).permutation(n)
        train_ds = out["train"]
        out["validation"] = train_ds.select(perm[:n_test], keep_in_memory=True)
        out["train"] = train_ds.select(perm[n_test:], keep_in_memory=True)
        logger.info("carved %d validation rows from %d training rows (seed %d)", len(out["validation"]), n, seed)
    else:
        logger.warning("%s has no %r split; evaluation needs --train_val_split or --eval_split", name, data_args.eval_split)

    for key, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if key in out and limit is not None and limit < len(out[key]):
            out[key] = out[key].select(range(int(limit)))
    dsd = datasets.DatasetDict(out)

    image_col, label_col = resolve_columns(dsd, data_args.image_column, data_args.label_column)

    # Label names.
    id2label: Optional[Dict[int, str]] = None
    if data_args.id2label:
        id2label = parse_id2label(data_args.id2label)
    if id2label is None:
        names = _classlabel_names(next(iter(dsd.values())).features.get(label_col))
        if names:
            id2label = dict(enumerate(names))
    if id2label is None and is_local:
        id2label = _local_id2label(os.path.expanduser(name), data_args.data_dir)
    if id2label is None and not is_local:
        id2label = _hub_id2label(data_args, cache_dir, token)
    if id2label is None:
        raise LADError(
            f"no class names found for {name} (no ClassLabel feature, no id2label.json); pass --id2label, e.g. "
            '\'{"0": "background", "1": "person"}\' or a JSON file, so the number of classes is known'
        )
    if data_args.do_reduce_labels:
        id2label = reduce_id2label(id2label)
    if not id2label:
        raise LADError("id2label is empty after --do_reduce_labels; give at least one class besides background")
    return dsd, id2label


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------


def _as_triplet(values, name: str) -> Tuple[float, float, float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise LADError(f"{name} needs 3 values (R G B), got {vals}")
    return tuple(vals)  # type: ignore[return-value]


def _nearest_index(out_len: int, in_len: int) -> np.ndarray:
    """Source indices of nearest-neighbour resizing (pixel centres, as PIL's NEAREST)."""
    idx = np.floor((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.int64)
    return np.minimum(idx, in_len - 1)


def _resize_label(label: np.ndarray, h: int, w: int) -> np.ndarray:
    if label.shape == (h, w):
        return label
    return label[_nearest_index(h, label.shape[0])][:, _nearest_index(w, label.shape[1])]


class _BaseTransform:
    """Shared plumbing: column lookup, decoding, size check, bad-sample handling."""

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        ignore_index: int = 255,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        label_colors: Optional[Union[str, Mapping]] = None,
        do_reduce_labels: bool = False,
        skip_bad_samples: bool = False,
    ):
        self.mean = _as_triplet(mean, "image_mean")
        self.std = _as_triplet(std, "image_std")
        if any(s <= 0 for s in self.std):
            raise LADError(f"image_std values must be > 0, got {list(self.std)}")
        self.ignore_index = int(ignore_index)
        self.image_column = image_column
        self.label_column = label_column
        self.label_colors = parse_label_colors(label_colors) if isinstance(label_colors, str) else label_colors
        self.do_reduce_labels = do_reduce_labels
        self.skip_bad_samples = skip_bad_samples
        self._mean_np = np.asarray(self.mean, dtype=np.float32) * 255.0
        self._scale_np = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        self._columns: Optional[Tuple[str, Optional[str]]] = None

    def _resolve(self, keys: Sequence[str]) -> Tuple[str, Optional[str]]:
        if self._columns is None or self._columns[0] not in keys:
            image = _pick_column(keys, self.image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
            rest = [k for k in keys if k != image]
            try:
                label = _pick_column(rest, self.label_column, LABEL_COLUMN_CANDIDATES, "label (mask)", "--label_column", keys)
            except LADError:
                if self.label_column:
                    raise
                label = None  # images only (prediction)
            self._columns = (image, label)
        return self._columns

    def normalize(self, image_hwc_uint8: np.ndarray) -> np.ndarray:
        """uint8 [H,W,3] -> float32 [3,H,W] of (x/255 - mean) / std."""
        x = (image_hwc_uint8.astype(np.float32) - self._mean_np) * self._scale_np
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _decode(self, image_cell, label_cell, where: str) -> Tuple[PILImage.Image, Optional[np.ndarray]]:
        try:
            image = load_image(image_cell)
            label = None
            if label_cell is not None or self._columns[1] is not None:
                label = decode_mask(label_cell, self.label_colors, self.do_reduce_labels, self.ignore_index)
        except LADError as e:
            raise LADError(f"{where}: {e}") from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated / unidentified files
            raise LADError(f"{where}: cannot decode the image or mask ({str(e).splitlines()[0]})") from None
        if label is not None and label.shape != (image.size[1], image.size[0]):
            raise LADError(
                f"{where}: image is {image.size[1]}x{image.size[0]} (HxW) but its mask is "
                f"{label.shape[0]}x{label.shape[1]}; fix the data or pass --skip_bad_samples"
            )
        return image, label

    def _blank(self, size: Tuple[int, int], with_label: bool) -> Dict[str, torch.Tensor]:
        out = {"pixel_values": torch.zeros(3, *size, dtype=torch.float32)}
        if with_label:
            out["labels"] = torch.full(size, self.ignore_index, dtype=torch.int64)
        return out

    def _sample(self, image: PILImage.Image, label: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def _fallback_size(self, image_cell) -> Tuple[int, int]:
        raise NotImplementedError

    def __call__(self, batch: Dict[str, list]) -> Dict[str, list]:
        image_col, label_col = self._resolve(list(batch.keys()))
        images = batch[image_col]
        labels = batch[label_col] if label_col is not None else [None] * len(images)
        rows = batch.get(ROW_INDEX_COLUMN)
        pixel_values, out_labels = [], []
        for i, (image_cell, label_cell) in enumerate(zip(images, labels)):
            where = f"row {rows[i]}" if rows is not None else f"sample {i} of the batch"
            try:
                image, label = self._decode(image_cell, label_cell, where)
                sample = self._sample(image, label)
            except LADError as e:
                if not self.skip_bad_samples:
                    raise
                logger.warning("skipping bad sample (all-ignore substitute): %s", e)
                sample = self._blank(self._fallback_size(image_cell), label_col is not None)
            pixel_values.append(sample["pixel_values"])
            if "labels" in sample:
                out_labels.append(sample["labels"])
        out = {"pixel_values": pixel_values}
        if label_col is not None:
            out["labels"] = out_labels
        return out


class TrainTransform(_BaseTransform):
    """Random resize, pad, random crop, horizontal flip and normalisation of a batch of rows.

    For each row: convert the image to RGB and decode the mask (:func:`decode_mask`); resize both by a ratio
    drawn uniformly from ``[min_scale, max_scale]`` (image bilinear, mask nearest); pad to at least
    ``crop_size`` on the bottom/right (image with 0 *in normalised space*, mask with ``ignore_index``); take a
    random ``crop_size`` crop; flip horizontally with probability ``hflip_prob``; normalise with
    ``(x / 255 - mean) / std``. Returns ``{"pixel_values": [float32 [3,h,w]], "labels": [int64 [h,w]]}``.

    Randomness uses Python's ``random`` module, which the ``Trainer`` seeds per dataloader worker.
    """

    def __init__(
        self,
        crop_size: Union[int, Tuple[int, int]] = 512,
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        hflip_prob: float = 0.5,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        ignore_index: int = 255,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        label_colors: Optional[Union[str, Mapping]] = None,
        do_reduce_labels: bool = False,
        skip_bad_samples: bool = False,
    ):
        super().__init__(mean, std, ignore_index, image_column, label_column, label_colors, do_reduce_labels, skip_bad_samples)
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if ch < 1 or cw < 1:
            raise LADError(f"crop_size must be positive, got {crop_size}")
        if not (0 < min_scale <= max_scale):
            raise LADError(f"need 0 < min_scale <= max_scale, got {min_scale} and {max_scale}")
        if not (0.0 <= hflip_prob <= 1.0):
            raise LADError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.crop_size = (int(ch), int(cw))
        self.min_scale, self.max_scale, self.hflip_prob = float(min_scale), float(max_scale), float(hflip_prob)

    def _fallback_size(self, image_cell) -> Tuple[int, int]:
        return self.crop_size

    def _sample(self, image: PILImage.Image, label: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
        ch, cw = self.crop_size
        w0, h0 = image.size
        scale = random.uniform(self.min_scale, self.max_scale)
        h, w = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
        if (w, h) != (w0, h0):
            image = image.resize((w, h), PILImage.BILINEAR)
        # Crop window in the padded (bottom/right) canvas of size max(h, ch) x max(w, cw).
        top = random.randint(0, max(h, ch) - ch)
        left = random.randint(0, max(w, cw) - cw)
        vh, vw = max(0, min(h, top + ch) - top), max(0, min(w, left + cw) - left)  # valid (unpadded) part
        region = np.asarray(image.crop((left, top, left + vw, top + vh)), dtype=np.uint8)
        pixel_values = np.zeros((3, ch, cw), dtype=np.float32)
        pixel_values[:, :vh, :vw] = self.normalize(region.reshape(vh, vw, 3))
        labels = None
        if label is not None:
            labels = np.full((ch, cw), self.ignore_index, dtype=np.int64)
            rows = _nearest_index(h, h0)[top : top + vh]
            cols = _nearest_index(w, w0)[left : left + vw]
            labels[:vh, :vw] = label[rows][:, cols]
        if random.random() < self.hflip_prob:
            pixel_values = pixel_values[:, :, ::-1]
            if labels is not None:
                labels = labels[:, ::-1]
        out = {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values))}
        if labels is not None:
            out["labels"] = torch.from_numpy(np.ascontiguousarray(labels))
        return out


class EvalTransform(_BaseTransform):
    """Whole-image evaluation transform: RGB, optional square resize, normalisation.

    ``resize=None`` keeps the full image (the collator pads a batch to its largest size); an int resizes the
    image (bilinear) and the mask (nearest) to ``resize x resize``. Output as :class:`TrainTransform`; rows
    without a label column give only ``pixel_values``.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        resize: Optional[int] = None,
        ignore_index: int = 255,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        label_colors: Optional[Union[str, Mapping]] = None,
        do_reduce_labels: bool = False,
        skip_bad_samples: bool = False,
    ):
        super().__init__(mean, std, ignore_index, image_column, label_column, label_colors, do_reduce_labels, skip_bad_samples)
        if resize is not None and int(resize) < 1:
            raise LADError(f"eval resize must be a positive int or None, got {resize}")
        self.resize = None if resize is None else int(resize)

    def _fallback_size(self, image_cell) -> Tuple[int, int]:
        if self.resize:
            return self.resize, self.resize
        try:
            return _size_of(image_cell)
        except Exception:  # noqa: BLE001
            return 32, 32

    def _sample(self, image: PILImage.Image, label: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
        if self.resize is not None:
            r = self.resize
            if image.size != (r, r):
                image = image.resize((r, r), PILImage.BILINEAR)
            if label is not None:
                label = _resize_label(label, r, r)
        out = {"pixel_values": torch.from_numpy(self.normalize(np.asarray(image, dtype=np.uint8)))}
        if label is not None:
            out["labels"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return out


def _mean_std(data_args: DataArguments, image_processor=None) -> Tuple[Sequence[float], Sequence[float]]:
    mean = data_args.image_mean or getattr(image_processor, "image_mean", None) or IMAGENET_DEFAULT_MEAN
    std = data_args.image_std or getattr(image_processor, "image_std", None) or IMAGENET_DEFAULT_STD
    return list(mean), list(std)


def build_transforms(data_args: DataArguments, image_processor=None) -> Tuple[TrainTransform, EvalTransform]:
    """``(train_fn, eval_fn)`` from ``data_args``; mean/std from the args, else the image processor's
    ``image_mean``/``image_std``, else ImageNet's. Columns are auto-detected per batch when not given."""
    mean, std = _mean_std(data_args, image_processor)
    common = dict(
        mean=mean,
        std=std,
        ignore_index=data_args.ignore_index,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        label_colors=parse_label_colors(data_args.label_colors),
        do_reduce_labels=data_args.do_reduce_labels,
        skip_bad_samples=data_args.skip_bad_samples,
    )
    train_fn = TrainTransform(
        crop_size=data_args.crop_size,
        min_scale=data_args.min_scale,
        max_scale=data_args.max_scale,
        hflip_prob=data_args.hflip_prob,
        **common,
    )
    eval_fn = EvalTransform(resize=data_args.eval_resize, **common)
    return train_fn, eval_fn


def _undecoded(ds, columns: Sequence[str]):
    """Image columns switched to ``decode=False``: the transforms decode (and catch bad files) themselves."""
    import datasets

    for col in columns:
        feat = ds.features.get(col)
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def apply_transforms(dataset_dict, data_args: DataArguments, image_processor=None):
    """Attach the lazy transforms: ``train`` gets the training transform, every other split the eval one.

    Columns are resolved now (so a wrong ``--image_column`` fails before training starts) and image columns
    are read undecoded so the transforms can name and, with ``--skip_bad_samples``, skip unreadable rows.
    """
    import datasets

    train_fn, eval_fn = build_transforms(data_args, image_processor)
    image_col, label_col = resolve_columns(dataset_dict, data_args.image_column, data_args.label_column)
    for fn in (train_fn, eval_fn):
        fn.image_column, fn.label_column = image_col, label_col
    out = {}
    for split, ds in dataset_dict.items():
        ds = _undecoded(ds, [image_col, label_col])
        out[split] = ds.with_transform(train_fn if split == "train" else eval_fn)
    return datasets.DatasetDict(out)


# ---------------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------------


class SegmentationCollator:
    """Stack ``pixel_values`` [3,h,w] and ``labels`` [h,w] into a batch.

    Samples of different sizes (whole-image evaluation) are padded bottom/right to the largest height and
    width, images with 0 and labels with ``ignore_index``; ``pad_to_multiple_of`` rounds H and W up further
    (e.g. 14 for DINOv2, 32 for most CNNs).
    """

    def __init__(self, ignore_index: int = 255, pad_to_multiple_of: Optional[int] = None, num_labels: Optional[int] = None):
        self.num_labels = num_labels
        if pad_to_multiple_of is not None and int(pad_to_multiple_of) < 1:
            raise LADError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of}")
        self.ignore_index = int(ignore_index)
        self.pad_to_multiple_of = None if pad_to_multiple_of is None else int(pad_to_multiple_of)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        if not features:
            raise LADError("cannot collate an empty batch")
        images = [torch.as_tensor(np.asarray(f["pixel_values"], dtype=np.float32)) if not isinstance(f["pixel_values"], torch.Tensor) else f["pixel_values"] for f in features]
        has_labels = all(f.get("labels") is not None for f in features)
        labels = [torch.as_tensor(f["labels"]) for f in features] if has_labels else None
        H = max(int(x.shape[-2]) for x in images)
        W = max(int(x.shape[-1]) for x in images)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            H, W = int(math.ceil(H / m) * m), int(math.ceil(W / m) * m)
        C = int(images[0].shape[0])
        pixel_values = torch.zeros(len(images), C, H, W, dtype=torch.float32)
        for i, x in enumerate(images):
            pixel_values[i, :, : x.shape[-2], : x.shape[-1]] = x
        batch = {"pixel_values": pixel_values}
        if labels is not None:
            out = torch.full((len(labels), H, W), self.ignore_index, dtype=torch.int64)
            for i, y in enumerate(labels):
                out[i, : y.shape[-2], : y.shape[-1]] = y
            if self.num_labels is not None:
                from .noising import check_labels

                check_labels(out, self.num_labels, self.ignore_index)
            batch["labels"] = out
        return batch


def build_collator(data_args: DataArguments, num_labels: Optional[int] = None) -> SegmentationCollator:
    """The collator for ``data_args``; with ``num_labels`` it also checks every batch's label values (in the workers)."""
    return SegmentationCollator(ignore_index=data_args.ignore_index, pad_to_multiple_of=data_args.pad_to_multiple_of,
                                num_labels=num_labels)


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def validate_dataset_sample(
    dataset,
    num_labels: int,
    ignore_index: int = 255,
    n: int = 32,
    *,
    data_args: Optional[DataArguments] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    label_colors: Optional[Union[str, Mapping]] = None,
    do_reduce_labels: Optional[bool] = None,
    split: str = "dataset",
) -> Dict[str, Any]:
    """Check the first ``n`` raw rows (any transform is bypassed) before a long run.

    Raises :class:`LADError` for: an empty dataset; an image and mask of different sizes; label values
    ``>= num_labels`` (or negative) that are not ``ignore_index``; fewer than two classes across the sampled
    masks. Column names, colours and label reduction default to ``data_args`` when given. A ``DatasetDict``
    is checked split by split. Returns ``{"rows_checked", "classes_seen"}`` (for a dict: per split).
    """
    if isinstance(dataset, dict):  # DatasetDict
        return {
            name: validate_dataset_sample(
                ds, num_labels, ignore_index, n, data_args=data_args, image_column=image_column,
                label_column=label_column, label_colors=label_colors, do_reduce_labels=do_reduce_labels, split=name,
            )
            for name, ds in dataset.items()
        }
    if data_args is not None:
        image_column = image_column or data_args.image_column
        label_column = label_column or data_args.label_column
        label_colors = label_colors if label_colors is not None else data_args.label_colors
        do_reduce_labels = data_args.do_reduce_labels if do_reduce_labels is None else do_reduce_labels
    colors = parse_label_colors(label_colors) if isinstance(label_colors, str) else label_colors
    if len(dataset) == 0:
        raise LADError(f"{split} is empty; check --dataset_name/--{'eval' if split == 'validation' else 'train'}_split")
    raw = dataset.with_format(None) if getattr(dataset, "format", {}).get("type") is not None else dataset
    image_col, label_col = resolve_columns(raw, image_column, label_column)
    k = min(int(n), len(raw))
    rows = _undecoded(raw.select(range(k)), [image_col, label_col])  # we decode: a bad file names its row
    seen: set = set()
    for i in range(k):
        row = rows[i]
        rid = row.get(ROW_INDEX_COLUMN, i)
        try:
            image = load_image(row[image_col])  # a full decode: truncated files fail here, not mid-training
            h, w = image.size[1], image.size[0]
            label = decode_mask(row[label_col], colors, bool(do_reduce_labels), ignore_index)
        except LADError as e:
            raise LADError(f"{split} row {rid}: {e}") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise LADError(
                f"{split} row {rid}: cannot decode the image or mask ({str(e).splitlines()[0]}); fix or remove the "
                "file, or pass --skip_bad_samples to drop such rows"
            ) from None
        if label.shape != (h, w):
            raise LADError(
                f"{split} row {rid}: image is {h}x{w} (HxW) but its mask is {label.shape[0]}x{label.shape[1]}; "
                "fix the data or pass --skip_bad_samples"
            )
        values = np.unique(label)
        bad = values[((values >= num_labels) | (values < 0)) & (values != ignore_index)]
        if bad.size:
            shown = bad[:10].tolist()
            raise LADError(
                f"{split} row {rid}: label values {shown} are outside 0..{num_labels - 1} and not ignore_index="
                f"{ignore_index}; pass --do_reduce_labels if 0 is background, an --id2label listing all "
                f"classes, or the right --ignore_index"
            )
        seen.update(int(v) for v in values if v != ignore_index)
    if len(seen) < 2:
        raise LADError(
            f"{split}: the first {k} masks contain only class(es) {sorted(seen)} besides ignore_index={ignore_index}; "
            "segmentation needs >= 2 classes; check --label_column, --label_colors and --do_reduce_labels"
        )
    return {"rows_checked": k, "classes_seen": sorted(seen)}


def drop_bad_samples(
    dataset,
    data_args: Optional[DataArguments] = None,
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    split: str = "dataset",
):
    """``--skip_bad_samples``: decode every row once and drop the unreadable ones -> ``(dataset, dropped row ids)``.

    A row is dropped when its image or mask cannot be decoded (corrupt or truncated file, RGB mask with unknown
    colours) or when the mask's size differs from the image's. Each dropped row is logged; the caller reports the
    count at the end of the run. Costs one full decode of the split.
    """
    if len(dataset) == 0:
        return dataset, []
    image_column = image_column or (data_args.image_column if data_args else None)
    label_column = label_column or (data_args.label_column if data_args else None)
    colors = parse_label_colors(data_args.label_colors) if data_args is not None else None
    reduce = bool(data_args.do_reduce_labels) if data_args is not None else False
    ignore_index = data_args.ignore_index if data_args is not None else 255
    raw = dataset.with_format(None) if getattr(dataset, "format", {}).get("type") is not None else dataset
    image_col, label_col = resolve_columns(raw, image_column, label_column)
    cols = [image_col, label_col] + ([ROW_INDEX_COLUMN] if ROW_INDEX_COLUMN in raw.column_names else [])
    cells = _undecoded(raw.select_columns(cols), [image_col, label_col])
    keep: List[int] = []
    dropped: List[int] = []
    for i, row in enumerate(cells):
        rid = int(row.get(ROW_INDEX_COLUMN, i))
        try:
            image = load_image(row[image_col])
            label = decode_mask(row[label_col], colors, reduce, ignore_index)
            if label.shape != (image.size[1], image.size[0]):
                raise LADError(f"image is {image.size[1]}x{image.size[0]} (HxW) but its mask is {label.shape[0]}x{label.shape[1]}")
        except (LADError, OSError, ValueError, SyntaxError) as e:
            logger.warning("%s row %d dropped (--skip_bad_samples): %s", split, rid, str(e).splitlines()[0] if str(e) else type(e).__name__)
            dropped.append(rid)
            continue
        keep.append(i)
    if dropped:
        dataset = dataset.select(keep, keep_in_memory=True)
    return dataset, dropped
