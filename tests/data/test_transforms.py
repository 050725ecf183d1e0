"""lad_hf.data.transforms: train/eval transforms keep image and label aligned; end to end with a DataLoader."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import random

import numpy as np
import pytest
import torch
from data_helpers import K, _pair, _image_dataset, _args, _load, parquet_dir, _write_palette_mask, _stripe_pair, _unnormalize, _mask_dataset  # noqa: F401,F811  (parquet_dir is a fixture)
from PIL import Image

from lad_hf.data import (
    IMAGENET_DEFAULT_MEAN,
    DataArguments,
    EvalTransform,
    SegmentationCollator,
    TrainTransform,
    apply_transforms,
    build_transforms,
    validate_dataset_sample,
)


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
    assert report == {"rows_checked": 6, "classes_seen": [0, 1, 2], "smallest": (12, 16, 0)}  # (H, W, row)
