"""Shared helpers of the data tests: real small image/mask datasets written to disk."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from lad_hf.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    DataArguments,
    load_segmentation_dataset,
)


K = 3  # classes in the synthetic data


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


def _write_palette_mask(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.save(path)


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



def _mask_dataset(masks, size=(4, 4)):
    img = Image.fromarray(np.zeros((*size, 3), dtype=np.uint8))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [img] * len(masks), "label": [Image.fromarray(np.asarray(m, dtype=np.uint8)) for m in masks]},
        features=feats,
    )
