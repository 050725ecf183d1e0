"""Shipped label sets, the lookup-table remap, `--label_set` and `--label_map` (JSON parsing, errors)."""

import json

import numpy as np
import pytest
from PIL import Image

from fixtures import ade_rule, cityscapes_rule, coco_stuff_rule, naive_map, voc_rule
from lad_hf.data import (
    LABEL_SETS,
    DataArguments,
    LabelLUT,
    decode_mask,
    get_label_set,
    label_decoding,
    parse_label_map,
)
from lad_hf.errors import LADError


def test_label_set_sizes_and_spot_checked_names():
    sizes = {name: ls.num_labels for name, ls in LABEL_SETS.items()}
    assert sizes == {"ade20k": 150, "cityscapes": 19, "voc": 21, "coco-stuff": 171}
    ade, city, voc, coco = (LABEL_SETS[k].id2label for k in ("ade20k", "cityscapes", "voc", "coco-stuff"))
    # "bed " keeps the trailing space of mmseg, huggingface/label-files and the nvidia ADE checkpoints' id2label
    assert (ade[0], ade[7], ade[12], ade[149]) == ("wall", "bed ", "person", "flag")
    assert (city[0], city[6], city[11], city[18]) == ("road", "traffic light", "person", "bicycle")
    assert (voc[0], voc[1], voc[15], voc[20]) == ("background", "aeroplane", "person", "tvmonitor")
    assert (coco[0], coco[79], coco[80], coco[170]) == ("person", "toothbrush", "banner", "wood")
    for ls in LABEL_SETS.values():
        assert sorted(ls.id2label) == list(range(ls.num_labels))
        assert len(set(ls.id2label.values())) == ls.num_labels  # no duplicate names
        assert ls.source and ls.description


@pytest.mark.parametrize("name, rule, values", [
    ("ade20k", ade_rule, list(range(0, 151)) + [151, 200, 255]),
    ("cityscapes", cityscapes_rule, list(range(0, 40)) + [255]),
    ("voc", voc_rule, list(range(0, 21)) + [255]),
    ("coco-stuff", coco_stuff_rule, list(range(0, 190)) + [254, 255]),
])
def test_lookup_table_equals_naive_loop(name, rule, values):
    rng = np.random.default_rng(0)
    raw = rng.choice(np.asarray(values), size=(9, 13)).astype(np.uint8)
    raw.reshape(-1)[: len(values)] = values[: raw.size]
    expected = naive_map(raw, rule)
    lut = get_label_set(name).lookup_table(255)
    got = raw.astype(np.int64) if lut is None else lut(raw)  # voc: masks already hold train ids
    np.testing.assert_array_equal(got, expected)
    # 16-bit / int32 masks take the general path (range check) and agree
    if lut is not None:
        np.testing.assert_array_equal(lut(raw.astype(np.int32)), expected)
        big = raw.astype(np.int32)
        big[0, 0], big[0, 1] = 70000, -3  # beyond the table, negative: ignored
        out = lut(big)
        assert out[0, 0] == 255 and out[0, 1] == 255


def test_lookup_table_follows_the_run_ignore_index():
    lut = get_label_set("cityscapes").lookup_table(ignore_index=0)
    raw = np.array([[7, 8, 0, 33]], np.uint8)
    # ignored pixels get the run's ignore index; ids stay as the label set says
    np.testing.assert_array_equal(lut(raw), [[0, 1, 0, 18]])
    voc = get_label_set("voc").lookup_table(ignore_index=99)
    np.testing.assert_array_equal(voc(np.array([[0, 20, 255]], np.uint8)), [[0, 20, 99]])
    assert get_label_set("voc").lookup_table(255) is None  # nothing to do


def test_decode_mask_applies_the_label_map_for_l_p_rgb_and_arrays():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 34, (6, 7), dtype=np.uint8)
    expected = naive_map(raw, cityscapes_rule)
    lut = get_label_set("cityscapes").lookup_table(255)
    cells = [
        Image.fromarray(raw, mode="L"),
        Image.fromarray(np.stack([raw] * 3, -1), mode="RGB"),  # gray RGB (Chris1/cityscapes stores 3 channels)
        raw.astype(np.int64),
        Image.fromarray(raw.astype(np.int32), mode="I"),
    ]
    for cell in cells:
        np.testing.assert_array_equal(decode_mask(cell, label_map=lut), expected)
    # a plain mapping works too (unlisted -> ignore_index)
    np.testing.assert_array_equal(
        decode_mask(Image.fromarray(raw, mode="L"), label_map={7: 0, 8: 1}, ignore_index=250),
        naive_map(raw, lambda v: {7: 0, 8: 1}.get(v, 250)),
    )


