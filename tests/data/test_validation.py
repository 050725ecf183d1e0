"""lad_hf.data.validation: pre-run checks of the first rows."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import datasets
import numpy as np
import pytest
from data_helpers import _load, _mask_dataset, _pair
from PIL import Image

from lad_hf.data import (
    DataArguments,
    apply_transforms,
    validate_dataset_sample,
)
from lad_hf.errors import LADError


def test_size_mismatch_names_row_and_sizes_and_can_be_skipped(tmp_path):
    im, _ = _pair(0, 12, 16)
    _, small = _pair(1, 10, 16)
    rows = [_pair(i) for i in range(3)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {"image": [r[0] for r in rows] + [im], "label": [r[1] for r in rows] + [small]}, features=feats
    )
    root = tmp_path / "bad"
    root.mkdir()
    ds.to_parquet(str(root / "train.parquet"))
    dsd, _ = _load(root, tmp_path, id2label='["a","b","c"]')
    args = DataArguments(dataset_name=str(root), crop_size=8)
    tds = apply_transforms(dsd, args)["train"]
    assert tds[0]["pixel_values"].shape == (3, 8, 8)
    with pytest.raises(LADError, match=r"row 3: image is 12x16 \(HxW\) but its mask is 10x16"):
        tds[3]
    args_skip = DataArguments(dataset_name=str(root), crop_size=8, skip_bad_samples=True)
    sample = apply_transforms(dsd, args_skip)["train"][3]
    assert (sample["labels"] == 255).all() and sample["pixel_values"].shape == (3, 8, 8)
    with pytest.raises(LADError, match=r"row 3: image is 12x16"):
        validate_dataset_sample(tds, num_labels=3)


def test_validate_dataset_sample_errors():
    good = np.array([[0, 1, 1, 2]] * 4)
    bad = good.copy()
    bad[0, 0] = 5
    bad[1, 1] = 255
    with pytest.raises(LADError) as e:
        validate_dataset_sample(_mask_dataset([good, bad]), num_labels=3)
    msg = str(e.value)
    assert "row 1" in msg and "[5]" in msg and "--do_reduce_labels" in msg and "255" not in msg.split("values")[1].split("are")[0]
    assert validate_dataset_sample(_mask_dataset([good, bad]), num_labels=6)["classes_seen"] == [0, 1, 2, 5]
    with pytest.raises(LADError, match="empty"):
        validate_dataset_sample(_mask_dataset([]), num_labels=3)
    with pytest.raises(LADError, match=">= 2 classes"):
        validate_dataset_sample(_mask_dataset([np.ones((4, 4))] * 3), num_labels=3)
    # with reduce labels, 0 becomes ignore: only class 0 (was 1) is left
    with pytest.raises(LADError, match=">= 2 classes"):
        validate_dataset_sample(_mask_dataset([np.array([[0, 1]] * 4).repeat(2, 1)]), num_labels=3,
                                do_reduce_labels=True)
    mismatch = _mask_dataset([good])
    mismatch = mismatch.cast_column("image", datasets.Image())
    img = Image.fromarray(np.zeros((5, 4, 3), dtype=np.uint8))
    feats = mismatch.features
    mm = datasets.Dataset.from_dict({"image": [img], "label": [Image.fromarray(good.astype(np.uint8))]}, features=feats)
    with pytest.raises(LADError, match=r"5x4 \(HxW\) but its mask is 4x4"):
        validate_dataset_sample(mm, num_labels=3)
    # only the first n rows are read
    assert validate_dataset_sample(_mask_dataset([good, bad]), num_labels=3, n=1)["rows_checked"] == 1
