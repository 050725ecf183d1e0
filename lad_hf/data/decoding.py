"""Decoding dataset cells: an image cell -> RGB PIL image, a mask cell -> int64 class indices [H, W]."""

from __future__ import annotations

import io
import logging
import os
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image as PILImage

from ..errors import LADError
from .label_sets import LabelLUT
from .labels import parse_label_colors

logger = logging.getLogger(__name__)

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


_EXIF_ORIENTATION = 0x0112  # PIL.ExifTags.Base.Orientation
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL's convert("RGB") clips these: rescale ourselves


def _exif_orientation(img: PILImage.Image) -> Optional[int]:
    try:
        return img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001  malformed EXIF: datasets would fail on it too; keep the stored orientation
        return None


def _exif_transpose(img: PILImage.Image) -> PILImage.Image:
    """Rotate/flip to the EXIF orientation, as `datasets.Image` does when it decodes (a phone JPEG with
    Orientation=6 is stored sideways; its mask is drawn on the displayed, upright picture)."""
    if _exif_orientation(img) in (None, 1):
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def require_finite(arr: np.ndarray, what: str) -> None:
    """Raise `LADError` when a float array holds NaN/inf (casting them gives garbage, never an error)."""
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise LADError(
            f"{what} has {n} non-finite value(s) (NaN or inf) out of {arr.size}; fix the data (e.g. np.nan_to_num) "
            "or pass --skip_bad_samples to skip such rows"
        )


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixel array of any dtype -> uint8 0..255: bool x255; floats in [0, 1] x255, else taken as 0..255;
    uint16 (16-bit PNG/TIFF) /257; wider ints by their range (<= 255: 8 bit, <= 65535: 16 bit, else the dtype's)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        require_finite(arr, "image")
        x = arr.astype(np.float64)
        if x.size and x.max() <= 1.0:
            x *= 255.0
    elif arr.dtype.kind in "iu":
        x = arr.astype(np.float64)
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
            top = 65535.0
        else:
            peak = int(arr.max()) if arr.size else 0
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else float(np.iinfo(arr.dtype).max)
        if top != 255.0:
            x *= 255.0 / top
    else:
        raise LADError(f"image array has dtype {arr.dtype}; expected uint8, uint16, int, float or bool pixels")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_image(value: Any) -> PILImage.Image:
    """A dataset cell (PIL image, `{"bytes", "path"}` dict, path, array HWC/CHW) -> RGB PIL image.

    Encoded images are turned upright by their EXIF orientation (as `datasets.Image` does). 16-bit images
    (`I;16` PNGs, uint16 arrays) are scaled to 8 bit (/257), `I`/`F` images and arrays as `_to_uint8`;
    NaN/inf pixels raise `LADError`.
    """
    img = _open_any(value)
    if isinstance(img, PILImage.Image):
        img.load()  # decode now (PIL is lazy): a truncated file fails here, where the caller names the row
        img = _exif_transpose(img)
        if img.mode in _WIDE_MODES:
            img = np.asarray(img)
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise LADError(f"image array must be HxW, HxWxC or CxHxW, got shape {tuple(img.shape)}")
        img = PILImage.fromarray(_to_uint8(arr[..., :3] if arr.ndim == 3 else arr))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def image_size(value: Any) -> Tuple[int, int]:
    """(H, W) of an image or mask cell, reading only the header of encoded images."""
    obj = _open_any(value)
    if isinstance(obj, PILImage.Image):
        if _exif_orientation(obj) in (5, 6, 7, 8):  # load_image turns these by 90 degrees
            return obj.size[0], obj.size[1]
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
    label_map: Optional[Union[LabelLUT, Mapping[int, Optional[int]]]] = None,
) -> np.ndarray:
    """A mask cell -> class indices, `int64` [H, W].

    * `L`/`I`/`I;16`/`1`/`F` images and 2-D arrays hold class indices directly.
    * `P` (palette) images give their palette *indices* (VOC style), never the palette colours.
    * RGB/RGBA masks need `label_colors` (colour -> id); unknown colours raise `LADError` listing up
      to 5 of them. Without `label_colors`, an RGB mask whose three channels are equal is read as grayscale
      indices; otherwise it raises.
    * `label_map`: raw value -> train id (`--label_set`/`--label_map`), a `LabelLUT` or a mapping
      (unlisted values -> `ignore_index`), applied to the decoded values with one table lookup.
    * `do_reduce_labels`: 0 -> `ignore_index`, k -> k-1, `ignore_index` stays `ignore_index` (after
      `label_map` if both are given; callers normally pass one of them).
    """
    if label_map is not None and not isinstance(label_map, LabelLUT):
        label_map = LabelLUT.from_mapping(label_map, ignore_index=ignore_index)
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
            if label_map is not None and arr.dtype == np.uint8:
                out, label_map = label_map(arr[..., 0]), None
            else:
                out = arr[..., 0].astype(np.int64)
        else:
            raise LADError(
                "mask is RGB with coloured pixels; pass --label_colors (JSON mapping \"r,g,b\" -> class id) "
                "or convert the masks to L/P images of class ids"
            )
    else:
        if arr.dtype.kind == "f":
            require_finite(arr, "mask")  # NaN would become label -9223372036854775808
            arr = np.rint(arr)
        if label_map is not None and arr.dtype == np.uint8:  # common case: one lookup, no int64 copy first
            out, label_map = label_map(arr), None
        else:
            out = arr.astype(np.int64)

    if label_map is not None:
        out = label_map(out)
    if do_reduce_labels:
        keep = out == ignore_index
        zero = out == 0
        out = out - 1
        out[zero | keep] = ignore_index
    return np.ascontiguousarray(out)
