"""Pictures of predictions: a per-class palette, class maps blended over images, a legend, evaluation panels.

    overlay = (1 - α)·image + α·palette[mask]   on pixels whose class is not ignored (α = 0.5)
"""

from __future__ import annotations

import colorsys
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GOLDEN = 0.618033988749895


def palette(num_labels: int) -> np.ndarray:
    """[K, 3] uint8 colours, distinct and stable per class id: hues spaced by the golden ratio, two saturations."""
    out = np.zeros((max(num_labels, 1), 3), dtype=np.uint8)
    for k in range(num_labels):
        hue = (k * _GOLDEN) % 1.0
        sat, val = (0.75, 0.95) if k % 2 == 0 else (0.55, 0.75)
        out[k] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)]
    return out


def colorize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Class map [H, W] -> RGB [H, W, 3] uint8; values outside [0, K) (ignore, padding) are black."""
    mask = np.asarray(mask)
    valid = (mask >= 0) & (mask < len(colours))
    rgb = np.zeros(mask.shape + (3,), dtype=np.uint8)
    rgb[valid] = colours[mask[valid].astype(np.int64)]
    return rgb


def blend(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image [H, W, 3] uint8 with the class colours blended in (1 - α)·image + α·colour; ignored pixels as is."""
    mask = np.asarray(mask)
    valid = ((mask >= 0) & (mask < len(colours)))[..., None]
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, colours).astype(np.float32)
    return np.where(valid, mixed, image).round().clip(0, 255).astype(np.uint8)


def _class_name(k: int, id2label: Optional[Mapping]) -> str:
    if id2label and (k in id2label or str(k) in id2label):
        return str(id2label.get(k, id2label.get(str(k))))
    return str(k)


def legend(classes: Sequence[int], colours: np.ndarray, id2label: Optional[Mapping] = None, height: int = 0,
           row: int = 14) -> Image.Image:
    """A white column listing each class id of `classes` with its colour swatch and name."""
    font = ImageFont.load_default()
    names = [f"{k} {_class_name(k, id2label)}" for k in classes]
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 8 + row + 6 + max((int(draw_probe.textlength(n, font=font)) for n in names), default=0) + 8
    img = Image.new("RGB", (width, max(height, 8 + row * len(classes) + 4)), "white")
    draw = ImageDraw.Draw(img)
    for i, (k, name) in enumerate(zip(classes, names)):
        top = 4 + i * row
        draw.rectangle([8, top + 1, 8 + row - 3, top + row - 2], fill=tuple(int(c) for c in colours[k]), outline="black")
        draw.text((8 + row + 4, top), name, fill="black", font=font)
    return img


def overlay_image(image: np.ndarray, mask: np.ndarray, num_labels: int, id2label: Optional[Mapping] = None,
                  alpha: float = 0.5) -> Image.Image:
    """The blended image with a legend of the classes present in `mask` on its right."""
    colours = palette(num_labels)
    mixed = Image.fromarray(blend(image, mask, colours, alpha))
    present = [int(k) for k in np.unique(mask) if 0 <= k < num_labels]
    key = legend(present, colours, id2label, height=mixed.height)
    out = Image.new("RGB", (mixed.width + key.width, max(mixed.height, key.height)), "white")
    out.paste(mixed, (0, 0))
    out.paste(key, (mixed.width, 0))
    return out


def denormalize(pixel_values, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised image tensor/array [3, H, W] back to [H, W, 3] uint8: x·std + mean, x255."""
    x = np.asarray(pixel_values, dtype=np.float32)[:3]
    x = x * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    return (x.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)


def panel(image: np.ndarray, labels: np.ndarray, prediction: np.ndarray, num_labels: int, gap: int = 4) -> np.ndarray:
    """[H, 3W + 2·gap, 3] uint8: image | ground truth | prediction (class colours; ignored pixels black)."""
    colours = palette(num_labels)
    sep = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([image, sep, colorize(labels, colours), sep, colorize(prediction, colours)], axis=1)
