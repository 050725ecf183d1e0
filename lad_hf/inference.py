"""Inference: logits out of a model, patch padding, and sliding windows over a whole image.

    logits(p) = Σ_w upsample(f(x_w))(p) / #{w : p ∈ w}     over windows w of size S, stride s (last window flush)
"""

from __future__ import annotations

import math
from typing import Callable, List

import torch
import torch.nn.functional as F

from .errors import LADError


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Start offsets covering [0, length): every `stride`, plus a last window flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@torch.no_grad()
def sliding_window_logits(forward: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
                          window: int, stride: int, num_labels: int) -> torch.Tensor:
    """`forward(crop[N,C,S,S]) -> logits[N,K,h,w]`; returns float32 logits [N,K,H,W] at the input resolution.

    Images smaller than the window are run whole. Overlaps are averaged.
    """
    if window <= 0 or stride <= 0 or stride > window:
        raise LADError(f"sliding window needs 0 < stride <= window, got window={window}, stride={stride}")
    n, _, h, w = pixel_values.shape
    out = pixel_values.new_zeros((n, num_labels, h, w), dtype=torch.float32)
    count = pixel_values.new_zeros((1, 1, h, w), dtype=torch.float32)
    for top in window_starts(h, window, stride):
        for left in window_starts(w, window, stride):
            crop = pixel_values[:, :, top : top + window, left : left + window]
            logits = forward(crop).float()
            logits = F.interpolate(logits, size=crop.shape[-2:], mode="bilinear", align_corners=False)
            out[:, :, top : top + crop.shape[-2], left : left + crop.shape[-1]] += logits
            count[:, :, top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
    return out / count


def segmentation_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits [N, K, h, w] of a HF segmentation model (or a PeftModel around one)."""
    out = model(pixel_values=pixel_values)
    return out.logits if hasattr(out, "logits") else out[0]

def pad_to_multiple(pixel_values: torch.Tensor, multiple: int, square: bool = False, value: float = 0.0):
    """Pad [N,C,H,W] bottom/right to multiples of `multiple` (and to a square) -> (padded, (H, W))."""
    h, w = pixel_values.shape[-2:]
    ph, pw = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    if square:
        ph = pw = max(ph, pw)
    return F.pad(pixel_values, (0, pw - w, 0, ph - h), value=value), (h, w)
