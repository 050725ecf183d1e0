"""Faults in the data (issue 14): each gives one clear LADError line naming the split and row, or the right behaviour.

EXIF orientation, non-finite pixels, 16/32-bit images, bad rows past the pre-checked ones (also through DataLoader
workers), huge padding in whole-image evaluation batches, empty validation splits. Real files, real `datasets`.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import logging
import pickle

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lad_hf.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ROW_INDEX_COLUMN,
    DataArguments,
    SegmentationCollator,
    apply_transforms,
    drop_bad_samples,
    load_image,
    validate_dataset_sample,
)
from lad_hf.data.decoding import image_size
from lad_hf.errors import LADError

ORIENTATION = 0x0112


def _files_dataset(pairs, row_ids=None):
    """A real Dataset of image/mask *files* (``datasets.Image`` cells), with the row-index column loading adds."""
    images, labels = zip(*[(str(i), str(m)) for i, m in pairs])
    ds = datasets.Dataset.from_dict(
        {"image": list(images), "label": list(labels), ROW_INDEX_COLUMN: list(row_ids or range(len(pairs)))}
    )
    return ds.cast_column("image", datasets.Image()).cast_column("label", datasets.Image())


def _eval_pixels(dataset, row, **kw):
    """Evaluation sample of ``row`` through apply_transforms -> (uint8-range image HWC, labels)."""
    tds = apply_transforms(datasets.DatasetDict({"validation": dataset}), DataArguments(dataset_name="x", **kw))
    sample = tds["validation"][row]
    pv = sample["pixel_values"].numpy().transpose(1, 2, 0)
    img = (pv * np.asarray(IMAGENET_DEFAULT_STD) + np.asarray(IMAGENET_DEFAULT_MEAN)) * 255.0
    return img, sample["labels"].numpy()


def _mask_png(path, mask):
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# 2. EXIF orientation
# ----------------------------------------------------------------------------------------------------------------------


def _rotated_jpeg(path, display):
    """Write ``display`` as a phone does: pixels stored sideways plus EXIF Orientation=6 (rotate 90 CW to show)."""
    stored = Image.fromarray(display).transpose(Image.Transpose.ROTATE_90)  # 90 CCW; Orientation 6 turns it back
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(float)
    assert np.abs(shown - display).mean() < 3  # the file really displays as `display`
    return path


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_exif_orientation_is_applied_so_image_matches_its_mask(tmp_path, hw):
    h, w = hw
    display = np.full((h, w, 3), 20, dtype=np.uint8)
    display[: h // 3] = 230  # bright top band in the displayed picture
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[: h // 3] = 1  # annotated on the displayed picture
    img_path = _rotated_jpeg(tmp_path / "photo.jpg", display)
    ds = _files_dataset([(img_path, _mask_png(tmp_path / "photo.png", mask))])

    assert image_size(str(img_path)) == (h, w)  # display size, as load_image gives
    assert load_image(str(img_path)).size == (w, h)
    img, labels = _eval_pixels(ds, 0)  # non-square: no "image is 40x24 but its mask is 24x40" any more
    assert labels.shape == (h, w)
    brightness = img.mean(axis=2)
    inside, outside = brightness[labels == 1].mean(), brightness[labels == 0].mean()
    assert inside > 200 and outside < 50, (inside, outside)
    # datasets' own decoding (Image feature) turns it the same way
    decoded = datasets.Dataset.from_dict({"image": [str(img_path)]}).cast_column("image", datasets.Image())[0]["image"]
    np.testing.assert_allclose(np.asarray(decoded, dtype=float), np.asarray(load_image(str(img_path)), dtype=float))


# ----------------------------------------------------------------------------------------------------------------------
# 3. Non-finite pixels (images) and values (masks)
# ----------------------------------------------------------------------------------------------------------------------


def _array_dataset(images, masks):
    return datasets.Dataset.from_dict({
        "image": [np.asarray(x).tolist() for x in images],
        "label": [np.asarray(m).tolist() for m in masks],
        ROW_INDEX_COLUMN: list(range(len(images))),
    })


def _float_rows(n=3, nan_row=None, nan_in="image"):
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (6, 8, 3)) for _ in range(n)]
    masks = [np.tile(np.array([0.0, 1.0, 2.0, 1.0] * 2), (6, 1)) for _ in range(n)]
    if nan_row is not None:
        if nan_in == "image":
            images[nan_row][2, 3, 0] = np.nan
        else:
            masks[nan_row][2, 3] = np.nan
    return images, masks


def test_nan_in_a_float_image_is_refused_naming_the_row_or_skipped():
    images, masks = _float_rows(nan_row=1)
    ds = _array_dataset(images, masks)
    with pytest.raises(LADError, match=r"train row 1: image has 1 non-finite value\(s\) \(NaN or inf\)"):
        validate_dataset_sample(ds, num_labels=3, split="train")
    tds = apply_transforms(datasets.DatasetDict({"validation": ds}), DataArguments(dataset_name="x"))["validation"]
    ok = tds[0]["pixel_values"]  # finite rows in [0, 1] are scaled x255, not blackened
    back = ok.numpy().transpose(1, 2, 0) * np.asarray(IMAGENET_DEFAULT_STD) + np.asarray(IMAGENET_DEFAULT_MEAN)
    np.testing.assert_allclose(back, images[0], atol=1 / 255)
    with pytest.raises(LADError, match=r"validation row 1: image has 1 non-finite.*--skip_bad_samples"):
        tds[1]
    kept, dropped = drop_bad_samples(ds, DataArguments(dataset_name="x", skip_bad_samples=True), split="train")
    assert dropped == [1] and len(kept) == 2
    inf_images, _ = _float_rows()
    inf_images[0][0, 0, 0] = np.inf
    with pytest.raises(LADError, match="row 0: image has 1 non-finite"):
        validate_dataset_sample(_array_dataset(inf_images[:1], [np.zeros((6, 8))]), num_labels=3)


def test_nan_in_a_float_mask_is_a_clear_error_not_a_huge_negative_label():
    images, masks = _float_rows(nan_row=2, nan_in="mask")
    with pytest.raises(LADError) as e:
        validate_dataset_sample(_array_dataset(images, masks), num_labels=3, split="validation")
    msg = str(e.value)
    assert "validation row 2: mask has 1 non-finite value(s)" in msg and "-9223372036854775808" not in msg
    assert "--do_reduce_labels" not in msg


# ----------------------------------------------------------------------------------------------------------------------
# 5. 16-bit and 32-bit integer images
# ----------------------------------------------------------------------------------------------------------------------


def _gradient16(h=16, w=64):
    return (np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w - 1) * 65535).astype(np.uint16)


def test_16_bit_png_is_scaled_to_8_bit_not_clipped(tmp_path):
    a16 = _gradient16()
    path = tmp_path / "deep.png"
    Image.fromarray(a16).save(path)  # a real 16-bit grayscale PNG
    assert Image.open(path).mode.startswith("I;16")
    ds = _files_dataset([(path, _mask_png(tmp_path / "deep_mask.png", np.zeros(a16.shape)))])
    img, _ = _eval_pixels(ds, 0)
    expected = a16 / 257.0
    assert np.abs(img[..., 0] - expected).max() < 1.01
    assert (np.rint(img) >= 255).mean() < 0.05  # was 99.6 % clipped to 255
    # uint16 arrays (e.g. from tifffile/OpenCV), HxWx3
    rgb16 = np.stack([a16, a16 // 2, 65535 - a16], axis=-1)
    out = np.asarray(load_image(rgb16), dtype=float)
    assert np.abs(out - rgb16 / 257.0).max() < 1.01


def test_32_bit_integer_I_mode_images_are_scaled_by_their_range(tmp_path):
    a16 = _gradient16().astype(np.int32)
    path = tmp_path / "deep.tif"
    Image.fromarray(a16).save(path)  # a real 32-bit integer TIFF holding 16-bit data
    assert Image.open(path).mode == "I"
    out = np.asarray(load_image(str(path)), dtype=float)[..., 0]
    assert np.abs(out - a16 / 257.0).max() < 1.01
    eight = (np.arange(16 * 64).reshape(16, 64) % 256).astype(np.int32)  # 8-bit values in an I image stay as they are
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(eight)))[..., 1], eight)


# ----------------------------------------------------------------------------------------------------------------------
# 6. A bad row after the pre-checked ones: named (split, row, file, fix), also through DataLoader workers
# ----------------------------------------------------------------------------------------------------------------------


def _many_files(tmp_path, n, bad_row):
    pairs = []
    rng = np.random.default_rng(0)
    for i in range(n):
        ip, mp = tmp_path / f"img_{i:03d}.png", tmp_path / f"mask_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(ip)
        _mask_png(mp, np.tile(np.array([0, 1, 2, 1, 0, 1, 2, 1]), (8, 1)))
        pairs.append((ip, mp))
    data = pairs[bad_row][0].read_bytes()
    pairs[bad_row][0].write_bytes(data[: len(data) // 2])  # truncated PNG
    return _files_dataset(pairs)


def test_bad_row_after_precheck_names_split_row_file_and_fix_through_dataloader_workers(tmp_path):
    ds = _many_files(tmp_path, 20, bad_row=18)
    dsd = datasets.DatasetDict({"validation": ds})
    validate_dataset_sample(dsd, num_labels=3, n=16)  # the pre-check reads only the first 16 rows
    tds = apply_transforms(dsd, DataArguments(dataset_name=str(tmp_path)))["validation"]
    loader = torch.utils.data.DataLoader(tds, batch_size=4, num_workers=1, collate_fn=SegmentationCollator())
    with pytest.raises(LADError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg  # the CLI prints one line
    assert msg.startswith("validation row 18 (") and "img_018.png): cannot decode the image (" in msg
    assert "--skip_bad_samples" in msg
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is type(e.value) and str(again) == msg
    # the fix named in the message works: the bad row becomes an all-ignore sample
    skip = apply_transforms(dsd, DataArguments(dataset_name=str(tmp_path), skip_bad_samples=True))["validation"]
    loader = torch.utils.data.DataLoader(skip, batch_size=4, num_workers=1, collate_fn=SegmentationCollator())
    batches = list(loader)
    assert sum(len(b["labels"]) for b in batches) == 20 and (batches[4]["labels"][2] == 255).all()


def test_label_check_in_collator_survives_torch_worker_reraise_as_one_line():
    """The collator runs in the workers too; torch re-raises what it raised as ``type(msg_with_traceback)``."""
    from torch.utils.data._utils import ExceptionWrapper  # what DataLoader workers send to the main process

    feature = {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.full((4, 4), 2, dtype=torch.int64)}
    try:
        SegmentationCollator(num_labels=2)([feature])
    except LADError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(LADError) as e:
        wrapper.reraise()
    assert "\n" not in str(e.value) and str(e.value).startswith("labels contain values [2] outside [0, 2)")


# ----------------------------------------------------------------------------------------------------------------------
# 10. Huge padding in whole-image evaluation batches; empty validation split
# ----------------------------------------------------------------------------------------------------------------------


def test_collator_warns_once_when_padding_dwarfs_the_images(caplog):
    small = [{"pixel_values": torch.zeros(3, 8, 8), "labels": torch.zeros(8, 8, dtype=torch.int64)} for _ in range(7)]
    big = {"pixel_values": torch.zeros(3, 96, 96), "labels": torch.zeros(96, 96, dtype=torch.int64)}
    collate = SegmentationCollator(pad_to_multiple_of=32)
    with caplog.at_level(logging.WARNING, logger="lad_hf"):
        collate(small[:4])  # same size (after pad_to_multiple_of): no warning
        collate([{"pixel_values": torch.zeros(3, 8, 10), "labels": torch.zeros(8, 10, dtype=torch.int64)}] + small[:3])
        assert not caplog.records
        batch = collate(small + [big])
        collate(small + [big])
    assert batch["pixel_values"].shape == (8, 3, 96, 96)
    warnings = [r for r in caplog.records if "padding a batch" in r.getMessage()]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "96x96" in msg and "--per_device_eval_batch_size 1" in msg and "--eval_resize" in msg


def test_empty_validation_split_suggests_train_val_split():
    rng = np.random.default_rng(0)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    rows = {"image": [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(4)],
            "label": [Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) % 3, (8, 1))) for _ in range(4)]}
    full = datasets.Dataset.from_dict(rows, features=feats)
    dsd = datasets.DatasetDict({"train": full, "validation": full.select([])})  # as a Hub dataset with an empty split
    args = DataArguments(dataset_name="user/data", id2label='["a","b","c"]')
    with pytest.raises(LADError, match=r"validation split 'validation' is empty \(0 rows\); pass --train_val_split 0\.1"):
        validate_dataset_sample(dsd, num_labels=3, data_args=args)
    with pytest.raises(LADError, match=r"train split 'train' is empty \(0 rows\); check --dataset_name and --train_split"):
        validate_dataset_sample(full.select([]), num_labels=3, data_args=args, split="train")
    # every row dropped by --skip_bad_samples: it says so
    args.skipped_bad_samples = {"validation": [0, 1]}
    with pytest.raises(LADError, match="--skip_bad_samples dropped all its 2 row"):
        validate_dataset_sample(dsd["validation"], num_labels=3, data_args=args, split="validation")
