"""Shared fixtures: tiny real HF models built from configs and small real `datasets` objects."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# tiny models: one intra-op thread is fastest and avoids oversubscribing 2 cores (also for subprocesses)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

NUM_LABELS = 4
ID2LABEL = {0: "background", 1: "square", 2: "disc", 3: "bar"}


def tiny_segformer(num_labels=NUM_LABELS, seed=0, **kw):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    cfg = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=16, num_labels=num_labels,
        id2label={k: v for k, v in ID2LABEL.items() if k < num_labels} if num_labels <= 4 else None, **kw,
    )
    if num_labels > 4:
        cfg.id2label = {i: f"c{i}" for i in range(num_labels)}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    else:
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return SegformerForSemanticSegmentation(cfg)


def synthetic_scene(rng, size=32):
    """Image whose colours determine the label: a learnable toy segmentation sample."""
    img = rng.normal(0, 0.3, (3, size, size)).astype(np.float32)
    lab = np.zeros((size, size), dtype=np.int64)
    for k in (1, 2, 3):
        y, x = rng.integers(0, size - 10, 2)
        s = rng.integers(6, 10)
        lab[y:y + s, x:x + s] = k
        img[k - 1, y:y + s, x:x + s] += 1.5
    lab[0, :3] = 255
    return img, lab


@pytest.fixture
def tensor_dataset():
    """A real `datasets.Dataset` of already-normalised tensors (pixel_values, labels)."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    imgs, labs = zip(*(synthetic_scene(rng) for _ in range(16)))
    ds = Dataset.from_dict({"pixel_values": list(imgs), "labels": list(labs)})
    return ds.with_format("torch")


@pytest.fixture
def id2label():
    return dict(ID2LABEL)


def write_parquet_dataset(root, n_train=24, n_val=8, size=32, seed=0):
    """A real local parquet dataset (PNG images + L-mode masks) with an id2label.json next to it."""
    import json
    from pathlib import Path

    from datasets import Dataset, Image as ImageFeature
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("validation", n_val)):
        images, masks = [], []
        for _ in range(n):
            img, lab = synthetic_scene(rng, size)
            rgb = np.clip((img.transpose(1, 2, 0) * 0.25 + 0.5) * 255, 0, 255).astype(np.uint8)
            images.append(Image.fromarray(rgb))
            masks.append(Image.fromarray(lab.astype(np.uint8), mode="L"))
        ds = Dataset.from_dict({"image": images, "label": masks}).cast_column("image", ImageFeature()).cast_column("label", ImageFeature())
        ds.to_parquet(str(root / f"{split}.parquet"))
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in ID2LABEL.items()}))
    return root


TINY_SEGFORMER_OVERRIDES = (
    "num_encoder_blocks=2,depths=[1,1],sr_ratios=[2,1],hidden_sizes=[8,16],patch_sizes=[7,3],strides=[4,2],"
    "num_attention_heads=[1,2],mlp_ratios=[2,2],decoder_hidden_size=16"
)
