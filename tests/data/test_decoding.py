"""lad_hf.data.decoding: palette and RGB masks to class indices."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import numpy as np
import pytest
from data_helpers import _write_palette_mask
from PIL import Image

from lad_hf.data import (
    decode_mask,
    parse_label_colors,
)
from lad_hf.errors import LADError


def test_palette_mask_gives_indices_not_colours(tmp_path):
    arr = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    _write_palette_mask(tmp_path / "p.png", arr)
    im = Image.open(tmp_path / "p.png")
    assert im.mode == "P"
    np.testing.assert_array_equal(decode_mask(im), arr)
    np.testing.assert_array_equal(decode_mask({"bytes": None, "path": str(tmp_path / "p.png")}), arr)


def test_rgb_masks_need_label_colors():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 1] = (128, 64, 128)
    rgb[1, 2] = (244, 35, 232)
    with pytest.raises(LADError, match="--label_colors"):
        decode_mask(Image.fromarray(rgb))
    expected = np.array([[0, 1, 0], [0, 0, 2]])
    for spec in (
        '{"0,0,0": 0, "128,64,128": 1, "244,35,232": 2}',
        '{"#000000": 0, "#804080": 1, "#f423e8": 2}',
        '{"[0,0,0]": 0, "[128, 64, 128]": 1, "[244,35,232]": 2}',
        '{"0": [0,0,0], "1": [128,64,128], "2": "#f423e8"}',  # id -> colour form
    ):
        np.testing.assert_array_equal(decode_mask(Image.fromarray(rgb), label_colors=spec), expected)
    with pytest.raises(LADError, match=r"\(244,35,232\)"):
        decode_mask(Image.fromarray(rgb), label_colors='{"0,0,0": 0, "128,64,128": 1}')
    gray = np.stack([np.array([[0, 2], [1, 255]], dtype=np.uint8)] * 3, axis=-1)
    np.testing.assert_array_equal(decode_mask(Image.fromarray(gray)), [[0, 2], [1, 255]])
    assert parse_label_colors('{"1,2,3": 4}') == {(1, 2, 3): 4}
