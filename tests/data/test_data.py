"""Tests for lad_hf.data: loading real small datasets written to disk, decoding, transforms, collation, checks."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses
import json
import random

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import HfArgumentParser

from lad_hf.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ROW_INDEX_COLUMN,
    DataArguments,
    EvalTransform,
    SegmentationCollator,
    TrainTransform,
    apply_transforms,
    build_transforms,
    decode_mask,
    load_segmentation_dataset,
    parse_id2label,
    parse_label_colors,
    reduce_id2label,
    resolve_columns,
    validate_dataset_sample,
)
from lad_hf.errors import LADError

K = 3  # classes in the synthetic data


# ----------------------------------------------------------------------------------------------------------------------
# helpers: real small datasets on disk
# ----------------------------------------------------------------------------------------------------------------------


def _pair(seed, h=12, w=16, k=K):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, w // 2 :] = 1
    label[h // 2 :, : w // 3] = 2 % k
    label[0, 0] = (seed % k)
    return Image.fromarray(image), Image.fromarray(label, mode="L")


def _image_dataset(n, image_col="image", label_col="annotation", sizes=None, seed0=0):
    images, labels = [], []
    for i in range(n):
        h, w = sizes[i] if sizes else (12, 16)
        im, lb = _pair(seed0 + i, h, w)
        images.append(im)
        labels.append(lb)
    features = datasets.Features({image_col: datasets.Image(), label_col: datasets.Image()})
    return datasets.Dataset.from_dict({image_col: images, label_col: labels}, features=features)


def _args(path, **kw):
    return DataArguments(dataset_name=str(path), **kw)


def _load(path, tmp_path, **kw):
    seed = kw.pop("seed", 42)
    return load_segmentation_dataset(_args(path, **kw), seed=seed, cache_dir=str(tmp_path / "hf_cache"))


@pytest.fixture
def parquet_dir(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    _image_dataset(6).to_parquet(str(root / "train-00000-of-00001.parquet"))
    _image_dataset(3, seed0=100).to_parquet(str(root / "validation.parquet"))
    (root / "id2label.json").write_text(json.dumps({"0": "bg", "1": "cat", "2": "dog"}))
    return root


# ----------------------------------------------------------------------------------------------------------------------
# DataArguments
# ----------------------------------------------------------------------------------------------------------------------


def test_data_arguments_parse_and_help():
    for f in dataclasses.fields(DataArguments):
        assert f.metadata.get("help"), f"{f.name} lacks help"
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--dataset_name", "x", "--crop_size", "64", "--do_reduce_labels", "--image_mean", "0.5", "0.5", "0.5",
         "--train_val_split", "0.2", "--eval_resize", "32"]
    )
    assert args.crop_size == 64 and args.do_reduce_labels and args.image_mean == [0.5, 0.5, 0.5]
    assert args.train_val_split == 0.2 and args.eval_resize == 32 and args.ignore_index == 255
    assert args.train_split == "train" and args.eval_split == "validation" and args.dataset_revision == "main"
    with pytest.raises(LADError, match="min_scale"):
        DataArguments(min_scale=2.0, max_scale=1.0)
    with pytest.raises(LADError, match="train_val_split"):
        DataArguments(train_val_split=1.5)


# ----------------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------------


def test_parquet_folder_autodetects_columns_and_id2label_json(parquet_dir, tmp_path):
    dsd, id2label = _load(parquet_dir, tmp_path)
    assert set(dsd) == {"train", "validation"}
    assert len(dsd["train"]) == 6 and len(dsd["validation"]) == 3
    assert id2label == {0: "bg", 1: "cat", 2: "dog"}
    assert resolve_columns(dsd) == ("image", "annotation")
    assert list(dsd["train"][ROW_INDEX_COLUMN]) == list(range(6))


def test_parquet_split_subfolders_and_val_alias(tmp_path):
    root = tmp_path / "sub"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    _image_dataset(4).to_parquet(str(root / "train" / "part-0.parquet"))
    _image_dataset(2).to_parquet(str(root / "val" / "part-0.parquet"))
    dsd, _ = _load(root, tmp_path, id2label='["a", "b", "c"]')
    assert len(dsd["train"]) == 4 and len(dsd["validation"]) == 2


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


def test_save_to_disk_dataset_dict_with_classlabel_array_masks(tmp_path):
    names = ["sky", "tree", "road"]
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "semantic_map": datasets.List(datasets.List(datasets.ClassLabel(names=names))),
        }
    )
    rows = [_pair(i) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {"image": [r[0] for r in rows], "semantic_map": [np.asarray(r[1]).tolist() for r in rows]}, features=feats
    )
    root = tmp_path / "disk"
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(root))
    dsd, id2label = _load(root, tmp_path)
    assert id2label == {0: "sky", 1: "tree", 2: "road"}
    assert resolve_columns(dsd) == ("image", "semantic_map")
    mask = decode_mask(dsd["train"][1]["semantic_map"])
    np.testing.assert_array_equal(mask, np.asarray(rows[1][1]).astype(np.int64))
    assert mask.dtype == np.int64


def test_save_to_disk_single_dataset_inline_id2label_overrides_file(tmp_path):
    root = tmp_path / "single"
    _image_dataset(4, label_col="label").save_to_disk(str(root))
    (root / "id2label.json").write_text(json.dumps(["x", "y", "z"]))
    dsd, id2label = _load(root, tmp_path)
    assert list(dsd) == ["train"] and id2label == {0: "x", 1: "y", 2: "z"}
    _, id2label = _load(root, tmp_path, id2label='{"0": "p", "1": "q", "2": "r"}')
    assert id2label == {0: "p", 1: "q", 2: "r"}


def test_missing_id2label_asks_for_flag(tmp_path):
    root = tmp_path / "nolabels"
    root.mkdir()
    _image_dataset(2).to_parquet(str(root / "train.parquet"))
    with pytest.raises(LADError, match="--id2label"):
        _load(root, tmp_path)


def test_id2label_parsing_errors(tmp_path):
    f = tmp_path / "l.json"
    f.write_text(json.dumps({"1": "b", "0": "a"}))
    assert parse_id2label(str(f)) == {0: "a", 1: "b"}
    with pytest.raises(LADError, match="without gaps"):
        parse_id2label('{"0": "a", "2": "c"}')
    with pytest.raises(LADError, match="JSON file or inline JSON"):
        parse_id2label("no_such_file.json")


def _write_palette_mask(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.save(path)


def test_imagefolder_metadata_csv_with_split_column_and_palette_masks(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = ["file_name,label_file_name,split"]
    for i in range(5):
        im, lb = _pair(i)
        im.save(root / "images" / f"{i}.jpg")
        _write_palette_mask(root / "masks" / f"{i}.png", np.asarray(lb))
        lines.append(f"images/{i}.jpg,masks/{i}.png,{'train' if i < 3 else 'val'}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "id2label.json").write_text(json.dumps(["a", "b", "c"]))
    dsd, id2label = _load(root, tmp_path)
    assert len(dsd["train"]) == 3 and len(dsd["validation"]) == 2 and id2label[2] == "c"
    assert resolve_columns(dsd) == ("image", "label")
    cell = dsd["train"][1]["label"]
    assert cell.mode == "P"
    mask = decode_mask(cell)  # palette indices, not colours
    np.testing.assert_array_equal(mask, np.asarray(_pair(1)[1]).astype(np.int64))
    assert set(np.unique(mask).tolist()) <= {0, 1, 2}
    # the metadata name of the mask column is accepted as --label_column
    dsd2, _ = _load(root, tmp_path, label_column="label_file_name")
    assert resolve_columns(dsd2, label_column="label_file_name") == ("image", "label")


def test_imagefolder_metadata_jsonl_split_subfolders(tmp_path):
    root = tmp_path / "folder2"
    for split, n in (("train", 4), ("validation", 2)):
        d = root / split
        d.mkdir(parents=True)
        with open(d / "metadata.jsonl", "w") as f:
            for i in range(n):
                im, lb = _pair(i)
                im.save(d / f"img{i}.png")
                lb.save(d / f"img{i}_mask.png")
                f.write(json.dumps({"file_name": f"img{i}.png", "mask_file_name": f"img{i}_mask.png", "city": "x"}) + "\n")
    dsd, _ = _load(root, tmp_path, id2label='["a","b","c"]')
    assert len(dsd["train"]) == 4 and len(dsd["validation"]) == 2
    assert resolve_columns(dsd) == ("image", "mask")
    assert dsd["train"][0]["city"] == "x"


def test_imagefolder_missing_file_errors_or_is_skipped(tmp_path):
    root = tmp_path / "folder3"
    root.mkdir()
    lines = ["file_name,label_file_name"]
    for i in range(3):
        im, lb = _pair(i)
        im.save(root / f"{i}.png")
        if i != 1:
            lb.save(root / f"{i}_m.png")
        lines.append(f"{i}.png,{i}_m.png")
    (root / "metadata.csv").write_text("\n".join(lines))
    with pytest.raises(LADError, match="1_m.png"):
        _load(root, tmp_path, id2label='["a","b","c"]')
    dsd, _ = _load(root, tmp_path, id2label='["a","b","c"]', skip_bad_samples=True)
    assert len(dsd["train"]) == 2


def test_missing_local_path_and_unknown_offline_hub_dataset(tmp_path):
    with pytest.raises(LADError, match="does not exist"):
        _load(tmp_path / "nope", tmp_path, id2label='["a","b"]')
    with pytest.raises(LADError, match="--dataset_name"):
        load_segmentation_dataset(DataArguments())
    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 set before datasets is imported")
    with pytest.raises(LADError, match="offline"):
        load_segmentation_dataset(DataArguments(dataset_name="nobody-xyz/not-a-dataset"), cache_dir=str(tmp_path / "c"))


def test_train_val_split_is_seeded_and_disjoint(tmp_path):
    root = tmp_path / "only_train"
    root.mkdir()
    _image_dataset(8).to_parquet(str(root / "train.parquet"))
    kw = dict(id2label='["a","b","c"]', train_val_split=0.25)
    dsd, _ = _load(root, tmp_path, **kw)
    tr, va = list(dsd["train"][ROW_INDEX_COLUMN]), list(dsd["validation"][ROW_INDEX_COLUMN])
    assert len(va) == 2 and len(tr) == 6 and sorted(tr + va) == list(range(8))
    again, _ = _load(root, tmp_path, **kw)
    assert list(again["validation"][ROW_INDEX_COLUMN]) == va
    others = [list(_load(root, tmp_path, seed=s, **kw)[0]["validation"][ROW_INDEX_COLUMN]) for s in range(1, 6)]
    assert any(o != va for o in others)
    # without train_val_split there is no validation split
    dsd, _ = _load(root, tmp_path, id2label='["a","b","c"]')
    assert list(dsd) == ["train"]


def test_max_samples_keep_first_rows(parquet_dir, tmp_path):
    dsd, _ = _load(parquet_dir, tmp_path, max_train_samples=2, max_eval_samples=1)
    assert list(dsd["train"][ROW_INDEX_COLUMN]) == [0, 1] and len(dsd["validation"]) == 1
    first = np.asarray(dsd["train"][1]["image"])
    np.testing.assert_array_equal(first, np.asarray(_pair(1)[0]))


def test_unknown_explicit_split_lists_splits(parquet_dir, tmp_path):
    with pytest.raises(LADError, match=r"'tst'.*\['train', 'validation'\]"):
        _load(parquet_dir, tmp_path, eval_split="tst")


# ----------------------------------------------------------------------------------------------------------------------
# mask decoding
# ----------------------------------------------------------------------------------------------------------------------


def test_reduce_labels_mapping():
    m = np.array([[0, 1, 2], [3, 255, 0]], dtype=np.uint8)
    out = decode_mask(Image.fromarray(m), do_reduce_labels=True, ignore_index=255)
    np.testing.assert_array_equal(out, [[255, 0, 1], [2, 255, 255]])
    np.testing.assert_array_equal(decode_mask(Image.fromarray(m)), m.astype(np.int64))
    assert reduce_id2label({0: "background", 1: "cat", 2: "dog"}) == {0: "cat", 1: "dog"}
    assert reduce_id2label({0: "wall", 1: "floor"}) == {0: "wall", 1: "floor"}  # already reduced names


def test_reduce_labels_in_loading(tmp_path):
    root = tmp_path / "red"
    root.mkdir()
    _image_dataset(2).to_parquet(str(root / "train.parquet"))
    _, id2label = _load(root, tmp_path, id2label='["background","cat","dog"]', do_reduce_labels=True)
    assert id2label == {0: "cat", 1: "dog"}


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


# ----------------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------------


def _stripe_pair(h=20, w=24, block=1):
    """Image whose red channel encodes the label (label = R // 50); asymmetric left/right."""
    xs = np.arange(w)[None, :] // block
    ys = np.arange(h)[:, None] // block
    label = ((xs * xs + ys) % 4).astype(np.uint8)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[..., 0] = label * 50
    return Image.fromarray(img), Image.fromarray(label, mode="L")


def _unnormalize(pv, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
    x = pv.numpy() * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    return np.rint(x * 255).astype(np.int64)


def test_train_transform_shapes_and_dtypes():
    im, lb = _stripe_pair()
    t = TrainTransform(crop_size=16, min_scale=0.5, max_scale=2.0)
    random.seed(0)
    out = t({"image": [im, im], "label": [lb, lb]})
    assert set(out) == {"pixel_values", "labels"}
    for pv, y in zip(out["pixel_values"], out["labels"]):
        assert pv.shape == (3, 16, 16) and pv.dtype == torch.float32
        assert y.shape == (16, 16) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_train_crop_padding_uses_ignore_index_and_zero():
    im, lb = _stripe_pair(h=6, w=5)
    t = TrainTransform(crop_size=8, min_scale=1.0, max_scale=1.0, hflip_prob=0.0, ignore_index=99)
    out = t({"image": [im], "label": [lb]})
    y, pv = out["labels"][0], out["pixel_values"][0]
    np.testing.assert_array_equal(y[:6, :5].numpy(), np.asarray(lb))
    assert (y[6:, :] == 99).all() and (y[:, 5:] == 99).all()
    assert (pv[:, 6:, :] == 0).all() and (pv[:, :, 5:] == 0).all()
    assert (pv[:, :6, :5] != 0).any()


@pytest.mark.parametrize("seed", range(5))
def test_crop_and_hflip_keep_image_and_label_aligned(seed):
    im, lb = _stripe_pair()
    for flip in (0.0, 1.0):
        random.seed(seed)
        t = TrainTransform(crop_size=10, min_scale=1.0, max_scale=1.0, hflip_prob=flip)
        out = t({"image": [im], "label": [lb]})
        pv, y = out["pixel_values"][0], out["labels"][0].numpy()
        derived = _unnormalize(pv)[0] // 50
        np.testing.assert_array_equal(derived, y)
        if flip == 0.0:
            noflip_y, noflip_pv = y, pv
        else:  # same RNG draws -> same crop, mirrored
            np.testing.assert_array_equal(y, noflip_y[:, ::-1])
            torch.testing.assert_close(pv, noflip_pv.flip(-1))
            assert not np.array_equal(y, noflip_y)


@pytest.mark.parametrize("seed", range(4))
def test_random_resize_keeps_label_aligned_with_image(seed):
    # two classes, red = 200 * label: a bilinear blend of both colours is never a multiple of 200
    xs, ys = np.meshgrid(np.arange(32) // 8, np.arange(32) // 8)
    label = ((xs * xs + ys) % 2).astype(np.uint8)
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[..., 0] = label * 200
    img[..., 1] = 90
    t = TrainTransform(crop_size=24, min_scale=1.3, max_scale=2.0, hflip_prob=0.5)
    random.seed(seed)
    out = t({"image": [Image.fromarray(img)], "label": [Image.fromarray(label)]})
    red = _unnormalize(out["pixel_values"][0])[0]
    y = out["labels"][0].numpy()
    exact = red % 200 == 0  # inside blocks bilinear resizing keeps the colour
    assert exact.mean() > 0.6
    np.testing.assert_array_equal((red // 200)[exact], y[exact])


def test_normalisation_matches_direct_computation():
    im, lb = _stripe_pair()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    t = TrainTransform(crop_size=(20, 24), min_scale=1, max_scale=1, hflip_prob=0, mean=mean, std=std)
    pv = t({"image": [im], "label": [lb]})["pixel_values"][0].numpy()
    direct = ((np.asarray(im, dtype=np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(pv, direct, rtol=0, atol=1e-5)
    ev = EvalTransform(mean=mean, std=std)({"image": [im], "label": [lb]})
    np.testing.assert_allclose(ev["pixel_values"][0].numpy(), direct, atol=1e-5)
    np.testing.assert_array_equal(ev["labels"][0].numpy(), np.asarray(lb))


def test_eval_transform_resize_and_images_only():
    im, lb = _stripe_pair(h=20, w=24)
    out = EvalTransform(resize=10)({"image": [im], "label": [lb]})
    assert out["pixel_values"][0].shape == (3, 10, 10) and out["labels"][0].shape == (10, 10)
    # nearest with pixel centres: output (0, j) samples input (1, floor((j + 0.5) * 2.4))
    np.testing.assert_array_equal(out["labels"][0].numpy()[0], np.asarray(lb)[1, [1, 3, 6, 8, 10, 13, 15, 18, 20, 22]])
    only = EvalTransform()({"image": [im.convert("L")]})
    assert list(only) == ["pixel_values"] and only["pixel_values"][0].shape == (3, 20, 24)


def test_build_transforms_uses_processor_stats_and_reduce_labels():
    class Proc:
        image_mean = [0.5, 0.5, 0.5]
        image_std = [0.5, 0.5, 0.5]

    args = DataArguments(crop_size=8, do_reduce_labels=True, eval_resize=None, label_column="annotation")
    train_fn, eval_fn = build_transforms(args, Proc())
    assert train_fn.mean == (0.5, 0.5, 0.5) and eval_fn.std == (0.5, 0.5, 0.5)
    train_fn2, _ = build_transforms(args)
    assert train_fn2.mean == IMAGENET_DEFAULT_MEAN
    im = Image.fromarray(np.full((4, 4, 3), 255, dtype=np.uint8))
    lb = Image.fromarray(np.array([[0, 1, 2, 255]] * 4, dtype=np.uint8))
    out = eval_fn({"image": [im], "annotation": [lb]})
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), 1.0)
    np.testing.assert_array_equal(out["labels"][0].numpy()[0], [255, 0, 1, 255])


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


# ----------------------------------------------------------------------------------------------------------------------
# collator and end to end
# ----------------------------------------------------------------------------------------------------------------------


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


def test_apply_transforms_end_to_end_with_dataloader(parquet_dir, tmp_path):
    dsd, id2label = _load(parquet_dir, tmp_path)
    args = DataArguments(dataset_name=str(parquet_dir), crop_size=8, pad_to_multiple_of=8)
    tdsd = apply_transforms(dsd, args)
    collate = SegmentationCollator(args.ignore_index, args.pad_to_multiple_of)
    train = next(iter(torch.utils.data.DataLoader(tdsd["train"], batch_size=4, collate_fn=collate)))
    assert train["pixel_values"].shape == (4, 3, 8, 8) and train["labels"].shape == (4, 8, 8)
    val = next(iter(torch.utils.data.DataLoader(tdsd["validation"], batch_size=2, collate_fn=collate)))
    assert val["pixel_values"].shape == (2, 3, 16, 16)  # 12x16 whole image padded to a multiple of 8
    assert (val["labels"][:, 12:] == 255).all()
    np.testing.assert_array_equal(val["labels"][0, :12].numpy(), np.asarray(_pair(100)[1]))
    # raw rows stay readable for validation
    report = validate_dataset_sample(tdsd["train"], num_labels=len(id2label))
    assert report == {"rows_checked": 6, "classes_seen": [0, 1, 2]}


# ----------------------------------------------------------------------------------------------------------------------
# validate_dataset_sample
# ----------------------------------------------------------------------------------------------------------------------


def _mask_dataset(masks, size=(4, 4)):
    img = Image.fromarray(np.zeros((*size, 3), dtype=np.uint8))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [img] * len(masks), "label": [Image.fromarray(np.asarray(m, dtype=np.uint8)) for m in masks]},
        features=feats,
    )


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
