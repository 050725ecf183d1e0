"""lad_hf.data.collator: padding with 0 and ignore_index."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import torch

from lad_hf.data import (
    SegmentationCollator,
)


def test_collator_pads_with_zero_and_ignore_index():
    a = {"pixel_values": torch.ones(3, 5, 7), "labels": torch.zeros(5, 7, dtype=torch.int64)}
    b = {"pixel_values": torch.ones(3, 6, 4), "labels": torch.ones(6, 4, dtype=torch.int64)}
    batch = SegmentationCollator(ignore_index=255)([a, b])
    assert batch["pixel_values"].shape == (2, 3, 6, 7) and batch["labels"].shape == (2, 6, 7)
    assert batch["labels"].dtype == torch.int64 and batch["pixel_values"].dtype == torch.float32
    assert (batch["labels"][0, 5:] == 255).all() and (batch["labels"][0, :5] == 0).all()
    assert (batch["labels"][1, :, 4:] == 255).all() and (batch["pixel_values"][1, :, :, 4:] == 0).all()
    padded = SegmentationCollator(ignore_index=7, pad_to_multiple_of=4)([a, b])
    assert padded["pixel_values"].shape == (2, 3, 8, 8) and (padded["labels"][:, 6:] == 7).all()
    same = SegmentationCollator()([a, a])
    assert torch.equal(same["pixel_values"], torch.ones(2, 3, 5, 7))
