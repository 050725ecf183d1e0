"""lad_hf.data.loading: real small datasets on disk (parquet, save_to_disk, image folders), splits."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json

import datasets
import numpy as np
import pytest
from data_helpers import _image_dataset, _load, _pair, _write_palette_mask, parquet_dir  # noqa: F401,F811  (parquet_dir is a fixture)

from lad_hf.data import (
    ROW_INDEX_COLUMN,
    DataArguments,
    decode_mask,
    load_segmentation_dataset,
    resolve_columns,
)
from lad_hf.errors import LADError


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


def _image_folder(root, n=3, missing_mask=None):
    """`root` with n image/mask PNG pairs (`i.png`, `i_m.png`; the mask of row `missing_mask` not written) and the
    `metadata.csv` lines that list all of them (header first; the caller writes the file)."""
    root.mkdir()
    lines = ["file_name,label_file_name"]
    for i in range(n):
        im, lb = _pair(i)
        im.save(root / f"{i}.png")
        if i != missing_mask:
            lb.save(root / f"{i}_m.png")
        lines.append(f"{i}.png,{i}_m.png")
    return root, lines


def test_imagefolder_missing_file_errors_or_is_skipped(tmp_path):
    root, lines = _image_folder(tmp_path / "folder3", missing_mask=1)
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


def test_reduce_labels_in_loading(tmp_path):
    root = tmp_path / "red"
    root.mkdir()
    _image_dataset(2).to_parquet(str(root / "train.parquet"))
    _, id2label = _load(root, tmp_path, id2label='["background","cat","dog"]', do_reduce_labels=True)
    assert id2label == {0: "cat", 1: "dog"}


def test_all_splits_returns_the_test_split_too(tmp_path):
    """`all_splits=True` adds every other split (test) under its own name; the old call still gives train/validation."""
    from conftest import write_parquet_dataset

    root = write_parquet_dataset(tmp_path / "d", n_train=4, n_val=2)
    test = datasets.load_dataset("parquet", data_files=str(root / "validation.parquet"), split="train")
    test.select([0]).to_parquet(str(root / "test.parquet"))
    args = DataArguments(dataset_name=str(root))
    dsd, _ = load_segmentation_dataset(args)
    assert set(dsd) == {"train", "validation"}
    dsd, id2label = load_segmentation_dataset(args, all_splits=True)
    assert {k: len(v) for k, v in dsd.items()} == {"train": 4, "validation": 2, "test": 1} and len(id2label) == 4
    args = DataArguments(dataset_name=str(root), eval_split="test", max_eval_samples=1)
    dsd, _ = load_segmentation_dataset(args, all_splits=True)
    assert len(dsd["validation"]) == 1 and len(dsd["test"]) == 1 and len(dsd["train"]) == 4


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_metadata_paths_must_stay_inside_the_dataset_folder(tmp_path, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    root, lines = _image_folder(tmp_path / "folder")
    im, lb = _pair(9)
    im.save(outside / "secret.png")
    lb.save(outside / "secret_m.png")
    listed = {"dotdot": "../outside/secret.png", "absolute": str(outside / "secret.png"), "symlink": "link.png"}[how]
    if how == "symlink":
        (root / "link.png").symlink_to(outside / "secret.png")
    lines.append(f"{listed},0_m.png")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LADError, match="leads outside the dataset folder") as exists:
        _load(root, tmp_path, id2label='["a","b","c"]')
    assert listed in str(exists.value) and "--allow_outside_paths true" in str(exists.value)
    # the same line whether the target exists or not: the error reveals nothing about the disk outside
    (outside / "secret.png").unlink()
    with pytest.raises(LADError) as gone:
        _load(root, tmp_path, id2label='["a","b","c"]')
    assert str(gone.value) == str(exists.value)
    if how != "symlink":  # the opt-out reads files outside the folder
        im.save(outside / "secret.png")
        dsd, _ = _load(root, tmp_path, id2label='["a","b","c"]', allow_outside_paths=True)
        assert len(dsd["train"]) == 4