def test_label_map_inline_and_file_vs_naive_loop(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 12, (8, 9), dtype=np.uint8)
    spec = {"1": 0, "2": 1, "5": 2, "9": None, "10": "ignore"}

    def rule(v):
        return {1: 0, 2: 1, 5: 2}.get(v, 255)

    inline = parse_label_map(json.dumps(spec))
    path = tmp_path / "map.json"
    path.write_text(json.dumps(spec))
    from_file = parse_label_map(str(path))
    for lut in (inline, from_file):
        np.testing.assert_array_equal(lut(raw), naive_map(raw, rule))
        assert lut.max_train_id == 2

    partial = parse_label_map('{"1": 0, "2": 1, "*": "keep"}')
    np.testing.assert_array_equal(partial(raw), naive_map(raw, lambda v: {1: 0, 2: 1}.get(v, v)))
    assert partial.max_train_id is None
    everything_else = parse_label_map('{"3": 1, "*": 0}')
    np.testing.assert_array_equal(everything_else(raw), naive_map(raw, lambda v: 1 if v == 3 else 0))


@pytest.mark.parametrize("value, words", [
    ('{"7": 0,', ["--label_map", "invalid inline JSON"]),
    ("[1, 2]", ["--label_map", "JSON file or an inline JSON object"]),
    ('{"road": 0}', ["--label_map", "keys must be raw mask values"]),
    ('{"7": -1}', ["--label_map", "train id >= 0"]),
    ('{"7": "car"}', ["--label_map", "train id >= 0"]),
    ('{"-2": 0}', ["mask values >= 0"]),
    ('{"*": "sometimes"}', ["--label_map", '"keep", "ignore"']),
    ("{}", ["--label_map is empty"]),
    ("no/such/file.json", ["--label_map", "existing JSON file"]),
])
def test_bad_label_map_is_one_clear_error(value, words):
    with pytest.raises(LADError) as e:
        DataArguments(label_map=value)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_bad_label_map_file_and_cli_parse(tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text('{"7": 0,,}')
    with pytest.raises(LADError, match=r"--label_map: cannot read JSON file .*map.json"):
        DataArguments(label_map=str(bad))
    from lad_hf.cli import parse_args

    with pytest.raises(LADError, match="--label_map: invalid inline JSON"):
        parse_args([DataArguments], ["--label_map", "{7: 0}"])
    args = parse_args([DataArguments], ["--label_set", "coco-stuff"])[0]
    assert args.label_set == "coco-stuff"


def test_label_set_argument_and_conflicts():
    with pytest.raises(LADError, match=r"not a known label set; choose one of \['ade20k', 'cityscapes', 'coco-stuff', 'voc'\]"):
        DataArguments(label_set="kitti")
    assert DataArguments(label_set="ADE20K").label_set == "ade20k"

    # ade20k's map *is* the reduction: --do_reduce_labels is accepted and not applied twice
    lut, reduce = label_decoding(DataArguments(label_set="ade20k", do_reduce_labels=True))
    assert reduce is False and lut(np.array([0, 1, 150], np.uint8)).tolist() == [255, 0, 149]
    with pytest.raises(LADError, match="--do_reduce_labels cannot be combined with --label_set cityscapes"):
        label_decoding(DataArguments(label_set="cityscapes", do_reduce_labels=True))
    with pytest.raises(LADError, match="--label_map and --do_reduce_labels"):
        label_decoding(DataArguments(label_map='{"1": 0}', do_reduce_labels=True))
    # --label_map wins over the label set's map
    lut, _ = label_decoding(DataArguments(label_set="cityscapes", label_map='{"7": 5}'))
    assert lut(np.array([7, 8], np.uint8)).tolist() == [5, 255]
    # nothing given: the old behaviour
    assert label_decoding(DataArguments(do_reduce_labels=True)) == (None, True)


def test_lut_pickles_for_dataloader_workers():
    import pickle

    lut = get_label_set("coco-stuff").lookup_table(255)
    again = pickle.loads(pickle.dumps(lut))
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(again(raw), lut(raw))
    assert isinstance(again, LabelLUT)
