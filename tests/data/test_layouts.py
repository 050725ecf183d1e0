"""Official on-disk layouts: detected, loaded, and their raw masks remapped like an independent naive loop."""

import json
import os
import shutil

import numpy as np
import pytest

from fixtures import (
    H,
    W,
    ade_rule,
    cityscapes_rule,
    coco_stuff_rule,
    make_ade_layout,
    make_cityscapes_layout,
    make_coco_stuff_layout,
    make_voc_layout,
    naive_map,
    voc_rule,
)
from lad_hf.data import (
    LABEL_SETS,
    DataArguments,
    apply_transforms,
    detect_layout,
    load_segmentation_dataset,
    validate_dataset_sample,
)
from lad_hf.errors import LADError

LAYOUTS = {
    "ade20k": (make_ade_layout, ade_rule),
    "cityscapes": (make_cityscapes_layout, cityscapes_rule),
    "voc": (make_voc_layout, voc_rule),
    "coco-stuff": (make_coco_stuff_layout, coco_stuff_rule),
}


def _args(path, **kw):
    # identity geometry for training: crop = widest side, scale 1, no flip -> labels[:H] is the decoded mask
    base = dict(dataset_name=str(path), crop_size=W, min_scale=1.0, max_scale=1.0, hflip_prob=0.0)
    base.update(kw)
    return DataArguments(**base)


def _labels(dsd, data_args):
    ds = apply_transforms(dsd, data_args)
    out = {}
    for split in ds:
        out[split] = [ds[split][i]["labels"].numpy() for i in range(len(ds[split]))]
    return out


def _check(labels, raws, rule):
    for split in ("train", "validation"):
        assert len(labels[split]) == len(raws[split])
        for got, raw in zip(labels[split], raws[split]):
            expected = naive_map(raw, rule)
            if split == "train":  # crop of W x W: rows below the image are padding (ignore)
                assert got.shape == (W, W)
                assert (got[H:] == 255).all()
                got = got[:H]
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_is_detected_loaded_and_remapped(name, tmp_path):
    make, rule = LAYOUTS[name]
    raws = make(tmp_path / "data")
    layout = detect_layout(str(tmp_path / "data"))
    assert layout is not None and layout.name == name and layout.label_set == name

    data_args = _args(tmp_path / "data")
    dsd, id2label = load_segmentation_dataset(data_args, require_train=True)
    assert set(dsd) == {"train", "validation"}
    assert data_args.label_set == name  # applied without any flag, recorded for the transforms/checks
    assert id2label == dict(LABEL_SETS[name].id2label)
    import datasets

    assert isinstance(dsd["train"].features["image"], datasets.Image)
    assert isinstance(dsd["train"].features["label"], datasets.Image)
    assert os.path.isfile(dsd["validation"].with_format(None).cast_column("label", datasets.Image(decode=False))[0]["label"]["path"])

    _check(_labels(dsd, data_args), raws, rule)
    # the pre-run check sees train ids in range (raw ids such as Cityscapes 33 or COCO 181 would fail it)
    report = validate_dataset_sample(dsd, len(id2label), 255, data_args=data_args)
    assert set(report) == {"train", "validation"}


def test_layout_variants_are_found(tmp_path):
    make_ade_layout(tmp_path / "ade_flat", nested=False)  # DIR is ADEChallengeData2016 itself
    assert detect_layout(str(tmp_path / "ade_flat")).name == "ade20k"
    make_voc_layout(tmp_path / "voc", nested=True)
    for p in ("voc", "voc/VOCdevkit", "voc/VOCdevkit/VOC2012"):  # VOCdevkit's parent, VOCdevkit, VOC2012
        layout = detect_layout(str(tmp_path / p))
        assert layout.name == "voc" and layout.root.endswith(os.path.join("VOCdevkit", "VOC2012"))
    assert detect_layout(str(tmp_path)) is None
    # --data_dir picks the sub-folder first
    dsd, _ = load_segmentation_dataset(_args(tmp_path / "voc", data_dir="VOCdevkit"), require_train=True)
    assert len(dsd["train"]) == 2 and len(dsd["validation"]) == 2  # the detection-only JPEG is not a row


