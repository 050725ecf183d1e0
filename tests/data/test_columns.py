"""lad_hf.data.columns: image/mask column detection and overrides."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import pytest
from data_helpers import _image_dataset, _load

from lad_hf.data import (
    resolve_columns,
)
from lad_hf.errors import LADError


def test_column_override_and_wrong_column_lists_columns(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    _image_dataset(4, image_col="photo", label_col="seg_map").to_parquet(str(root / "train.parquet"))
    with pytest.raises(LADError) as e:
        _load(root, tmp_path, id2label='["a","b","c"]')
    assert "photo" in str(e.value) and "seg_map" in str(e.value) and "\n" not in str(e.value)

    dsd, _ = _load(root, tmp_path, id2label='["a","b","c"]', image_column="photo", label_column="seg_map")
    assert resolve_columns(dsd, "photo", "seg_map") == ("photo", "seg_map")

    with pytest.raises(LADError, match=r"--image_column 'picture' is not a column.*photo.*seg_map"):
        _load(root, tmp_path, id2label='["a","b","c"]', image_column="picture", label_column="seg_map")
    with pytest.raises(LADError, match=r"--label_column 'mask'.*photo"):
        resolve_columns(dsd, "photo", "mask")
