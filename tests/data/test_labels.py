"""lad_hf.data.labels: --id2label parsing and --do_reduce_labels."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json

import numpy as np
import pytest
from PIL import Image

from lad_hf.data import (
    decode_mask,
    parse_id2label,
    reduce_id2label,
)
from lad_hf.errors import LADError


def test_id2label_parsing_errors(tmp_path):
    f = tmp_path / "l.json"
    f.write_text(json.dumps({"1": "b", "0": "a"}))
    assert parse_id2label(str(f)) == {0: "a", 1: "b"}
    with pytest.raises(LADError, match="without gaps"):
        parse_id2label('{"0": "a", "2": "c"}')
    with pytest.raises(LADError, match="JSON file or inline JSON"):
        parse_id2label("no_such_file.json")


def test_reduce_labels_mapping():
    m = np.array([[0, 1, 2], [3, 255, 0]], dtype=np.uint8)
    out = decode_mask(Image.fromarray(m), do_reduce_labels=True, ignore_index=255)
    np.testing.assert_array_equal(out, [[255, 0, 1], [2, 255, 255]])
    np.testing.assert_array_equal(decode_mask(Image.fromarray(m)), m.astype(np.int64))
    assert reduce_id2label({0: "background", 1: "cat", 2: "dog"}) == {0: "cat", 1: "dog"}
    assert reduce_id2label({0: "wall", 1: "floor"}) == {0: "wall", 1: "floor"}  # already reduced names