def test_missing_split_names_the_folder_expected(tmp_path):
    make_cityscapes_layout(tmp_path / "cs")
    shutil.rmtree(tmp_path / "cs" / "leftImg8bit" / "val")
    shutil.rmtree(tmp_path / "cs" / "gtFine" / "val")
    with pytest.raises(LADError) as e:
        load_segmentation_dataset(_args(tmp_path / "cs"), require_train=True)
    msg = str(e.value)
    assert "Cityscapes layout" in msg and "no 'validation' split" in msg
    assert os.path.join("leftImg8bit", "val") in msg and os.path.join("gtFine", "val") in msg
    # carving validation from train is the way out
    dsd, _ = load_segmentation_dataset(_args(tmp_path / "cs", train_val_split=0.5), require_train=True)
    assert len(dsd["train"]) == 1 and len(dsd["validation"]) == 1

    make_ade_layout(tmp_path / "ade")
    shutil.rmtree(tmp_path / "ade" / "ADEChallengeData2016" / "images" / "training")
    shutil.rmtree(tmp_path / "ade" / "ADEChallengeData2016" / "annotations" / "training")
    with pytest.raises(LADError, match=r"no 'train' split: expected .*images.training.* and .*annotations.training"):
        load_segmentation_dataset(_args(tmp_path / "ade"), require_train=True)
    # evaluation alone does not need train
    dsd, _ = load_segmentation_dataset(_args(tmp_path / "ade"), require_train=False)
    assert list(dsd) == ["validation"]

    make_voc_layout(tmp_path / "voc")
    os.remove(tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt")
    with pytest.raises(LADError, match=r"VOC 2012 layout .* no 'validation' split: expected .*val\.txt"):
        load_segmentation_dataset(_args(tmp_path / "voc"), require_train=True)

    make_coco_stuff_layout(tmp_path / "coco")
    shutil.rmtree(tmp_path / "coco" / "stuffthingmaps_trainval2017" / "val2017")  # images without masks folder
    with pytest.raises(LADError, match=r"'validation' split is incomplete, .*stuffthingmaps_trainval2017.val2017"):
        load_segmentation_dataset(_args(tmp_path / "coco"), require_train=True)
    make_coco_stuff_layout(tmp_path / "coco2")
    with pytest.raises(LADError, match=r"has no 'test' split; its splits are \['train', 'validation'\]"):
        load_segmentation_dataset(_args(tmp_path / "coco2", eval_split="test"), require_train=False)


def test_image_without_mask_errors_or_is_skipped(tmp_path):
    make_coco_stuff_layout(tmp_path / "coco", n_train=3)
    masks = sorted((tmp_path / "coco" / "stuffthingmaps_trainval2017" / "train2017").iterdir())
    os.remove(masks[0])
    with pytest.raises(LADError, match=r"1 train image\(s\) have no mask .*--skip_bad_samples"):
        load_segmentation_dataset(_args(tmp_path / "coco"), require_train=True)
    dsd, _ = load_segmentation_dataset(_args(tmp_path / "coco", skip_bad_samples=True), require_train=True)
    assert len(dsd["train"]) == 2


def test_explicit_label_set_id2label_and_label_map_win(tmp_path):
    raws = make_ade_layout(tmp_path / "ade")
    # explicit --label_set wins over the detected one (here: a deliberately different set)
    args = _args(tmp_path / "ade", label_set="voc")
    _, id2label = load_segmentation_dataset(args, require_train=True)
    assert args.label_set == "voc" and len(id2label) == 21

    # --id2label alone switches the automatic label set off: raw values reach the model unchanged
    names = {str(i): f"c{i}" for i in range(151)}
    args = _args(tmp_path / "ade", id2label=json.dumps(names))
    dsd, id2label = load_segmentation_dataset(args, require_train=True)
    assert args.label_set is None and len(id2label) == 151
    _check(_labels(dsd, args), raws, lambda v: v)

    # --id2label + --label_set: the set's remap with the user's names
    names = {str(i): f"class {i}" for i in range(150)}
    args = _args(tmp_path / "ade", id2label=json.dumps(names), label_set="ade20k")
    dsd, id2label = load_segmentation_dataset(args, require_train=True)
    assert id2label[0] == "class 0"
    _check(_labels(dsd, args), raws, ade_rule)

    # --label_map (file) + --id2label: the user's remap, compared with a naive loop
    (tmp_path / "map.json").write_text(json.dumps({"1": 0, "2": 1, "150": 2, "0": None}))
    args = _args(tmp_path / "ade", label_map=str(tmp_path / "map.json"), id2label='["wall", "building", "flag"]')
    dsd, id2label = load_segmentation_dataset(args, require_train=True)
    assert args.label_set is None and id2label == {0: "wall", 1: "building", 2: "flag"}
    _check(_labels(dsd, args), raws, lambda v: {1: 0, 2: 1, 150: 2}.get(v, 255))

    # a map producing more ids than there are names is caught before training
    with pytest.raises(LADError, match=r"--label_map maps mask values to train ids up to 2, but there are only 2"):
        load_segmentation_dataset(
            _args(tmp_path / "ade", label_map=str(tmp_path / "map.json"), id2label='["a", "b"]'), require_train=True
        )


def test_reduce_labels_with_layouts(tmp_path):
    raws = make_ade_layout(tmp_path / "ade")
    # the old ADE habit: --do_reduce_labels on top of the ade20k set is the same mapping, not applied twice
    args = _args(tmp_path / "ade", do_reduce_labels=True)
    dsd, id2label = load_segmentation_dataset(args, require_train=True)
    assert len(id2label) == 150 and id2label[0] == "wall"
    _check(_labels(dsd, args), raws, ade_rule)

    make_cityscapes_layout(tmp_path / "cs")
    with pytest.raises(LADError, match="--do_reduce_labels cannot be combined with --label_set cityscapes"):
        load_segmentation_dataset(_args(tmp_path / "cs", do_reduce_labels=True), require_train=True)
