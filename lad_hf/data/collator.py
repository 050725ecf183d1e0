"""`SegmentationCollator`: pad and stack samples into `{pixel_values [N,C,H,W], labels [N,H,W]}`."""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import LADError
from .validation import check_labels
from .arguments import DataArguments

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------------


class SegmentationCollator:
    """Stack `pixel_values` [3,h,w] and `labels` [h,w] into a batch.

    Samples of different sizes (whole-image evaluation) are padded bottom/right to the largest height and
    width, images with 0 and labels with `ignore_index`; `pad_to_multiple_of` rounds H and W up further
    (e.g. 14 for DINOv2, 32 for most CNNs). When padding makes a batch far larger than its images (one big
    image among small ones: every image is padded to the big one's size), it warns once.
    """

    #: warn when the padded H*W exceeds this many times the mean image area of the batch
    PADDING_WARN_RATIO = 4.0

    def __init__(self, ignore_index: int = 255, pad_to_multiple_of: Optional[int] = None, num_labels: Optional[int] = None):
        self.num_labels = num_labels
        if pad_to_multiple_of is not None and int(pad_to_multiple_of) < 1:
            raise LADError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of}")
        self.ignore_index = int(ignore_index)
        self.pad_to_multiple_of = None if pad_to_multiple_of is None else int(pad_to_multiple_of)
        self._warned_padding = False

    def _check_padding(self, images: Sequence[torch.Tensor], H: int, W: int) -> None:
        if self._warned_padding or len(images) < 2:
            return
        areas = [int(x.shape[-2]) * int(x.shape[-1]) for x in images]
        mean_area = sum(areas) / len(areas)
        if H * W <= self.PADDING_WARN_RATIO * mean_area:
            return
        self._warned_padding = True
        big = max(images, key=lambda x: int(x.shape[-2]) * int(x.shape[-1]))
        logger.warning(
            "padding a batch of %d images of different sizes to %dx%d (the largest is %dx%d), %.0fx their mean area "
            "of %.0f pixels: memory and time follow the largest image; use --per_device_eval_batch_size 1 (no "
            "padding) or --eval_resize N (one size), with --eval_window_size for large images (warned once)",
            len(images), H, W, int(big.shape[-2]), int(big.shape[-1]), H * W / mean_area, mean_area,
        )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        if not features:
            raise LADError("cannot collate an empty batch")
        images = [torch.as_tensor(np.asarray(f["pixel_values"], dtype=np.float32)) if not isinstance(f["pixel_values"], torch.Tensor) else f["pixel_values"] for f in features]
        has_labels = all(f.get("labels") is not None for f in features)
        labels = [torch.as_tensor(f["labels"]) for f in features] if has_labels else None
        H = max(int(x.shape[-2]) for x in images)
        W = max(int(x.shape[-1]) for x in images)
        self._check_padding(images, H, W)  # before pad_to_multiple_of, which every batch pays
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
                check_labels(out, self.num_labels, self.ignore_index)
            batch["labels"] = out
        return batch


def build_collator(data_args: DataArguments, num_labels: Optional[int] = None) -> SegmentationCollator:
    """The collator for `data_args`; with `num_labels` it also checks every batch's label values (in the workers)."""
    return SegmentationCollator(ignore_index=data_args.ignore_index, pad_to_multiple_of=data_args.pad_to_multiple_of,
                                num_labels=num_labels)
